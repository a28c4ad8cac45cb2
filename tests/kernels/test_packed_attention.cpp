// Packed documents on every engine: a row holding several documents, run with `positions`
// (attention and RoPE, forward and backward), must give what each document gives when it runs
// alone as its own sequence, on the same engine and the same stored inputs. The documents sit
// off every tile size (a 1-token document first and one inside a row, documents across the 16-,
// 32- and 64-row tiles, 8 KV heads in groups of 2, a 130 + 70 row where the CUDA kernels skip
// whole tiles, documents starting on a tile's last key). Then the comparison is shown to bite: the
// same row without positions (one causal sequence, documents seeing each other) and RoPE at
// positions that do not restart both miss the per-document results by far more than the tolerance.
//
// Engines: cpu (the BLAS fast path), cpu-f64, and, built with the emulator, the CUDA engine in
// fp32 (the CUDA-core kernels) and bf16 (the tensor-core kernels).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "core/backend.h"
#include "kernels/make_backend.h"
#include "util/random.h"
#if defined(MINITRON_EMULATE)
#include "kernels/cuda/cuda_backend_factory.h"
#endif

namespace minitron::test {
namespace {

struct Engine {
  std::string label;
  std::function<std::unique_ptr<Backend>()> make;
  DType dtype;  // the storage dtype the ops run in
};

std::vector<Engine> engines() {
  std::vector<Engine> list = {{"cpu", [] { return make_backend("cpu"); }, DType::F32},
                              {"cpu_f64", [] { return make_backend("cpu-f64"); }, DType::F64}};
#if defined(MINITRON_EMULATE)
  list.push_back({"cuda_emulated_f32", [] { return make_cuda_backend(); }, DType::F32});
  list.push_back({"cuda_emulated_bf16", [] { return make_cuda_backend(); }, DType::BF16});
#endif
  return list;
}
void PrintTo(const Engine& engine, std::ostream* os) { *os << engine.label; }

struct Packing {
  std::int64_t Hq, Hkv, hd;
  std::vector<std::vector<std::int64_t>> documents;  // per row, lengths summing to T
  std::int64_t B() const { return static_cast<std::int64_t>(documents.size()); }
  std::int64_t T() const {
    std::int64_t T = 0;
    for (std::int64_t length : documents.front()) T += length;
    return T;
  }
};

void PrintTo(const Packing& p, std::ostream* os) {
  *os << "T " << p.T() << ", " << p.Hq << "/" << p.Hkv << " heads, head_dim " << p.hd;
}

// The third puts document starts on the last key of a key tile (31: the CUDA-core 32-key tiles;
// 63: the tensor-core 64-key blocks and the CUDA-core second tile) with query tiles (16, 32) and
// warps (16 rows) beginning one token later, in those documents: the first query of such a tile
// sees exactly one key of the tile before, the case where every tile-skipping test is tightest.
const Packing kPackings[] = {{16, 8, 16, {{1, 40, 27, 32}, {70, 1, 29}}},
                             {4, 2, 64, {{130, 70}}},
                             {2, 1, 32, {{31, 32, 37}}}};

// How close the packed run and the documents run alone must be, per engine dtype.
struct Tolerance {
  double out, lse, grad;
};
Tolerance tolerance_for(DType dtype) {
  switch (dtype) {
    // Both runs compute the same sums in another order (other tile boundaries): fp32 rounding
    // of softmaxes over <= 130 keys of |v| <= 1, and of gradient sums of terms |.| <~ 4.
    case DType::F32: return {1e-5, 1e-5, 2e-5};
    case DType::F64: return {1e-12, 1e-12, 1e-12};
    // The tensor-core kernels round P (and dS) to bf16 against running maxima that depend on
    // where the tiles fall, so each run is off the exact values by the bounds of the op table
    // (out: 2^-8 + one rounding; gradients: 6 x 2^-8, tests/kernels/test_backend_ops.cpp):
    // twice those between them. lse sums fp32 probabilities: fp32 noise only.
    default: return {2 * (1.0 / 256 + 1.0 / 512), 1e-5, 2 * 6.0 / 256};
  }
}

std::vector<float> random_values(std::int64_t n, std::uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = static_cast<float>(rng.uniform() * 2.0 - 1.0);
  return v;
}

// An engine tensor of `dtype` holding `host` (rounded to the dtype by the upload).
BackendBuffer put(Backend& b, const std::vector<float>& host, DType dtype) {
  BackendBuffer t(b, static_cast<std::int64_t>(host.size()), dtype);
  b.upload(t, host.data());
  return t;
}
std::vector<float> get(Backend& b, Tensor t) {
  std::vector<float> host(static_cast<std::size_t>(t.numel));
  b.download(host.data(), t);
  return host;
}

double max_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  return worst;
}

// Every output of one run over the whole packed batch, laid out as the packed run's.
struct Results {
  std::vector<float> out, lse, dq, dk, dv, rope_q;
};

class PackedAttention : public ::testing::TestWithParam<std::tuple<Engine, Packing>> {
 protected:
  void SetUp() override {
    const auto& [engine, p] = GetParam();
    try {
      backend_ = engine.make();
    } catch (const Error& e) {
      GTEST_SKIP() << engine.label << " engine unavailable: " << e.what();
    }
    dtype_ = engine.dtype;
    s_ = p;
    const std::int64_t N = s_.B() * s_.T();
    Backend& b = *backend_;
    q_ = put(b, random_values(N * s_.Hq * s_.hd, 11), dtype_);
    k_ = put(b, random_values(N * s_.Hkv * s_.hd, 12), dtype_);
    v_ = put(b, random_values(N * s_.Hkv * s_.hd, 13), dtype_);
    dout_ = put(b, random_values(N * s_.Hq * s_.hd, 14), dtype_);
    std::vector<float> inv_freq(static_cast<std::size_t>(s_.hd / 2));
    for (std::size_t i = 0; i < inv_freq.size(); ++i)  // Llama's theta 10000
      inv_freq[i] = static_cast<float>(std::pow(10000.0, -2.0 * static_cast<double>(i) / s_.hd));
    inv_freq_ = put(b, inv_freq, DType::F32);
  }

