// SwiGLU gating h = silu(gate) * up, elementwise, forward and backward, fp32 arithmetic.
//
// Memory bound: grid-stride loops over 16-byte packs (kernels/packed.cuh) when every pointer is
// 16-byte aligned, element by element otherwise; the sigmoid uses expf (accurate) rather than
// __expf so the bf16 result is the correctly rounded one in nearly every case.
//
// Element i of the n = rows x width elements is h[i] (dense) and gate/up at row i / width,
// column i % width, rows gate_up_stride apart: the fused gate|up projection read in place
// (dense tensors: width = stride = n). Packs stay within a row, since width and the stride are
// whole packs whenever the vector path runs.
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/packed.cuh"

namespace minitron::cuda {

// ---- kernels ----

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Where element i of the dense n lies in the strided gate and up.
__device__ __forceinline__ std::int64_t swiglu_strided(std::int64_t i, std::int64_t width,
                                                       std::int64_t gate_up_stride) {
  return i / width * gate_up_stride + i % width;
}

template <typename T, bool kVector>
__global__ void swiglu_forward_kernel(T* h, const T* gate, const T* up, std::int64_t n,
                                      std::int64_t width, std::int64_t gate_up_stride) {
  const std::int64_t start = grid_start(), stride = grid_stride();
  std::int64_t done = 0;
  if constexpr (kVector) {
    constexpr int K = pack_elements<T>();
    const std::int64_t packs = n / K;
    for (std::int64_t p = start; p < packs; p += stride) {
      const std::int64_t j = swiglu_strided(p * K, width, gate_up_stride);
      float g[K], u[K], o[K];
      load_floats(g, gate + j);
      load_floats(u, up + j);
#pragma unroll
      for (int e = 0; e < K; ++e) o[e] = g[e] * sigmoid(g[e]) * u[e];
      store_floats(h + p * K, o);
    }
    done = packs * K;
  }
  for (std::int64_t i = done + start; i < n; i += stride) {
    const std::int64_t j = swiglu_strided(i, width, gate_up_stride);
    const float g = to_float(gate[j]);
    h[i] = from_float<T>(g * sigmoid(g) * to_float(up[j]));
  }
}

// dgate = dh * up * s * (1 + g * (1 - s)), dup = dh * g * s, with s = sigmoid(g).
template <typename T, bool kVector>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dh, const T* gate, const T* up,
                                       std::int64_t n, std::int64_t width,
                                       std::int64_t gate_up_stride) {
  const std::int64_t start = grid_start(), stride = grid_stride();
  std::int64_t done = 0;
  if constexpr (kVector) {
    constexpr int K = pack_elements<T>();
    const std::int64_t packs = n / K;
    for (std::int64_t p = start; p < packs; p += stride) {
      const std::int64_t j = swiglu_strided(p * K, width, gate_up_stride);
      float g[K], u[K], d[K], dg[K], du[K];
      load_floats(g, gate + j);
      load_floats(u, up + j);
      load_floats(d, dh + p * K);
#pragma unroll
      for (int e = 0; e < K; ++e) {
        const float s = sigmoid(g[e]);
        dg[e] = d[e] * u[e] * s * (1.0f + g[e] * (1.0f - s));
        du[e] = d[e] * g[e] * s;
      }
      store_floats(dgate + j, dg);
      store_floats(dup + j, du);
    }
    done = packs * K;
  }
  for (std::int64_t i = done + start; i < n; i += stride) {
    const std::int64_t j = swiglu_strided(i, width, gate_up_stride);
    const float g = to_float(gate[j]), s = sigmoid(g), d = to_float(dh[i]);
    dgate[j] = from_float<T>(d * to_float(up[j]) * s * (1.0f + g * (1.0f - s)));
    dup[j] = from_float<T>(d * g * s);
  }
}

// ---- launchers ----

constexpr int kSwigluThreads = 256;

// Whether the 16-byte packs of the vector path stay whole and aligned: every pointer aligned
// and, when strided, rows of whole packs at a stride of whole packs.
template <typename T>
bool swiglu_packs(std::int64_t n, std::int64_t width, std::int64_t gate_up_stride) {
  constexpr std::int64_t K = pack_elements<T>();
  return width == n || (width % K == 0 && gate_up_stride % K == 0);
}

// gate and up at row stride gate_up_stride over rows of `width` (width 0: dense, one row of n).
template <typename T>
void swiglu_forward(T* h, const T* gate, const T* up, std::int64_t n, cudaStream_t stream,
                    std::int64_t width = 0, std::int64_t gate_up_stride = 0) {
  if (n <= 0) return;
  if (width == 0) width = gate_up_stride = n;
  if (aligned16(h) && aligned16(gate) && aligned16(up) && swiglu_packs<T>(n, width, gate_up_stride))
    launch(swiglu_forward_kernel<T, true>,
           dim3(grid_for(ceil_div(n, pack_elements<T>()), kSwigluThreads)), dim3(kSwigluThreads), 0,
           stream, h, gate, up, n, width, gate_up_stride);
  else
    launch(swiglu_forward_kernel<T, false>, dim3(grid_for(n, kSwigluThreads)), dim3(kSwigluThreads),
           0, stream, h, gate, up, n, width, gate_up_stride);
}

template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dh, const T* gate, const T* up, std::int64_t n,
                     cudaStream_t stream, std::int64_t width = 0, std::int64_t gate_up_stride = 0) {
  if (n <= 0) return;
  if (width == 0) width = gate_up_stride = n;
  if (aligned16(dgate) && aligned16(dup) && aligned16(dh) && aligned16(gate) && aligned16(up) &&
      swiglu_packs<T>(n, width, gate_up_stride))
    launch(swiglu_backward_kernel<T, true>,
           dim3(grid_for(ceil_div(n, pack_elements<T>()), kSwigluThreads)), dim3(kSwigluThreads), 0,
           stream, dgate, dup, dh, gate, up, n, width, gate_up_stride);
  else
    launch(swiglu_backward_kernel<T, false>, dim3(grid_for(n, kSwigluThreads)),
           dim3(kSwigluThreads), 0, stream, dgate, dup, dh, gate, up, n, width, gate_up_stride);
}

}  // namespace minitron::cuda
