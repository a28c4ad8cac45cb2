#include "train/optimizer.h"

#include <cmath>

#include "util/error.h"

namespace minitron {

double learning_rate_at(const OptimizerConfig& c, std::int64_t step) {
  if (step < c.warmup_steps)
    return c.learning_rate * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  const std::int64_t decay_steps = c.total_steps - c.warmup_steps - 1;
  if (decay_steps <= 0) return c.learning_rate;
  double progress = static_cast<double>(step - c.warmup_steps) / static_cast<double>(decay_steps);
  progress = std::min(1.0, std::max(0.0, progress));
  return c.min_learning_rate +
         0.5 * (1.0 + std::cos(M_PI * progress)) * (c.learning_rate - c.min_learning_rate);
}

bool decays(const ParamInfo& info, const OptimizerConfig& config) {
  switch (info.kind) {
    case ParamKind::Norm: return false;
    case ParamKind::Embedding:
    case ParamKind::Head: return config.decay_embeddings;
    case ParamKind::Attention:
    case ParamKind::Mlp: return true;
  }
  return true;
}

// Low-precision parameters get an fp32 master copy that the update works on.
static bool keeps_master(const Backend& backend) { return backend.activation_dtype() == DType::BF16; }

std::int64_t AdamW::state_bytes_per_parameter(const Backend& backend) {
  const std::size_t moments = 2 * dtype_size(DType::F32);
  const std::size_t master = keeps_master(backend) ? dtype_size(DType::F32) : 0;
  return static_cast<std::int64_t>(dtype_size(backend.activation_dtype()) + dtype_size(backend.gradient_dtype()) +
                                   moments + master);
}

AdamW::AdamW(LlamaModel& model, const OptimizerConfig& config) : model_(model), config_(config) {
  if (model.mode() != ModelMode::Training) fail("optimizer: the model was not built for training");
  Backend& b = model.backend();
  const std::int64_t n = model.table().total_numel();
  m_ = BackendBuffer(b, n, DType::F32);
  v_ = BackendBuffer(b, n, DType::F32);
  b.zero(m_);
  b.zero(v_);
  if (keeps_master(b)) {
    master_ = BackendBuffer(b, n, DType::F32);
    b.copy(master_, model.parameters());
  }
}

OptimizerStepStats AdamW::step(std::int64_t step, float grad_scale) {
  Backend& b = model_.backend();
  OptimizerStepStats stats;
  stats.learning_rate = learning_rate_at(config_, step);
  stats.grad_norm = std::sqrt(b.sum_of_squares(model_.gradients())) * grad_scale;
  float scale = grad_scale;
  if (config_.grad_clip > 0 && stats.grad_norm > config_.grad_clip)
    scale *= static_cast<float>(config_.grad_clip / (stats.grad_norm + 1e-6));
  ++steps_taken_;
  for (const ParamInfo& info : model_.table().entries()) {
    AdamWStep s;
    s.learning_rate = static_cast<float>(stats.learning_rate);
    s.beta1 = static_cast<float>(config_.beta1);
    s.beta2 = static_cast<float>(config_.beta2);
    s.epsilon = static_cast<float>(config_.epsilon);
    s.weight_decay = decays(info, config_) ? static_cast<float>(config_.weight_decay) : 0.0f;
    s.step = steps_taken_;
    s.grad_scale = scale;
    Tensor master = has_master() ? master_.tensor().slice(info.offset, info.numel) : Tensor{};
    b.adamw_update(model_.parameter(info), master, model_.gradients().slice(info.offset, info.numel),
                   m_.tensor().slice(info.offset, info.numel), v_.tensor().slice(info.offset, info.numel), s);
  }
  return stats;
}

void AdamW::get_state(std::vector<float>& m, std::vector<float>& v, std::vector<float>& master) const {
  Backend& b = model_.backend();
  const auto n = static_cast<std::size_t>(model_.table().total_numel());
  m.resize(n);
  v.resize(n);
  b.download(m.data(), m_);
  b.download(v.data(), v_);
  master.clear();
  if (has_master()) {
    master.resize(n);
    b.download(master.data(), master_);
  }
}

void AdamW::set_state(const std::vector<float>& m, const std::vector<float>& v,
                      const std::vector<float>& master, std::int64_t steps_taken) {
  Backend& b = model_.backend();
  const auto n = static_cast<std::size_t>(model_.table().total_numel());
  if (m.size() != n || v.size() != n)
    fail_expected("optimizer state", str(m.size(), " moments"), str(n, " (one per parameter)"));
  b.upload(m_, m.data());
  b.upload(v_, v.data());
  if (has_master()) {
    if (master.size() != n) fail_expected("optimizer state", "no fp32 master weights", str(n, " values"));
    b.upload(master_, master.data());
  }
  steps_taken_ = steps_taken;
}

}  // namespace minitron