  // Positions restarting at each document (independently written: 0 .. length - 1 per document).
  std::vector<std::int32_t> document_positions() const {
    std::vector<std::int32_t> positions;
    for (const auto& row : s_.documents)
      for (std::int64_t length : row)
        for (std::int64_t i = 0; i < length; ++i) positions.push_back(static_cast<std::int32_t>(i));
    return positions;
  }

  // The packed batch in one call per op, with `positions` (empty: plain causal rows).
  Results run_packed(const std::vector<std::int32_t>& positions) {
    Backend& b = *backend_;
    const std::int64_t B = s_.B(), T = s_.T(), N = B * T, Hq = s_.Hq, Hkv = s_.Hkv, hd = s_.hd;
    BackendBuffer pos;
    if (!positions.empty()) {
      pos = BackendBuffer(b, N, DType::I32);
      b.upload_i32(pos, positions.data());
    }
    const Tensor positions_tensor = positions.empty() ? Tensor{} : pos.tensor();
    BackendBuffer out(b, N * Hq * hd, dtype_), lse(b, B * Hq * T, stat_dtype());
    BackendBuffer dq(b, N * Hq * hd, dtype_), dk(b, N * Hkv * hd, dtype_),
        dv(b, N * Hkv * hd, dtype_);
    b.attention_forward(out, lse, q_, k_, v_, B, T, T, Hq, Hkv, hd, positions_tensor);
    b.attention_backward(dq, dk, dv, dout_, out, lse, q_, k_, v_, B, T, Hq, Hkv, hd,
                         positions_tensor);
    BackendBuffer rotated(b, N * Hq * hd, dtype_);
    b.copy(rotated, q_);
    b.rope_forward(rotated, inv_freq_, B, T, Hq, hd, 0, positions_tensor);
    return {get(b, out), get(b, lse), get(b, dq), get(b, dk), get(b, dv), get(b, rotated)};
  }

