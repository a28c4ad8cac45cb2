// Losses over the LM head, computed chunk by chunk: a chunk of rows' logits is formed with
// one GEMM, reduced to per-row losses (fp32), turned into dlogits in place and pushed back
// through the head, so the full tokens x vocab logits are never in memory (vocab 128k-131k).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "core/backend.h"
#include "model/llama.h"

namespace minitron {

// Per-row loss terms a loss over the head may keep at once: the mixed distillation loss keeps
// its KL and its cross-entropy.
inline constexpr int kMaxLossTerms = 2;

// One chunk of rows as a loss over the head sees it.
struct LogitsChunk {
  std::int64_t rows = 0;
  Tensor logits;                 // rows x vocab, the model's; the loss leaves its scaled d(loss)/d(logits) here
  Tensor teacher_logits;         // the teacher's, when the loop was given one
  Tensor targets;                // the rows' targets, when the loop was given any
  Tensor losses[kMaxLossTerms];  // each loss term's per-row values, kept on the device
};
using ChunkLoss = std::function<void(const LogitsChunk&)>;

// Chunk buffers, allocated once per run: rows_per_chunk x vocab logits (two sets for
// distillation), and targets and per-row losses (kMaxLossTerms per row for distillation) for up
// to max_rows rows.
class LossWorkspace {
 public:
  // rows_per_chunk = 0 picks Backend::loss_chunk_logits() logits per chunk, in whole 128-row
  // tiles (16M logits on a CPU: 64 MB in fp32).
  LossWorkspace(Backend& backend, std::int64_t vocab_size, std::int64_t max_rows, std::int64_t rows_per_chunk = 0,
                bool distillation = false);
  std::int64_t rows_per_chunk() const { return rows_per_chunk_; }
  // The rows per chunk such a workspace takes (the constructor's rule), given the engine's
  // Backend::loss_chunk_logits(); and the bytes it allocates for them (the memory plan's).
  static std::int64_t chunk_rows(std::int64_t loss_chunk_logits, std::int64_t vocab_size, std::int64_t max_rows,
                                 std::int64_t rows_per_chunk = 0);
  static std::int64_t bytes(DType activation, std::int64_t vocab_size, std::int64_t max_rows,
                            std::int64_t rows_per_chunk, bool distillation);

 private:
  Backend& backend_;
  std::int64_t vocab_size_, max_rows_, rows_per_chunk_, loss_terms_;
  BackendBuffer logits_, teacher_logits_, losses_, targets_;
  std::vector<double> host_losses_;
  friend std::span<const double> for_each_logits_chunk(LlamaModel&, LlamaModel*, std::span<const std::int32_t>,
                                                       LossWorkspace&, int, bool, const ChunkLoss&);
};

// The loop every loss over the head runs, after model.forward() (and teacher->forward() on the
// same tokens): chunk by chunk of workspace.rows_per_chunk() rows, the model's (and the
// teacher's) logits, `chunk_loss`, and, with `backpropagate`, the head backward of the gradient
// it left in the logits. Targets are uploaded and the per-row losses downloaded once per call,
// not per chunk (each copy is a host sync). Returns the rows' values of the first `terms` loss
// terms, term k of row r at [k * rows + r], valid until the workspace's next loop.
std::span<const double> for_each_logits_chunk(LlamaModel& model, LlamaModel* teacher,
                                              std::span<const std::int32_t> targets, LossWorkspace& workspace,
                                              int terms, bool backpropagate, const ChunkLoss& chunk_loss);

// Mean next-token cross-entropy (nats) over rows whose target is >= 0, after model.forward().
// With grad_weight != 0 (Training mode) it also back-propagates grad_weight * d(mean)/d(logits)
// into the head (call model.backward() afterwards). per_row, when given, receives every
// row's loss (0 for ignored rows). Returns the mean (0 when no row counts).
double cross_entropy_loss(LlamaModel& model, std::span<const std::int32_t> targets, LossWorkspace& workspace,
                          float grad_weight = 0.0f, std::vector<float>* per_row = nullptr);

// Mean forward KL(p_teacher || p_student) per token at temperature tau, after both models ran
// forward() on the same tokens. With grad_weight != 0, back-propagates into the student's head. The teacher gets no
// gradient and may be an Inference-mode model. With targets (SFT data: responses only), the
// rows whose target is negative are left out of the mean and get no gradient (0 when no row counts).
double distillation_loss(LlamaModel& student, LlamaModel& teacher, LossWorkspace& workspace, float temperature,
                         float grad_weight = 0.0f, std::span<const std::int32_t> targets = {});

// Zeroes the rows of a chunk's logits gradient whose target is negative (the KL kernel writes
// every row's): rows_targets are the chunk's targets, logits rows x vocab.
void zero_rows_without_target(Backend& backend, Tensor logits, std::span<const std::int32_t> rows_targets,
                              std::int64_t vocab);

}  // namespace minitron
