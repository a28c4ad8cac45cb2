// The CUDA emulator: runs the project's unmodified kernel source as host C++ so every kernel is
// tested without a GPU (build with -DMINITRON_EMULATE, g++ or clang++, never nvcc).
//
// Design (details in scheduler.cpp):
// - Every CUDA thread of a block is a fiber with its own mmap'd stack (guard page below it) and a
//   hand-written context switch (context_switch.cpp). A block runs on one OS thread from start to
//   end; a launch spreads its blocks over a few OS threads (Options::os_threads, 1 = serial).
// - Fibers run until they block: at __syncthreads the last arriving thread releases the others;
//   a warp operation (shuffle, vote, __syncwarp) is a barrier over the lanes of its mask, with the
//   lanes' values written into a per-operation exchange record. Threads that have exited do not
//   hold a block barrier back. Any state where nobody can run aborts with the kernel, the block
//   and where each thread waits (source lines from std::source_location).
// - The built-ins (threadIdx, blockIdx, blockDim, gridDim) read the running fiber through one
//   trivial thread_local pointer; a thread_local object with a destructor cost 35% in TLS setup.
// - `__shared__` is `static thread_local` (constinit under GCC): one block per OS thread at a
//   time, so each OS thread's copy is exactly the block's shared memory. Dynamic shared memory comes from
//   dynamic_shared<T>() (via MINITRON_DYNAMIC_SHARED in launch.cuh) and is filled with 0xFF bytes
//   before each block: NaN as float, bf16 and fp16, -1 as integers, so reads of data nobody wrote
//   show up in results.
// - The real CUDA headers give the types (dim3, cudaError_t, __nv_bfloat16, ...); this header adds
//   what they leave to the device compiler, and cuda_runtime.cpp / cublaslt.cpp define the host
//   API functions (no libcudart is linked).
// - Thread order can be reversed (MINITRON_EMU_REVERSE=1 or Options::reverse_order): a missing
//   barrier usually gives a wrong answer in at least one of the two orders.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

#if defined(__CUDACC__)
#error "emu/emulator.h is host C++: compile emulated code with g++ or clang++, not nvcc"
#endif

// ------------------------------------------------------------------------------------------------
// Declaration specifiers. cuda_runtime.h already makes __host__/__device__/__global__ empty and
// __forceinline__/__align__ GNU attributes for a host compiler.
// GCC gives a function-local thread_local of class type a TLS "initialised" guard byte even when
// its default constructor is trivial (__nv_bfloat16: `= default`); the first fiber to reach the
// declaration sets it and later fibers read it, which TSan reports as a race between CUDA threads.
// constinit makes GCC initialise it statically (no guard); CUDA forbids __shared__ initialisers, so
// every valid __shared__ declaration is constant-initialised. Clang emits no guard (and rejects
// constinit on such arrays).
#undef __shared__
#if defined(__clang__)
#define __shared__ static thread_local
#else
#define __shared__ constinit static thread_local
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __noinline__
#define __noinline__ __attribute__((noinline))
#endif

namespace minitron::emu {

// How launches run. Defaults come from the environment: MINITRON_EMU_THREADS (OS threads per
// launch, default 2), MINITRON_EMU_REVERSE (1 = reversed thread order), MINITRON_EMU_STACK_KIB
// (fiber stack size, default 64, 512 under AddressSanitizer), MINITRON_EMU_NCCL_TIMEOUT_SECONDS
// (how long an emulated NCCL rank waits for the others before failing, default 120).
struct Options {
  int os_threads = 2;
  bool reverse_order = false;
  std::size_t stack_bytes = 64 * 1024;
  // Real NCCL waits forever for a rank that never comes; a test should fail instead of hanging.
  double nccl_timeout_seconds = 120;
};
Options options();
void set_options(const Options& options);

// Sets options for a scope (tests), restoring the previous ones at its end.
class ScopedOptions {
 public:
  explicit ScopedOptions(const Options& options) : saved_(::minitron::emu::options()) { set_options(options); }
  ~ScopedOptions() { set_options(saved_); }
  ScopedOptions(const ScopedOptions&) = delete;
  ScopedOptions& operator=(const ScopedOptions&) = delete;

