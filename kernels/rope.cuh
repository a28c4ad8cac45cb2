// Rotary position embedding (transformers' rotate-half convention), in place, forward and
// backward. Plain and llama3-scaled RoPE differ only in the inv_freq table the model passes.
//
// One thread per rotated pair (channel i and i + head_dim/2 of one head of one row). The angle
// is float(position) * inv_freq[i] in fp32, as transformers and kernels/rope.h compute it, so
// long positions lose the same bits; sincosf is the accurate version (no fast math), because
// angles reach a hundred thousand radians. sincosf would be exact too, but its slow path for
// large arguments (Payne-Hanek) needs a local-memory stack, which the build forbids; so the
// angle is reduced in double to [-pi, pi] (exactly enough: |angle| < 2^17) and sincospif, which
// needs no such path, finishes. The backward is the inverse rotation (angle negated).
// When head_dim / 2 is a multiple of a 16-byte pack and x and its rows are 16-byte aligned, a
// thread rotates K pairs at once: the pack at channel i and the pack at i + head_dim/2 (both
// aligned then); otherwise one pair per thread. Same results.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/packed.cuh"

namespace minitron::cuda {

// ---- kernels ----

// sin and cos of a float angle of any size used by RoPE (see above).
__device__ __forceinline__ void rope_sincos(float angle, float* s, float* c) {
  const double half_turns = static_cast<double>(angle) * 0.31830988618379067154;  // 1/pi
  const double reduced = half_turns - 2.0 * rint(half_turns * 0.5);               // in [-1, 1]
  sincospif(static_cast<float>(reduced), s, c);
}

// Rotates the pair (a, b) by the angle whose sine and cosine are s and c (s negated: the inverse
// rotation). Each output's second product is rounded and the first fused into the sum (fmaf),
// spelled out so that every kernel rotating pairs (this one, and attention's, which rotates Q as
// it loads it and dQ, dK as it stores them) gets the same bits whatever the compiler contracts.
__device__ __forceinline__ void rope_rotate_pair(float& a, float& b, float s, float c) {
  const float bs = b * s, as = a * s;
  const float a_new = fmaf(a, c, -bs);
  b = fmaf(b, c, as);
  a = a_new;
}

// The position of row `row` (0-based within its batch row) when attention applies RoPE (kernels/
// attention.cuh): positions[row] for packed documents (`positions` at the batch row's first
// token), the row itself otherwise (as rope_forward with position_offset 0).
__device__ __forceinline__ float rope_position(const std::int32_t* positions, int row) {
  return static_cast<float>(positions ? positions[row] : row);
}

// Rows per block step: their positions go into shared memory once, read by every pair.
constexpr int kRopeRowsPerStep = 8;

// With kVector a unit is a pack of K pairs (K divides half), otherwise a single pair. A block
// stages inv_freq (head_dim / 2 floats) in shared memory once, then walks steps of
// kRopeRowsPerStep rows (grid-stride), reading each row's position once into shared memory, so
// global traffic is x's bytes plus a float per channel pair per block and an int per row.
// Rows lie row_stride elements apart: the q and k heads of the fused q|k|v projection.
template <typename T, bool kVector>
__global__ void rope_kernel(T* x, const float* inv_freq, std::int64_t rows, std::int64_t T_,
                            std::int64_t heads, std::int64_t head_dim, std::int64_t row_stride,
                            std::int64_t position_offset, const std::int32_t* positions,
                            float direction) {
  constexpr int K = kVector ? pack_elements<T>() : 1;
  MINITRON_DYNAMIC_SHARED(float, frequencies);  // [head_dim / 2], then [kRopeRowsPerStep]
  float* step_positions = frequencies + head_dim / 2;
  const std::int64_t half = head_dim / 2;
  const std::int64_t groups = half / K;
  const std::int64_t units_per_row = heads * groups;
  for (std::int64_t i = threadIdx.x; i < half; i += blockDim.x) frequencies[i] = inv_freq[i];
  for (std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * kRopeRowsPerStep; row0 < rows;
       row0 += static_cast<std::int64_t>(gridDim.x) * kRopeRowsPerStep) {
    const std::int64_t step_rows = rows - row0 < kRopeRowsPerStep ? rows - row0 : kRopeRowsPerStep;
    __syncthreads();  // the previous step's positions are consumed (and the frequencies staged)
    if (threadIdx.x < step_rows) {
      const std::int64_t row = row0 + threadIdx.x;
      // Packed documents: the token's position inside its document (kernels/rope.h).
      step_positions[threadIdx.x] =
          static_cast<float>(positions ? positions[row] : position_offset + row % T_);
    }
    __syncthreads();
    for (std::int64_t u = threadIdx.x; u < step_rows * units_per_row; u += blockDim.x) {
      // i fastest, so a warp touches consecutive channels of one head.
      const std::int64_t i = (u % groups) * K;
      const std::int64_t h = (u / groups) % heads;
      const std::int64_t r = u / units_per_row;
      const float position = step_positions[r];
      T* x1 = x + (row0 + r) * row_stride + h * head_dim + i;
      T* x2 = x1 + half;
      if constexpr (kVector) {
        float a[K], b[K];
        load_floats(a, x1);
        load_floats(b, x2);
#pragma unroll
        for (int e = 0; e < K; ++e) {
          float sn, c;
          rope_sincos(position * frequencies[i + e], &sn, &c);
          rope_rotate_pair(a[e], b[e], sn * direction, c);
        }
        store_floats(x1, a);
        store_floats(x2, b);
      } else {
        float sn, c;
        rope_sincos(position * frequencies[i], &sn, &c);
        float a = to_float(*x1), b = to_float(*x2);
        rope_rotate_pair(a, b, sn * direction, c);
        *x1 = from_float<T>(a);
        *x2 = from_float<T>(b);
      }
    }
  }
}

// ---- launchers ----

constexpr int kRopeThreads = 256;

template <typename T>
void rope_rotate(T* x, const float* inv_freq, std::int64_t B, std::int64_t T_, std::int64_t heads,
                 std::int64_t head_dim, std::int64_t row_stride, std::int64_t position_offset,
                 const std::int32_t* positions, float direction, cudaStream_t stream) {
  MINITRON_ASSERT(head_dim % 2 == 0, "rope: head_dim ", head_dim, " must be even");
  if (row_stride == 0) row_stride = heads * head_dim;
  const std::int64_t rows = B * T_;
  if (rows <= 0 || heads <= 0 || head_dim <= 0) return;
  constexpr int K = pack_elements<T>();
  const std::size_t smem =
      static_cast<std::size_t>(head_dim / 2 + kRopeRowsPerStep) * sizeof(float);
  const dim3 grid(grid_for(rows, kRopeRowsPerStep));
  // Whole packs: every row's start (its stride) and each half-head on a 16-byte boundary.
  if ((head_dim / 2) % K == 0 && aligned16(x) && (row_stride * sizeof(T)) % 16 == 0)
    launch(rope_kernel<T, true>, grid, dim3(kRopeThreads), smem, stream, x, inv_freq, rows, T_,
           heads, head_dim, row_stride, position_offset, positions, direction);
  else
    launch(rope_kernel<T, false>, grid, dim3(kRopeThreads), smem, stream, x, inv_freq, rows, T_,
           heads, head_dim, row_stride, position_offset, positions, direction);
}

// x [B*T, heads*head_dim] rotated in place, rows row_stride apart (0: dense); inv_freq fp32
// [head_dim / 2]; positions (device int32 [B*T], packed documents) or null (row (b, t) at
// position_offset + t).
template <typename T>
void rope_forward(T* x, const float* inv_freq, std::int64_t B, std::int64_t T_, std::int64_t heads,
                  std::int64_t head_dim, std::int64_t position_offset, cudaStream_t stream,
                  const std::int32_t* positions = nullptr, std::int64_t row_stride = 0) {
  rope_rotate(x, inv_freq, B, T_, heads, head_dim, row_stride, position_offset, positions, 1.0f,
              stream);
}

// dx <- R^T dx in place.
template <typename T>
void rope_backward(T* dx, const float* inv_freq, std::int64_t B, std::int64_t T_,
                   std::int64_t heads, std::int64_t head_dim, std::int64_t position_offset,
                   cudaStream_t stream, const std::int32_t* positions = nullptr,
                   std::int64_t row_stride = 0) {
  rope_rotate(dx, inv_freq, B, T_, heads, head_dim, row_stride, position_offset, positions, -1.0f,
              stream);
}

}  // namespace minitron::cuda
