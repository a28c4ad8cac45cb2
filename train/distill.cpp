#include "train/distill.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "util/error.h"

namespace minitron {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

TeacherDistillationObjective::TeacherDistillationObjective(LlamaModel& teacher, LossWorkspace& workspace,
                                                           float temperature, float hard_label_weight,
                                                           HiddenStateDistillation* hidden_states,
                                                           float intermediate_weight, bool response_only)
    : teacher_(teacher),
      workspace_(workspace),
      temperature_(temperature),
      hard_label_weight_(hard_label_weight),
      hidden_states_(intermediate_weight > 0 ? hidden_states : nullptr),
      intermediate_weight_(intermediate_weight),
      response_only_(response_only) {
  if (!(temperature > 0)) fail_expected("--temperature", str(temperature), "a value > 0");
  if (!(intermediate_weight >= 0 && std::isfinite(intermediate_weight)))
    fail_expected("--intermediate-loss-weight", str(intermediate_weight), "a finite value >= 0 (0 turns the loss off)");
  if (intermediate_weight > 0 && !hidden_states)
    fail("distillation: an intermediate loss weight was given without the hidden-state loss to weigh");
  if (intermediate_weight > 0 && response_only)
    fail_expected("--intermediate-loss-weight", "given for SFT shards",
                  "0 with SFT shards: the hidden-state loss covers every token, not only the responses");
  if (!(hard_label_weight >= 0 && hard_label_weight <= 1))
    fail_expected("--hard-label-weight", str(hard_label_weight), "a value in [0, 1]");
}

std::vector<std::pair<std::string, double>> TeacherDistillationObjective::step_metrics() const {
  std::vector<std::pair<std::string, double>> terms;
  if (hard_label_weight_ > 0 || hidden_states_) terms.emplace_back("kl", last_kl_);
  if (hard_label_weight_ > 0) terms.emplace_back("ce", last_ce_);
  if (hidden_states_) {
    terms.emplace_back("l_is", last_is_);
    terms.emplace_back("alpha", last_alpha_);
  }
  return terms;
}

double TeacherDistillationObjective::step(LlamaModel& student, std::span<const std::int32_t> inputs,
                                          std::span<const std::int32_t> targets,
                                          std::span<const std::int32_t> positions, std::int64_t batch,
                                          std::int64_t sequence, float grad_weight) {
  const auto t0 = std::chrono::steady_clock::now();
  ForwardOptions teacher_options, student_options;
  // The teacher reads the same documents as the student: its targets come from their contexts.
  teacher_options.positions = student_options.positions = positions;
  if (hidden_states_) {
    teacher_options.observer = &hidden_states_->teacher_observer();
    student_options.observer = &hidden_states_->student_observer();
  }
  teacher_.forward(inputs, batch, sequence, teacher_options);
  teacher_.backend().synchronize();  // so the teacher's time is its own on asynchronous engines
  teacher_seconds_ += seconds_since(t0);
  student.forward(inputs, batch, sequence, student_options);
  double loss;
  if (hard_label_weight_ > 0) {
    loss = mixed_loss(student, targets, grad_weight);
  } else {
    loss = last_kl_ = distillation_loss(student, teacher_, workspace_, temperature_, grad_weight,
                                        response_only_ ? targets : std::span<const std::int32_t>());
    last_ce_ = std::numeric_limits<double>::quiet_NaN();
  }
  if (hidden_states_) {
    // alpha = L_logits / L_is, a plain number: the two terms weigh the same whatever their
    // scales, and no gradient flows through the ratio.
    last_is_ = hidden_states_->loss();
    last_alpha_ = last_is_ > 0 ? loss / last_is_ : 0.0;
    if (grad_weight != 0.0f)
      hidden_states_->backward(student, grad_weight * intermediate_weight_ * static_cast<float>(last_alpha_));
    loss += intermediate_weight_ * last_alpha_ * last_is_;
  }
  student.backend().synchronize();
  step_seconds_ += seconds_since(t0);
  return loss;
}

double TeacherDistillationObjective::mixed_loss(LlamaModel& student, std::span<const std::int32_t> targets,
                                                float grad_weight) {
  const std::int64_t rows = student.rows(), V = student.config().vocab_size;
  MINITRON_ASSERT(static_cast<std::int64_t>(targets.size()) == rows);
  std::int64_t counted = 0;
  for (std::int32_t t : targets) counted += t >= 0;
  const float w = hard_label_weight_;
  // The KL's rows: every row, or the counted ones only (response_only).
  const std::int64_t kl_rows = response_only_ ? counted : rows;
  const float kl_scale = kl_rows > 0 ? grad_weight * (1.0f - w) / static_cast<float>(kl_rows) : 0.0f;
  std::int64_t row0 = 0;  // the chunks come in row order
  const float ce_scale = counted > 0 ? grad_weight * w / static_cast<float>(counted) : 0.0f;
  Backend& b = student.backend();
  const bool backpropagate = grad_weight != 0.0f;
  const std::span<const double> losses =
      for_each_logits_chunk(student, &teacher_, targets, workspace_, 2, backpropagate, [&](const LogitsChunk& chunk) {
        b.kl_divergence(chunk.losses[0], chunk.logits, chunk.teacher_logits, chunk.rows, V, temperature_, kl_scale);
        if (response_only_ && kl_scale != 0.0f)
          zero_rows_without_target(b, chunk.logits, targets.subspan(row0, chunk.rows), V);
        // The loss kernels write a gradient only for a scale != 0 and leave the logits as they
        // were otherwise. A KL that wrote its gradient has overwritten the student's logits, which
        // the cross-entropy needs: the same GEMM forms them again, bit for bit, in the teacher's
        // buffer (the KL has read it). One more head GEMM per chunk, instead of a third chunk of
        // logits kept beside the two.
        Tensor ce_logits = chunk.logits;
        if (kl_scale != 0.0f) {
          ce_logits = chunk.teacher_logits;
          student.logits(ce_logits, row0, chunk.rows);
        }
        row0 += chunk.rows;
        b.cross_entropy(chunk.losses[1], ce_logits, chunk.targets, chunk.rows, V, ce_scale);
        if (!backpropagate) return;
        // A term that adds nothing (w = 1, or no counted target for CE) must not add its raw logits.
        if (kl_scale != 0.0f && ce_scale != 0.0f)
          b.add_inplace(chunk.logits, ce_logits);  // both scaled gradients now
        else if (kl_scale == 0.0f && ce_scale == 0.0f)
          b.zero(chunk.logits);
      });
  const std::span<const double> kl = losses.first(static_cast<std::size_t>(rows)), ce = losses.subspan(kl.size());
  if (response_only_) {
    double sum = 0.0;
    for (std::int64_t r = 0; r < rows; ++r)
      if (targets[r] >= 0) sum += kl[r];
    last_kl_ = counted > 0 ? sum / static_cast<double>(counted) : 0.0;
  } else {
    last_kl_ = std::accumulate(kl.begin(), kl.end(), 0.0) / static_cast<double>(rows);
  }
  last_ce_ = counted > 0 ? std::accumulate(ce.begin(), ce.end(), 0.0) / static_cast<double>(counted) : 0.0;
  return (1.0 - w) * last_kl_ + w * last_ce_;
}

void TeacherDistillationObjective::all_reduce_gradients(Communicator& communicator) {
  if (hidden_states_) hidden_states_->all_reduce_gradients(communicator);
}

void TeacherDistillationObjective::optimizer_step(std::int64_t step, const OptimizerConfig& config) {
  if (hidden_states_) hidden_states_->optimizer_step(step, config);
}

void TeacherDistillationObjective::save_state(const std::filesystem::path& checkpoint) const {
  if (hidden_states_) hidden_states_->save_state(checkpoint);
}

void TeacherDistillationObjective::restore_state(const std::filesystem::path& checkpoint) {
  if (hidden_states_) hidden_states_->restore_state(checkpoint);
}

}  // namespace minitron
