// The chunked distillation loss (train/distill.h, train/losses.h) on any engine, against
// references that do not chunk:
// - the LM head's weight gradient and the loss against a double-precision computation from the
//   full logits of both models (each model's head run once over every row) and the student's
//   final hidden state: a chunk skipped, run twice, or given another chunk's teacher rows or
//   targets leaves rows out of the gradient or pairs them wrongly, which fails it;
// - the mixed loss ((1 - w) KL + w CE, whose cross-entropy takes the student's logits formed
//   again in the teacher's chunk buffer) against the formulation it replaced, rebuilt here from
//   the backend's ops (a copy of the student's logits per chunk): the same bits.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "model/llama.h"
#include "train/distill.h"
#include "train/losses.h"
#include "util/error.h"

namespace minitron::testing {

struct DistillationBatch {
  static constexpr std::int64_t kBatch = 2, kSequence = 8, kRows = kBatch * kSequence;
  std::vector<std::int32_t> inputs, targets;
  explicit DistillationBatch(std::int64_t vocab) {
    for (std::int64_t i = 0; i < kRows; ++i) {
      inputs.push_back(static_cast<std::int32_t>((i * 37 + 5) % vocab));
      targets.push_back(static_cast<std::int32_t>((i * 53 + 2) % vocab));
    }
    targets[6] = -1;  // one row without a target: the CE's mean counts 15 rows, the KL's 16
  }
};

// A teacher (Inference mode, as distill runs it) and a student (Training mode) on one backend.
struct DistillationModels {
  LlamaModel teacher, student;
  DistillationModels(Backend& backend, const ModelConfig& teacher_config, const ModelConfig& student_config)
      : teacher(teacher_config, backend, DistillationBatch::kBatch, DistillationBatch::kSequence, ModelMode::Inference),
        student(student_config, backend, DistillationBatch::kBatch, DistillationBatch::kSequence, ModelMode::Training) {
    auto init = [](LlamaModel& m, std::uint64_t seed) {
      std::vector<float> p(static_cast<std::size_t>(m.table().total_numel()));
      initialize_parameters(m.config(), m.table(), p, seed, /*std=*/0.3);  // logits far from uniform
      m.set_parameters(p);
    };
    init(teacher, 21);
    init(student, 22);
  }
};

inline std::vector<double> download(Backend& b, Tensor t) {
  std::vector<double> out(static_cast<std::size_t>(t.numel));
  b.download_f64(out.data(), t);
  return out;
}

// Rows x vocab logits of a model's last forward, its head run once over every row.
inline std::vector<double> all_logits(LlamaModel& m) {
  Backend& b = m.backend();
  BackendBuffer logits(b, m.rows() * m.config().vocab_size, b.activation_dtype());
  m.logits(logits, 0, m.rows());
  return download(b, logits);
}

// relative: the engine's rounding of each dlogit term (see the callers); the bound of an element
// of the head's gradient is relative x the sum of its terms' magnitudes, plus 1e-6 of the
// scales' for the fp32 softmax differences that cancel (p_s - p_t of nearly equal rows).
inline void expect_head_gradient_covers_every_row(Backend& b, const ModelConfig& teacher_config,
                                                  const ModelConfig& student_config, double relative) {
  const DistillationBatch batch(student_config.vocab_size);
  const std::int64_t N = DistillationBatch::kRows, V = student_config.vocab_size, D = student_config.hidden_size;
  DistillationModels models(b, teacher_config, student_config);
  const ParameterTable& table = models.student.table();
  std::int64_t counted = 0;
  for (std::int32_t t : batch.targets) counted += t >= 0;
  for (const float w : {0.0f, 0.3f}) {
    for (const std::int64_t chunk : {std::int64_t{1}, std::int64_t{5}, std::int64_t{7}, N}) {
      SCOPED_TRACE(str("hard-label weight ", w, ", ", chunk, "-row chunks"));
      LossWorkspace workspace(b, V, N, chunk, /*distillation=*/true);
      TeacherDistillationObjective objective(models.teacher, workspace, 1.0f, w);
      models.student.zero_gradients();
      const double loss = objective.step(models.student, batch.inputs, batch.targets, {}, DistillationBatch::kBatch,
                                         DistillationBatch::kSequence, 1.0f);
      const std::vector<double> grads = download(b, models.student.gradients());
      const std::vector<double> s = all_logits(models.student), t = all_logits(models.teacher);
      const std::vector<double> h = download(b, models.student.final_hidden());

      // Per row: p = softmax of each model's logits, the KL and CE terms and their dlogits.
      const double kl_scale = (1.0 - w) / static_cast<double>(N), ce_scale = w / static_cast<double>(counted);
      std::vector<double> g_kl(static_cast<std::size_t>(N * V)), g_ce(g_kl.size());
      double kl_sum = 0, ce_sum = 0;
      for (std::int64_t r = 0; r < N; ++r) {
        auto log_softmax = [&](const std::vector<double>& l) {
          double m = -1e300, z = 0;
          for (std::int64_t v = 0; v < V; ++v) m = std::max(m, l[std::size_t(r * V + v)]);
          for (std::int64_t v = 0; v < V; ++v) z += std::exp(l[std::size_t(r * V + v)] - m);
          std::vector<double> out(static_cast<std::size_t>(V));
          for (std::int64_t v = 0; v < V; ++v) out[std::size_t(v)] = l[std::size_t(r * V + v)] - m - std::log(z);
          return out;
        };
        const std::vector<double> ls = log_softmax(s), lt = log_softmax(t);
        const std::int32_t target = batch.targets[std::size_t(r)];
        if (target >= 0) ce_sum -= ls[std::size_t(target)];
        for (std::int64_t v = 0; v < V; ++v) {
          const double ps = std::exp(ls[std::size_t(v)]), pt = std::exp(lt[std::size_t(v)]);
          kl_sum += pt * (lt[std::size_t(v)] - ls[std::size_t(v)]);
          g_kl[std::size_t(r * V + v)] = kl_scale * (ps - pt);
          if (target >= 0) g_ce[std::size_t(r * V + v)] = ce_scale * (ps - (v == target ? 1.0 : 0.0));
        }
      }
      // fp32 per-row terms (values up to ~10) against double: a few fp32 ulps each.
      EXPECT_NEAR(loss, (1.0 - w) * kl_sum / N + w * ce_sum / static_cast<double>(counted), 1e-5);
      EXPECT_NEAR(objective.last_kl(), kl_sum / N, 1e-5);
      if (w > 0) {
        EXPECT_NEAR(objective.last_cross_entropy(), ce_sum / static_cast<double>(counted), 1e-5);
      }

      // dW_head[v, d] = sum over rows of dlogits[r, v] x hidden[r, d].
      std::int64_t bad = 0;
      double worst = 0;
      for (std::int64_t v = 0; v < V; ++v) {
        for (std::int64_t d = 0; d < D; ++d) {
          double want = 0, magnitude = 0, slack = 0;
          for (std::int64_t r = 0; r < N; ++r) {
            const double hr = h[std::size_t(r * D + d)];
            const double a = g_kl[std::size_t(r * V + v)], c = g_ce[std::size_t(r * V + v)];
            want += (a + c) * hr;
            magnitude += (std::abs(a) + std::abs(c)) * std::abs(hr);
            slack += (kl_scale + ce_scale) * std::abs(hr);
          }
          const double got = grads[std::size_t(table.lm_head() + v * D + d)];
          const double error = std::abs(got - want), bound = relative * magnitude + 1e-6 * slack;
          if (error > bound) ++bad;
          worst = std::max(worst, error / bound);
        }
      }
      EXPECT_EQ(bad, 0) << "of " << V * D << " head-gradient elements outside their bound (worst at " << worst
                        << " x the bound)";
    }
  }
}

// The mixed loss as it was computed before the cross-entropy reused the teacher's chunk buffer:
// a copy of the student's chunk logits, the KL on the originals, the CE on the copy, the two
// gradients added. Leaves the gradient in the student's head and the per-row losses' means.
struct CopyFormulation {
  double kl = 0, ce = 0;
};

inline CopyFormulation copy_formulation(Backend& b, DistillationModels& models, const DistillationBatch& batch, float w,
                                        std::int64_t chunk) {
  const std::int64_t N = DistillationBatch::kRows, V = models.student.config().vocab_size;
  std::int64_t counted = 0;
  for (std::int32_t t : batch.targets) counted += t >= 0;
  const float kl_scale = (1.0f - w) / static_cast<float>(N), ce_scale = w / static_cast<float>(counted);
  const DType act = b.activation_dtype(), loss = act == DType::F64 ? DType::F64 : DType::F32;
  BackendBuffer s(b, chunk * V, act), t(b, chunk * V, act), copy(b, chunk * V, act), kl(b, N, loss), ce(b, N, loss),
      targets(b, N, DType::I32);
  b.upload_i32(targets, batch.targets.data());
  for (std::int64_t row0 = 0; row0 < N; row0 += chunk) {
    const std::int64_t rows = std::min(chunk, N - row0);
    const Tensor sv = s.tensor().slice(0, rows * V), tv = t.tensor().slice(0, rows * V),
                 cv = copy.tensor().slice(0, rows * V);
    models.student.logits(sv, row0, rows);
    models.teacher.logits(tv, row0, rows);
    b.copy(cv, sv);
    b.kl_divergence(kl.tensor().slice(row0, rows), sv, tv, rows, V, 1.0f, kl_scale);
    b.cross_entropy(ce.tensor().slice(row0, rows), cv, targets.tensor().slice(row0, rows), rows, V, ce_scale);
    b.add_inplace(sv, cv);
    models.student.head_backward(sv, row0, rows);
  }
  const std::vector<double> kl_rows = download(b, kl), ce_rows = download(b, ce);
  return {std::accumulate(kl_rows.begin(), kl_rows.end(), 0.0) / static_cast<double>(N),
          std::accumulate(ce_rows.begin(), ce_rows.end(), 0.0) / static_cast<double>(counted)};
}

inline void expect_mixed_loss_matches_copy_formulation(Backend& b, const ModelConfig& teacher_config,
                                                       const ModelConfig& student_config) {
  const DistillationBatch batch(student_config.vocab_size);
  const std::int64_t N = DistillationBatch::kRows, B = DistillationBatch::kBatch, T = DistillationBatch::kSequence;
  DistillationModels models(b, teacher_config, student_config);
  const float w = 0.3f;
  for (const std::int64_t chunk : {std::int64_t{5}, N}) {
    SCOPED_TRACE(str(chunk, "-row chunks"));
    models.student.zero_gradients();
    models.teacher.forward(batch.inputs, B, T);
    models.student.forward(batch.inputs, B, T);
    const CopyFormulation want = copy_formulation(b, models, batch, w, chunk);
    models.student.backward();
    const std::vector<double> want_grads = download(b, models.student.gradients());

    LossWorkspace workspace(b, student_config.vocab_size, N, chunk, /*distillation=*/true);
    TeacherDistillationObjective objective(models.teacher, workspace, 1.0f, w);
    models.student.zero_gradients();
    objective.step(models.student, batch.inputs, batch.targets, {}, B, T, 1.0f);
    models.student.backward();
    const std::vector<double> grads = download(b, models.student.gradients());
    EXPECT_EQ(objective.last_kl(), want.kl);
    EXPECT_EQ(objective.last_cross_entropy(), want.ce);
    ASSERT_EQ(grads.size(), want_grads.size());
    std::size_t differing = 0;
    for (std::size_t i = 0; i < grads.size(); ++i)
      differing += std::memcmp(&grads[i], &want_grads[i], sizeof(double)) != 0;
    EXPECT_EQ(differing, 0u) << "of " << grads.size() << " gradient elements differ from the copy formulation's";
  }
}

}  // namespace minitron::testing
