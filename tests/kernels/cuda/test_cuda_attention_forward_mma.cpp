// The bf16 tensor-core forward (kernels/attention_forward_mma.cuh) through its launcher, emulated,
// against the CPU reference of kernels/attention.h on the same bf16-rounded inputs. Its blocks
// are 128 query rows of 4 warps x 2 slices of 16; key tiles are 64 (head_dim 64, Q in registers)
// or 32 (head_dim 128, Q in shared memory). Shapes: one token, sequences off every tile (37, 129,
// 200), 8 KV heads under 32 and 64 query heads (groups 4 and 8), KV caches (Tq < Tk, a single
// decode query), packed documents starting on a key tile's last key, and Q, K and V read in
// place from one fused QKV buffer (row stride (Hq + 2 Hkv) hd) into an output of row stride
// (Hq + 1) hd whose gap columns must stay untouched, and separate operands each with a stride of
// its own; aligned (cp.async, 16-byte stores) and one element off (the element-wise fallback).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <vector>

#include "core/bf16.h"
#include "kernels/attention.cuh"
#include "kernels/attention.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace minitron::test {
namespace {

struct Case {
  std::int64_t B, Tq, Tk, Hq, Hkv, hd;
  std::vector<std::int64_t> documents = {};  // lengths per row (Tq == Tk), empty: one document
  bool fused = false;                        // Q, K, V in one buffer; out with a gap column block
  bool padded = false;      // separate buffers, each row followed by NaN padding of its own width
  std::int64_t offset = 0;  // elements before the buffers' first row
  std::int64_t v_padding = 24;  // with `padded`; odd puts most v rows off 16 bytes
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "B " << c.B << ", Tq " << c.Tq << ", Tk " << c.Tk << ", " << c.Hq << "/" << c.Hkv
      << " heads, head_dim " << c.hd;
}

template <typename T>
T* device_copy(const std::vector<T>& host) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, std::max<std::size_t>(host.size(), 1) * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
            cudaSuccess);
  return static_cast<T*>(p);
}

