// The 16-byte vector paths (kernels/packed.cuh) and their scalar fallbacks, under emulation, vs
// the CPU references. Each op runs on views placed at chosen element offsets into larger
// buffers: offset 0 is 16-byte aligned (emulated cudaMalloc aligns to 256 bytes, checked below)
// and takes the vector path; offset 1 is not and must take the scalar one (the emulator aborts
// on a misaligned 16-byte access, as a GPU faults). Sizes are whole packs, packs plus a tail, and
// less than one pack; rows are whole packs wide or not. Kernels that split each row (losses,
// RMSNorm, embedding, cosine, sum of squares) take packs at any offset and width, between a
// scalar head up to the first 16-byte boundary and a scalar tail, so there offsets 1-7 test the
// head, and only rows whose tensors start at different phases go element by element. Outputs
// start as NaN, and the elements around each view hold a sentinel that must survive (a vector
// store past the end would not).
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/embedding.h"
#include "kernels/loss.h"
#include "kernels/reduce.h"
#include "kernels/residual_rmsnorm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace minitron::test {
namespace {

constexpr float kSentinel = 12288.0f;  // 3 * 2^12: exact in bf16
constexpr std::int64_t kGuard = 9;     // sentinel elements after a view: more than a pack

bool aligned16(const Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.data) % 16 == 0; }

// n elements at `offset` elements into a buffer of offset + n + kGuard, the rest sentinels.
class View {
 public:
  View(Device& dev, const std::vector<float>& host, DType dtype, std::int64_t offset)
      : dev_(&dev), offset_(offset), n_(static_cast<std::int64_t>(host.size())) {
    std::vector<float> all(static_cast<std::size_t>(offset + n_ + kGuard), kSentinel);
    std::copy(host.begin(), host.end(), all.begin() + offset);
    buffer_ = dev.put(all, dtype);
    view_ = buffer_.tensor().slice(offset, n_);
  }
  static View poisoned(Device& dev, std::int64_t n, DType dtype, std::int64_t offset) {
    return View(
        dev,
        std::vector<float>(static_cast<std::size_t>(n), std::numeric_limits<float>::quiet_NaN()),
        dtype, offset);
  }
  operator Tensor() const { return view_; }  // NOLINT: used where the backend takes a view
  std::vector<float> get() const { return dev_->get(view_); }
  // Every element outside the view still holds the sentinel.
  void expect_guards_intact(const std::string& what) const {
    const auto all = dev_->get(buffer_.tensor());
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(all.size()); ++i) {
      if (i >= offset_ && i < offset_ + n_) continue;
      EXPECT_EQ(all[static_cast<std::size_t>(i)], kSentinel)
          << what << ": element " << i << " outside the view written";
    }
  }

 private:
  Device* dev_;
  std::int64_t offset_, n_;
  BackendBuffer buffer_;
  Tensor view_;
};

struct Placement {
  std::int64_t n, in_offset, out_offset;
};

class CudaPacked : public ::testing::TestWithParam<DType> {
 protected:
  Device dev;
  DType dt() const { return GetParam(); }
  // As in test_cuda_elementwise: one fp32 expression rounded once on each side.
  double rel() const { return dt() == DType::BF16 ? kBf16Ulp : 1e-6; }
  // 64 elements: whole packs for bf16 (8) and f32 (4); 61: packs plus a tail; 5: under one
  // bf16 pack (tail only). Offsets: both aligned (vector), both off by one element, and only
  // the output off (one misaligned pointer must send the whole launch to the scalar path).
  static std::vector<Placement> placements() {
    return {{64, 0, 0}, {61, 0, 0}, {5, 0, 0}, {61, 1, 1}, {64, 0, 1}, {64, 1, 0}};
  }
};

TEST_P(CudaPacked, ViewsAreAlignedAsIntended) {
  auto a = View(dev, std::vector<float>(8, 1.0f), dt(), 0);
  auto b = View(dev, std::vector<float>(8, 1.0f), dt(), 1);
  EXPECT_TRUE(aligned16(a));
  EXPECT_FALSE(aligned16(b));
}

