// Per-row losses over one chunk of logits [rows, V]: cross-entropy and the forward KL
// divergence of distillation, with their gradients written in place into the logits.
//
// The model computes logits chunk by chunk (GEMM into a [rows, V] buffer), so tokens x vocab
// never exists in full. One block per row: V is 32k-131k, far more than a warp should walk.
// Pass 1 keeps an online (max, sum of exp) pair per thread (one read of the row, no overflow),
// combined across the block in a fixed order; pass 2 writes the gradient. All in fp32; the
// block reductions have a fixed shape, so results are deterministic.
// Cross-entropy keeps the row in shared memory between its passes, as much of it as the device
// lets a block hold (the rest is read again from global memory), and reads the row's target
// and target logit once per block: a bf16 row of Llama 3's 128256 logits is 250.5 KiB, of which
// sm_90's 227 KiB per block hold 90%, so the kernel moves 1.05x its distinct bytes there (fp32
// logits: 1.27x); rows that fit whole move 1.0x. A row split over several blocks would need
// every block's partial (max, sum) before any block could write its gradient: without a grid or
// cluster barrier (not emulated) that is a second kernel reading the row again, 1.5x.
// The KL keeps its loss online in one pass (the loss alone reads each row once) and, for the
// gradient, as much of both rows as half that budget holds each (kl_divergence_kept): rows up
// to 57856 bf16 logits whole on sm_90 (1.0x); Llama 3's two rows, 501 KiB, 1.37x there.
// Rows move as 16-byte packs (kernels/packed.cuh) whatever V and the row's start: each row is
// split into a scalar head up to its first 16-byte boundary, whole packs, and a scalar tail
// (the KL's two rows share the split when they start at the same address modulo 16, else the
// row goes element by element). Where a row starts decides which thread sums which element, so
// the fp32 sums of one row may differ in the last bits between placements; each is as accurate.
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/packed.cuh"

