// RoPE inside attention (kernels/attention.cuh's launchers with rope_inv_freq), emulated, against
// the same launchers with RoPE as its own kernel: rope_forward over q and k, then attention; and
// attention's backward, then rope_backward over dq and dk. Fused, the bf16 tensor-core forward
// rotates each Q tile as it lands and writes it back (RoPE runs over K alone first), and the
// backward rotates dQ and dK back as it stores them; the fp32 CUDA-core path composes the kernels
// in the launcher. Every rotation uses the rope kernel's arithmetic (kernels/rope.cuh), so the
// rotated q and k, out, lse and every gradient must be bit-identical to the composed run, and the
// gaps between the rows of the fused q|k|v buffer untouched. The composed path itself is checked
// against the CPU references elsewhere (tests/kernels/test_backend_ops.cpp: rope_*, attention_*,
// attention_*_rope; test_cuda_attention*.cpp).
// Shapes: head_dim 64 and 128; one token; sequences off every tile (37, 129,
// 200); 32 query heads over 8 and a group of 8; packed documents starting on tile edges; q|k|v
// rows with an 8-element gap (16-byte packs) and rows off their 16-byte boundary (element-wise
// loads and stores).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/attention.cuh"
#include "kernels/rope.cuh"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace minitron::test {
namespace {

using Bf16 = __nv_bfloat16;

struct Case {
  std::int64_t B, T, Hq, Hkv, hd;
  bool misaligned;                                   // every base one element past 16 bytes
  std::vector<std::vector<std::int64_t>> documents;  // per batch row; empty: no packing
};

// The bits of one forward and backward: the q|k|v buffer after the forward (q and k rotated in
// place, v and the gaps as they were), out, lse and the dq|dk|dv buffer.
struct Run {
  std::vector<std::uint32_t> qkv, out, lse, grads;
};

template <typename T>
std::uint32_t bits_of(T x) {
  if constexpr (std::is_same_v<T, float>) {
    std::uint32_t u;
    std::memcpy(&u, &x, 4);
    return u;
  } else {
    return __bfloat16_as_ushort(x);
  }
}

template <typename T>
T gap_value() {  // a NaN no kernel computes: a write into a gap shows
  if constexpr (std::is_same_v<T, float>) return std::nanf("0x5a5a");
  return __ushort_as_bfloat16(0x7fc1);
}

template <typename T>
Run run(const Case& c, bool fused_rope) {
  const std::int64_t N = c.B * c.T, hd = c.hd, qw = c.Hq * hd, kvw = c.Hkv * hd;
  const std::int64_t row = qw + 2 * kvw + (c.misaligned ? 3 : 8);  // 3: most rows off 16 bytes
  const std::int64_t base = c.misaligned ? 1 : 0;
  const AttentionStrides strides{row, row, row, qw, qw, row, row, row};

  // q|k|v rows of random values (the same draw for both runs) with the gap value between them.
  const std::vector<float> values = random_floats(static_cast<std::size_t>(N * row), 91);
  std::vector<T> qkv(static_cast<std::size_t>(base + N * row + 16), gap_value<T>());
  for (std::int64_t r = 0; r < N; ++r)
    for (std::int64_t e = 0; e < qw + 2 * kvw; ++e)
      qkv[base + r * row + e] = static_cast<T>(values[r * row + e]);
  std::vector<T> out(static_cast<std::size_t>(base + N * qw), gap_value<T>());
  std::vector<T> dout(static_cast<std::size_t>(base + N * qw));
  const std::vector<float> dout_values = random_floats(static_cast<std::size_t>(N * qw), 92);
  for (std::int64_t e = 0; e < N * qw; ++e) dout[base + e] = static_cast<T>(dout_values[e]);
  std::vector<T> grads(qkv.size(), gap_value<T>());
  std::vector<float> lse(static_cast<std::size_t>(c.B * c.Hq * c.T), std::nanf(""));
  std::vector<float> workspace(static_cast<std::size_t>(c.B * c.Hq * c.T), std::nanf(""));
  // Llama's frequencies (base 10000): the lowest turn a whole radian a position.
  std::vector<float> inv_freq(static_cast<std::size_t>(hd / 2));
  for (std::int64_t i = 0; i < hd / 2; ++i)
    inv_freq[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / hd));
  std::vector<std::int32_t> positions;
  for (const auto& lengths : c.documents)
    for (std::int64_t length : lengths)
      for (std::int64_t i = 0; i < length; ++i) positions.push_back(static_cast<std::int32_t>(i));
  const std::int32_t* pos = positions.empty() ? nullptr : positions.data();