 private:
  Options saved_;
};

// Device memory (cudaMalloc and its host/async variants) that the calling host thread allocated
// and has not freed, and the most it held at once since its first allocation or its last
// reset_thread_device_memory_peak(): bytes as requested. Counted per host thread because the
// ranks of a multi-rank test are threads sharing the one emulated device; a pointer freed by
// another thread still leaves its allocator's account.
struct DeviceMemoryUse {
  std::size_t current = 0, peak = 0;
};
DeviceMemoryUse thread_device_memory();
void reset_thread_device_memory_peak();  // peak = current

namespace detail {

// What the running CUDA thread sees; one per fiber, filled by the scheduler.
struct ThreadView {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  unsigned lane;
  unsigned warp;
  unsigned char* dynamic_shared;
  std::size_t dynamic_shared_bytes;
};

// The running fiber of this OS thread (null outside kernels). Trivial and constant-initialised,
// so reading it is one TLS load with no wrapper call.
inline constinit thread_local ThreadView* t_current = nullptr;

[[noreturn]] void outside_kernel(const char* what);
[[noreturn]] void die(const char* message);

inline ThreadView& current(const char* what) {
  ThreadView* view = t_current;
  if (view == nullptr) [[unlikely]]
    outside_kernel(what);
  return *view;
}

enum class BarrierKind : int { sync, count, all, any };
// Block barrier; returns the count/and/or result for the _count/_and/_or variants.
int block_barrier(BarrierKind kind, int predicate, const std::source_location& where);

enum class WarpOp : int { syncwarp, shfl, shfl_up, shfl_down, shfl_xor, ballot, any, all, mma };
// Warp barrier over `mask` that also exchanges `bytes` (at most 32) bytes per lane: every lane
// publishes `value`, then receives lane `source_lane`'s value in `out` (out may be null), or,
// with source_lane == all_lanes, every lane's value (32 * bytes, lane order; lanes outside the
// mask left untouched). __ballot_sync/__any_sync get the ballot of the lanes' first bytes being
// non-zero, __all_sync 1 when every taking-part lane's is. Lanes named in the mask that exited
// (or that the block lacks) are left out of __syncwarp and the votes; shuffles abort on them.
inline constexpr unsigned all_lanes = 0xffffffffu;
unsigned warp_exchange(unsigned mask, WarpOp op, const void* value, unsigned bytes, unsigned source_lane, void* out,
                       const std::source_location& where);
// Lanes of the current warp that have not exited.
unsigned active_lanes();

// cp.async (kernels/async_copy.cuh wraps these). Each CUDA thread keeps its pending copies in
// commit groups, as the PTX ISA defines them: async_copy checks both addresses (16-byte aligned,
// the destination in shared memory), writes 0xFF poison into the destination and records the
// copy, uncommitted; async_commit closes the uncommitted copies into a group (an empty one if
// there are none); async_wait(n) performs, oldest first, the copies of every committed group but
// the newest n (uncommitted copies stay pending). So a read before the right wait sees NaN, and
// under TSan the data arrives as a write by the issuing thread at its wait, so another thread
// reading it needs a __syncthreads after that wait. A thread exiting with copies pending aborts.
void async_copy(void* shared_dst, const void* global_src, bool zero_fill, const std::source_location& where);
void async_commit();
void async_wait(unsigned newest_pending, const std::source_location& where);

// The state space of a store that names one (kernels/packed.cuh: st.global or st.shared): on a
// GPU a global store to a shared address, or a shared store to any other address, faults (a
// generic shared address is not a global one), so this aborts naming the kernel and block
// unless [address, address + bytes) lies in the space named: shared memory is the block's
// dynamic shared memory or a __shared__ variable, global memory anything else.
enum class Space : int { global, shared };
void check_store_space(const void* address, std::size_t bytes, Space space, const char* what);

// Type-erased kernel for the scheduler: `entry(arguments)` runs one CUDA thread.
struct KernelLaunch {
  void (*entry)(const void* arguments);
  const void* arguments;
  const void* kernel_address;  // for the name in messages and the shared-memory attribute
  const char* signature;       // demangled type, when the symbol has no name
  dim3 grid;
  dim3 block;
  std::size_t shared_bytes;
};
void run_kernel(const KernelLaunch& launch);

// Bit-pattern conversion for the CUDA vector types, which are not trivially copyable in C++ terms
// (user-provided copy operations) although they are plain bits.
template <typename To, typename From>
To bits_as(const From& from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  std::memcpy(static_cast<void*>(&to), static_cast<const void*>(&from), sizeof(To));
  return to;
}
// Values a warp operation can exchange: plain bits up to 16 bytes (the CUDA vector types such as
// __nv_bfloat162 have user-provided copies, so trivially-copyable is too strict a test).
template <typename T>
inline constexpr bool exchangeable = std::is_trivially_destructible_v<T> && sizeof(T) <= 16;

}  // namespace detail

// The dynamic shared memory of the running block (MINITRON_DYNAMIC_SHARED uses it).
template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(detail::current("dynamic shared memory").dynamic_shared);
}
// Its size in bytes, as requested at launch.
inline std::size_t dynamic_shared_bytes() { return detail::current("dynamic shared memory").dynamic_shared_bytes; }

