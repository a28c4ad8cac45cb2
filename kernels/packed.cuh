// 16-byte vectorized global loads and stores for memory-bound kernels (llm.c's x128/Packed128):
// one instruction moves 8 bf16 or 4 floats instead of one element, which a memory-bound kernel
// needs to get near copy bandwidth.
//
// A 16-byte access must start on a 16-byte boundary (a GPU faults otherwise). Tensors here are
// often slices of larger buffers or rows of odd widths, so nothing guarantees that: every
// launcher checks its pointers at run time with aligned16() (and, for row kernels, that a row's
// byte width keeps every row aligned) and launches the vector variant only then; otherwise the
// scalar variant. Vector variants process whole packs and finish the n % K tail element by
// element. Under the emulator load128/store128 abort on a misaligned address, as the GPU would,
// so a launcher that picks the vector path wrongly fails its test instead of passing silently.
//
// Stores name their state space: store128 (and store_floats, store_span) write global memory
// with one st.global.v4 (nvcc split a plain 16-byte struct store of a pack into 2- and 4-byte
// stores, e.g. when the pack came straight from load128), store128_shared writes shared memory.
// A global store to a shared address faults on the GPU, so under the emulator each aborts when
// its address lies outside its space. bench/gpu/pack_stores.py checks the PTX for the v4 stores.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#if defined(MINITRON_EMULATE)
#include <cstdio>
#include <cstdlib>
#endif

#include "kernels/cuda/device_common.cuh"

namespace minitron::cuda {

template <typename T>
struct alignas(16) Packed128 {
  static constexpr int kSize = 16 / static_cast<int>(sizeof(T));
  T payload[kSize];
};

__host__ __device__ inline bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// Every row of D elements of T starting at each of these pointers is 16-byte aligned (and D is
// then a multiple of the pack, so rows have no tail).
template <typename T>
bool rows_aligned16(std::int64_t D, std::initializer_list<const void*> pointers) {
  if ((D * static_cast<std::int64_t>(sizeof(T))) % 16 != 0) return false;
  for (const void* p : pointers)
    if (!aligned16(p)) return false;
  return true;
}

// Whether row strides (in elements of T) keep every row on the 16-byte boundary of its first:
// strided views (the fused projections) take the packed paths only then.
template <typename T>
bool strides_aligned16(std::initializer_list<std::int64_t> strides) {
  for (const std::int64_t stride : strides)
    if ((stride * static_cast<std::int64_t>(sizeof(T))) % 16 != 0) return false;
  return true;
}

// Elements one thread handles per step: one 16-byte access of the narrowest type involved
// (a float beside bf16 then takes two accesses), so every type's accesses stay whole packs.
template <typename... Ts>
__host__ __device__ constexpr int pack_elements() {
  std::size_t smallest = 16;
  ((smallest = sizeof(Ts) < smallest ? sizeof(Ts) : smallest), ...);
  return static_cast<int>(16 / smallest);
}

#if defined(MINITRON_EMULATE)
inline void check_aligned16(const void* p, const char* what) {
  if (!aligned16(p)) {
    std::fprintf(stderr, "minitron emulator: misaligned 16-byte %s at %p (a GPU faults here)\n",
                 what, p);
    std::abort();
  }
}
#endif

template <typename T>
__device__ __forceinline__ Packed128<T> load128(const T* p) {
#if defined(MINITRON_EMULATE)
  check_aligned16(p, "load");
  Packed128<T> v;
  std::memcpy(static_cast<void*>(&v), static_cast<const void*>(p), sizeof(v));
  return v;
#else
  return *reinterpret_cast<const Packed128<T>*>(p);
#endif
}

// A pack's 16 bytes as four 32-bit words, the operand of one 128-bit store.
template <typename T>
__device__ __forceinline__ uint4 pack_words(const Packed128<T>& v) {
  static_assert(sizeof(Packed128<T>) == sizeof(uint4), "a pack is 16 bytes");
  uint4 words;
  std::memcpy(static_cast<void*>(&words), static_cast<const void*>(&v), sizeof(words));
  return words;
}

// Stores a pack at p, 16-byte aligned, in global memory: one st.global.v4 (__stwb is the plain
// write-back store, the default cache policy).
template <typename T>
__device__ __forceinline__ void store128(T* p, const Packed128<T>& v) {
#if defined(MINITRON_EMULATE)
  check_aligned16(p, "store");
  ::minitron::emu::detail::check_store_space(p, sizeof(v), ::minitron::emu::detail::Space::global,
                                             "store128");
  std::memcpy(static_cast<void*>(p), static_cast<const void*>(&v), sizeof(v));
#else
  __stwb(reinterpret_cast<uint4*>(p), pack_words(v));
#endif
}

// Stores a pack at p, 16-byte aligned, in shared memory (a tile): one 16-byte store.
template <typename T>
__device__ __forceinline__ void store128_shared(T* p, const Packed128<T>& v) {
#if defined(MINITRON_EMULATE)
  check_aligned16(p, "shared store");
  ::minitron::emu::detail::check_store_space(p, sizeof(v), ::minitron::emu::detail::Space::shared,
                                             "store128_shared");
  std::memcpy(static_cast<void*>(p), static_cast<const void*>(&v), sizeof(v));
#else
  *reinterpret_cast<uint4*>(p) = pack_words(v);
#endif
}

// K consecutive elements at p (16-byte aligned) as floats, in K * sizeof(T) / 16 accesses.
template <int K, typename T>
__device__ __forceinline__ void load_floats(float (&out)[K], const T* p) {
  constexpr int per = Packed128<T>::kSize;
  static_assert(K % per == 0, "a pack must be whole 16-byte accesses");
#pragma unroll
  for (int q = 0; q < K / per; ++q) {
    const Packed128<T> v = load128(p + q * per);
#pragma unroll
    for (int e = 0; e < per; ++e) out[q * per + e] = to_float(v.payload[e]);
  }
}

// Stores K floats rounded to T at p (16-byte aligned).
template <int K, typename T>
__device__ __forceinline__ void store_floats(T* p, const float (&in)[K]) {
  constexpr int per = Packed128<T>::kSize;
  static_assert(K % per == 0, "a pack must be whole 16-byte accesses");
#pragma unroll
  for (int q = 0; q < K / per; ++q) {
    Packed128<T> v;
#pragma unroll
    for (int e = 0; e < per; ++e) v.payload[e] = from_float<T>(in[q * per + e]);
    store128(p + q * per, v);
  }
}

// A row of n elements of T at p, split for 16-byte packs: [0, head) lies before p's first
// 16-byte boundary, [head, body_end) is whole packs, [body_end, n) the tail. Lets a row kernel
// use packs on any row, whatever its width or start; another row may share the split only if it
// starts at the same address modulo 16 (same_phase16). A RowSplit{0, 0} is all scalar.
struct RowSplit {
  std::int64_t head, body_end;
};

template <typename T>
__host__ __device__ __forceinline__ RowSplit split_row16(const T* p, std::int64_t n) {
  constexpr std::int64_t K = Packed128<T>::kSize;
  const auto phase = static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(p) % 16);
  std::int64_t head = phase == 0 ? 0 : (16 - phase) / static_cast<std::int64_t>(sizeof(T));
  if (head > n) head = n;
  return {head, head + (n - head) / K * K};
}

