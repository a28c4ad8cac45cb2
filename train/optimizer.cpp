#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "util/error.h"

namespace minitron {

std::vector<float> gather_to_rank0(Backend& backend, Communicator& communicator, std::span<const std::int64_t> bounds,
                                   Tensor part, std::int64_t window) {
  const std::size_t rank = static_cast<std::size_t>(communicator.rank());
  const bool lead = rank == 0;
  const std::int64_t n = bounds.back(), begin = bounds[rank], end = bounds[rank + 1];
  MINITRON_ASSERT(part.numel == end - begin && window > 0, "gather_to_rank0: a part of ", part.numel, " for ", begin,
                  " to ", end, ", window ", window);
  std::vector<float> whole(lead ? static_cast<std::size_t>(n) : 0);
  if (communicator.world_size() == 1) {
    backend.download(whole.data(), part);
    return whole;
  }
  window = std::min(window, n);
  if (window == 0) return whole;
  BackendBuffer staging(backend, window, DType::F32);
  std::vector<std::int64_t> window_bounds(bounds.size());
  for (std::int64_t first = 0; first < n; first += window) {
    const std::int64_t count = std::min(window, n - first);
    for (std::size_t r = 0; r < bounds.size(); ++r)
      window_bounds[r] = std::clamp(bounds[r], first, first + count) - first;
    const std::int64_t lo = std::max(begin, first), hi = std::min(end, first + count);
    if (lo < hi) backend.copy(staging.tensor().slice(lo - first, hi - lo), part.slice(lo - begin, hi - lo));
    const Tensor gathered = staging.tensor().slice(0, count);
    communicator.all_gather(gathered, window_bounds);
    if (lead) backend.download(whole.data() + first, gathered);
  }
  return whole;
}

double learning_rate_at(const OptimizerConfig& c, std::int64_t step) {
  if (step < c.warmup_steps)
    return c.learning_rate * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  const std::int64_t decay_steps = c.total_steps - c.warmup_steps - 1;
  if (decay_steps <= 0) return c.learning_rate;
  double progress = static_cast<double>(step - c.warmup_steps) / static_cast<double>(decay_steps);
  progress = std::min(1.0, std::max(0.0, progress));
  return c.min_learning_rate + 0.5 * (1.0 + std::cos(M_PI * progress)) * (c.learning_rate - c.min_learning_rate);
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
static bool keeps_master(DType activation) { return activation == DType::BF16; }
static bool keeps_master(const Backend& backend) { return keeps_master(backend.activation_dtype()); }

std::int64_t AdamW::state_bytes_per_owned_parameter(DType activation) {
  const std::size_t moments = 2 * dtype_size(DType::F32);
  const std::size_t master = keeps_master(activation) ? dtype_size(DType::F32) : 0;
  return static_cast<std::int64_t>(moments + master);
}

double AdamW::state_bytes_per_parameter(const Backend& backend, std::int64_t world_size) {
  return static_cast<double>(dtype_size(backend.activation_dtype()) + dtype_size(backend.gradient_dtype())) +
         static_cast<double>(state_bytes_per_owned_parameter(backend.activation_dtype())) /
             static_cast<double>(world_size);
}

AdamW::AdamW(LlamaModel& model, const OptimizerConfig& config)
    : model_(model), config_(config), communicator_(single_process_) {
  allocate_state();
}

AdamW::AdamW(LlamaModel& model, const OptimizerConfig& config, Communicator& communicator)
    : model_(model), config_(config), communicator_(communicator) {
  allocate_state();
}

void AdamW::allocate_state() {
  if (model_.mode() != ModelMode::Training) fail("optimizer: the model was not built for training");
  Backend& b = model_.backend();
  bounds_ = ::minitron::shard_bounds(model_.table().total_numel(), communicator_.world_size());
  if (model_.gradient_buckets().stage() == 2 && model_.gradient_buckets().shard_bounds() != bounds_)
    fail_expected("optimizer", "a model whose ZeRO-2 gradient parts are not the optimizer's",
                  "the model built with the run's communicator");
  const std::int64_t n = part_end() - part_begin();
  m_ = BackendBuffer(b, n, DType::F32);
  v_ = BackendBuffer(b, n, DType::F32);
  b.zero(m_);
  b.zero(v_);
  keeps_master_ = keeps_master(b);
  if (keeps_master_) {
    master_ = BackendBuffer(b, n, DType::F32);
    b.copy(master_, model_.parameters().slice(part_begin(), n));
  }
}

std::int64_t AdamW::part_begin() const { return bounds_[static_cast<std::size_t>(communicator_.rank())]; }
std::int64_t AdamW::part_end() const { return bounds_[static_cast<std::size_t>(communicator_.rank()) + 1]; }

OptimizerStepStats AdamW::step(std::int64_t step, float grad_scale) {
  Backend& b = model_.backend();
  const std::int64_t begin = part_begin(), end = part_end();
  // This rank's part of the gradient, summed over ranks: ZeRO-2's buckets were reduced during
  // backward; ZeRO-1 reduce-scatters the whole vector now.
  const bool sharded = model_.gradient_buckets().stage() == 2;
  if (!sharded) communicator_.reduce_scatter_sum(model_.gradients(), bounds_);
  auto gradient = [&](std::int64_t lo, std::int64_t count) {
    return model_.gradients().slice(sharded ? lo - begin : lo, count);
  };
  OptimizerStepStats stats;
  stats.learning_rate = learning_rate_at(config_, step);
  // The global norm from each rank's part: the sum of squares is additive over parts.
  double sum_of_squares = end > begin ? b.sum_of_squares(gradient(begin, end - begin)) : 0.0;
  communicator_.all_reduce_sum(std::span<double>(&sum_of_squares, 1));
  stats.grad_norm = std::sqrt(sum_of_squares) * grad_scale;
  float scale = grad_scale;
  if (config_.grad_clip > 0 && stats.grad_norm > config_.grad_clip)
    scale *= static_cast<float>(config_.grad_clip / (stats.grad_norm + 1e-6));
  ++steps_taken_;
  for (const ParamInfo& info : model_.table().entries()) {
    // The piece of this parameter inside this rank's part (a part may start or end inside one).
    const std::int64_t lo = std::max(info.offset, begin), hi = std::min(info.offset + info.numel, end);
    if (lo >= hi) continue;
    AdamWStep s;
    s.learning_rate = static_cast<float>(stats.learning_rate);
    s.beta1 = static_cast<float>(config_.beta1);
    s.beta2 = static_cast<float>(config_.beta2);
    s.epsilon = static_cast<float>(config_.epsilon);
    s.weight_decay = decays(info, config_) ? static_cast<float>(config_.weight_decay) : 0.0f;
    s.step = steps_taken_;
    s.grad_scale = scale;
    Tensor master = has_master() ? master_.tensor().slice(lo - begin, hi - lo) : Tensor{};
    b.adamw_update(model_.parameters().slice(lo, hi - lo), master, gradient(lo, hi - lo),
                   m_.tensor().slice(lo - begin, hi - lo), v_.tensor().slice(lo - begin, hi - lo), s);
  }
  // Every rank's part to every rank: overlapped with the next forward where the model allows it.
  model_.gather_parameters(communicator_, bounds_);
  return stats;
}

std::vector<float> AdamW::gather(Tensor part) const {
  // Through a window of device memory, so that no rank ever holds a whole state vector there.
  return gather_to_rank0(model_.backend(), communicator_, bounds_, part, kGatherWindow);
}

std::vector<float> AdamW::gather_weights() const {
  if (has_master()) return gather(master_);
  // The parameters are the fp32 weights, and after step() every rank holds all of them.
  std::vector<float> whole;
  if (communicator_.rank() == 0) {
    whole.resize(static_cast<std::size_t>(model_.table().total_numel()));
    model_.get_parameters(whole);
  }
  return whole;
}

void AdamW::gather_moments(std::vector<float>& m, std::vector<float>& v) const {
  m = gather(m_);
  v = gather(v_);
}

}  // namespace minitron
