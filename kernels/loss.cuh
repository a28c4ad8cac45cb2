// Per-row losses over one chunk of logits [rows, V]: cross-entropy and the forward KL
// divergence of distillation, with their gradients written in place into the logits.
//
// The model computes logits chunk by chunk (GEMM into a [rows, V] buffer), so tokens x vocab
// never exists in full. One block per row: V is 32k-131k, far more than a warp should walk.
// Pass 1 keeps an online (max, sum of exp) pair per thread (one read of the row, no overflow),
// combined across the block in a fixed order; pass 2 writes the gradient. All in fp32; the
// block reductions have a fixed shape, so results are deterministic.
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"

namespace minitron::cuda {

// ---- kernels ----

// Adds exp(x - m) to the running (m, s) pair, moving m up when x exceeds it.
__device__ __forceinline__ void online_add(float& m, float& s, float x) {
  if (x > m) {
    s = s * expf(m - x) + 1.0f;
    m = x;
  } else {
    s += expf(x - m);
  }
}

// Combines every thread's (m, s) into the row's log-sum-exp; every thread gets it.
__device__ __forceinline__ float block_log_sum_exp(float m, float s, float* scratch) {
  const float row_max = block_max(m, scratch);
  const float scaled = m == -INFINITY ? 0.0f : s * expf(m - row_max);
  return row_max + logf(block_sum(scaled, scratch));
}

// losses[r] = lse(logits[r]) - logits[r, target]; target < 0 ignores the row (loss 0, gradient
// 0); a target >= V cannot throw on the device and gives a NaN loss (the backend's callers pass
// targets checked on the host). With grad_scale != 0 the row becomes grad_scale * (softmax -
// onehot).
template <typename T>
__global__ void cross_entropy_kernel(float* losses, T* logits, const std::int32_t* targets,
                                     std::int64_t V, float grad_scale) {
  __shared__ float scratch[kWarpSize];
  const std::int64_t r = blockIdx.x;
  T* x = logits + r * V;
  const std::int32_t target = targets[r];
  if (target < 0 || target >= V) {
    if (threadIdx.x == 0) losses[r] = target < 0 ? 0.0f : NAN;
    if (grad_scale != 0.0f)
      for (std::int64_t i = threadIdx.x; i < V; i += blockDim.x) x[i] = from_float<T>(0.0f);
    return;
  }
  // Read before any thread overwrites the row (the reductions below contain barriers).
  const float x_target = to_float(x[target]);
  float m = -INFINITY, s = 0.0f;
  for (std::int64_t i = threadIdx.x; i < V; i += blockDim.x) online_add(m, s, to_float(x[i]));
  const float lse = block_log_sum_exp(m, s, scratch);
  if (threadIdx.x == 0) losses[r] = lse - x_target;
  if (grad_scale != 0.0f) {
    for (std::int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      float g = grad_scale * expf(to_float(x[i]) - lse);
      if (i == target) g -= grad_scale;
      x[i] = from_float<T>(g);
    }
  }
}

// losses[r] = sum_v p_t (log p_t - log p_s), p = softmax(logits / tau), 0 log 0 = 0; with
// grad_scale != 0, student[r] <- grad_scale * (p_s - p_t) / tau.
template <typename T>
__global__ void kl_divergence_kernel(float* losses, T* student, const T* teacher, std::int64_t V,
                                     float inv_tau, float grad_scale) {
  __shared__ float scratch[kWarpSize];
  const std::int64_t r = blockIdx.x;
  T* s_row = student + r * V;
  const T* t_row = teacher + r * V;
  float ms = -INFINITY, ss = 0.0f, mt = -INFINITY, st = 0.0f;
  for (std::int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    online_add(ms, ss, to_float(s_row[i]) * inv_tau);
    online_add(mt, st, to_float(t_row[i]) * inv_tau);
  }
  const float lse_s = block_log_sum_exp(ms, ss, scratch);
  const float lse_t = block_log_sum_exp(mt, st, scratch);
  float loss = 0.0f;
  for (std::int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float log_ps = to_float(s_row[i]) * inv_tau - lse_s;
    const float log_pt = to_float(t_row[i]) * inv_tau - lse_t;
    const float pt = expf(log_pt);
    if (pt > 0.0f) loss += pt * (log_pt - log_ps);
    if (grad_scale != 0.0f) s_row[i] = from_float<T>(grad_scale * (expf(log_ps) - pt) * inv_tau);
  }
  loss = block_sum(loss, scratch);
  if (threadIdx.x == 0) losses[r] = loss;
}

// ---- launchers ----

constexpr int kLossThreads = 512;

template <typename T>
void cross_entropy(float* losses, T* logits, const std::int32_t* targets, std::int64_t rows,
                   std::int64_t V, float grad_scale, cudaStream_t stream) {
  if (rows <= 0) return;
  launch(cross_entropy_kernel<T>, dim3(static_cast<unsigned>(rows)), dim3(kLossThreads), 0, stream,
         losses, logits, targets, V, grad_scale);
}

template <typename T>
void kl_divergence(float* losses, T* student, const T* teacher, std::int64_t rows, std::int64_t V,
                   float temperature, float grad_scale, cudaStream_t stream) {
  MINITRON_ASSERT(temperature > 0, "kl_divergence: temperature ", temperature, " must be > 0");
  if (rows <= 0) return;
  launch(kl_divergence_kernel<T>, dim3(static_cast<unsigned>(rows)), dim3(kLossThreads), 0,
         stream, losses, student, teacher, V, 1.0f / temperature, grad_scale);
}

}  // namespace minitron::cuda