__host__ __device__ __forceinline__ bool same_phase16(const void* a, const void* b) {
  return reinterpret_cast<std::uintptr_t>(a) % 16 == reinterpret_cast<std::uintptr_t>(b) % 16;
}

// Elements of a row of n outside the split's packs (head and tail), and the j-th of them.
__host__ __device__ __forceinline__ std::int64_t split_scalars(const RowSplit& s, std::int64_t n) {
  return s.head + n - s.body_end;
}
__host__ __device__ __forceinline__ std::int64_t split_scalar_index(const RowSplit& s,
                                                                    std::int64_t j) {
  return j < s.head ? j : s.body_end + (j - s.head);
}

// The split of a row of n elements that several pointers walk at the same columns (rows of
// different tensors, even of different types): head is the first column at which every pointer
// is 16-byte aligned, and packs are K columns (K = pack_elements<Ts...>(), so a step keeps every
// pointer aligned). RowSplit{0, 0} (all scalar) when no column aligns them all, i.e. when the
// rows start at incompatible phases.
template <int K, typename... Ts>
__host__ __device__ __forceinline__ RowSplit split_rows16(std::int64_t n, const Ts*... rows) {
  for (std::int64_t h = 0; h < K; ++h) {
    if ((... && (reinterpret_cast<std::uintptr_t>(rows + h) % 16 == 0))) {
      const std::int64_t head = h < n ? h : n;
      return {head, head + (n - head) / K * K};
    }
  }
  return {0, 0};
}

// The split that every row [n] of each of these row-major tensors shares (column-parallel
// kernels), or all scalar when their rows do not all start at one phase: a row width that is
// not a whole number of 16-byte units moves each next row's phase.
template <int K, typename... Ts>
RowSplit rows_split(std::int64_t n, const Ts*... bases) {
  if ((... || ((n * static_cast<std::int64_t>(sizeof(Ts))) % 16 != 0))) return {0, 0};
  return split_rows16<K>(n, bases...);
}

