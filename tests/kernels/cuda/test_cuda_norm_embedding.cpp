// Emulated CUDA backend vs the CPU references: embedding (forward, deterministic backward) and
// RMSNorm (forward, backward). Shapes are odd on purpose: D not a multiple of 32 (warp) or 128
// (column blocks), N not a multiple of 8 rows per block or of the 64-row weight chunks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/embedding.h"
#include "kernels/rmsnorm.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace minitron::test {
namespace {

class CudaNormEmbedding : public ::testing::TestWithParam<DType> {
 protected:
  Device dev;
  DType dt() const { return GetParam(); }

  // The forward of N rows of D (x in [-2, 2] and the weight in [0.5, 1.5], drawn with their
  // seeds) against the reference; gives back x, the weight and the reference's rstd for a
  // backward after it.
  struct RmsnormInputs {
    std::vector<float> x, w, rstd;
  };
  RmsnormInputs expect_rmsnorm_forward(std::int64_t N, std::int64_t D, std::uint64_t x_seed,
                                       std::uint64_t w_seed) {
    RmsnormInputs in{stored(random_floats(N * D, x_seed, -2, 2), dt()),
                     stored(random_floats(D, w_seed, 0.5f, 1.5f), dt()), std::vector<float>(N)};
    auto tx = dev.put(in.x, dt()), tw = dev.put(in.w, dt());
    auto out = dev.poisoned(N * D, dt());
    auto rstd = dev.poisoned(N, DType::F32);
    dev.backend().rmsnorm_forward(out, rstd, tx, tw, N, D, 1e-5f);
    std::vector<float> want(N * D);
    cpu::rmsnorm_forward(want.data(), in.rstd.data(), in.x.data(), in.w.data(), N, D, 1e-5f);
    // rstd: an fp32 sum of up to 50001 squares vs double, ~log2(D) ulps, under 1e-5 relative.
    expect_near_all("rmsnorm rstd", dev.get(rstd), in.rstd, 1e-5, 0);
    // As RmsNormForward: bf16 rounds twice against the reference's once (2 ulps); fp32 carries
    // rstd's error.
    expect_near_all("rmsnorm out", dev.get(out), want, dt() == DType::BF16 ? 2 * kBf16Ulp : 2e-5,
                    1e-30);
    return in;
  }
};

TEST_P(CudaNormEmbedding, EmbeddingForwardAndBackward) {
  const std::int64_t vocab = 11, D = 45, N = 150;
  std::vector<std::int32_t> tokens(N);
  for (std::int64_t n = 0; n < N; ++n)
    tokens[n] = static_cast<std::int32_t>((n * n * 7 + 3) % vocab);
  tokens[5] = 0;  // some tokens repeat many times, token 10 never appears in the first half
  const auto table = stored(random_floats(vocab * D, 21, -1, 1), dt());
  auto tt = dev.put(table, dt());
  auto tk = dev.put_i32(tokens);
  auto out = dev.poisoned(N * D, dt());
  dev.backend().embedding_forward(out, tk, tt, N, D);
  std::vector<float> want(N * D);
  cpu::embedding_forward(want.data(), tokens.data(), table.data(), N, D, vocab);
  EXPECT_EQ(dev.get(out), want);  // a copy: exact

  // Backward accumulates into an fp32 gradient that already holds values.
  const auto dout = stored(random_floats(N * D, 22, -1, 1), dt());
  const auto dtable0 = random_floats(vocab * D, 23, -1, 1);
  auto tdout = dev.put(dout, dt());
  auto tdtable = dev.put(dtable0, DType::F32);
  dev.backend().embedding_backward(tdtable, tdout, tk, N, D);
  std::vector<float> dtable = dtable0;
  cpu::embedding_backward(dtable.data(), dout.data(), tokens.data(), N, D, vocab);
  // The kernel adds each row's contributions in position order in fp32, exactly as the
  // reference does: bit-identical.
  const auto got = dev.get(tdtable);
  EXPECT_EQ(got, dtable);

  // Run again from the same start: the same bits (no order-dependent atomics).
  dev.backend().upload(tdtable, dtable0.data());
  dev.backend().embedding_backward(tdtable, tdout, tk, N, D);
  EXPECT_EQ(dev.get(tdtable), got);
}

// The backward's scan over a vocabulary of several 4096-count tiles (carried totals), a token
// repeated more often than the accumulating block keeps positions in shared memory (1024), and
// rows of odd width: bit-identical to the reference, which adds in the same order.
TEST_P(CudaNormEmbedding, EmbeddingBackwardOverALargeVocabularyAndALongBucket) {
  const std::int64_t vocab = 10001, D = 5, N = 1800;  // token 4500 at 1200 positions
  std::vector<std::int32_t> tokens(N);
  for (std::int64_t n = 0; n < N; ++n)
    tokens[n] = static_cast<std::int32_t>(n % 3 == 0 ? (n * 7919) % vocab : 4500);
  const auto dout = stored(random_floats(N * D, 24, -1, 1), dt());
  const auto dtable0 = random_floats(vocab * D, 25, -1, 1);
  auto tk = dev.put_i32(tokens);
  auto tdout = dev.put(dout, dt());
  auto tdtable = dev.put(dtable0, DType::F32);
  dev.backend().embedding_backward(tdtable, tdout, tk, N, D);
  std::vector<float> dtable = dtable0;
  cpu::embedding_backward(dtable.data(), dout.data(), tokens.data(), N, D, vocab);
  EXPECT_EQ(dev.get(tdtable), dtable);  // same additions in the same order: exact
}

// The backward against the CPU reference, bit for bit: both add each row's contributions in
// position order in fp32. A position whose token lies outside [0, vocab) adds nothing on the
// device (the reference refuses such ids), so the reference gets the other positions, in order.
void expect_backward_matches_reference(Device& dev, DType dt,
                                       const std::vector<std::int32_t>& tokens, std::int64_t vocab,
                                       std::int64_t D, unsigned seed) {
  const auto N = static_cast<std::int64_t>(tokens.size());
  const auto dout = stored(random_floats(N * D, seed, -1, 1), dt);
  const auto dtable0 = random_floats(vocab * D, seed + 1, -1, 1);
  auto tk = dev.put_i32(tokens);
  auto tdout = dev.put(dout, dt);
  auto tdtable = dev.put(dtable0, DType::F32);
  dev.backend().embedding_backward(tdtable, tdout, tk, N, D);
  std::vector<std::int32_t> valid_tokens;
  std::vector<float> valid_dout;
  for (std::int64_t n = 0; n < N; ++n) {
    if (tokens[n] < 0 || tokens[n] >= vocab) continue;
    valid_tokens.push_back(tokens[n]);
    valid_dout.insert(valid_dout.end(), dout.begin() + n * D, dout.begin() + (n + 1) * D);
  }
  std::vector<float> want = dtable0;
  cpu::embedding_backward(want.data(), valid_dout.data(), valid_tokens.data(),
                          static_cast<std::int64_t>(valid_tokens.size()), D, vocab);
  EXPECT_EQ(dev.get(tdtable), want);  // same additions in the same order: exact
}

// Real text's frequent tokens: one token at 5000 of 6000 positions (the others spread over a
// vocabulary of 70000, whose 17 bits take the sort three passes; the frequent token's id uses the
// top one). N is not a multiple of the sort's 256-position blocks.
TEST_P(CudaNormEmbedding, EmbeddingBackwardWithAVeryFrequentToken) {
  const std::int64_t vocab = 70000, N = 6000;
  std::vector<std::int32_t> tokens(N);
  for (std::int64_t n = 0; n < N; ++n)
    tokens[n] = static_cast<std::int32_t>(n % 6 == 1 ? (n * 7919) % vocab : 65537);
  expect_backward_matches_reference(dev, dt(), tokens, vocab, 3, 31);
}

// Every position the same token (a bucket of all 700 slots, the last sort block partial), a
// vocabulary of one token (one pass), and fewer positions than a warp.
TEST_P(CudaNormEmbedding, EmbeddingBackwardWithOneToken) {
  expect_backward_matches_reference(dev, dt(), std::vector<std::int32_t>(700, 42), 50, 5, 32);
  expect_backward_matches_reference(dev, dt(), std::vector<std::int32_t>(300, 0), 1, 7, 33);
  expect_backward_matches_reference(dev, dt(), {3, 1, 3, 3, 0}, 4, 9, 34);
}

// Ids outside [0, vocab) (negative, vocab itself, far past it) among valid ones, some of them
// inside a frequent token's run: those positions add nothing, the others in position order.
TEST_P(CudaNormEmbedding, EmbeddingBackwardSkipsTokensOutsideTheVocabulary) {
  const std::int64_t vocab = 300, N = 1000;
  std::vector<std::int32_t> tokens(N);
  for (std::int64_t n = 0; n < N; ++n) {
    tokens[n] = static_cast<std::int32_t>(n % 2 == 0 ? 299 : (n * 37) % vocab);
    if (n % 7 == 3) tokens[n] = n % 3 == 0 ? -1 : (n % 3 == 1 ? 300 : 1 << 20);
  }
  tokens[0] = -5;
  tokens[2] = std::numeric_limits<std::int32_t>::min();
  tokens[N - 1] = 300;
  expect_backward_matches_reference(dev, dt(), tokens, vocab, 4, 35);
}

// Rows wide enough that the kernels' shared memory (kernels/rmsnorm.cuh, 96 KiB a block) holds
// every warp's rows and the weight (4096: 8 warps a block forward, 4 backward, in bf16), the
// weight alone (20001), or nothing (50001): each way must give the reference's results. 9 rows:
// more than one block, the last one partial.
TEST_P(CudaNormEmbedding, RmsNormWithRowsInAndOutOfSharedMemory) {
  const std::int64_t N = 9;
  for (const std::int64_t D : {4096, 20001, 50001}) {
    SCOPED_TRACE(str("D=", D));
    const auto [x, w, want_rstd] = expect_rmsnorm_forward(N, D, 46 + D, 47);
    const auto dout = stored(random_floats(N * D, 48, -1, 1), dt());
    const auto din0 = stored(random_floats(N * D, 49, -1, 1), dt());
    auto tx = dev.put(x, dt()), tw = dev.put(w, dt());
    auto tdout = dev.put(dout, dt()), tdin = dev.put(din0, dt());
    auto tdw = dev.put(std::vector<float>(D, 0.0f), DType::F32);
    auto tr = dev.put(want_rstd, DType::F32);
    dev.backend().rmsnorm_backward(tdin, tdw, tdout, tx, tw, tr, N, D);
    std::vector<float> din = din0, dw(D, 0.0f);
    cpu::rmsnorm_backward(din.data(), dw.data(), dout.data(), x.data(), w.data(), want_rstd.data(),
                          N, D);
    // din: the increment's fp32 dot over D terms (~log2(D) ulps of the terms' scale, rstd ~0.9
    // times O(1) terms), then one rounding into dt (bf16: 2^-8 of |din| ~ 2, hence 1e-2 absolute).
    expect_near_all("rmsnorm din", dev.get(tdin), din, dt() == DType::BF16 ? kBf16Ulp : 1e-5,
                    dt() == DType::BF16 ? 1e-2 : 1e-4);
  }
}

// Rows for which fewer than 8 warps' rows fit beside the weight in the forward's shared memory:
// each warp then takes several rows of its block, one after another in the same cache (6001: 4
// warps of 2 rows in bf16, 2 warps of 4 in fp32; 12289: 2 warps of 4 in bf16, the weight alone
// in fp32; 16384, the most that still holds 2 warps' rows in bf16). Odd widths start each next
// row at another phase, so a lane's slots in the cache move from row to row. 11 rows: the
// second block's warps take 2 and 1 rows and stop early.
TEST_P(CudaNormEmbedding, RmsNormForwardOfSeveralWideRowsPerWarp) {
  const std::int64_t N = 11;
  for (const std::int64_t D : {6001, 12289, 16384}) {
    SCOPED_TRACE(str("D=", D));
    expect_rmsnorm_forward(N, D, 50 + D, 51);
  }
}

TEST_P(CudaNormEmbedding, RmsNormForward) {
  // The last case's rows have a mean square of ~1.3e-6, below eps = 1e-5, so eps sets most of
  // rstd there: an engine that dropped or misplaced eps fails it (at magnitude ~1, eps is below
  // the tolerance).
  for (const auto& [N, magnitude] :
       {std::pair<std::int64_t, float>{1, 2.0f}, {37, 2.0f}, {37, 2e-3f}}) {
    SCOPED_TRACE(str("N=", N, " magnitude=", magnitude));
    const std::int64_t D = 200;
    const float eps = 1e-5f;
    const auto x = stored(random_floats(N * D, 31 + N, -magnitude, magnitude), dt());
    const auto w = stored(random_floats(D, 32, 0.5f, 1.5f), dt());
    auto tx = dev.put(x, dt()), tw = dev.put(w, dt());
    auto out = dev.poisoned(N * D, dt());
    auto rstd = dev.poisoned(N, DType::F32);
    dev.backend().rmsnorm_forward(out, rstd, tx, tw, N, D, eps);
    std::vector<float> want(N * D), want_rstd(N);
    cpu::rmsnorm_forward(want.data(), want_rstd.data(), x.data(), w.data(), N, D, eps);
    // rstd: an fp32 sum of 200 squares vs double, ~D * 2^-24 ~ 1e-5 relative at worst.
    expect_near_all("rmsnorm rstd", dev.get(rstd), want_rstd, 2e-5, 0);
    // bf16: the kernel rounds x * rstd to bf16 before the weight (as transformers does) and
    // then the product: two roundings against the fp32 reference's one, up to 2 ulps.
    const auto got = dev.get(out);
    expect_near_all(str("rmsnorm out N=", N), got, want, dt() == DType::BF16 ? 2 * kBf16Ulp : 2e-5,
                    1e-30);
    if (dt() == DType::BF16) {
      // The rounding of x * rstd itself, which the 2-ulp bound cannot see: the same two bf16
      // roundings done here from the reference's rstd give the kernel's bits except where its
      // fp32 rstd (~1e-6 relative off) moves a product across a rounding boundary (a few in 10^4
      // elements); without the inner rounding about a quarter of them differ by an ulp.
      std::vector<float> scaled(N * D);
      for (std::int64_t i = 0; i < N * D; ++i) scaled[i] = x[i] * want_rstd[i / D];
      scaled = stored(scaled, DType::BF16);
      for (std::int64_t i = 0; i < N * D; ++i) scaled[i] *= w[i % D];
      scaled = stored(scaled, DType::BF16);
      std::int64_t differ = 0;
      for (std::int64_t i = 0; i < N * D; ++i) differ += got[i] != scaled[i];
      EXPECT_LE(differ, N * D / 100) << "of " << N * D << " outputs";
    }
  }
}

TEST_P(CudaNormEmbedding, RmsNormBackward) {
  const std::int64_t N = 133, D = 150;  // three 64-row chunks, the last one partial
  const auto x = stored(random_floats(N * D, 41, -2, 2), dt());
  const auto w = stored(random_floats(D, 42, 0.5f, 1.5f), dt());
  const auto dout = stored(random_floats(N * D, 43, -1, 1), dt());
  const auto din0 = stored(random_floats(N * D, 44, -1, 1), dt());
  const auto dw0 = random_floats(D, 45, -1, 1);
  // rstd from the reference forward (the backward's input, shared by both sides).
  std::vector<float> y(N * D), rstd(N);
  cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, D, 1e-5f);
  auto tx = dev.put(x, dt()), tw = dev.put(w, dt()), tdout = dev.put(dout, dt());
  auto tdin = dev.put(din0, dt()), tdw = dev.put(dw0, DType::F32), tr = dev.put(rstd, DType::F32);
  dev.backend().rmsnorm_backward(tdin, tdw, tdout, tx, tw, tr, N, D);
  std::vector<float> din = din0, dw = dw0;
  cpu::rmsnorm_backward(din.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, D);

