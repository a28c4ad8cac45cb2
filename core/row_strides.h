// Row strides of ops that read and write [rows, width] matrices as strided views: the elements
// from one row's start to the next's, 0 meaning dense (the row's width). They let the model's
// fused projection outputs ([N, q_dim + 2 kv_dim] for q|k|v, [N, 2 intermediate] for gate|up)
// be read and written in place by RoPE, attention and SwiGLU, with no copies.
#pragma once

#include <cstdint>

namespace minitron {

// The elements a strided view of `rows` rows of `width` spans: the last row ends the view.
inline std::int64_t strided_numel(std::int64_t rows, std::int64_t width, std::int64_t stride) {
  return rows <= 0 ? 0 : (rows - 1) * stride + width;
}

// A stride of 0 stands for the dense row width.
inline std::int64_t row_stride_or(std::int64_t stride, std::int64_t width) {
  return stride == 0 ? width : stride;
}

// Attention's tensors: q, out, dout, dq of Hq * hd per row, k, v, dk, dv of Hkv * hd.
struct AttentionStrides {
  std::int64_t q = 0, k = 0, v = 0, out = 0, dout = 0, dq = 0, dk = 0, dv = 0;

  // Every 0 replaced by its dense width.
  AttentionStrides resolved(std::int64_t q_width, std::int64_t kv_width) const {
    return {row_stride_or(q, q_width),   row_stride_or(k, kv_width),   row_stride_or(v, kv_width),
            row_stride_or(out, q_width), row_stride_or(dout, q_width), row_stride_or(dq, q_width),
            row_stride_or(dk, kv_width), row_stride_or(dv, kv_width)};
  }
};

}  // namespace minitron