// W consecutive elements as floats: whole 16-byte packs (p aligned) when W is a pack, one
// element when W == 1; lets one step body serve a split row's packs and its scalars.
template <int W, typename T>
__device__ __forceinline__ void load_span(float (&out)[W], const T* p) {
  if constexpr (W == 1)
    out[0] = to_float(*p);
  else
    load_floats(out, p);
}
template <int W, typename T>
__device__ __forceinline__ void store_span(T* p, const float (&in)[W]) {
  if constexpr (W == 1)
    *p = from_float<T>(in[0]);
  else
    store_floats(p, in);
}
// store_span into shared memory (a row kept between two passes): p 16-byte aligned when W > 1.
template <int W, typename T>
__device__ __forceinline__ void store_span_shared(T* p, const float (&in)[W]) {
  if constexpr (W == 1) {
    *p = from_float<T>(in[0]);
  } else {
    constexpr int per = Packed128<T>::kSize;
    static_assert(W % per == 0, "a pack must be whole 16-byte accesses");
#pragma unroll
    for (int q = 0; q < W / per; ++q) {
      Packed128<T> v;
#pragma unroll
      for (int e = 0; e < per; ++e) v.payload[e] = from_float<T>(in[q * per + e]);
      store128_shared(p + q * per, v);
    }
  }
}
// As load_span / store_span, but element by element unless `packed`: for a pointer whose phase
// may differ from the row's split and that moves little memory (a weight vector every row
// re-reads, served from cache; a small partial-sum output), so that it does not cost the
// row's big streams their packs.
template <int W, typename T>
__device__ __forceinline__ void load_span(float (&out)[W], const T* p, bool packed) {
  if (packed) {
    load_span(out, p);
  } else {
#pragma unroll
    for (int e = 0; e < W; ++e) out[e] = to_float(p[e]);
  }
}
template <int W, typename T>
__device__ __forceinline__ void store_span(T* p, const float (&in)[W], bool packed) {
  if (packed) {
    store_span(p, in);
  } else {
#pragma unroll
    for (int e = 0; e < W; ++e) p[e] = from_float<T>(in[e]);
  }
}

// A split row that a kernel's second pass reads again, kept in shared memory as far as it fits:
// the row rotated by the split's head (column j at slot j - head, the head's columns after the
// tail) so that the packs' slots are 16-byte aligned whatever the row's phase, and slots
// [0, kept) held (kept a multiple of the pack, or the whole row), so a pack is held whole or not
// at all. A column not held is read from the global row again. Each thread reads back only the
// columns it kept itself.
template <typename T>
struct RowCopy {
  T* cache;  // shared memory, 16-byte aligned; nullptr: nothing kept
  std::int64_t head, n, kept;

  __device__ __forceinline__ std::int64_t slot(std::int64_t j) const {
    return j >= head ? j - head : n - head + j;
  }
  __device__ __forceinline__ bool holds(std::int64_t j) const {
    return cache != nullptr && slot(j) < kept;
  }
  template <int W>
  __device__ __forceinline__ void keep(std::int64_t j, const float (&v)[W]) const {
    if (holds(j)) store_span_shared(cache + slot(j), v);
  }
  // Where to read column j again, `row` being the global row.
  __device__ __forceinline__ const T* at(const T* row, std::int64_t j) const {
    return holds(j) ? cache + slot(j) : row + j;
  }
};

template <int W>
using SpanWidth = std::integral_constant<int, W>;

// Runs step(SpanWidth<K>{}, j) on each pack of the split row of n that falls to `lane` of
// `lanes` (packs j = head + lane * K, + lanes * K, ...) and step(SpanWidth<1>{}, j) on its share
// of the head and tail. A step body written once over W serves both.
template <int K, typename Step>
__device__ __forceinline__ void for_each_span(const RowSplit& split, std::int64_t n,
                                              std::int64_t lane, std::int64_t lanes, Step&& step) {
  for (std::int64_t j = split.head + lane * K; j < split.body_end; j += lanes * K)
    step(SpanWidth<K>{}, j);
  const std::int64_t scalars = split_scalars(split, n);
  for (std::int64_t i = lane; i < scalars; i += lanes)
    step(SpanWidth<1>{}, split_scalar_index(split, i));
}

// Column-parallel kernels (a thread owns columns across rows that all share one split): slot t
// < packs owns the pack at head + t * K, the next slots one head or tail column each. Calls
// step(SpanWidth<W>{}, column); slots past the end do nothing.
template <int K, typename Step>
__device__ __forceinline__ void column_slot(const RowSplit& split, std::int64_t n, std::int64_t t,
                                            Step&& step) {
  const std::int64_t packs = (split.body_end - split.head) / K;
  if (t < packs)
    step(SpanWidth<K>{}, split.head + t * K);
  else if (t - packs < split_scalars(split, n))
    step(SpanWidth<1>{}, split_scalar_index(split, t - packs));
}
// Slots a column-parallel launch needs for a row of n under `split`.
inline std::int64_t column_slots(const RowSplit& split, std::int64_t n, int K) {
  return (split.body_end - split.head) / K + split_scalars(split, n);
}

// Grid-stride position of this thread.
__device__ __forceinline__ std::int64_t grid_start() {
  return blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ std::int64_t grid_stride() {
  return static_cast<std::int64_t>(gridDim.x) * blockDim.x;
}

}  // namespace minitron::cuda
