// SwiGLU gating h = silu(gate) * up, elementwise, forward and backward, fp32 arithmetic.
//
// Memory bound: grid-stride loops over 16-byte packs (kernels/packed.cuh) when every pointer is
// 16-byte aligned, element by element otherwise; the sigmoid uses expf (accurate) rather than
// __expf so the bf16 result is the correctly rounded one in nearly every case.
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/packed.cuh"

namespace minitron::cuda {

// ---- kernels ----

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T, bool kVector>
__global__ void swiglu_forward_kernel(T* h, const T* gate, const T* up, std::int64_t n) {
  const std::int64_t start = grid_start(), stride = grid_stride();
  std::int64_t done = 0;
  if constexpr (kVector) {
    constexpr int K = pack_elements<T>();
    const std::int64_t packs = n / K;
    for (std::int64_t p = start; p < packs; p += stride) {
      float g[K], u[K], o[K];
      load_floats(g, gate + p * K);
      load_floats(u, up + p * K);
#pragma unroll
      for (int e = 0; e < K; ++e) o[e] = g[e] * sigmoid(g[e]) * u[e];
      store_floats(h + p * K, o);
    }
    done = packs * K;
  }
  for (std::int64_t i = done + start; i < n; i += stride) {
    const float g = to_float(gate[i]);
    h[i] = from_float<T>(g * sigmoid(g) * to_float(up[i]));
  }
}

// dgate = dh * up * s * (1 + g * (1 - s)), dup = dh * g * s, with s = sigmoid(g).
template <typename T, bool kVector>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dh, const T* gate, const T* up,
                                       std::int64_t n) {
  const std::int64_t start = grid_start(), stride = grid_stride();
  std::int64_t done = 0;
  if constexpr (kVector) {
    constexpr int K = pack_elements<T>();
    const std::int64_t packs = n / K;
    for (std::int64_t p = start; p < packs; p += stride) {
      float g[K], u[K], d[K], dg[K], du[K];
      load_floats(g, gate + p * K);
      load_floats(u, up + p * K);
      load_floats(d, dh + p * K);
#pragma unroll
      for (int e = 0; e < K; ++e) {
        const float s = sigmoid(g[e]);
        dg[e] = d[e] * u[e] * s * (1.0f + g[e] * (1.0f - s));
        du[e] = d[e] * g[e] * s;
      }
      store_floats(dgate + p * K, dg);
      store_floats(dup + p * K, du);
    }
    done = packs * K;
  }
  for (std::int64_t i = done + start; i < n; i += stride) {
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
  if (aligned16(h) && aligned16(gate) && aligned16(up))
    launch(swiglu_forward_kernel<T, true>,
           dim3(grid_for(ceil_div(n, pack_elements<T>()), kSwigluThreads)), dim3(kSwigluThreads), 0,
           stream, h, gate, up, n);
  else
    launch(swiglu_forward_kernel<T, false>, dim3(grid_for(n, kSwigluThreads)), dim3(kSwigluThreads),
           0, stream, h, gate, up, n);
}

template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dh, const T* gate, const T* up, std::int64_t n,
                     cudaStream_t stream) {
  if (n <= 0) return;
  if (aligned16(dgate) && aligned16(dup) && aligned16(dh) && aligned16(gate) && aligned16(up))
    launch(swiglu_backward_kernel<T, true>,
           dim3(grid_for(ceil_div(n, pack_elements<T>()), kSwigluThreads)), dim3(kSwigluThreads), 0,
           stream, dgate, dup, dh, gate, up, n);
  else
    launch(swiglu_backward_kernel<T, false>, dim3(grid_for(n, kSwigluThreads)),
           dim3(kSwigluThreads), 0, stream, dgate, dup, dh, gate, up, n);
}

}  // namespace minitron::cuda
