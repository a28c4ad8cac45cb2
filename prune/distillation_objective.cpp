#include "prune/distillation_objective.h"

namespace minitron {

double DistillationObjective::step(LlamaModel& student, std::span<const std::int32_t> inputs,
                                   std::span<const std::int32_t> /*targets: KL needs none*/, std::int64_t batch,
                                   std::int64_t sequence, float grad_weight) {
  teacher_.forward(inputs, batch, sequence);
  student.forward(inputs, batch, sequence);
  return distillation_loss(student, teacher_, workspace_, temperature_, grad_weight);
}

}  // namespace minitron