TEST_P(CudaPacked, CastAddScale) {
  const DType other = dt() == DType::BF16 ? DType::F32 : DType::BF16;
  for (const auto& [n, in_off, out_off] : placements()) {
    SCOPED_TRACE(str("n=", n, " offsets ", in_off, "/", out_off));
    const auto a = stored(random_floats(n, 101 + n, -3, 3), dt());
    const auto b = random_floats(n, 102 + n, -3, 3);
    auto ta = View(dev, a, dt(), in_off);
    auto tc = View::poisoned(dev, n, other, out_off);
    dev.backend().copy(tc, ta);
    // f32 <-> bf16 rounds to nearest even on both sides: exact.
    EXPECT_EQ(tc.get(), stored(a, other));
    tc.expect_guards_intact("cast");

    auto td = View(dev, a, dt(), out_off);
    auto tb = View(dev, b, DType::F32, in_off);
    dev.backend().add_inplace(td, tb);
    std::vector<float> want(n);
    for (std::int64_t i = 0; i < n; ++i) want[i] = a[i] + b[i];
    // One rounding of the exact fp32 sum into dt, on both sides: exact.
    want = stored(want, dt());
    EXPECT_EQ(td.get(), want);
    dev.backend().scale_inplace(td, -0.37f);
    for (float& x : want) x *= -0.37f;
    EXPECT_EQ(td.get(), stored(want, dt()));  // one fp32 product rounded once: exact
    td.expect_guards_intact("add/scale");
  }
}

// Element-wise kernels are grid-stride loops over at most 65536 blocks of 256 threads: past
// 2^24 elements (element by element: one view one element off) threads take a second turn,
// which no smaller test reaches. f32 only (the loop is the same for bf16); about 17M elements,
// about 6 s in all here.
TEST(CudaGridStride, ElementwiseLoopsPastTheBlockCap) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP()
      << "17M emulated threads: minutes under ThreadSanitizer (a loop, no barrier to check)";
#endif
  Device dev;
  const std::int64_t n = (std::int64_t{65536} * 256) + 37;
  std::vector<float> a(n), b(n);
  for (std::int64_t i = 0; i < n; ++i) {
    a[i] = static_cast<float>(i % 1000) * 0.25f;  // exact in f32, as are sums and products below
    b[i] = static_cast<float>(i % 7);
  }
  auto ta = View(dev, a, DType::F32, 1);
  auto tb = View(dev, b, DType::F32, 0);
  dev.backend().add_inplace(ta, tb);
  dev.backend().scale_inplace(ta, 0.5f);
  const auto got = ta.get();
  std::int64_t wrong = 0;
  for (std::int64_t i = 0; i < n; ++i) wrong += got[i] != (a[i] + b[i]) * 0.5f;
  EXPECT_EQ(wrong, 0) << "add_inplace + scale_inplace over " << n << " elements";

  // The SwiGLU backward's loop writes two outputs per element.
  {
    std::vector<float> gate(n), up(n), dh(n);
    for (std::int64_t i = 0; i < n; ++i) {
      gate[i] = static_cast<float>(i % 97) * 0.0625f - 3.0f;
      up[i] = static_cast<float>(i % 13) * 0.25f - 1.5f;
      dh[i] = static_cast<float>(i % 5) * 0.5f - 1.0f;
    }
    auto tg = View(dev, gate, DType::F32, 1), tu = View(dev, up, DType::F32, 0);
    auto tdh = View(dev, dh, DType::F32, 0);
    auto tdg = View::poisoned(dev, n, DType::F32, 0), tdu = View::poisoned(dev, n, DType::F32, 0);
    dev.backend().swiglu_backward(tdg, tdu, tdh, tg, tu, n);
    std::vector<float> dg(n), du(n);
    cpu::swiglu_backward(dg.data(), du.data(), dh.data(), gate.data(), up.data(), n);
    const auto got_dg = tdg.get(), got_du = tdu.get();
    wrong = 0;
    // One fp32 expression each side (as in CudaElementwise.SwiGlu): 1e-6 relative, tiny floor.
    for (std::int64_t i = 0; i < n; ++i)
      wrong += !(std::abs(got_dg[i] - dg[i]) <= 1e-6 * std::abs(dg[i]) + 1e-30) ||
               !(std::abs(got_du[i] - du[i]) <= 1e-6 * std::abs(du[i]) + 1e-30);
    EXPECT_EQ(wrong, 0) << "swiglu_backward over " << n << " elements";
  }
}

