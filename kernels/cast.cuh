// Elementwise kernels: dtype casts (fp32 <-> bf16), in-place add and scale.
//
// Grid-stride loops, so one launch shape serves any n; each element is read and written by one
// thread, so the results do not depend on the launch shape.
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"

namespace minitron::cuda {

// ---- kernels ----

template <typename To, typename From>
__global__ void cast_kernel(To* dst, const From* src, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_float<To>(to_float(src[i]));
}

// dst += src, rounded once into dst's type.
template <typename D, typename S>
__global__ void add_inplace_kernel(D* dst, const S* src, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_float<D>(to_float(dst[i]) + to_float(src[i]));
}

template <typename T>
__global__ void scale_inplace_kernel(T* t, float factor, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    t[i] = from_float<T>(to_float(t[i]) * factor);
}

// ---- launchers ----

constexpr int kElementwiseThreads = 256;

template <typename To, typename From>
void cast(To* dst, const From* src, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  launch(cast_kernel<To, From>, dim3(grid_for(n, kElementwiseThreads)), dim3(kElementwiseThreads),
         0, stream, dst, src, n);
}

template <typename D, typename S>
void add_inplace(D* dst, const S* src, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  launch(add_inplace_kernel<D, S>, dim3(grid_for(n, kElementwiseThreads)),
         dim3(kElementwiseThreads), 0, stream, dst, src, n);
}

template <typename T>
void scale_inplace(T* t, float factor, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  launch(scale_inplace_kernel<T>, dim3(grid_for(n, kElementwiseThreads)),
         dim3(kElementwiseThreads), 0, stream, t, factor, n);
}

}  // namespace minitron::cuda
