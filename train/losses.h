// Losses over the LM head, computed chunk by chunk: a chunk of rows' logits is formed with
// one GEMM, reduced to per-row losses (fp32), turned into dlogits in place and pushed back
// through the head, so the full tokens x vocab logits are never in memory (vocab 128k-131k).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/backend.h"
#include "model/llama.h"

namespace minitron {

// Chunk buffers, allocated once per run: rows_per_chunk x vocab logits (two sets for
// distillation), and targets and per-row losses for up to max_rows rows.
class LossWorkspace {
 public:
  // rows_per_chunk = 0 picks Backend::loss_chunk_logits() logits per chunk, in whole 128-row
  // tiles (16M logits on a CPU: 64 MB in fp32).
  LossWorkspace(Backend& backend, std::int64_t vocab_size, std::int64_t max_rows,
                std::int64_t rows_per_chunk = 0, bool distillation = false);
  std::int64_t rows_per_chunk() const { return rows_per_chunk_; }

 private:
  Backend& backend_;
  std::int64_t vocab_size_, max_rows_, rows_per_chunk_;
  BackendBuffer logits_, teacher_logits_, losses_, targets_;
  std::vector<double> host_losses_;
  friend double cross_entropy_loss(LlamaModel&, std::span<const std::int32_t>, LossWorkspace&,
                                   float, std::vector<float>*);
  friend double distillation_loss(LlamaModel&, LlamaModel&, LossWorkspace&, float, float);
};

// Mean next-token cross-entropy (nats) over rows whose target is >= 0, after model.forward().
// With grad_weight != 0 (Training mode) it also back-propagates grad_weight * d(mean)/d(logits)
// into the head (call model.backward() afterwards). per_row, when given, receives every
// row's loss (0 for ignored rows). Returns the mean (0 when no row counts).
double cross_entropy_loss(LlamaModel& model, std::span<const std::int32_t> targets,
                          LossWorkspace& workspace, float grad_weight = 0.0f,
                          std::vector<float>* per_row = nullptr);

// Mean forward KL(p_teacher || p_student) per token at temperature tau, after both models ran
// forward() on the same tokens. With grad_weight != 0, back-propagates into the student's head. The teacher gets no
// gradient and may be an Inference-mode model.
double distillation_loss(LlamaModel& student, LlamaModel& teacher, LossWorkspace& workspace,
                         float temperature, float grad_weight = 0.0f);

}  // namespace minitron