// The GEMM wrapper tells cuBLASLt each operand's alignment and caches the plan per alignment:
// the same shapes, aligned and then each operand in turn one element off, must all run (the
// emulated cuBLASLt refuses an operand less aligned than its plan was chosen for).
TEST_P(CudaPacked, MatmulAtEveryOperandsOffset) {
  const std::int64_t M = 5, N = 6, K = 7;
  const auto a = stored(random_floats(M * K, 131, -1, 1), dt());
  const auto b = stored(random_floats(K * N, 132, -1, 1), dt());
  std::vector<float> want(M * N);
  std::vector<double> bound(M * N);
  for (std::int64_t i = 0; i < M; ++i)
    for (std::int64_t j = 0; j < N; ++j) {
      double sum = 0, magnitude = 0;
      for (std::int64_t p = 0; p < K; ++p) {
        sum += static_cast<double>(a[i * K + p]) * b[p * N + j];
        magnitude += std::abs(static_cast<double>(a[i * K + p]) * b[p * N + j]);
      }
      want[i * N + j] = static_cast<float>(sum);
      // fp32 accumulation of 7 products (well within 1e-6 of their magnitudes), then one
      // rounding into dt.
      bound[i * N + j] = 1e-6 * magnitude + (dt() == DType::BF16 ? kBf16Ulp : 1e-7) * std::abs(sum);
    }
  for (const auto& [a_off, b_off, out_off] : std::vector<std::array<std::int64_t, 3>>{
           {0, 0, 0}, {1, 0, 0}, {0, 1, 0}, {0, 0, 1}, {1, 1, 1}}) {
    SCOPED_TRACE(str("offsets a ", a_off, ", b ", b_off, ", out ", out_off));
    auto ta = View(dev, a, dt(), a_off);
    auto tb = View(dev, b, dt(), b_off);
    auto tout = View::poisoned(dev, M * N, dt(), out_off);
    dev.backend().matmul(tout, ta, tb, M, N, K, false, false, 1.0f, 0.0f);
    expect_within("matmul", tout.get(), want, bound);
    tout.expect_guards_intact("matmul");
  }
}

TEST_P(CudaPacked, SwiGlu) {
  for (const auto& [n, in_off, out_off] : placements()) {
    SCOPED_TRACE(str("n=", n, " offsets ", in_off, "/", out_off));
    const auto gate = stored(random_floats(n, 111 + n, -6, 6), dt());
    const auto up = stored(random_floats(n, 112 + n, -2, 2), dt());
    const auto dh = stored(random_floats(n, 113 + n, -1, 1), dt());
    auto tg = View(dev, gate, dt(), in_off), tu = View(dev, up, dt(), in_off);
    auto tdh = View(dev, dh, dt(), in_off);
    auto th = View::poisoned(dev, n, dt(), out_off), tdg = View::poisoned(dev, n, dt(), out_off);
    auto tdu = View::poisoned(dev, n, dt(), out_off);
    dev.backend().swiglu_forward(th, tg, tu, n);
    dev.backend().swiglu_backward(tdg, tdu, tdh, tg, tu, n);
    std::vector<float> h(n), dg(n), du(n);
    cpu::swiglu_forward(h.data(), gate.data(), up.data(), n);
    cpu::swiglu_backward(dg.data(), du.data(), dh.data(), gate.data(), up.data(), n);
    // One fp32 expression of stored inputs rounded once: rel() plus a denormal floor.
    expect_near_all("swiglu h", th.get(), h, rel(), 1e-30);
    expect_near_all("swiglu dgate", tdg.get(), dg, rel(), 1e-30);
    expect_near_all("swiglu dup", tdu.get(), du, rel(), 1e-30);
    th.expect_guards_intact("swiglu h");
    tdg.expect_guards_intact("swiglu dgate");
    tdu.expect_guards_intact("swiglu dup");
  }
}