// Runs kernel<<<grid, block, shared_bytes, stream>>>(args...) and returns when it has finished.
// Arguments are converted to the kernel's parameter types once and copied to each thread, as
// CUDA passes them by value. Throws minitron::Error on an invalid configuration.
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, std::size_t shared_bytes,
            cudaStream_t /*stream: launches are synchronous and in order*/, Args&&... args) {
  static_assert(sizeof...(KernelArgs) == sizeof...(Args), "kernel launched with the wrong number of arguments");
  using Arguments = std::tuple<std::decay_t<KernelArgs>...>;
  struct Closure {
    void (*kernel)(KernelArgs...);
    Arguments arguments;
  };
  const Closure closure{kernel, Arguments(std::forward<Args>(args)...)};
  detail::KernelLaunch description;
  description.entry = [](const void* opaque) {
    const auto* c = static_cast<const Closure*>(opaque);
    std::apply(c->kernel, c->arguments);
  };
  description.arguments = &closure;
  description.kernel_address = reinterpret_cast<const void*>(kernel);
  description.signature = typeid(kernel).name();
  description.grid = grid;
  description.block = block;
  description.shared_bytes = shared_bytes;
  detail::run_kernel(description);
}

}  // namespace minitron::emu

// ------------------------------------------------------------------------------------------------
// Built-in variables. Macros, because CUDA spells them as variables that differ per thread.
#define threadIdx (::minitron::emu::detail::current("threadIdx").thread_idx)
#define blockIdx (::minitron::emu::detail::current("blockIdx").block_idx)
#define blockDim (::minitron::emu::detail::current("blockDim").block_dim)
#define gridDim (::minitron::emu::detail::current("gridDim").grid_dim)
inline constexpr int warpSize = 32;

// ------------------------------------------------------------------------------------------------
// Block and warp synchronisation. The default std::source_location argument records the call
// site, so deadlock messages name the lines where threads wait.
inline void __syncthreads(const std::source_location& where = std::source_location::current()) {
  ::minitron::emu::detail::block_barrier(::minitron::emu::detail::BarrierKind::sync, 0, where);
}
inline int __syncthreads_count(int predicate, const std::source_location& where = std::source_location::current()) {
  return ::minitron::emu::detail::block_barrier(::minitron::emu::detail::BarrierKind::count, predicate != 0, where);
}
inline int __syncthreads_and(int predicate, const std::source_location& where = std::source_location::current()) {
  return ::minitron::emu::detail::block_barrier(::minitron::emu::detail::BarrierKind::all, predicate != 0, where);
}
inline int __syncthreads_or(int predicate, const std::source_location& where = std::source_location::current()) {
  return ::minitron::emu::detail::block_barrier(::minitron::emu::detail::BarrierKind::any, predicate != 0, where);
}
inline void __syncwarp(unsigned mask = 0xffffffffu,
                       const std::source_location& where = std::source_location::current()) {
  ::minitron::emu::detail::warp_exchange(mask, ::minitron::emu::detail::WarpOp::syncwarp, nullptr, 0, 0, nullptr,
                                         where);
}
// Fibers of one block share an OS thread and blocks never wait on each other, so a compiler and
// CPU fence is all a __threadfence can mean here.
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

