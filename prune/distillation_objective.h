// Forward KL to a teacher's next-token distribution as a training Objective, for the short
// distillation runs of the architecture search (`prune --search-steps`). The distillation
// issue's `minitron distill` may adopt this class or replace it with its own.
#pragma once

#include <span>

#include "model/llama.h"
#include "train/losses.h"
#include "train/trainer.h"

namespace minitron {

class DistillationObjective : public Objective {
 public:
  // The teacher (Inference mode is enough) must accept the trainer's batch and sequence sizes;
  // the workspace must have been built with distillation = true.
  DistillationObjective(LlamaModel& teacher, LossWorkspace& workspace, float temperature = 1.0f)
      : teacher_(teacher), workspace_(workspace), temperature_(temperature) {}
  const char* name() const override { return "kl"; }
  double step(LlamaModel& student, std::span<const std::int32_t> inputs, std::span<const std::int32_t> targets,
              std::int64_t batch, std::int64_t sequence, float grad_weight) override;

 private:
  LlamaModel& teacher_;
  LossWorkspace& workspace_;
  float temperature_;
};

}  // namespace minitron
