// Rotary position embedding, transformers' rotate-half convention, CPU reference.
//
// Within each head of head_dim channels, channel i < head_dim/2 is paired with i + head_dim/2
// and the pair is rotated by angle = position * inv_freq[i]. The angle is computed in float
// (float(position) * inv_freq[i]) as transformers does in fp32, so long positions lose the same
// bits there and here; cos and sin of that float angle are then taken in T.
//
// Row (b, t) sits at position position_offset + t, or, with `positions` (int32 [B*T], packed
// documents whose positions restart at 0 in each document), at positions[b*T + t].
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/cpu/parallel.h"
#include "util/error.h"

namespace minitron::cpu {

// x [B*T, heads*head_dim] in place, rows row_stride apart (0: dense); direction +1 rotates
// forward, -1 applies the inverse (transposed) rotation, which is the backward of the forward.
template <typename T>
void rope_rotate(T* x, const float* inv_freq, std::int64_t B, std::int64_t T_, std::int64_t heads,
                 std::int64_t head_dim, std::int64_t position_offset, int direction,
                 const std::int32_t* positions = nullptr, std::int64_t row_stride = 0) {
  MINITRON_ASSERT(head_dim % 2 == 0, "rope: head_dim ", head_dim, " must be even");
  const std::int64_t half = head_dim / 2;
  const std::int64_t width = row_stride > 0 ? row_stride : heads * head_dim;
#pragma omp parallel for schedule(static) if (B * T_ * heads * head_dim >= kMinParallelWork)
  for (std::int64_t row = 0; row < B * T_; ++row) {
    const std::int64_t position = positions ? positions[row] : position_offset + row % T_;
    T* xr = x + row * width;
    for (std::int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(position) * inv_freq[i];
      const T c = static_cast<T>(std::cos(static_cast<T>(angle)));
      const T s = static_cast<T>(direction) * static_cast<T>(std::sin(static_cast<T>(angle)));
      for (std::int64_t h = 0; h < heads; ++h) {
        T* x1 = xr + h * head_dim + i;
        T* x2 = x1 + half;
        const T a = *x1, b = *x2;
        *x1 = a * c - b * s;
        *x2 = b * c + a * s;
      }
    }
  }
}

template <typename T>
void rope_forward(T* x, const float* inv_freq, std::int64_t B, std::int64_t T_, std::int64_t heads,
                  std::int64_t head_dim, std::int64_t position_offset,
                  const std::int32_t* positions = nullptr, std::int64_t row_stride = 0) {
  rope_rotate(x, inv_freq, B, T_, heads, head_dim, position_offset, +1, positions, row_stride);
}

// dx <- R^T dx, in place.
template <typename T>
void rope_backward(T* dx, const float* inv_freq, std::int64_t B, std::int64_t T_,
                   std::int64_t heads, std::int64_t head_dim, std::int64_t position_offset,
                   const std::int32_t* positions = nullptr, std::int64_t row_stride = 0) {
  rope_rotate(dx, inv_freq, B, T_, heads, head_dim, position_offset, -1, positions, row_stride);
}

}  // namespace minitron::cpu