TEST_P(CudaPacked, AdamW) {
  AdamWStep step;
  step.learning_rate = 1e-2f;
  step.weight_decay = 0.1f;
  step.step = 2;
  step.grad_scale = 0.5f;
  const bool has_master = dt() == DType::BF16;
  // The master copy also one element past the parameters' offset: alone misaligned, it must
  // send the launch to the scalar path too.
  const std::vector<std::int64_t> master_shifts =
      has_master ? std::vector<std::int64_t>{0, 1} : std::vector<std::int64_t>{0};
  for (const auto& [n, in_off, out_off] : placements()) {
    for (const auto& [grad_type, master_shift] :
         {std::pair{DType::F32, master_shifts[0]}, std::pair{DType::BF16, master_shifts.back()}}) {
      SCOPED_TRACE(str("n=", n, " offsets ", in_off, "/", out_off, " grads ",
                       dtype_label(grad_type), " master shift ", master_shift));
      const auto master = random_floats(n, 121 + n, -1, 1);
      const auto grads = stored(random_floats(n, 122 + n, -0.1f, 0.1f), grad_type);
      const auto m0 = random_floats(n, 123 + n, -0.01f, 0.01f);
      const auto v0 = random_floats(n, 124 + n, 0, 1e-3f);
      auto tp = View(dev, master, dt(), out_off);
      auto tg = View(dev, grads, grad_type, in_off);
      auto tm = View(dev, m0, DType::F32, out_off), tv = View(dev, v0, DType::F32, in_off);
      std::vector<View> tmaster;
      if (has_master) tmaster.push_back(View(dev, master, DType::F32, out_off + master_shift));
      dev.backend().adamw_update(tp, has_master ? Tensor(tmaster[0]) : Tensor{}, tg, tm, tv, step);

      std::vector<float> p = master, m = m0, v = v0;
      cpu::adamw_update(p.data(), grads.data(), m.data(), v.data(), n, step);
      // The same fp32 operations in the same order: 1e-6 relative, tiny absolute floors.
      expect_near_all("adamw m", tm.get(), m, 1e-6, 1e-12);
      expect_near_all("adamw v", tv.get(), v, 1e-6, 1e-15);
      if (has_master) {
        const auto got_master = tmaster[0].get();
        expect_near_all("adamw master", got_master, p, 1e-6, 1e-9);
        EXPECT_EQ(tp.get(), stored(got_master, DType::BF16));  // the rounded master, exactly
        tmaster[0].expect_guards_intact("adamw master");
      } else {
        expect_near_all("adamw params", tp.get(), p, 1e-6, 1e-9);
      }
      tp.expect_guards_intact("adamw params");
      tm.expect_guards_intact("adamw m");
      tv.expect_guards_intact("adamw v");
    }
  }
}

struct RowCase {
  std::int64_t N, D, offset, weight_offset, out_offset;
};

// Row kernels split every row into a scalar head, packs and a scalar tail, so all of these take
// packs somewhere. D = 64: whole packs per row; 200: whole packs, not a multiple of a warp's 32
// packs; 45, 37, 100 (bf16), 4100 (bf16): odd widths, so each row starts at another phase (the
// weight shares it in only some rows: packs for the streams, weight element by element in the
// others). Offsets 1-7 move every row's head; the weight alone (its packs fall back); the output
// alone (x and out at different phases: those rows go element by element). N = 70: two of the
// weight gradient's 64-row chunks, the second partial; at D = 64, offset 4 the bf16 partial sums
// take packs after a 4-column head. Few rows elsewhere: under ThreadSanitizer each emulated
// thread costs ~1000x more.
std::vector<RowCase> row_cases() {
  return {{70, 64, 0, 0, 0},  {9, 200, 0, 0, 0}, {9, 45, 0, 0, 0},  {37, 64, 1, 1, 1},
          {9, 64, 0, 1, 0},   {1, 8, 1, 0, 1},   {10, 37, 3, 3, 3}, {6, 100, 5, 2, 5},
          {2, 4100, 7, 7, 7}, {5, 64, 2, 2, 6},  {70, 64, 4, 4, 4}};
}

TEST_P(CudaPacked, RmsNormForwardAndBackward) {
  const float eps = 1e-5f;
  for (const auto& [N, D, off, woff, out_off] : row_cases()) {
    SCOPED_TRACE(str("N=", N, " D=", D, " offsets ", off, "/", woff, "/", out_off));
    const auto x = stored(random_floats(N * D, 131 + D, -2, 2), dt());
    const auto w = stored(random_floats(D, 132, 0.5f, 1.5f), dt());
    auto tx = View(dev, x, dt(), off), tw = View(dev, w, dt(), woff);
    auto out = View::poisoned(dev, N * D, dt(), out_off);
    auto rstd = dev.poisoned(N, DType::F32);
    dev.backend().rmsnorm_forward(out, rstd, tx, tw, N, D, eps);
    std::vector<float> want(N * D), want_rstd(N);
    cpu::rmsnorm_forward(want.data(), want_rstd.data(), x.data(), w.data(), N, D, eps);
    // fp32 sum of D <= 4100 squares, each lane adding <= 130 of them before 5 shuffle levels
    // (< 1e-5 relative); bf16 output rounded twice (x * rstd, then the weight product) against
    // the reference's once.
    expect_near_all("rmsnorm rstd", dev.get(rstd), want_rstd, 2e-5, 0);
    expect_near_all("rmsnorm out", out.get(), want, dt() == DType::BF16 ? 2 * kBf16Ulp : 2e-5,
                    1e-30);
    out.expect_guards_intact("rmsnorm out");

    const auto dout = stored(random_floats(N * D, 133 + D, -1, 1), dt());
    const auto din0 = stored(random_floats(N * D, 134 + D, -1, 1), dt());
    auto tdout = View(dev, dout, dt(), off), tdin = View(dev, din0, dt(), out_off);
    auto tdw = dev.put(std::vector<float>(D, 0.0f), DType::F32);
    auto tr = dev.put(want_rstd, DType::F32);
    dev.backend().rmsnorm_backward(tdin, tdw, tdout, tx, tw, tr, N, D);
    std::vector<float> din = din0, dw(D, 0.0f);
    cpu::rmsnorm_backward(din.data(), dw.data(), dout.data(), x.data(), w.data(), want_rstd.data(),
                          N, D);
    // As in test_cuda_norm_embedding: the increment's fp32 dot of D terms (<= 130 per lane,
    // then 5 shuffle levels), then one rounding.
    expect_near_all("rmsnorm din", tdin.get(), din, rel(), dt() == DType::BF16 ? 2e-3 : 2e-5);
    tdin.expect_guards_intact("rmsnorm din");
    // As in test_cuda_norm_embedding: the kernel rounds x * rstd to dt before the product (the
    // fp32 reference does not), so each term is off by up to half a dt ulp of itself; fp32 sums
    // of <= 70 terms add ~1e-6 of the sum of |terms|.
    std::vector<double> bound(D);
    for (std::int64_t j = 0; j < D; ++j) {
      double terms = 0;
      for (std::int64_t n = 0; n < N; ++n)
        terms += std::abs(dout[n * D + j] * x[n * D + j] * want_rstd[n]);
      bound[j] = (dt() == DType::BF16 ? kBf16Ulp : 1e-6) * terms + 1e-6;
    }
    expect_within("rmsnorm dweight", dev.get(tdw), dw, bound);
  }
}