  T* q = qkv.data() + base;
  T* k = q + qw;
  T* v = k + kvw;
  T* dq = grads.data() + base;
  T* dk = dq + qw;
  T* dv = dk + kvw;
  if (fused_rope) {
    cuda::attention_forward<T>(out.data() + base, lse.data(), q, k, v, c.B, c.T, c.T, c.Hq, c.Hkv,
                               hd, nullptr, pos, strides, inv_freq.data());
    cuda::attention_backward<T>(dq, dk, dv, dout.data() + base, out.data() + base, lse.data(), q, k,
                                v, c.B, c.T, c.Hq, c.Hkv, hd, workspace.data(), nullptr, pos,
                                strides, inv_freq.data());
  } else {
    cuda::rope_forward<T>(q, inv_freq.data(), c.B, c.T, c.Hq, hd, 0, nullptr, pos, row);
    cuda::rope_forward<T>(k, inv_freq.data(), c.B, c.T, c.Hkv, hd, 0, nullptr, pos, row);
    cuda::attention_forward<T>(out.data() + base, lse.data(), q, k, v, c.B, c.T, c.T, c.Hq, c.Hkv,
                               hd, nullptr, pos, strides);
    cuda::attention_backward<T>(dq, dk, dv, dout.data() + base, out.data() + base, lse.data(), q, k,
                                v, c.B, c.T, c.Hq, c.Hkv, hd, workspace.data(), nullptr, pos,
                                strides);
    cuda::rope_backward<T>(dq, inv_freq.data(), c.B, c.T, c.Hq, hd, 0, nullptr, pos, row);
    cuda::rope_backward<T>(dk, inv_freq.data(), c.B, c.T, c.Hkv, hd, 0, nullptr, pos, row);
  }
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  auto all_bits = [](const auto& buffer) {
    std::vector<std::uint32_t> b;
    for (const auto& x : buffer) b.push_back(bits_of(x));
    return b;
  };
  return {all_bits(qkv), all_bits(out), all_bits(lse), all_bits(grads)};
}

// Element indices where two bit patterns differ (the first few, for the message).
std::string first_differences(const std::vector<std::uint32_t>& a,
                              const std::vector<std::uint32_t>& b) {
  std::string s;
  int shown = 0;
  for (std::size_t e = 0; e < a.size() && shown < 5; ++e)
    if (a[e] != b[e]) s += str(" [", e, "] ", a[e], " vs ", b[e]), ++shown;
  return s;
}

template <typename T>
void expect_fused_equals_composed(const Case& c) {
  const Run fused = run<T>(c, true), composed = run<T>(c, false);
  EXPECT_EQ(fused.qkv, composed.qkv)
      << "q|k|v after the forward:" << first_differences(fused.qkv, composed.qkv);
  EXPECT_EQ(fused.out, composed.out) << "out:" << first_differences(fused.out, composed.out);
  EXPECT_EQ(fused.lse, composed.lse) << "lse:" << first_differences(fused.lse, composed.lse);
  EXPECT_EQ(fused.grads, composed.grads)
      << "dq|dk|dv:" << first_differences(fused.grads, composed.grads);
}

class CudaAttentionRope : public ::testing::TestWithParam<Case> {};

TEST_P(CudaAttentionRope, Bf16FusedEqualsRopeThenAttention) {
  expect_fused_equals_composed<Bf16>(GetParam());
}

TEST_P(CudaAttentionRope, Fp32FusedEqualsRopeThenAttention) {
  expect_fused_equals_composed<float>(GetParam());
}

const Case kCases[] = {
    {2, 1, 2, 1, 64, false, {}},     // one token, two batch rows
    {1, 37, 32, 8, 64, false, {}},   // 32 query heads over 8, sequence off every tile
    {1, 129, 8, 1, 128, false, {}},  // a group of 8, one query past a 128-row block
    {1, 200, 4, 2, 128, true, {}},   // rows off 16 bytes: element-wise tiles and stores
    {2, 77, 4, 2, 64, true, {}},
    // Packed documents starting at 0, 31 (a 32-key tile's last key) and 127 (a 128-row block's).
    {2, 200, 4, 2, 64, false, {{31, 96, 73}, {1, 16, 150, 33}}},
    {1, 200, 4, 1, 128, false, {{31, 96, 73}}},
};

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttentionRope, ::testing::ValuesIn(kCases),
                         [](const auto& info) {
                           const Case& c = info.param;
                           return str("B", c.B, "_T", c.T, "_Hq", c.Hq, "_Hkv", c.Hkv, "_hd", c.hd,
                                      c.misaligned ? "_misaligned" : "",
                                      c.documents.empty() ? "" : "_packed");
                         });

}  // namespace
}  // namespace minitron::test