template <typename T>
std::vector<T> host_copy(const T* device, std::size_t n) {
  std::vector<T> host(n);
  EXPECT_EQ(cudaMemcpy(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return host;
}

void run(const Case& c) {
  const std::int64_t hd = c.hd, qw = c.Hq * hd, kvw = c.Hkv * hd;
  // Queries in [-3, 3] make the softmax peaky (scaled scores of standard deviation ~1 rather than
  // ~1/3), so a row's running maximum moves between key tiles and a missing rescale shows.
  const auto q = stored(random_floats(c.B * c.Tq * qw, 71, -3, 3), DType::BF16);
  const auto k = stored(random_floats(c.B * c.Tk * kvw, 72, -1, 1), DType::BF16);
  const auto v = stored(random_floats(c.B * c.Tk * kvw, 73, -1, 1), DType::BF16);
  std::vector<std::int32_t> positions;
  for (std::int64_t b = 0; b < c.B && !c.documents.empty(); ++b)
    for (std::int64_t length : c.documents)
      for (std::int64_t p = 0; p < length; ++p) positions.push_back(static_cast<std::int32_t>(p));
  ASSERT_TRUE(positions.empty() || static_cast<std::int64_t>(positions.size()) == c.B * c.Tq);

  std::vector<float> want(q.size()), want_lse(c.B * c.Hq * c.Tq);
  cpu::attention_forward(want.data(), want_lse.data(), q.data(), k.data(), v.data(), c.B, c.Tq,
                         c.Tk, c.Hq, c.Hkv, hd, positions.empty() ? nullptr : positions.data());

  // Device layout: separate q, k, v (row strides Hq hd, Hkv hd, or with `padded` 8, 16 and
  // v_padding more elements of NaN, so that each operand has its own stride and a row read at
  // another's lands in NaN), or one buffer whose row t holds q, k and v of token t (Tq == Tk). The
  // output gets Hq hd columns, plus hd sentinel columns per row when fused (8 when padded).
  const std::int64_t qkv_w = c.fused ? qw + 2 * kvw : 0;
  const std::int64_t out_w = c.fused ? qw + hd : c.padded ? qw + 8 : qw;
  const AttentionStrides strides =
      c.fused    ? AttentionStrides{qkv_w, qkv_w, qkv_w, out_w}
      : c.padded ? AttentionStrides{qw + 8, kvw + 16, kvw + c.v_padding, out_w}
                 : AttentionStrides{qw, kvw, kvw, out_w};
  constexpr float kSentinel = 7.0f;  // out of the output's range (a convex combination of |v| <= 1)
  auto bits = [](float x) { return float_to_bf16(x); };
  const std::uint16_t nan_bits = bits(std::numeric_limits<float>::quiet_NaN());
  std::vector<std::uint16_t> q_host, k_host, v_host;
  if (c.fused) {
    q_host.assign(c.offset + c.B * c.Tq * qkv_w, 0);
    for (std::int64_t r = 0; r < c.B * c.Tq; ++r)
      for (std::int64_t e = 0; e < qw; ++e) q_host[c.offset + r * qkv_w + e] = bits(q[r * qw + e]);
    for (std::int64_t r = 0; r < c.B * c.Tk; ++r)
      for (std::int64_t e = 0; e < kvw; ++e) {
        q_host[c.offset + r * qkv_w + qw + e] = bits(k[r * kvw + e]);
        q_host[c.offset + r * qkv_w + qw + kvw + e] = bits(v[r * kvw + e]);
      }
  } else {
    // Rows of `width` elements at `stride` (NaN between them), after c.offset zeros.
    auto placed = [&](const std::vector<float>& x, std::int64_t width, std::int64_t stride) {
      const std::int64_t rows = static_cast<std::int64_t>(x.size()) / width;
      std::vector<std::uint16_t> h(c.offset + rows * stride, nan_bits);
      std::fill(h.begin(), h.begin() + c.offset, 0);
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t e = 0; e < width; ++e)
          h[c.offset + r * stride + e] = bits(x[r * width + e]);
      return h;
    };
    q_host = placed(q, qw, strides.q), k_host = placed(k, kvw, strides.k),
    v_host = placed(v, kvw, strides.v);
  }
  const std::size_t out_n = static_cast<std::size_t>(c.offset + c.B * c.Tq * out_w);
  std::vector<std::uint16_t> out_host(out_n, nan_bits);
  for (std::int64_t r = 0; r < c.B * c.Tq; ++r)
    for (std::int64_t e = qw; e < out_w; ++e) out_host[c.offset + r * out_w + e] = bits(kSentinel);

  auto* d_q = device_copy(q_host);
  auto* d_k = c.fused ? d_q : device_copy(k_host);
  auto* d_v = c.fused ? d_q : device_copy(v_host);
  auto* d_out = device_copy(out_host);
  auto* d_lse = device_copy(std::vector<float>(want_lse.size(), std::nanf("")));
  auto* d_pos = positions.empty() ? nullptr : device_copy(positions);
  auto* q_at = reinterpret_cast<cuda::bf16*>(d_q) + c.offset;
  const auto* k_at = reinterpret_cast<const cuda::bf16*>(d_k) + c.offset + (c.fused ? qw : 0);
  const auto* v_at = reinterpret_cast<const cuda::bf16*>(d_v) + c.offset + (c.fused ? qw + kvw : 0);
  auto* out_at = reinterpret_cast<cuda::bf16*>(d_out) + c.offset;
  switch (hd) {
    case 64:
      cuda::attention_forward_mma<64>(out_at, d_lse, q_at, k_at, v_at, d_pos, c.B, c.Tq, c.Tk, c.Hq,
                                      c.Hkv, strides, nullptr);
      break;
    case 128:
      cuda::attention_forward_mma<128>(out_at, d_lse, q_at, k_at, v_at, d_pos, c.B, c.Tq, c.Tk,
                                       c.Hq, c.Hkv, strides, nullptr);
      break;
    default: FAIL() << "head_dim " << hd << " has no case here";
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto out_bits = host_copy(d_out, out_n);
  const auto lse = host_copy(d_lse, want_lse.size());
  for (void* p : {static_cast<void*>(d_q), static_cast<void*>(d_out), static_cast<void*>(d_lse)})
    cudaFree(p);
  if (!c.fused) {
    cudaFree(d_k);
    cudaFree(d_v);
  }
  if (d_pos) cudaFree(d_pos);

  std::vector<float> out(q.size()), gap;
  for (std::int64_t r = 0; r < c.B * c.Tq; ++r) {
    for (std::int64_t e = 0; e < qw; ++e)
      out[r * qw + e] = bf16_to_float(out_bits[c.offset + r * out_w + e]);
    for (std::int64_t e = qw; e < out_w; ++e)
      gap.push_back(bf16_to_float(out_bits[c.offset + r * out_w + e]));
  }
  // P is rounded to bf16 for the PV product (each weight off by <= 2^-9 of itself, the
  // normaliser not: <= 2^-8 * max|v| = 2^-8 absolute in all), then the output is rounded to bf16
  // once (2^-9 relative; 2^-8 covers the reference's own fp32 rounding besides).
  expect_near_all("out", out, want, kBf16Ulp, kBf16Ulp);
  // lse = max + log(sum) ~ log(Tk) + the largest score <= ~12: fp32 ulps of that plus the exp
  // differences (exp2 of prescaled scores with an fma vs exp).
  expect_near_all("lse", lse, want_lse, 2e-6, 2e-5);
  EXPECT_TRUE(std::all_of(gap.begin(), gap.end(), [](float x) { return x == kSentinel; }))
      << "the kernel wrote into the output's gap columns";
}

class CudaAttentionForwardMma : public ::testing::TestWithParam<Case> {};

TEST_P(CudaAttentionForwardMma, MatchesReference) { run(GetParam()); }

// Document lengths per row. head_dim 64 (64-key tiles): starts at 63 and 127 (a tile's last
// key: the next query, the first of warp 2 or of the second block, sees one key of the tile
// before) and 64; head_dim 128 (32-key tiles): starts at 31, 47 (row 48: the second slice of
// warp 1) and 95.
const std::vector<std::int64_t> kDocs64 = {63, 1, 63, 73};
const std::vector<std::int64_t> kDocs128 = {31, 16, 48, 105};

const Case kCases[] = {
    {1, 1, 1, 2, 1, 64},       // one token
    {1, 1, 1, 2, 1, 128},      //
    {2, 37, 37, 4, 2, 64},     // a partial warp, two batches
    {1, 129, 129, 4, 2, 128},  // a second block of one row
    {1, 200, 200, 4, 1, 64},   // 4 key tiles, the last partial
    {1, 200, 200, 4, 2, 128},  // 7 key tiles
    {1, 37, 37, 32, 8, 64},    // 8 KV heads, groups of 4
    {1, 20, 20, 64, 8, 128},   // 8 KV heads, groups of 8
    {2, 5, 200, 4, 2, 64},     // KV cache: 5 new queries over 200 keys
    {1, 1, 129, 4, 1, 128},    // one decode query over 129 keys
    {1, 130, 300, 2, 1, 128},  // two blocks over a longer cache
    // KV caches whose warp 0 needs exactly one key of a tile, for its last row only: row 31 sees
    // up to key 31 + 33 = 64, the first of tile 1 (64 or 32 keys a tile)
    {1, 32, 65, 2, 1, 64},
    {1, 40, 73, 2, 1, 128},
    {1, 200, 200, 4, 2, 64, kDocs64},             // packed documents
    {2, 200, 200, 4, 2, 128, kDocs128},           //
    {1, 129, 129, 4, 2, 64, {}, true},            // fused QKV, aligned
    {1, 77, 77, 4, 2, 128, {40, 37}, true},       // fused, packed
    {1, 77, 77, 4, 2, 64, {}, true, false, 1},    // fused, one element off (unaligned)
    {1, 40, 70, 4, 2, 128, {}, false, false, 1},  // separate, unaligned, KV cache
    {1, 150, 150, 4, 2, 64, {}, false, true},     // a row stride of each operand's own
    {1, 40, 90, 4, 2, 128, {}, false, true},      // the same over a KV cache
    // v rows off their 16-byte boundary (stride Hkv hd + 3) beside aligned q, k and out: the
    // element-wise fallback for all (a cp.async from a misaligned v row aborts the emulator)
    {1, 40, 90, 4, 2, 64, {}, false, true, 0, 3},
};

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttentionForwardMma, ::testing::ValuesIn(kCases),
                         [](const auto& info) {
                           const Case& c = info.param;
                           return str("B", c.B, "_Tq", c.Tq, "_Tk", c.Tk, "_Hq", c.Hq, "_Hkv",
                                      c.Hkv, "_hd", c.hd, c.documents.empty() ? "" : "_packed",
                                      c.fused ? "_fused" : "", c.padded ? "_padded" : "",
                                      c.offset ? "_unaligned" : "",
                                      c.v_padding % 8 ? "_odd_v" : "");
                         });

}  // namespace
}  // namespace minitron::test