inline unsigned __activemask() { return ::minitron::emu::detail::active_lanes(); }

namespace minitron::emu::detail {
template <typename T>
T shuffle(unsigned mask, WarpOp op, T value, unsigned source_lane, const std::source_location& where) {
  static_assert(exchangeable<T>, "shuffled values must be plain data of at most 16 bytes");
  alignas(T) unsigned char result[sizeof(T)];
  warp_exchange(mask, op, &value, sizeof(T), source_lane, result, where);
  return bits_as<T>(result);
}
inline unsigned check_width(int width) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) die("shuffle width must be a power of two from 1 to 32");
  return static_cast<unsigned>(width);
}
}  // namespace minitron::emu::detail

// Shuffles follow the CUDA programming guide: `width` splits the warp into segments; a source
// outside the lane's segment (up/down/xor) returns the lane's own value.
template <typename T>
T __shfl_sync(unsigned mask, T value, int source, int width = warpSize,
              const std::source_location& where = std::source_location::current()) {
  namespace d = ::minitron::emu::detail;
  const unsigned w = d::check_width(width);
  const unsigned lane = d::current("__shfl_sync").lane;
  const unsigned base = lane & ~(w - 1);
  return d::shuffle(mask, d::WarpOp::shfl, value, base + (static_cast<unsigned>(source) & (w - 1)), where);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = warpSize,
                 const std::source_location& where = std::source_location::current()) {
  namespace d = ::minitron::emu::detail;
  const unsigned w = d::check_width(width);
  const unsigned lane = d::current("__shfl_up_sync").lane;
  const unsigned offset = lane & (w - 1);
  return d::shuffle(mask, d::WarpOp::shfl_up, value, offset >= delta ? lane - delta : lane, where);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize,
                   const std::source_location& where = std::source_location::current()) {
  namespace d = ::minitron::emu::detail;
  const unsigned w = d::check_width(width);
  const unsigned lane = d::current("__shfl_down_sync").lane;
  const unsigned offset = lane & (w - 1);
  return d::shuffle(mask, d::WarpOp::shfl_down, value, offset + delta < w ? lane + delta : lane, where);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize,
                  const std::source_location& where = std::source_location::current()) {
  namespace d = ::minitron::emu::detail;
  const unsigned w = d::check_width(width);
  const unsigned lane = d::current("__shfl_xor_sync").lane;
  const unsigned source = lane ^ static_cast<unsigned>(lane_mask);
  // A source in a later segment returns the lane's own value (CUDA programming guide).
  return d::shuffle(mask, d::WarpOp::shfl_xor, value,
                    (source & ~(w - 1)) > (lane & ~(w - 1)) || source > 31 ? lane : source, where);
}
inline unsigned __ballot_sync(unsigned mask, int predicate,
                              const std::source_location& where = std::source_location::current()) {
  namespace d = ::minitron::emu::detail;
  const unsigned char bit = predicate != 0;
  return d::warp_exchange(mask, d::WarpOp::ballot, &bit, 1, 0, nullptr, where);
}
inline int __any_sync(unsigned mask, int predicate,
                      const std::source_location& where = std::source_location::current()) {
  namespace d = ::minitron::emu::detail;
  const unsigned char bit = predicate != 0;
  return d::warp_exchange(mask, d::WarpOp::any, &bit, 1, 0, nullptr, where) != 0;
}
inline int __all_sync(unsigned mask, int predicate,
                      const std::source_location& where = std::source_location::current()) {
  namespace d = ::minitron::emu::detail;
  const unsigned char bit = predicate != 0;
  return d::warp_exchange(mask, d::WarpOp::all, &bit, 1, 0, nullptr, where) != 0;
}

