// Knowledge distillation as a training Objective: the teacher runs forward only (Inference
// mode: no gradients, no saved activations), the student forward and backward, and the loss is
// the forward KL(p_teacher || p_student) at temperature tau, optionally mixed with the hard-label
// cross-entropy: loss = (1 - w) * KL + w * CE (w = --hard-label-weight, 0 in the recipe).
#pragma once

#include <cstdint>
#include <span>

#include "model/backend.h"
#include "model/llama.h"
#include "train/losses.h"
#include "train/trainer.h"

namespace minitron {

// Named apart from prune/'s short-search DistillationObjective (same namespace, both libraries
// link into the binary); this one adds the hard-label mix and times the teacher.
class TeacherDistillationObjective : public Objective {
 public:
  // workspace must have been built with distillation = true for the trainer's batch x sequence
  // rows. hard_label_weight in [0, 1].
  TeacherDistillationObjective(LlamaModel& teacher, LossWorkspace& workspace, float temperature = 1.0f,
                               float hard_label_weight = 0.0f);
  const char* name() const override { return hard_label_weight_ > 0 ? "kl+ce" : "kl"; }
  double step(LlamaModel& student, std::span<const std::int32_t> inputs, std::span<const std::int32_t> targets,
              std::int64_t batch, std::int64_t sequence, float grad_weight) override;

  // Seconds spent in the teacher's forward and in the whole step() so far: the teacher's share
  // of the step (the trainer's optimizer and student backward come on top).
  double teacher_seconds() const { return teacher_seconds_; }
  double step_seconds() const { return step_seconds_; }
  // KL and CE of the last micro-batch (CE only when hard_label_weight > 0, else NaN).
  double last_kl() const { return last_kl_; }
  double last_cross_entropy() const { return last_ce_; }

 private:
  // (1 - w) KL + w CE over the same student logits chunk, gradients summed before head_backward
  // (head_backward overwrites the hidden-state gradient of its rows, so two separate loss calls
  // cannot be combined).
  double mixed_loss(LlamaModel& student, std::span<const std::int32_t> targets, float grad_weight);

  LlamaModel& teacher_;
  LossWorkspace& workspace_;
  float temperature_, hard_label_weight_;
  BackendBuffer student_logits_, ce_logits_, teacher_logits_, losses_, targets_;
  double teacher_seconds_ = 0, step_seconds_ = 0, last_kl_ = 0, last_ce_ = 0;
};

}  // namespace minitron
