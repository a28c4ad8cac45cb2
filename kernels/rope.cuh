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
// When head_dim / 2 is a multiple of a 16-byte pack and x and inv_freq are 16-byte aligned, a
// thread rotates K pairs at once: the pack at channel i and the pack at i + head_dim/2 (both
// aligned then), with the pack of inv_freq at i; otherwise one pair per thread. Same results.
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

// With kVector p counts packs of K pairs (K divides half), otherwise single pairs.
template <typename T, bool kVector>
__global__ void rope_kernel(T* x, const float* inv_freq, std::int64_t rows, std::int64_t T_,
                            std::int64_t heads, std::int64_t head_dim, std::int64_t position_offset,
                            const std::int32_t* positions, float direction) {
  constexpr int K = kVector ? pack_elements<T>() : 1;
  const std::int64_t half = head_dim / 2;
  const std::int64_t groups = half / K;
  const std::int64_t units = rows * heads * groups;
  for (std::int64_t p = grid_start(); p < units; p += grid_stride()) {
    // i fastest, so a warp touches consecutive channels of one head.
    const std::int64_t i = (p % groups) * K;
    const std::int64_t h = (p / groups) % heads;
    const std::int64_t row = p / (groups * heads);
    // Packed documents: the token's position inside its document (kernels/rope.h).
    const float position =
        static_cast<float>(positions ? positions[row] : position_offset + row % T_);
    T* x1 = x + row * heads * head_dim + h * head_dim + i;
    T* x2 = x1 + half;
    if constexpr (kVector) {
      float a[K], b[K], f[K];
      load_floats(a, x1);
      load_floats(b, x2);
      load_floats(f, inv_freq + i);
#pragma unroll
      for (int e = 0; e < K; ++e) {
        float sn, c;
        rope_sincos(position * f[e], &sn, &c);
        sn *= direction;
        const float u = a[e] * c - b[e] * sn;
        b[e] = b[e] * c + a[e] * sn;
        a[e] = u;
      }
      store_floats(x1, a);
      store_floats(x2, b);
    } else {
      float sn, c;
      rope_sincos(position * inv_freq[i], &sn, &c);
      sn *= direction;
      const float a = to_float(*x1), b = to_float(*x2);
      *x1 = from_float<T>(a * c - b * sn);
      *x2 = from_float<T>(b * c + a * sn);
    }
  }
}

// ---- launchers ----

constexpr int kRopeThreads = 256;

template <typename T>
void rope_rotate(T* x, const float* inv_freq, std::int64_t B, std::int64_t T_, std::int64_t heads,
                 std::int64_t head_dim, std::int64_t position_offset, const std::int32_t* positions,
                 float direction, cudaStream_t stream) {
  MINITRON_ASSERT(head_dim % 2 == 0, "rope: head_dim ", head_dim, " must be even");
  const std::int64_t pairs = B * T_ * heads * (head_dim / 2);
  if (pairs <= 0) return;
  constexpr int K = pack_elements<T>();
  if ((head_dim / 2) % K == 0 && aligned16(x) && aligned16(inv_freq))
    launch(rope_kernel<T, true>, dim3(grid_for(pairs / K, kRopeThreads)), dim3(kRopeThreads), 0,
           stream, x, inv_freq, B * T_, T_, heads, head_dim, position_offset, positions, direction);
  else
    launch(rope_kernel<T, false>, dim3(grid_for(pairs, kRopeThreads)), dim3(kRopeThreads), 0,
           stream, x, inv_freq, B * T_, T_, heads, head_dim, position_offset, positions, direction);
}

// x [B*T, heads*head_dim] rotated in place; inv_freq fp32 [head_dim / 2]; positions (device
// int32 [B*T], packed documents) or null (row (b, t) at position_offset + t).
template <typename T>
void rope_forward(T* x, const float* inv_freq, std::int64_t B, std::int64_t T_, std::int64_t heads,
                  std::int64_t head_dim, std::int64_t position_offset, cudaStream_t stream,
                  const std::int32_t* positions = nullptr) {
  rope_rotate(x, inv_freq, B, T_, heads, head_dim, position_offset, positions, 1.0f, stream);
}

// dx <- R^T dx in place.
template <typename T>
void rope_backward(T* dx, const float* inv_freq, std::int64_t B, std::int64_t T_,
                   std::int64_t heads, std::int64_t head_dim, std::int64_t position_offset,
                   cudaStream_t stream, const std::int32_t* positions = nullptr) {
  rope_rotate(dx, inv_freq, B, T_, heads, head_dim, position_offset, positions, -1.0f, stream);
}

}  // namespace minitron::cuda
