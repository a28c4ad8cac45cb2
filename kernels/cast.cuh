// Elementwise kernels: dtype casts (fp32 <-> bf16), in-place add and scale.
//
// Grid-stride loops, so one launch shape serves any n; each element is read and written by one
// thread, so the results do not depend on the launch shape. When every pointer is 16-byte
// aligned the loops move whole 16-byte packs (kernels/packed.cuh) and finish the tail element
// by element; otherwise they go element by element throughout.
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/packed.cuh"

namespace minitron::cuda {

// ---- kernels ----

template <typename To, typename From, bool kVector>
__global__ void cast_kernel(To* dst, const From* src, std::int64_t n) {
  const std::int64_t start = grid_start(), stride = grid_stride();
  std::int64_t done = 0;
  if constexpr (kVector) {
    constexpr int K = pack_elements<To, From>();
    const std::int64_t packs = n / K;
    for (std::int64_t p = start; p < packs; p += stride) {
      float v[K];
      load_floats(v, src + p * K);
      store_floats(dst + p * K, v);
    }
    done = packs * K;
  }
  for (std::int64_t i = done + start; i < n; i += stride) dst[i] = from_float<To>(to_float(src[i]));
}

// dst += src, rounded once into dst's type.
template <typename D, typename S, bool kVector>
__global__ void add_inplace_kernel(D* dst, const S* src, std::int64_t n) {
  const std::int64_t start = grid_start(), stride = grid_stride();
  std::int64_t done = 0;
  if constexpr (kVector) {
    constexpr int K = pack_elements<D, S>();
    const std::int64_t packs = n / K;
    for (std::int64_t p = start; p < packs; p += stride) {
      float a[K], b[K];
      load_floats(a, dst + p * K);
      load_floats(b, src + p * K);
#pragma unroll
      for (int e = 0; e < K; ++e) a[e] += b[e];
      store_floats(dst + p * K, a);
    }
    done = packs * K;
  }
  for (std::int64_t i = done + start; i < n; i += stride)
    dst[i] = from_float<D>(to_float(dst[i]) + to_float(src[i]));
}

template <typename T, bool kVector>
__global__ void scale_inplace_kernel(T* t, float factor, std::int64_t n) {
  const std::int64_t start = grid_start(), stride = grid_stride();
  std::int64_t done = 0;
  if constexpr (kVector) {
    constexpr int K = pack_elements<T>();
    const std::int64_t packs = n / K;
    for (std::int64_t p = start; p < packs; p += stride) {
      float a[K];
      load_floats(a, t + p * K);
#pragma unroll
      for (int e = 0; e < K; ++e) a[e] *= factor;
      store_floats(t + p * K, a);
    }
    done = packs * K;
  }
  for (std::int64_t i = done + start; i < n; i += stride)
    t[i] = from_float<T>(to_float(t[i]) * factor);
}

// ---- launchers ----

constexpr int kElementwiseThreads = 256;

template <typename To, typename From>
void cast(To* dst, const From* src, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  if (aligned16(dst) && aligned16(src))
    launch(cast_kernel<To, From, true>,
           dim3(grid_for(ceil_div(n, pack_elements<To, From>()), kElementwiseThreads)),
           dim3(kElementwiseThreads), 0, stream, dst, src, n);
  else
    launch(cast_kernel<To, From, false>, dim3(grid_for(n, kElementwiseThreads)),
           dim3(kElementwiseThreads), 0, stream, dst, src, n);
}

template <typename D, typename S>
void add_inplace(D* dst, const S* src, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  if (aligned16(dst) && aligned16(src))
    launch(add_inplace_kernel<D, S, true>,
           dim3(grid_for(ceil_div(n, pack_elements<D, S>()), kElementwiseThreads)),
           dim3(kElementwiseThreads), 0, stream, dst, src, n);
  else
    launch(add_inplace_kernel<D, S, false>, dim3(grid_for(n, kElementwiseThreads)),
           dim3(kElementwiseThreads), 0, stream, dst, src, n);
}

template <typename T>
void scale_inplace(T* t, float factor, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  if (aligned16(t))
    launch(scale_inplace_kernel<T, true>,
           dim3(grid_for(ceil_div(n, pack_elements<T>()), kElementwiseThreads)),
           dim3(kElementwiseThreads), 0, stream, t, factor, n);
  else
    launch(scale_inplace_kernel<T, false>, dim3(grid_for(n, kElementwiseThreads)),
           dim3(kElementwiseThreads), 0, stream, t, factor, n);
}

}  // namespace minitron::cuda