TEST_P(CudaPacked, ResidualRmsNorm) {
  const float eps = 1e-5f;
  for (const auto& [N, D, off, woff, out_off] : row_cases()) {
    SCOPED_TRACE(str("N=", N, " D=", D, " offsets ", off, "/", woff, "/", out_off));
    const auto x = stored(random_floats(N * D, 141 + D, -2, 2), dt());
    const auto branch = stored(random_floats(N * D, 142 + D, -1, 1), dt());
    const auto w = stored(random_floats(D, 143, 0.5f, 1.5f), dt());
    auto tx = View(dev, x, dt(), off), tb = View(dev, branch, dt(), off);
    auto tw = View(dev, w, dt(), woff);
    auto residual_out = View::poisoned(dev, N * D, dt(), off);
    auto out = View::poisoned(dev, N * D, dt(), out_off);
    auto rstd = dev.poisoned(N, DType::F32);
    dev.backend().residual_rmsnorm_forward(residual_out, out, rstd, tx, tb, tw, N, D, eps);
    std::vector<float> want_residual(N * D), want(N * D), want_rstd(N);
    cpu::residual_rmsnorm_forward(want_residual.data(), want.data(), want_rstd.data(), x.data(),
                                  branch.data(), w.data(), N, D, eps);
    // As in test_cuda_residual_rmsnorm: the stored sum is exact; rstd and out within the
    // bounds derived there (bf16: 1 ulp on rstd, 3 on out).
    EXPECT_EQ(residual_out.get(), stored(want_residual, dt()));
    expect_near_all("rstd", dev.get(rstd), want_rstd, dt() == DType::BF16 ? kBf16Ulp : 2e-5, 0);
    const auto got = out.get();
    expect_near_all("out", got, want, dt() == DType::BF16 ? 3 * kBf16Ulp : 2e-5, 1e-30);
    residual_out.expect_guards_intact("residual_out");
    out.expect_guards_intact("out");

    // In place (branch's view becomes the stream): the same bits.
    auto inplace_out = View::poisoned(dev, N * D, dt(), out_off);
    dev.backend().residual_rmsnorm_forward(tb, inplace_out, rstd, tx, tb, tw, N, D, eps);
    EXPECT_EQ(tb.get(), residual_out.get());
    EXPECT_EQ(inplace_out.get(), got);
    tb.expect_guards_intact("in-place stream");
  }
}

// Logit rows of V = 64 at offset 0 (every row whole aligned packs), 61 at offset 1 (each row
// starts at another phase: scalar head, packs, scalar tail) and 5 at offset 1 (under a pack).
// A row is a block of 512 emulated threads: few rows, as each costs ~1 s under ThreadSanitizer.
struct LossCase {
  std::int64_t V, offset;
};
std::vector<LossCase> loss_cases() { return {{64, 0}, {61, 1}, {5, 1}}; }

