#include "train/losses.h"

#include <algorithm>

#include "util/error.h"

namespace minitron {

LossWorkspace::LossWorkspace(Backend& backend, std::int64_t vocab_size, std::int64_t max_rows,
                             std::int64_t rows_per_chunk, bool distillation)
    : backend_(backend), vocab_size_(vocab_size), max_rows_(max_rows) {
  if (rows_per_chunk <= 0) {
    rows_per_chunk = std::max<std::int64_t>(1, backend.loss_chunk_logits() / vocab_size);
    // Whole 128-row GEMM tiles: 2092 rows would cost a 17th tile for 44 rows.
    if (rows_per_chunk > 128) rows_per_chunk -= rows_per_chunk % 128;
  }
  rows_per_chunk_ = std::min(rows_per_chunk, max_rows);
  const DType act = backend.activation_dtype();
  logits_ = BackendBuffer(backend, rows_per_chunk_ * vocab_size, act);
  if (distillation) teacher_logits_ = BackendBuffer(backend, rows_per_chunk_ * vocab_size, act);
  // Targets and per-row losses for every row: uploaded once and downloaded once per call, not
  // per chunk (each copy is a host sync). Losses are fp32, except on the double engine of
  // gradient checks.
  losses_ = BackendBuffer(backend, max_rows, act == DType::F64 ? DType::F64 : DType::F32);
  targets_ = BackendBuffer(backend, max_rows, DType::I32);
  host_losses_.resize(static_cast<std::size_t>(max_rows));
}

double cross_entropy_loss(LlamaModel& model, std::span<const std::int32_t> targets,
                          LossWorkspace& ws, float grad_weight, std::vector<float>* per_row) {
  const std::int64_t rows = model.rows(), V = model.config().vocab_size;
  MINITRON_ASSERT(static_cast<std::int64_t>(targets.size()) == rows);
  MINITRON_ASSERT(ws.vocab_size_ == V, "loss workspace built for another vocabulary");
  MINITRON_ASSERT(rows <= ws.max_rows_, "loss workspace built for ", ws.max_rows_, " rows, not ", rows);
  std::int64_t counted = 0;
  for (std::int32_t t : targets) {
    if (t >= V) fail_expected("targets", str("token id ", t), str("ids below the vocabulary size ", V));
    counted += t >= 0;
  }
  if (per_row) per_row->assign(static_cast<std::size_t>(rows), 0.0f);
  if (counted == 0) return 0.0;
  // d(mean)/d(loss_r) = 1 / counted for every counted row.
  const float grad_scale = grad_weight / static_cast<float>(counted);
  Backend& b = ws.backend_;
  b.upload_i32(ws.targets_.tensor().slice(0, rows), targets.data());
  for (std::int64_t row0 = 0; row0 < rows; row0 += ws.rows_per_chunk_) {
    const std::int64_t n = std::min(ws.rows_per_chunk_, rows - row0);
    Tensor logits = ws.logits_.tensor().slice(0, n * V);
    model.logits(logits, row0, n);
    b.cross_entropy(ws.losses_.tensor().slice(row0, n), logits, ws.targets_.tensor().slice(row0, n), n, V, grad_scale);
    if (grad_scale != 0.0f) model.head_backward(logits, row0, n);
  }
  b.download_f64(ws.host_losses_.data(), ws.losses_.tensor().slice(0, rows));
  double sum = 0.0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const double loss = ws.host_losses_[static_cast<std::size_t>(r)];
    sum += loss;
    if (per_row) (*per_row)[static_cast<std::size_t>(r)] = static_cast<float>(loss);
  }
  return sum / static_cast<double>(counted);
}

double distillation_loss(LlamaModel& student, LlamaModel& teacher, LossWorkspace& ws,
                         float temperature, float grad_weight) {
  const std::int64_t rows = student.rows(), V = student.config().vocab_size;
  if (teacher.config().vocab_size != V)
    fail_expected("distillation", str("teacher vocabulary ", teacher.config().vocab_size,
                                      " differs from the student's ", V),
                  "teacher and student sharing one tokenizer");
  MINITRON_ASSERT(teacher.rows() == rows, "teacher and student ran on different batches");
  MINITRON_ASSERT(!ws.teacher_logits_.tensor().empty(), "workspace built without distillation buffers");
  MINITRON_ASSERT(rows <= ws.max_rows_, "loss workspace built for ", ws.max_rows_, " rows, not ", rows);
  if (!(temperature > 0)) fail_expected("--temperature", str(temperature), "a value > 0");
  const float grad_scale = grad_weight / static_cast<float>(rows);
  Backend& b = ws.backend_;
  for (std::int64_t row0 = 0; row0 < rows; row0 += ws.rows_per_chunk_) {
    const std::int64_t n = std::min(ws.rows_per_chunk_, rows - row0);
    Tensor s = ws.logits_.tensor().slice(0, n * V), t = ws.teacher_logits_.tensor().slice(0, n * V);
    student.logits(s, row0, n);
    teacher.logits(t, row0, n);
    b.kl_divergence(ws.losses_.tensor().slice(row0, n), s, t, n, V, temperature, grad_scale);
    if (grad_scale != 0.0f) student.head_backward(s, row0, n);
  }
  b.download_f64(ws.host_losses_.data(), ws.losses_.tensor().slice(0, rows));
  double sum = 0.0;
  for (std::int64_t r = 0; r < rows; ++r) sum += ws.host_losses_[static_cast<std::size_t>(r)];
  return sum / static_cast<double>(rows);
}

}  // namespace minitron