  // Each document alone: a batch of one sequence of its own length, no positions, on views of
  // the same engine tensors; the results put back where the packed run has them.
  Results run_alone() {
    Backend& b = *backend_;
    const std::int64_t T = s_.T(), N = s_.B() * T, Hq = s_.Hq, Hkv = s_.Hkv, hd = s_.hd;
    const std::int64_t QD = Hq * hd, KVD = Hkv * hd;
    Results r{std::vector<float>(static_cast<std::size_t>(N * QD)),
              std::vector<float>(static_cast<std::size_t>(s_.B() * Hq * T)),
              std::vector<float>(static_cast<std::size_t>(N * QD)),
              std::vector<float>(static_cast<std::size_t>(N * KVD)),
              std::vector<float>(static_cast<std::size_t>(N * KVD)),
              std::vector<float>(static_cast<std::size_t>(N * QD))};
    for (std::int64_t row = 0; row < s_.B(); ++row) {
      std::int64_t start = 0;
      for (std::int64_t L : s_.documents[static_cast<std::size_t>(row)]) {
        const std::int64_t first = row * T + start;  // the document's first token
        const Tensor q = q_.tensor().slice(first * QD, L * QD);
        const Tensor k = k_.tensor().slice(first * KVD, L * KVD);
        const Tensor v = v_.tensor().slice(first * KVD, L * KVD);
        const Tensor dout = dout_.tensor().slice(first * QD, L * QD);
        BackendBuffer out(b, L * QD, dtype_), lse(b, Hq * L, stat_dtype());
        BackendBuffer dq(b, L * QD, dtype_), dk(b, L * KVD, dtype_), dv(b, L * KVD, dtype_);
        b.attention_forward(out, lse, q, k, v, 1, L, L, Hq, Hkv, hd);
        b.attention_backward(dq, dk, dv, dout, out, lse, q, k, v, 1, L, Hq, Hkv, hd);
        BackendBuffer rotated(b, L * QD, dtype_);
        b.copy(rotated, q);
        b.rope_forward(rotated, inv_freq_, 1, L, Hq, hd, 0);
        const auto place = [&](std::vector<float>& all, Tensor t, std::int64_t width) {
          const std::vector<float> part = get(b, t);
          std::copy(part.begin(), part.end(), all.begin() + first * width);
        };
        place(r.out, out, QD);
        place(r.dq, dq, QD);
        place(r.dk, dk, KVD);
        place(r.dv, dv, KVD);
        place(r.rope_q, rotated, QD);
        const std::vector<float> l = get(b, lse);  // [Hq, L] into [B, Hq, T]
        for (std::int64_t h = 0; h < Hq; ++h)
          for (std::int64_t t = 0; t < L; ++t)
            r.lse[static_cast<std::size_t>((row * Hq + h) * T + start + t)] =
                l[static_cast<std::size_t>(h * L + t)];
        start += L;
      }
    }
    return r;
  }

  DType stat_dtype() const { return dtype_ == DType::F64 ? DType::F64 : DType::F32; }

  std::unique_ptr<Backend> backend_;
  DType dtype_ = DType::F32;
  Packing s_;
  BackendBuffer q_, k_, v_, dout_, inv_freq_;
};

TEST_P(PackedAttention, MatchesEachDocumentAlone) {
  const Tolerance tol = tolerance_for(dtype_);
  const Results packed = run_packed(document_positions());
  const Results alone = run_alone();
  EXPECT_LE(max_difference(packed.out, alone.out), tol.out);
  EXPECT_LE(max_difference(packed.lse, alone.lse), tol.lse);
  EXPECT_LE(max_difference(packed.dq, alone.dq), tol.grad);
  EXPECT_LE(max_difference(packed.dk, alone.dk), tol.grad);
  EXPECT_LE(max_difference(packed.dv, alone.dv), tol.grad);
  // RoPE at restarting positions is exactly the rotation each document gets alone: the same
  // float angle position * inv_freq, the same cos and sin, the same rounding.
  EXPECT_EQ(packed.rope_q, alone.rope_q);
}

// The comparison above fails where documents see each other or positions run on: without
// positions (one causal sequence per row) every output of a later document mixes in the earlier
// ones, and RoPE rotates by the row position; each misses by more than twice the tolerance.
TEST_P(PackedAttention, CrossTalkAndRunningPositionsAreCaught) {
  const Tolerance tol = tolerance_for(dtype_);
  const Results causal = run_packed({});
  const Results alone = run_alone();
  EXPECT_GT(max_difference(causal.out, alone.out), 2 * tol.out);
  EXPECT_GT(max_difference(causal.lse, alone.lse), 2 * tol.lse);
  EXPECT_GT(max_difference(causal.dq, alone.dq), 2 * tol.grad);
  EXPECT_GT(max_difference(causal.dk, alone.dk), 2 * tol.grad);
  EXPECT_GT(max_difference(causal.dv, alone.dv), 2 * tol.grad);
  EXPECT_GT(max_difference(causal.rope_q, alone.rope_q), 0.1);
}

INSTANTIATE_TEST_SUITE_P(Engines, PackedAttention,
                         ::testing::Combine(::testing::ValuesIn(engines()),
                                            ::testing::ValuesIn(kPackings)),
                         [](const auto& info) {
                           const Packing& p = std::get<1>(info.param);
                           return str(std::get<0>(info.param).label, "_T", p.T(), "_Hq", p.Hq,
                                      "_Hkv", p.Hkv, "_hd", p.hd);
                         });

}  // namespace
}  // namespace minitron::test