TEST_P(CudaPacked, CrossEntropy) {
  const std::int64_t rows = 4;
  for (const auto& [V, off] : loss_cases()) {
    SCOPED_TRACE(str("V=", V, " offset ", off));
    const auto logits = stored(random_floats(rows * V, 151 + V, -8, 8), dt());
    // Targets in the head, the tail and the body of a row, and one ignored row.
    const std::vector<std::int32_t> targets = {0, -1, static_cast<std::int32_t>(V - 1),
                                               static_cast<std::int32_t>(V / 2)};
    auto tl = View(dev, logits, dt(), off);
    auto tt = dev.put_i32(targets);
    auto losses = dev.poisoned(rows, DType::F32);
    const float grad_scale = 0.25f;
    dev.backend().cross_entropy(losses, tl, tt, rows, V, grad_scale);
    std::vector<float> want = logits, want_losses(rows);
    cpu::cross_entropy(want_losses.data(), want.data(), targets.data(), rows, V, grad_scale);
    // As in test_cuda_loss: fp32 online log-sum-exp vs double, ~1e-6 relative on the loss;
    // the gradient's exp(x - lse) ~1e-6 relative (bf16: one rounding), tiny-probability floor.
    expect_near_all("cross_entropy losses", dev.get(losses), want_losses, 1e-6, 1e-5);
    expect_near_all("cross_entropy gradient", tl.get(), want, dt() == DType::BF16 ? kBf16Ulp : 1e-5,
                    1e-9);
    tl.expect_guards_intact("cross_entropy logits");

    if (V != 61) continue;  // the loss alone: once, on rows with head, packs and tail
    auto tl2 = View(dev, logits, dt(), off);
    dev.backend().cross_entropy(losses, tl2, tt, rows, V, 0.0f);
    EXPECT_EQ(tl2.get(), logits);  // no gradient: the logits stay as they were
    expect_near_all("cross_entropy losses (no grad)", dev.get(losses), want_losses, 1e-6, 1e-5);
  }
}

TEST_P(CudaPacked, KlDivergence) {
  const std::int64_t rows = 2;
  const float tau = 2.0f, grad_scale = 0.5f;
  // Student and teacher at the same phase (packs; at V = 61 rows 0 and 1 start at different
  // phases) and, last, at different phases (element by element).
  for (const auto& [V, off, teacher_off] :
       std::vector<Placement>{{64, 0, 0}, {61, 1, 1}, {5, 1, 1}, {61, 1, 0}}) {
    SCOPED_TRACE(str("V=", V, " offsets ", off, "/", teacher_off));
    const auto student = stored(random_floats(rows * V, 161 + V, -4, 4), dt());
    const auto teacher = stored(random_floats(rows * V, 162 + V, -4, 4), dt());
    auto ts = View(dev, student, dt(), off), tt = View(dev, teacher, dt(), teacher_off);
    auto losses = dev.poisoned(rows, DType::F32);
    dev.backend().kl_divergence(losses, ts, tt, rows, V, tau, grad_scale);
    std::vector<float> s = student, want_losses(rows);
    cpu::kl_divergence(want_losses.data(), s.data(), teacher.data(), rows, V, tau, grad_scale);
    // As in test_cuda_loss: KL ~ 1 summed in fp32 over <= 64 terms, ~1e-6 each: 1e-5; the
    // gradient is a difference of fp32 probabilities (bf16: one rounding more).
    expect_near_all("kl losses", dev.get(losses), want_losses, 1e-5, 1e-5);
    expect_near_all("kl gradient", ts.get(), s, dt() == DType::BF16 ? kBf16Ulp : 1e-4, 1e-8);
    EXPECT_EQ(tt.get(), teacher);
    ts.expect_guards_intact("kl student");
    tt.expect_guards_intact("kl teacher");
  }
}

