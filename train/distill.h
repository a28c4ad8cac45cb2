// Knowledge distillation as a training Objective: the teacher runs forward only (Inference
// mode: no gradients, no saved activations), the student forward and backward, and the loss is
// the forward KL(p_teacher || p_student) at temperature tau, optionally mixed with the hard-label
// cross-entropy: loss = (1 - w) * KL + w * CE (w = --hard-label-weight, 0 in the recipe).
// Optionally the intermediate-state loss of train/hidden_state_loss.h joins it as
// L = L_logits + weight * alpha * L_is with alpha = L_logits / L_is (no gradient through alpha).
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <span>

#include "core/backend.h"
#include "model/llama.h"
#include "train/hidden_state_loss.h"
#include "train/losses.h"
#include "train/trainer.h"

namespace minitron {

// The one distillation objective: `minitron distill` and the short runs of `prune --search-steps`
// (temperature 1, hard-label weight 0) both use it. It also times the teacher.
class TeacherDistillationObjective : public Objective {
 public:
  // workspace must have been built with distillation = true for the trainer's batch x sequence
  // rows. hard_label_weight in [0, 1].
  // hidden_states, when given (and intermediate_weight > 0), adds the intermediate-state loss;
  // it must outlive the objective. response_only (SFT shards, as Model-Optimizer's --sft
  // distillation): the KL counts only rows whose target is not masked (>= 0) and is their mean;
  // it does not combine with the intermediate-state loss, which covers every token.
  TeacherDistillationObjective(LlamaModel& teacher, LossWorkspace& workspace, float temperature = 1.0f,
                               float hard_label_weight = 0.0f, HiddenStateDistillation* hidden_states = nullptr,
                               float intermediate_weight = 0.0f, bool response_only = false);
  const char* name() const override {
    if (hidden_states_) return hard_label_weight_ > 0 ? "kl+ce+hidden" : "kl+hidden";
    return hard_label_weight_ > 0 ? "kl+ce" : "kl";
  }
  double step(LlamaModel& student, std::span<const std::int32_t> inputs, std::span<const std::int32_t> targets,
              std::span<const std::int32_t> positions, std::int64_t batch, std::int64_t sequence,
              float grad_weight) override;

  // Seconds spent in the teacher's forward and in the whole step() so far: the teacher's share
  // of the step (the trainer's optimizer and student backward come on top).
  double teacher_seconds() const { return teacher_seconds_; }
  double step_seconds() const { return step_seconds_; }
  // KL and CE of the last micro-batch (CE only when hard_label_weight > 0, else NaN).
  double last_kl() const { return last_kl_; }
  double last_cross_entropy() const { return last_ce_; }
  // L_is and the dynamic alpha of the last micro-batch (NaN without the intermediate loss).
  double last_intermediate() const { return last_is_; }
  double last_alpha() const { return last_alpha_; }

  // Logged each step: the KL, and the CE / L_is / alpha terms when they are on.
  std::vector<std::pair<std::string, double>> step_metrics() const override;

  // The hidden-state map W is trained, saved and restored with the student.
  void all_reduce_gradients(Communicator& communicator) override;
  void optimizer_step(std::int64_t step, const OptimizerConfig& config) override;
  void save_state(const std::filesystem::path& checkpoint) const override;
  void restore_state(const std::filesystem::path& checkpoint) override;

 private:
  // (1 - w) KL + w CE over the same student logits chunk, gradients summed before head_backward
  // (head_backward overwrites the hidden-state gradient of its rows, so two separate loss calls
  // cannot be combined). No buffer of its own: the CE takes the chunk's logits formed again in
  // the teacher's chunk buffer once the KL is done with it.
  double mixed_loss(LlamaModel& student, std::span<const std::int32_t> targets, float grad_weight);

  LlamaModel& teacher_;
  LossWorkspace& workspace_;
  float temperature_, hard_label_weight_;
  HiddenStateDistillation* hidden_states_;
  float intermediate_weight_;
  bool response_only_;
  double teacher_seconds_ = 0, step_seconds_ = 0, last_kl_ = 0, last_ce_ = 0;
  double last_is_ = std::numeric_limits<double>::quiet_NaN(), last_alpha_ = std::numeric_limits<double>::quiet_NaN();
};

}  // namespace minitron
