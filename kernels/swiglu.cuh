// SwiGLU gating h = silu(gate) * up, elementwise, forward and backward, fp32 arithmetic.
//
// Memory bound: grid-stride loops; the sigmoid uses expf (accurate) rather than __expf so the
// bf16 result is the correctly rounded one in nearly every case.
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"

namespace minitron::cuda {

// ---- kernels ----

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T>
__global__ void swiglu_forward_kernel(T* h, const T* gate, const T* up, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(gate[i]);
    h[i] = from_float<T>(g * sigmoid(g) * to_float(up[i]));
  }
}

// dgate = dh * up * s * (1 + g * (1 - s)), dup = dh * g * s, with s = sigmoid(g).
template <typename T>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dh, const T* gate, const T* up,
                                       std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(gate[i]), s = sigmoid(g), d = to_float(dh[i]);
    dgate[i] = from_float<T>(d * to_float(up[i]) * s * (1.0f + g * (1.0f - s)));
    dup[i] = from_float<T>(d * g * s);
  }
}

// ---- launchers ----

constexpr int kSwigluThreads = 256;

template <typename T>
void swiglu_forward(T* h, const T* gate, const T* up, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  launch(swiglu_forward_kernel<T>, dim3(grid_for(n, kSwigluThreads)), dim3(kSwigluThreads), 0,
         stream, h, gate, up, n);
}

template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dh, const T* gate, const T* up, std::int64_t n,
                     cudaStream_t stream) {
  if (n <= 0) return;
  launch(swiglu_backward_kernel<T>, dim3(grid_for(n, kSwigluThreads)), dim3(kSwigluThreads), 0,
         stream, dgate, dup, dh, gate, up, n);
}

}  // namespace minitron::cuda
