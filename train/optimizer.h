// AdamW with decoupled weight decay, global-norm gradient clipping and a linear warm-up then
// cosine decay schedule (the nanoGPT / Megatron conventions the Minitron recipe uses).
#pragma once

#include <cstdint>
#include <vector>

#include "model/backend.h"
#include "model/llama.h"

namespace minitron {

struct OptimizerConfig {
  double learning_rate = 1e-4;      // peak
  double min_learning_rate = 1e-5;  // end of the cosine
  std::int64_t warmup_steps = 40;
  std::int64_t total_steps = 1000;
  double weight_decay = 0.1;
  bool decay_embeddings = true;     // embedding table and LM head decay too (nanoGPT/Megatron)
  double beta1 = 0.9, beta2 = 0.95, epsilon = 1e-8;
  double grad_clip = 1.0;           // global L2 norm; 0 turns clipping off
};

// Learning rate at 0-based step s: linear warm-up to the peak over warmup_steps (reaching it
// at s = warmup_steps - 1), then cosine to min_learning_rate at s = total_steps - 1.
double learning_rate_at(const OptimizerConfig& config, std::int64_t step);

// Whether a parameter is decayed: every matrix (embedding and head as configured), never norms.
bool decays(const ParamInfo& info, const OptimizerConfig& config);

struct OptimizerStepStats {
  double learning_rate = 0;
  double grad_norm = 0;  // before clipping, of the gradients as scaled by grad_scale
};

class AdamW {
 public:
  AdamW(LlamaModel& model, const OptimizerConfig& config);

  // Applies one update (step is 0-based) from the model's accumulated gradients, each first
  // multiplied by grad_scale (e.g. 1 / accumulation steps when losses were summed).
  OptimizerStepStats step(std::int64_t step, float grad_scale = 1.0f);

  const OptimizerConfig& config() const { return config_; }
  std::int64_t steps_taken() const { return steps_taken_; }

  // State for resume: fp32 moments (and master weights where parameters are not fp32).
  void get_state(std::vector<float>& m, std::vector<float>& v, std::vector<float>& master) const;
  void set_state(const std::vector<float>& m, const std::vector<float>& v,
                 const std::vector<float>& master, std::int64_t steps_taken);
  bool has_master() const { return !master_.tensor().empty(); }

  // Bytes per parameter of a trained model on `backend`: the parameter, its gradient, both
  // moments and, for low-precision parameters, the fp32 master copy the update works on.
  static std::int64_t state_bytes_per_parameter(const Backend& backend);

 private:
  LlamaModel& model_;
  OptimizerConfig config_;
  BackendBuffer m_, v_, master_;
  std::int64_t steps_taken_ = 0;
};

}  // namespace minitron