TEST_P(CudaPacked, Embedding) {
  const std::int64_t vocab = 5, N = 9;
  // Buckets for the backward at an odd width D (each dout row at its own phase): token 2 at
  // positions 0 and 8 (rows 8 * D apart: the same phase for bf16 and f32, so packs), token 3 at
  // 1 and 3 (different phases: element by element), tokens 4 and 0 once, token 1 three times.
  const std::vector<std::int32_t> tokens = {2, 3, 1, 3, 4, 1, 0, 1, 2};
  // Forward: table and output at the same phase (packs between a scalar head and tail) or not
  // (scalar). Backward (dout at the table's offset, the gradient at the output's): whole-pack
  // rows; odd widths 61 and 37; the gradient alone misaligned (no common phase: scalar); offset
  // 3 for both (a head of 1 (f32) or 5 (bf16 dout with an f32 gradient) columns); 4100 wide.
  for (const auto& [D, table_off, out_off] : std::vector<Placement>{
           {64, 0, 0}, {61, 1, 1}, {64, 0, 1}, {5, 1, 0}, {37, 3, 3}, {64, 3, 3}, {4100, 6, 6}}) {
    SCOPED_TRACE(str("D=", D, " offsets ", table_off, "/", out_off));
    const auto table = stored(random_floats(vocab * D, 171 + D, -1, 1), dt());
    auto ttable = View(dev, table, dt(), table_off);
    // Position 3 holds an id outside the vocabulary: its row must come out NaN.
    std::vector<std::int32_t> with_bad = tokens;
    with_bad[3] = static_cast<std::int32_t>(vocab);
    auto tk = dev.put_i32(with_bad);
    auto out = View::poisoned(dev, N * D, dt(), out_off);
    dev.backend().embedding_forward(out, tk, ttable, N, D);
    const auto got = out.get();
    int wrong = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t d = 0; d < D; ++d) {
        const float g = got[static_cast<std::size_t>(n * D + d)];
        // A copy: exact (the NaN row by its own test).
        const bool ok =
            n == 3 ? std::isnan(g) : g == table[static_cast<std::size_t>(with_bad[n] * D + d)];
        wrong += ok ? 0 : 1;
      }
    EXPECT_EQ(wrong, 0) << "embedding forward: elements not the table row (or NaN)";
    out.expect_guards_intact("embedding out");
    ttable.expect_guards_intact("embedding table");

    // Backward into an fp32 and a dt gradient that already hold values.
    auto tk_valid = dev.put_i32(tokens);
    const auto dout = stored(random_floats(N * D, 172 + D, -1, 1), dt());
    for (DType grad_type : dt() == DType::F32 ? std::vector<DType>{DType::F32}
                                              : std::vector<DType>{DType::F32, DType::BF16}) {
      SCOPED_TRACE(str("gradient ", dtype_label(grad_type)));
      const auto dtable0 = stored(random_floats(vocab * D, 173 + D, -1, 1), grad_type);
      auto tdout = View(dev, dout, dt(), table_off);
      auto tdtable = View(dev, dtable0, grad_type, out_off);
      dev.backend().embedding_backward(tdtable, tdout, tk_valid, N, D);
      std::vector<float> want = dtable0;
      cpu::embedding_backward(want.data(), dout.data(), tokens.data(), N, D, vocab);
      // Both add each row's contributions in position order in fp32 and round once into the
      // gradient's type: bit-identical.
      EXPECT_EQ(tdtable.get(), stored(want, grad_type));
      tdtable.expect_guards_intact("embedding dtable");
    }
  }
}

TEST_P(CudaPacked, Rope) {
  const std::int64_t B = 2, T = 3, heads = 2, position_offset = 5;
  // head_dim 32: half a multiple of both packs (vector when aligned); 24: half = 12, packs for
  // f32 (4) but not bf16 (8); 10: half = 5, scalar. Offsets of x and of inv_freq.
  for (const auto& [hd, x_off, f_off] :
       std::vector<Placement>{{32, 0, 0}, {24, 0, 0}, {10, 0, 0}, {32, 1, 0}, {32, 0, 1}}) {
    SCOPED_TRACE(str("head_dim ", hd, " offsets ", x_off, "/", f_off));
    std::vector<float> inv_freq(hd / 2);
    for (std::int64_t i = 0; i < hd / 2; ++i)
      inv_freq[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / hd));
    const std::int64_t n = B * T * heads * hd;
    const auto x = stored(random_floats(n, 181 + hd, -2, 2), dt());
    auto tx = View(dev, x, dt(), x_off);
    auto tf = View(dev, inv_freq, DType::F32, f_off);
    dev.backend().rope_forward(tx, tf, B, T, heads, hd, position_offset);
    std::vector<float> want = x;
    cpu::rope_forward(want.data(), inv_freq.data(), B, T, heads, hd, position_offset);
    // As in test_cuda_elementwise: fp32 vs range-reduced double cos/sin (~1e-7), then one
    // rounding into dt.
    const double r = dt() == DType::BF16 ? kBf16Ulp : 1e-6;
    const auto rotated = tx.get();
    expect_rope("rope", rotated, want, x, hd, r);
    dev.backend().rope_backward(tx, tf, B, T, heads, hd, position_offset);
    std::vector<float> back = rotated;
    cpu::rope_backward(back.data(), inv_freq.data(), B, T, heads, hd, position_offset);
    expect_rope("rope backward", tx.get(), back, rotated, hd, r);
    tx.expect_guards_intact("rope x");
  }
}