  // din: |increment| is O(rstd * |dout * w|), the fp32 dot of 150 terms is good to ~1e-5 of its
  // terms' scale; then one rounding of din + increment into dt.
  const double rel = dt() == DType::BF16 ? kBf16Ulp : 1e-6;
  expect_near_all("rmsnorm din", dev.get(tdin), din, rel, dt() == DType::BF16 ? 2e-3 : 2e-5);
  // dweight sums N products dout * round(x * rstd): the kernel rounds x * rstd to bf16 (as the
  // forward does), the fp32 reference does not, so each term is off by up to 2^-9 of itself;
  // the bound is 2^-8 of the sum of |terms| plus the dw0 magnitude's fp32 rounding.
  std::vector<double> bound(D);
  for (std::int64_t j = 0; j < D; ++j) {
    double terms = 0;
    for (std::int64_t n = 0; n < N; ++n)
      terms += std::abs(dout[n * D + j] * x[n * D + j] * rstd[n]);
    bound[j] = (dt() == DType::BF16 ? kBf16Ulp : 1e-6) * terms + 1e-6;
  }
  expect_within("rmsnorm dweight", dev.get(tdw), dw, bound);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaNormEmbedding, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& info) { return std::string(dtype_label(info.param)); });

}  // namespace
}  // namespace minitron::test