namespace minitron::cuda {

// ---- kernels ----

// Adds exp(x - m) to the running (m, s) pair, moving m up when x exceeds it.
__device__ __forceinline__ void online_add(float& m, float& s, float x) {
  if (x > m) {
    s = s * expf(m - x) + 1.0f;
    m = x;
  } else if (x != -INFINITY) {  // a masked logit adds 0, and exp(-inf - -inf) would be NaN
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
// onehot). The first `kept` slots of the row (RowCopy) stay in dynamic shared memory between
// the passes.
template <typename T>
__global__ void cross_entropy_kernel(float* losses, T* logits, const std::int32_t* targets,
                                     std::int64_t V, float grad_scale, std::int64_t kept) {
  constexpr int K = Packed128<T>::kSize;
  __shared__ float scratch[kWarpSize];
  __shared__ std::int32_t target_shared;
  __shared__ float target_logit;
  MINITRON_DYNAMIC_SHARED(T, row_cache);
  const std::int64_t r = blockIdx.x;
  T* x = logits + r * V;
  if (threadIdx.x == 0) target_shared = targets[r];  // one read per row, not one per thread
  __syncthreads();
  const std::int32_t target = target_shared;
  const RowSplit split = split_row16(x, V);
  const std::int64_t scalars = split_scalars(split, V);
  const std::int64_t first_pack = split.head + threadIdx.x * static_cast<std::int64_t>(K);
  const std::int64_t pack_stride = static_cast<std::int64_t>(blockDim.x) * K;
  if (target < 0 || target >= V) {
    if (threadIdx.x == 0) losses[r] = target < 0 ? 0.0f : NAN;
    if (grad_scale != 0.0f) {
      for (std::int64_t i = first_pack; i < split.body_end; i += pack_stride) {
        const float zero[K] = {};
        store_floats(x + i, zero);
      }
      for (std::int64_t j = threadIdx.x; j < scalars; j += blockDim.x)
        x[split_scalar_index(split, j)] = from_float<T>(0.0f);
    }
    return;
  }
  // Read before any thread overwrites the row (the reductions below contain barriers).
  if (threadIdx.x == 0) target_logit = to_float(x[target]);
  const RowCopy<T> copy{kept > 0 ? row_cache : nullptr, split.head, V, kept};
  float m = -INFINITY, s = 0.0f;
  for (std::int64_t i = first_pack; i < split.body_end; i += pack_stride) {
    float v[K];
    load_floats(v, x + i);
    copy.keep(i, v);
#pragma unroll
    for (int e = 0; e < K; ++e) online_add(m, s, v[e]);
  }
  for (std::int64_t j = threadIdx.x; j < scalars; j += blockDim.x) {
    const std::int64_t i = split_scalar_index(split, j);
    const float v[1] = {to_float(x[i])};
    copy.keep(i, v);
    online_add(m, s, v[0]);
  }
  const float lse = block_log_sum_exp(m, s, scratch);
  if (threadIdx.x == 0) losses[r] = lse - target_logit;
  if (grad_scale != 0.0f) {
    for (std::int64_t i = first_pack; i < split.body_end; i += pack_stride) {
      float v[K];
      load_floats(v, copy.at(x, i));
#pragma unroll
      for (int e = 0; e < K; ++e) {
        v[e] = grad_scale * expf(v[e] - lse);
        if (i + e == target) v[e] -= grad_scale;
      }
      store_floats(x + i, v);
    }
    for (std::int64_t j = threadIdx.x; j < scalars; j += blockDim.x) {
      const std::int64_t i = split_scalar_index(split, j);
      float g = grad_scale * expf(to_float(*copy.at(x, i)) - lse);
      if (i == target) g -= grad_scale;
      x[i] = from_float<T>(g);
    }
  }
}

// As online_add, also adding exp(x - m) * y to a: a sum weighted as the pair's terms, rescaled
// with them, so that a / s is the mean of y under softmax(x) when the row is done.
__device__ __forceinline__ void online_add_weighted(float& m, float& s, float& a, float x,
                                                    float y) {
  if (x > m) {
    const float c = expf(m - x);
    s = s * c + 1.0f;
    a = a * c + y;
    m = x;
  } else if (x != -INFINITY) {  // a masked logit adds nothing (its y may be NaN or infinite)
    const float e = expf(x - m);
    s += e;
    a += e * y;
  }
}

// losses[r] = sum_v p_t (log p_t - log p_s), p = softmax(logits / tau), 0 log 0 = 0; with
// grad_scale != 0, student[r] <- grad_scale * (p_s - p_t) / tau.
// The loss is kept online in the one pass over both rows: with t' = t / tau, s' = s / tau, it is
// E_pt[t' - s'] - (lse_t - lse_s), and E_pt[t' - s'] is the teacher's weighted sum a / s. Rows
// that agree exactly give a = 0 and the same two log-sum-exps (the same operations on the same
// values), so a loss of exactly 0. The gradient needs both log-sum-exps, so a second pass; the
// first `kept` slots of each row (RowCopy) stay in dynamic shared memory for it, the student's
// then the teacher's, each on a 16-byte boundary.
template <typename T>
__global__ void kl_divergence_kernel(float* losses, T* student, const T* teacher, std::int64_t V,
                                     float inv_tau, float grad_scale, std::int64_t kept) {
  constexpr int K = Packed128<T>::kSize;
  __shared__ float scratch[kWarpSize];
  MINITRON_DYNAMIC_SHARED(T, row_cache);
  const std::int64_t r = blockIdx.x;
  T* s_row = student + r * V;
  const T* t_row = teacher + r * V;
  const RowSplit split = same_phase16(s_row, t_row) ? split_row16(s_row, V) : RowSplit{0, 0};
  const std::int64_t scalars = split_scalars(split, V);
  const std::int64_t first_pack = split.head + threadIdx.x * static_cast<std::int64_t>(K);
  const std::int64_t pack_stride = static_cast<std::int64_t>(blockDim.x) * K;
  const std::int64_t teacher_slots = (kept + K - 1) / K * K;
  const RowCopy<T> s_copy{kept > 0 ? row_cache : nullptr, split.head, V, kept};
  const RowCopy<T> t_copy{kept > 0 ? row_cache + teacher_slots : nullptr, split.head, V, kept};
  float ms = -INFINITY, ss = 0.0f, mt = -INFINITY, st = 0.0f, at = 0.0f;
  for (std::int64_t i = first_pack; i < split.body_end; i += pack_stride) {
    float a[K], b[K];
    load_floats(a, s_row + i);
    load_floats(b, t_row + i);
    s_copy.keep(i, a);
    t_copy.keep(i, b);
#pragma unroll
    for (int e = 0; e < K; ++e) {
      const float xs = a[e] * inv_tau, xt = b[e] * inv_tau;
      online_add(ms, ss, xs);
      online_add_weighted(mt, st, at, xt, xt - xs);
    }
  }
  for (std::int64_t j = threadIdx.x; j < scalars; j += blockDim.x) {
    const std::int64_t i = split_scalar_index(split, j);
    const float a[1] = {to_float(s_row[i])}, b[1] = {to_float(t_row[i])};
    s_copy.keep(i, a);
    t_copy.keep(i, b);
    const float xs = a[0] * inv_tau, xt = b[0] * inv_tau;
    online_add(ms, ss, xs);
    online_add_weighted(mt, st, at, xt, xt - xs);
  }
  const float lse_s = block_log_sum_exp(ms, ss, scratch);
  // block_log_sum_exp's steps for the teacher, with its weighted sum rescaled as its terms.
  const float mt_row = block_max(mt, scratch);
  const float wt = mt == -INFINITY ? 0.0f : expf(mt - mt_row);
  const float st_row = block_sum(st * wt, scratch);
  const float at_row = block_sum(at * wt, scratch);
  const float lse_t = mt_row + logf(st_row);
  if (threadIdx.x == 0) losses[r] = at_row / st_row - (lse_t - lse_s);
  if (grad_scale == 0.0f) return;
  for (std::int64_t i = first_pack; i < split.body_end; i += pack_stride) {
    float a[K], b[K];
    load_floats(a, s_copy.at(s_row, i));
    load_floats(b, t_copy.at(t_row, i));
#pragma unroll
    for (int e = 0; e < K; ++e)
      a[e] = grad_scale * (expf(a[e] * inv_tau - lse_s) - expf(b[e] * inv_tau - lse_t)) * inv_tau;
    store_floats(s_row + i, a);
  }
  for (std::int64_t j = threadIdx.x; j < scalars; j += blockDim.x) {
    const std::int64_t i = split_scalar_index(split, j);
    const float a = to_float(*s_copy.at(s_row, i)), b = to_float(*t_copy.at(t_row, i));
    s_row[i] = from_float<T>(grad_scale * (expf(a * inv_tau - lse_s) - expf(b * inv_tau - lse_t)) *
                             inv_tau);
  }
}

// ---- launchers ----

constexpr int kLossThreads = 512;

// Dynamic shared memory a block may take beside the kernels' static arrays (a few hundred
// bytes; one KiB is set aside for them).
constexpr std::int64_t kLossStaticSharedReserve = 1024;

// Bytes of dynamic shared memory one block may take on the current device (its opt-in maximum
// less the static reserve).
inline std::int64_t loss_shared_budget() {
  int device = 0, optin = 0;
  MINITRON_CUDA_CHECK(cudaGetDevice(&device));
  MINITRON_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return optin - kLossStaticSharedReserve;
}

// How many slots of a row of V logits cross_entropy_kernel keeps in shared memory: the whole
// row when it fits in what the current device lets one block opt into, else as many whole
// packs as fit (none with grad_scale 0: there is no second pass).
template <typename T>
std::int64_t cross_entropy_kept(std::int64_t V, float grad_scale) {
  if (grad_scale == 0.0f) return 0;
  const std::int64_t fit = loss_shared_budget() / static_cast<std::int64_t>(sizeof(T));
  if (V <= fit) return V;
  constexpr std::int64_t K = Packed128<T>::kSize;
  return fit > 0 ? fit / K * K : 0;
}

// How many slots of each of its two rows kl_divergence_kernel keeps in shared memory: both whole
// rows when they fit (each copy starts on a 16-byte boundary), else as many whole packs of each
// as fit in half the budget (none with grad_scale 0: the loss alone is one pass). Llama 3's
// 128256 bf16 logits a row: 57856 slots of each on sm_90 (227 KiB), 1.37x the ideal bytes;
// 41472 on sm_80 (163 KiB), 1.45x; 25088 on sm_120 (99 KiB), 1.54x. Rows up to 57856 bf16
// logits (sm_90) stay whole: 1.0x.
template <typename T>
std::int64_t kl_divergence_kept(std::int64_t V, float grad_scale) {
  if (grad_scale == 0.0f) return 0;
  constexpr std::int64_t K = Packed128<T>::kSize;
  const std::int64_t fit =
      loss_shared_budget() / (2 * static_cast<std::int64_t>(sizeof(T))) / K * K;
  return (V + K - 1) / K * K <= fit ? V : fit;
}

template <typename T>
void cross_entropy(float* losses, T* logits, const std::int32_t* targets, std::int64_t rows,
                   std::int64_t V, float grad_scale, cudaStream_t stream) {
  if (rows <= 0) return;
  const std::int64_t kept = cross_entropy_kept<T>(V, grad_scale);
  const auto bytes =
      static_cast<std::size_t>((kept * static_cast<std::int64_t>(sizeof(T)) + 15) / 16 * 16);
  if (bytes > 48 * 1024)
    MINITRON_CUDA_CHECK(cudaFuncSetAttribute(cross_entropy_kernel<T>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(bytes)));
  launch(cross_entropy_kernel<T>, dim3(static_cast<unsigned>(rows)), dim3(kLossThreads), bytes,
         stream, losses, logits, targets, V, grad_scale, kept);
}

template <typename T>
void kl_divergence(float* losses, T* student, const T* teacher, std::int64_t rows, std::int64_t V,
                   float temperature, float grad_scale, cudaStream_t stream) {
  MINITRON_ASSERT(temperature > 0, "kl_divergence: temperature ", temperature, " must be > 0");
  if (rows <= 0) return;
  const std::int64_t kept = kl_divergence_kept<T>(V, grad_scale);
  constexpr std::int64_t K = Packed128<T>::kSize;
  const auto bytes =
      static_cast<std::size_t>(2 * ((kept + K - 1) / K * K) * static_cast<std::int64_t>(sizeof(T)));
  if (bytes > 48 * 1024)
    MINITRON_CUDA_CHECK(cudaFuncSetAttribute(kl_divergence_kernel<T>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(bytes)));
  launch(kl_divergence_kernel<T>, dim3(static_cast<unsigned>(rows)), dim3(kLossThreads), bytes,
         stream, losses, student, teacher, V, 1.0f / temperature, grad_scale, kept);
}

}  // namespace minitron::cuda
