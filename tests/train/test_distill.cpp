// Distillation: the KL kernel and the chunked loss against PyTorch (tools/make_kl_fixture.py),
// chunked == unchunked, the hard-label mix, and the teacher staying untouched by training.
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "data/shards.h"
#include "kernels/make_backend.h"
#include "model/llama.h"
#include "tests/train/chunked_distillation_test_util.h"
#include "tests/train/distill_test_util.h"
#include "train/distill.h"
#include "train/losses.h"
#include "train/trainer.h"

namespace minitron {
namespace {

// Backend::kl_divergence on the fixture's logits: per-row losses and dlogits of the mean.
void check_kernel(const std::string& device, double tolerance) {
  const nlohmann::json f = testing::load_json_fixture("kl/kl_fixture.json", "tools/make_kl_fixture.py");
  const std::int64_t rows = f["rows"], V = f["vocab"];
  const std::vector<float> student = f["student_logits"].get<std::vector<float>>(),
                           teacher = f["teacher_logits"].get<std::vector<float>>();
  auto backend = make_backend(device);
  const DType act = backend->activation_dtype();
  for (const nlohmann::json& c : f["cases"]) {
    const float tau = c["temperature"];
    BackendBuffer s(*backend, rows * V, act), t(*backend, rows * V, act),
        losses(*backend, rows, act == DType::F64 ? DType::F64 : DType::F32);
    backend->upload(s, student.data());
    backend->upload(t, teacher.data());
    backend->kl_divergence(losses, s, t, rows, V, tau, 1.0f / static_cast<float>(rows));
    std::vector<double> got(static_cast<std::size_t>(rows));
    backend->download_f64(got.data(), losses);
    std::vector<float> grad(static_cast<std::size_t>(rows * V));
    backend->download(grad.data(), s);
    const auto per_row = c["per_row"].get<std::vector<double>>();
    const auto dlogits = c["dlogits"].get<std::vector<double>>();
    for (std::int64_t r = 0; r < rows; ++r)
      EXPECT_NEAR(got[static_cast<std::size_t>(r)], per_row[static_cast<std::size_t>(r)], tolerance)
          << device << " tau " << tau << " row " << r;
    for (std::size_t i = 0; i < grad.size(); ++i)
      EXPECT_NEAR(grad[i], dlogits[i], tolerance) << device << " tau " << tau << " dlogits[" << i << "]";
  }
}

// fp32: logits up to ~10 through log-softmax over 37 entries; the losses (up to ~10) carry
// a few ulps of fp32 each (~1e-6 relative), so 2e-5 absolute leaves margin.
TEST(KlDivergence, CpuKernelMatchesTorch) { check_kernel("cpu", 2e-5); }
// fp64 engine: only the fp32 rounding of the fixture's logits on upload separates it from
// torch's float64 (the upload takes float), ~1e-7 relative on logits of ~10.
TEST(KlDivergence, DoubleKernelMatchesTorch) { check_kernel("cpu-f64", 2e-5); }

TEST(KlDivergence, IdenticalRowHasZeroLoss) {
  const nlohmann::json f = testing::load_json_fixture("kl/kl_fixture.json", "tools/make_kl_fixture.py");
  for (const nlohmann::json& c : f["cases"])
    EXPECT_NEAR(c["per_row"][3].get<double>(), 0.0, 1e-15);  // row 3 is identical
}

// Two tiny models with the same vocabulary, different widths.
using Pair = testing::DistillPair;
using testing::gradients;

// The chunked loss of the models equals the plain double-precision KL of their full logits
// (computed here from model.logits()), and every chunk size gives the same loss and gradients.
TEST(DistillationLoss, ChunkedMatchesUnchunkedAndReference) {
  Pair p;
  const std::int64_t B = 2, T = 9, N = B * T, V = p.teacher_config.vocab_size;
  const auto tokens = testing::tiny_tokens(N, V);
  const auto teacher_logits = testing::forward_logits(p.teacher_config, p.teacher_params, tokens, B, T);
  const auto student_logits = testing::forward_logits(p.student_config, p.student_params, tokens, B, T);
  double reference = 0;
  for (std::int64_t r = 0; r < N; ++r) {
    auto log_softmax = [&](const std::vector<float>& l, std::int64_t v) {
      double m = -1e300, s = 0;
      for (std::int64_t k = 0; k < V; ++k) m = std::max(m, double(l[std::size_t(r * V + k)]));
      for (std::int64_t k = 0; k < V; ++k) s += std::exp(double(l[std::size_t(r * V + k)]) - m);
      return double(l[std::size_t(r * V + v)]) - m - std::log(s);
    };
    for (std::int64_t v = 0; v < V; ++v) {
      const double lt = log_softmax(teacher_logits, v), ls = log_softmax(student_logits, v);
      reference += std::exp(lt) * (lt - ls);
    }
  }
  reference /= static_cast<double>(N);

  testing::DistillModels models(p, B, T);
  std::vector<float> first_grad;
  double first_loss = 0;
  for (std::int64_t chunk : {N, std::int64_t{1}, std::int64_t{4}, std::int64_t{7}}) {
    LossWorkspace ws(*models.backend, V, N, chunk, /*distillation=*/true);
    models.teacher.forward(tokens, B, T);
    models.student.forward(tokens, B, T);
    models.student.zero_gradients();
    const double loss = distillation_loss(models.student, models.teacher, ws, 1.0f, 1.0f);
    models.student.backward();
    const auto grad = gradients(models.student);
    // fp32 logits and softmax sums over 50 entries vs the double reference on the same logits.
    EXPECT_NEAR(loss, reference, 1e-5) << "chunk " << chunk;
    if (first_grad.empty()) {
      first_grad = grad, first_loss = loss;
    } else {
      // Chunks change only which rows share a GEMM call; per-row math is identical, and the
      // LM-head gradient sums chunk contributions in another order (fp32, ~1e-7 relative).
      EXPECT_NEAR(loss, first_loss, 1e-6) << "chunk " << chunk;
      EXPECT_LE(testing::max_abs_diff(grad, first_grad), 1e-5 * std::max(1.0, testing::max_abs(first_grad)))
          << "chunk " << chunk;
    }
  }
}

// Chunks of 1, 5, 7 and all 16 rows, pure KL and mixed with hard labels: the head's gradient and
// the loss against the full logits in double (tests/train/chunked_distillation_test_util.h). fp32
// dlogits (2^-24 relative each, a few ulps from the kernels' softmax) summed in fp32 over 16 rows:
// 1e-5 of the terms' magnitudes is about a hundred ulps.
TEST(DistillationChunks, HeadGradientCoversEveryRow) {
  Pair p;
  auto backend = make_backend("cpu");
  testing::expect_head_gradient_covers_every_row(*backend, p.teacher_config, p.student_config, 1e-5);
}

// The mixed loss's cross-entropy on the student's logits formed again in the teacher's chunk
// buffer: the same bits as on a copy of them, on the fp32 and fp64 engines.
TEST(DistillationChunks, MixedLossMatchesTheCopyFormulation) {
  Pair p;
  for (const char* engine : {"cpu", "cpu-f64"}) {
    SCOPED_TRACE(engine);
    auto backend = make_backend(engine);
    testing::expect_mixed_loss_matches_copy_formulation(*backend, p.teacher_config, p.student_config);
  }
}

// (1 - w) KL + w CE: the loss and the gradient are the same mix of the separate ones.
TEST(DistillationObjective, HardLabelMixIsTheWeightedSum) {
  Pair p;
  const std::int64_t B = 2, T = 8, N = B * T, V = p.teacher_config.vocab_size;
  const auto all = testing::tiny_tokens(N + 1, V);
  const std::vector<std::int32_t> inputs(all.begin(), all.end() - 1), targets(all.begin() + 1, all.end());
  testing::DistillModels models(p, B, T);
  LossWorkspace ws(*models.backend, V, N, 5, /*distillation=*/true);

  auto run = [&](Objective& o, std::vector<float>& grad) {
    models.student.zero_gradients();
    const double loss = o.step(models.student, inputs, targets, {}, B, T, 1.0f);
    models.student.backward();
    grad = gradients(models.student);
    return loss;
  };
  std::vector<float> g_kl, g_ce, g_mix;
  TeacherDistillationObjective kl(models.teacher, ws, 1.0f, 0.0f);
  CrossEntropyObjective ce(ws);
  const float w = 0.3f;
  TeacherDistillationObjective mix(models.teacher, ws, 1.0f, w);
  const double l_kl = run(kl, g_kl), l_ce = run(ce, g_ce), l_mix = run(mix, g_mix);
  // Same fp32 numbers combined in double: only the mix's fp32 rounding differs.
  EXPECT_NEAR(l_mix, (1 - w) * l_kl + w * l_ce, 1e-5);
  EXPECT_NEAR(mix.last_kl(), l_kl, 1e-6);
  EXPECT_NEAR(mix.last_cross_entropy(), l_ce, 1e-6);
  std::vector<float> expected(g_kl.size());
  for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = (1 - w) * g_kl[i] + w * g_ce[i];
  // Summing the two dlogits before the head GEMM vs after the backward: fp32 reassociation.
  EXPECT_LE(testing::max_abs_diff(g_mix, expected), 1e-5 * std::max(1.0, testing::max_abs(expected)));
  // The ends of the mix, where one term's gradient scale is 0: that term must add nothing (its
  // kernel leaves the logits raw rather than writing a zero gradient). w = 1 is cross-entropy
  // alone; a batch with no counted target is the KL part alone. Tolerances as above.
  TeacherDistillationObjective hard_only(models.teacher, ws, 1.0f, 1.0f);
  std::vector<float> g_hard;
  run(hard_only, g_hard);
  EXPECT_LE(testing::max_abs_diff(g_hard, g_ce), 1e-5 * std::max(1.0, testing::max_abs(g_ce)));
  const std::vector<std::int32_t> ignored(targets.size(), -1);
  models.student.zero_gradients();
  mix.step(models.student, inputs, ignored, {}, B, T, 1.0f);
  models.student.backward();
  const std::vector<float> g_unlabelled = gradients(models.student);
  for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = (1 - w) * g_kl[i];
  EXPECT_LE(testing::max_abs_diff(g_unlabelled, expected), 1e-5 * std::max(1.0, testing::max_abs(expected)));
  EXPECT_THROW(TeacherDistillationObjective(models.teacher, ws, 1.0f, 1.5f), Error);
  EXPECT_THROW(TeacherDistillationObjective(models.teacher, ws, 0.0f, 0.0f), Error);
}

// Training with the objective moves the student and leaves the teacher bit for bit alone.
TEST(DistillationObjective, TeacherIsNotModifiedByTraining) {
  Pair p;
  testing::TempDir dir;
  const std::int64_t B = 2, T = 8, V = p.teacher_config.vocab_size;
  write_shard(dir / "train.bin", testing::tiny_tokens(200, V, 4));
  testing::DistillModels models(p, B, T);
  EXPECT_TRUE(models.teacher.gradients().empty());  // an Inference-mode model has no gradient storage
  LossWorkspace ws(*models.backend, V, B * T, 0, /*distillation=*/true);
  TeacherDistillationObjective objective(models.teacher, ws);
  TrainOptions o;
  o.batch_size = B;
  o.sequence_length = T;
  o.steps = 3;
  o.optimizer.learning_rate = 1e-2;
  o.optimizer.warmup_steps = 0;
  o.output = dir / "out";
  o.save_dtype = SafetensorsDType::F32;
  o.train_shards = {dir / "train.bin"};
  const TrainSummary s = run_training(models.student, objective, o);
  EXPECT_EQ(s.steps, 3);
  std::vector<float> after(p.teacher_params.size()), student_after(p.student_params.size());
  models.teacher.get_parameters(after);
  models.student.get_parameters(student_after);
  EXPECT_EQ(0, std::memcmp(after.data(), p.teacher_params.data(), after.size() * sizeof(float)));
  EXPECT_GT(testing::max_abs_diff(student_after, p.student_params), 0.0);
  EXPECT_GT(objective.teacher_seconds(), 0.0);
  EXPECT_LE(objective.teacher_seconds(), objective.step_seconds());
}

}  // namespace
}  // namespace minitron