// ------------------------------------------------------------------------------------------------
// Atomics: real atomics, since blocks run on several OS threads. Float and 16-bit types use CAS
// loops as the hardware semantics are "read, add, write back" with the usual rounding.
namespace minitron::emu::detail {
template <typename T, typename Op>
T atomic_update(T* address, Op op) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (!ref.compare_exchange_weak(old, op(old), std::memory_order_relaxed)) {
  }
  return old;
}
// 16- and 32-bit floating types are updated through their bit pattern.
template <typename Half, typename Op>
Half atomic_update_16(Half* address, Op op) {
  static_assert(sizeof(Half) == 2);
  auto* bits = reinterpret_cast<unsigned short*>(address);
  const unsigned short old =
      atomic_update(bits, [&](unsigned short current) { return bits_as<unsigned short>(op(bits_as<Half>(current))); });
  return bits_as<Half>(old);
}
template <typename Pair, typename Op>
Pair atomic_update_32(Pair* address, Op op) {
  static_assert(sizeof(Pair) == 4);
  auto* bits = reinterpret_cast<unsigned*>(address);
  const unsigned old =
      atomic_update(bits, [&](unsigned current) { return bits_as<unsigned>(op(bits_as<Pair>(current))); });
  return bits_as<Pair>(old);
}
}  // namespace minitron::emu::detail

template <typename T>
requires(std::is_integral_v<T> || std::is_floating_point_v<T>) T atomicAdd(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* address, __nv_bfloat16 value) {
  return ::minitron::emu::detail::atomic_update_16(
      address, [&](__nv_bfloat16 x) { return __float2bfloat16_rn(__bfloat162float(x) + __bfloat162float(value)); });
}
inline __half atomicAdd(__half* address, __half value) {
  return ::minitron::emu::detail::atomic_update_16(
      address, [&](__half x) { return __float2half_rn(__half2float(x) + __half2float(value)); });
}
inline __nv_bfloat162 atomicAdd(__nv_bfloat162* address, __nv_bfloat162 value) {
  return ::minitron::emu::detail::atomic_update_32(address, [&](__nv_bfloat162 x) {
    return __floats2bfloat162_rn(__low2float(x) + __low2float(value), __high2float(x) + __high2float(value));
  });
}
template <typename T>
requires std::is_integral_v<T> T atomicSub(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).fetch_sub(value, std::memory_order_relaxed);
}
template <typename T>
requires(std::is_integral_v<T> || std::is_floating_point_v<T>) T atomicMax(T* address, std::type_identity_t<T> value) {
  return ::minitron::emu::detail::atomic_update(address, [&](T x) { return x < value ? value : x; });
}
template <typename T>
requires(std::is_integral_v<T> || std::is_floating_point_v<T>) T atomicMin(T* address, std::type_identity_t<T> value) {
  return ::minitron::emu::detail::atomic_update(address, [&](T x) { return value < x ? value : x; });
}
template <typename T>
requires std::is_integral_v<T> T atomicAnd(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).fetch_and(value, std::memory_order_relaxed);
}
template <typename T>
requires std::is_integral_v<T> T atomicOr(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).fetch_or(value, std::memory_order_relaxed);
}
template <typename T>
requires std::is_integral_v<T> T atomicXor(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).fetch_xor(value, std::memory_order_relaxed);
}
template <typename T>
requires(std::is_integral_v<T> || std::is_floating_point_v<T>) T atomicExch(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).exchange(value, std::memory_order_relaxed);
}
template <typename T>
requires std::is_integral_v<T> T atomicCAS(T* address, std::type_identity_t<T> compare, std::type_identity_t<T> value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value, std::memory_order_relaxed);
  return compare;  // holds the old value either way
}
inline unsigned atomicInc(unsigned* address, unsigned limit) {
  return ::minitron::emu::detail::atomic_update(address, [&](unsigned x) { return x >= limit ? 0u : x + 1; });
}
inline unsigned atomicDec(unsigned* address, unsigned limit) {
  return ::minitron::emu::detail::atomic_update(address,
                                                [&](unsigned x) { return (x == 0 || x > limit) ? limit : x - 1; });
}