TEST_P(CudaPacked, SumOfSquares) {
  // Two whole 16384-element chunks plus a partial third (offset 1: every chunk has a head);
  // whole packs; packs plus a tail; under a pack at offset 3 (head only).
  const std::vector<std::pair<std::int64_t, std::int64_t>> cases = {
      {2 * 16384 + 61, 1}, {64, 0}, {61, 0}, {5, 3}};
  for (const auto& [n, off] : cases) {
    SCOPED_TRACE(str("n=", n, " offset ", off));
    const auto x = stored(random_floats(static_cast<std::size_t>(n), 191 + n, -2, 2), dt());
    auto tx = View(dev, x, dt(), off);
    const double want = cpu::sum_of_squares(x.data(), n);
    // Squares of floats are exact in double; only the order of <= 3.3e4 double additions
    // differs: relative error below n * 2^-53 ~ 4e-12.
    EXPECT_NEAR(dev.backend().sum_of_squares(tx), want, 1e-10 * want);
  }
}

TEST_P(CudaPacked, ReduceOverSequence) {
  const std::int64_t B = 2, T = 5;
  // Channels C at an offset: 64 (whole packs; at offset 3 every row starts 3 columns into a
  // pack: packs after a head), 100 (rows whole f32 packs, not bf16 ones: bf16 rows change phase
  // and go element by element), 37 (odd: element by element), 4100; the output's offset too.
  for (const auto& [C, off, out_off] :
       std::vector<Placement>{{64, 0, 0}, {64, 3, 1}, {100, 5, 0}, {37, 1, 2}, {4100, 6, 3}}) {
    const auto act = stored(random_floats(B * T * C, 201 + C, -3, 3), dt());
    auto ta = View(dev, act, dt(), off);
    for (auto reduction :
         {SequenceReduction::Mean, SequenceReduction::L2, SequenceReduction::Variance}) {
      SCOPED_TRACE(
          str("C=", C, " offsets ", off, "/", out_off, " reduction ", static_cast<int>(reduction)));
      auto out = View::poisoned(dev, B * C, DType::F32, out_off);
      dev.backend().reduce_over_sequence(out, ta, B, T, C, reduction);
      std::vector<float> want(B * C);
      cpu::reduce_over_sequence(want.data(), act.data(), B, T, C, reduction);
      // As in test_cuda_elementwise: fp32 sums of T = 5 terms vs the reference's double.
      expect_near_all("reduce_over_sequence", out.get(), want, 1e-5, 1e-6);
      out.expect_guards_intact("reduce_over_sequence out");
    }
  }
}

TEST_P(CudaPacked, RowCosine) {
  const std::int64_t rows = 3;
  // Rows of a and b at the same phase (packs between a scalar head and tail, at odd widths too:
  // a[r] and b[r] move together) or not (element by element), and one 4100 wide.
  for (const auto& [C, a_off, b_off] : std::vector<Placement>{
           {64, 0, 0}, {37, 3, 3}, {61, 1, 1}, {100, 1, 2}, {5, 1, 1}, {4100, 5, 5}}) {
    SCOPED_TRACE(str("C=", C, " offsets ", a_off, "/", b_off));
    auto a = stored(random_floats(rows * C, 211 + C, -1, 1), dt());
    auto b = random_floats(rows * C, 212 + C, -1, 1);
    for (std::int64_t c = 0; c < C; ++c) b[C + c] = a[C + c] * 0.5f;  // row 1: cosine 1
    b = stored(b, dt());
    auto ta = View(dev, a, dt(), a_off), tb = View(dev, b, dt(), b_off);
    auto out = View::poisoned(dev, rows, DType::F32, 1);
    dev.backend().row_cosine(out, ta, tb, rows, C);
    std::vector<float> want(rows);
    cpu::row_cosine(want.data(), a.data(), b.data(), rows, C);
    // Each fp32 sum is a thread's <= 21 terms then 8 tree levels: within ~30 * 2^-24 of the sum
    // of |terms| (<= |a||b| by Cauchy-Schwarz), so ~1.8e-6 absolute on the cosine at worst.
    expect_near_all("row_cosine", out.get(), want, 1e-5, 3e-6);
    out.expect_guards_intact("row_cosine out");
    ta.expect_guards_intact("row_cosine a");
    tb.expect_guards_intact("row_cosine b");
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaPacked, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& info) { return std::string(dtype_label(info.param)); });

}  // namespace
}  // namespace minitron::test
