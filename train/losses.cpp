#include "train/losses.h"

#include <algorithm>
#include <numeric>

#include "util/error.h"

namespace minitron {

std::int64_t LossWorkspace::chunk_rows(std::int64_t loss_chunk_logits, std::int64_t vocab_size, std::int64_t max_rows,
                                       std::int64_t rows_per_chunk) {
  if (rows_per_chunk <= 0) {
    rows_per_chunk = std::max<std::int64_t>(1, loss_chunk_logits / vocab_size);
    // Whole 128-row GEMM tiles: 2092 rows would cost a 17th tile for 44 rows.
    if (rows_per_chunk > 128) rows_per_chunk -= rows_per_chunk % 128;
  }
  return std::min(rows_per_chunk, max_rows);
}

std::int64_t LossWorkspace::bytes(DType activation, std::int64_t vocab_size, std::int64_t max_rows,
                                  std::int64_t rows_per_chunk, bool distillation) {
  const auto act = static_cast<std::int64_t>(dtype_size(activation));
  const auto loss = static_cast<std::int64_t>(dtype_size(activation == DType::F64 ? DType::F64 : DType::F32));
  const std::int64_t terms = distillation ? kMaxLossTerms : 1;
  return (distillation ? 2 : 1) * rows_per_chunk * vocab_size * act + terms * max_rows * loss + max_rows * 4;
}

LossWorkspace::LossWorkspace(Backend& backend, std::int64_t vocab_size, std::int64_t max_rows,
                             std::int64_t rows_per_chunk, bool distillation)
    : backend_(backend), vocab_size_(vocab_size), max_rows_(max_rows) {
  rows_per_chunk_ = chunk_rows(backend.loss_chunk_logits(), vocab_size, max_rows, rows_per_chunk);
  loss_terms_ = distillation ? kMaxLossTerms : 1;
  const DType act = backend.activation_dtype();
  logits_ = BackendBuffer(backend, rows_per_chunk_ * vocab_size, act);
  if (distillation) teacher_logits_ = BackendBuffer(backend, rows_per_chunk_ * vocab_size, act);
  // Targets and per-row losses for every row: uploaded once and downloaded once per call, not
  // per chunk (each copy is a host sync). Losses are fp32, except on the double engine of
  // gradient checks.
  losses_ = BackendBuffer(backend, loss_terms_ * max_rows, act == DType::F64 ? DType::F64 : DType::F32);
  targets_ = BackendBuffer(backend, max_rows, DType::I32);
  host_losses_.resize(static_cast<std::size_t>(loss_terms_ * max_rows));
}

std::span<const double> for_each_logits_chunk(LlamaModel& model, LlamaModel* teacher,
                                              std::span<const std::int32_t> targets, LossWorkspace& ws, int terms,
                                              bool backpropagate, const ChunkLoss& chunk_loss) {
  const std::int64_t rows = model.rows(), V = model.config().vocab_size;
  MINITRON_ASSERT(ws.vocab_size_ == V, "loss workspace built for another vocabulary");
  MINITRON_ASSERT(rows <= ws.max_rows_, "loss workspace built for ", ws.max_rows_, " rows, not ", rows);
  MINITRON_ASSERT(terms >= 1 && terms <= ws.loss_terms_, "loss workspace built for ", ws.loss_terms_,
                  " loss terms per row, not ", terms);
  MINITRON_ASSERT(targets.empty() || static_cast<std::int64_t>(targets.size()) == rows);
  if (teacher) {
    if (teacher->config().vocab_size != V)
      fail_expected("distillation",
                    str("teacher vocabulary ", teacher->config().vocab_size, " differs from the student's ", V),
                    "teacher and student sharing one tokenizer");
    MINITRON_ASSERT(teacher->rows() == rows, "teacher and student ran on different batches");
    MINITRON_ASSERT(!ws.teacher_logits_.tensor().empty(), "workspace built without distillation buffers");
  }
  Backend& b = ws.backend_;
  if (!targets.empty()) b.upload_i32(ws.targets_.tensor().slice(0, rows), targets.data());
  for (std::int64_t row0 = 0; row0 < rows; row0 += ws.rows_per_chunk_) {
    LogitsChunk chunk;
    chunk.rows = std::min(ws.rows_per_chunk_, rows - row0);
    chunk.logits = ws.logits_.tensor().slice(0, chunk.rows * V);
    model.logits(chunk.logits, row0, chunk.rows);
    if (teacher) {
      chunk.teacher_logits = ws.teacher_logits_.tensor().slice(0, chunk.rows * V);
      teacher->logits(chunk.teacher_logits, row0, chunk.rows);
    }
    if (!targets.empty()) chunk.targets = ws.targets_.tensor().slice(row0, chunk.rows);
    for (int k = 0; k < terms; ++k) chunk.losses[k] = ws.losses_.tensor().slice(k * rows + row0, chunk.rows);
    chunk_loss(chunk);
    if (backpropagate) model.head_backward(chunk.logits, row0, chunk.rows);
  }
  b.download_f64(ws.host_losses_.data(), ws.losses_.tensor().slice(0, terms * rows));
  return std::span<const double>(ws.host_losses_).first(static_cast<std::size_t>(terms * rows));
}

double cross_entropy_loss(LlamaModel& model, std::span<const std::int32_t> targets, LossWorkspace& ws,
                          float grad_weight, std::vector<float>* per_row) {
  const std::int64_t rows = model.rows(), V = model.config().vocab_size;
  MINITRON_ASSERT(static_cast<std::int64_t>(targets.size()) == rows);
  std::int64_t counted = 0;
  for (std::int32_t t : targets) {
    if (t >= V) fail_expected("targets", str("token id ", t), str("ids below the vocabulary size ", V));
    counted += t >= 0;
  }
  if (per_row) per_row->assign(static_cast<std::size_t>(rows), 0.0f);
  if (counted == 0) return 0.0;
  // d(mean)/d(loss_r) = 1 / counted for every counted row.
  const float grad_scale = grad_weight / static_cast<float>(counted);
  Backend& b = model.backend();
  const std::span<const double> losses =
      for_each_logits_chunk(model, nullptr, targets, ws, 1, grad_scale != 0.0f, [&](const LogitsChunk& chunk) {
        b.cross_entropy(chunk.losses[0], chunk.logits, chunk.targets, chunk.rows, V, grad_scale);
      });
  if (per_row) std::copy(losses.begin(), losses.end(), per_row->begin());
  return std::accumulate(losses.begin(), losses.end(), 0.0) / static_cast<double>(counted);
}

void zero_rows_without_target(Backend& backend, Tensor logits, std::span<const std::int32_t> rows_targets,
                              std::int64_t vocab) {
  const auto rows = static_cast<std::int64_t>(rows_targets.size());
  for (std::int64_t r = 0; r < rows;) {
    if (rows_targets[r] >= 0) {
      ++r;
      continue;
    }
    std::int64_t end = r;
    while (end < rows && rows_targets[end] < 0) ++end;  // one call per run of masked rows
    backend.zero(logits.slice(r * vocab, (end - r) * vocab));
    r = end;
  }
}

double distillation_loss(LlamaModel& student, LlamaModel& teacher, LossWorkspace& ws, float temperature,
                         float grad_weight, std::span<const std::int32_t> targets) {
  const std::int64_t rows = student.rows(), V = student.config().vocab_size;
  if (!(temperature > 0)) fail_expected("--temperature", str(temperature), "a value > 0");
  MINITRON_ASSERT(targets.empty() || static_cast<std::int64_t>(targets.size()) == rows);
  const std::int64_t counted =
      targets.empty() ? rows : std::count_if(targets.begin(), targets.end(), [](std::int32_t t) { return t >= 0; });
  if (counted == 0) return 0.0;
  const float grad_scale = grad_weight / static_cast<float>(counted);
  Backend& b = student.backend();
  std::int64_t row0 = 0;  // the chunks come in row order
  const std::span<const double> losses =
      for_each_logits_chunk(student, &teacher, {}, ws, 1, grad_scale != 0.0f, [&](const LogitsChunk& chunk) {
        b.kl_divergence(chunk.losses[0], chunk.logits, chunk.teacher_logits, chunk.rows, V, temperature, grad_scale);
        if (!targets.empty() && grad_scale != 0.0f)
          zero_rows_without_target(b, chunk.logits, targets.subspan(row0, chunk.rows), V);
        row0 += chunk.rows;
      });
  if (targets.empty()) return std::accumulate(losses.begin(), losses.end(), 0.0) / static_cast<double>(rows);
  double sum = 0.0;
  for (std::int64_t r = 0; r < rows; ++r)
    if (targets[r] >= 0) sum += losses[r];
  return sum / static_cast<double>(counted);
}

}  // namespace minitron