// ------------------------------------------------------------------------------------------------
// Float intrinsics. The fast-math ones (__expf, __fdividef, ...) are the accurate host functions:
// tolerances in tests must cover the GPU's approximations, not the other way round.
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline void __sincosf(float x, float* s, float* c) {
  *s = std::sin(x);
  *c = std::cos(x);
}
inline void sincosf(float x, float* s, float* c) {
  *s = std::sin(x);
  *c = std::cos(x);
}
// sin(pi x) and cos(pi x) as CUDA defines them: exact zeros and ones at multiples of 1/2 (x - n/2
// is exact in float, so only the remainder in [-1/4, 1/4] goes through the host's sin and cos, in
// double), for any float x.
inline void sincospif(float x, float* s, float* c) {
  if (!std::isfinite(x)) {
    *s = *c = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  const float quarter_turns = std::nearbyint(2.0f * x);  // 2x is exact
  const double r = static_cast<double>(x - 0.5f * quarter_turns) * 3.14159265358979323846;
  const double sr = std::sin(r), cr = std::cos(r);
  // x = r/pi + quadrant/2 (mod 2): rotate (cos r, sin r) by quadrant quarter turns.
  const int quadrant = static_cast<int>(std::fmod(quarter_turns, 4.0f) + 4.0f) % 4;
  const double sin_values[4] = {sr, cr, -sr, -cr};
  const double cos_values[4] = {cr, -sr, -cr, sr};
  *s = static_cast<float>(sin_values[quadrant]);
  *c = static_cast<float>(cos_values[quadrant]);
}
inline float sinpif(float x) {
  float s, c;
  sincospif(x, &s, &c);
  return s;
}
inline float cospif(float x) {
  float s, c;
  sincospif(x, &s, &c);
  return c;
}
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float fdividef(float x, float y) { return x / y; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
inline unsigned __float2uint_rz(float x) { return static_cast<unsigned>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }

// Integer intrinsics.
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned>(x)) + 1; }
inline int __ffsll(long long x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(x)) + 1; }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
  return (x >> 16) | (x << 16);
}
inline int __mul24(int x, int y) { return (x << 8 >> 8) * (y << 8 >> 8); }
inline unsigned __umul24(unsigned x, unsigned y) { return (x & 0xFFFFFFu) * (y & 0xFFFFFFu); }
inline int __mulhi(int x, int y) { return static_cast<int>((static_cast<long long>(x) * y) >> 32); }
inline unsigned __umulhi(unsigned x, unsigned y) {
  return static_cast<unsigned>((static_cast<unsigned long long>(x) * y) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long x, unsigned long long y) {
  __extension__ using wide = unsigned __int128;
  return static_cast<unsigned long long>((static_cast<wide>(x) * y) >> 64);
}
inline void __nanosleep(unsigned) {}

// Device min/max are overloaded for the arithmetic types (host C++ only has std::min/max).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a < b ? b : a; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a < b ? b : a; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a < b ? b : a; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// ------------------------------------------------------------------------------------------------
// bf16 / fp16 functions that cuda_bf16.h and cuda_fp16.h only give the device compiler. Each
// computes in fp32 and rounds once (round to nearest even), as the hardware's fused operations do.
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __float2bfloat16_rn(std::fma(__bfloat162float(a), __bfloat162float(b), __bfloat162float(c)));
}
inline __half __hfma(__half a, __half b, __half c) {
  return __float2half_rn(std::fma(__half2float(a), __half2float(b), __half2float(c)));
}
inline __nv_bfloat16 __hfma_relu(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  const float r = std::fma(__bfloat162float(a), __bfloat162float(b), __bfloat162float(c));
  return __float2bfloat16_rn(r < 0.0f ? 0.0f : r);
}
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
  return __halves2bfloat162(__hfma(__low2bfloat16(a), __low2bfloat16(b), __low2bfloat16(c)),
                            __hfma(__high2bfloat16(a), __high2bfloat16(b), __high2bfloat16(c)));
}
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  return __halves2half2(__hfma(__low2half(a), __low2half(b), __low2half(c)),
                        __hfma(__high2half(a), __high2half(b), __high2half(c)));
}
#define MINITRON_EMU_BF16_UNARY(name, expression)                                 \
  inline __nv_bfloat16 name(__nv_bfloat16 a) {                                    \
    const float x = __bfloat162float(a);                                          \
    return __float2bfloat16_rn(expression);                                       \
  }                                                                               \
  inline __half name(__half a) {                                                  \
    const float x = __half2float(a);                                              \
    return __float2half_rn(expression);                                           \
  }                                                                               \
  inline __nv_bfloat162 h2##name(__nv_bfloat162 a) {                              \
    return __halves2bfloat162(name(__low2bfloat16(a)), name(__high2bfloat16(a))); \
  }                                                                               \
  inline __half2 h2##name(__half2 a) { return __halves2half2(name(__low2half(a)), name(__high2half(a))); }
MINITRON_EMU_BF16_UNARY(hexp, std::exp(x))
MINITRON_EMU_BF16_UNARY(hexp2, std::exp2(x))
MINITRON_EMU_BF16_UNARY(hlog, std::log(x))
MINITRON_EMU_BF16_UNARY(hlog2, std::log2(x))
MINITRON_EMU_BF16_UNARY(hsqrt, std::sqrt(x))
MINITRON_EMU_BF16_UNARY(hrsqrt, 1.0f / std::sqrt(x))
MINITRON_EMU_BF16_UNARY(hrcp, 1.0f / x)
MINITRON_EMU_BF16_UNARY(hsin, std::sin(x))
MINITRON_EMU_BF16_UNARY(hcos, std::cos(x))
MINITRON_EMU_BF16_UNARY(hceil, std::ceil(x))
MINITRON_EMU_BF16_UNARY(hfloor, std::floor(x))
MINITRON_EMU_BF16_UNARY(htrunc, std::trunc(x))
MINITRON_EMU_BF16_UNARY(hrint, std::nearbyint(x))
MINITRON_EMU_BF16_UNARY(htanh, std::tanh(x))
#undef MINITRON_EMU_BF16_UNARY
inline int __bfloat162int_rn(__nv_bfloat16 a) { return static_cast<int>(std::nearbyint(__bfloat162float(a))); }
inline int __half2int_rn(__half a) { return static_cast<int>(std::nearbyint(__half2float(a))); }

// ------------------------------------------------------------------------------------------------
// Read-only and cache-hint loads and stores: plain memory accesses on the host.
template <typename T>
T __ldg(const T* address) {
  return *address;
}
template <typename T>
T __ldca(const T* address) {
  return *address;
}
template <typename T>
T __ldcg(const T* address) {
  return *address;
}
template <typename T>
T __ldcs(const T* address) {
  return *address;
}
template <typename T>
T __ldlu(const T* address) {
  return *address;
}
template <typename T>
T __ldcv(const T* address) {
  return *address;
}
template <typename T>
void __stwb(T* address, T value) {
  *address = value;
}
template <typename T>
void __stcg(T* address, T value) {
  *address = value;
}
template <typename T>
void __stcs(T* address, T value) {
  *address = value;
}
template <typename T>
void __stwt(T* address, T value) {
  *address = value;
}

// ------------------------------------------------------------------------------------------------
// Runtime API templates that cuda_runtime.h declares only for nvcc.
template <typename... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attribute, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attribute, value);
}
template <typename... Params>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, void (*kernel)(Params...)) {
  return ::cudaFuncGetAttributes(attributes, reinterpret_cast<const void*>(kernel));
}
