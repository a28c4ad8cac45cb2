// AdamW with decoupled weight decay, global-norm gradient clipping and a linear warm-up then
// cosine decay schedule (the nanoGPT / Megatron conventions the Minitron recipe uses).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/backend.h"
#include "dist/communicator.h"
#include "model/llama.h"

namespace minitron {

struct OptimizerConfig {
  double learning_rate = 1e-4;      // peak
  double min_learning_rate = 1e-5;  // end of the cosine
  std::int64_t warmup_steps = 40;
  std::int64_t total_steps = 1000;
  double weight_decay = 0.1;
  bool decay_embeddings = true;  // embedding table and LM head decay too (nanoGPT/Megatron)
  double beta1 = 0.9, beta2 = 0.95, epsilon = 1e-8;
  double grad_clip = 1.0;  // global L2 norm; 0 turns clipping off
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

// Rank r's part (F32, bounds[r] to bounds[r + 1] of a vector) from every rank, whole, on rank 0's
// host; other ranks get an empty vector. A collective. The parts travel through `window`
// elements of device memory at a time, so no rank ever holds the whole vector on the device.
std::vector<float> gather_to_rank0(Backend& backend, Communicator& communicator, std::span<const std::int64_t> bounds,
                                   Tensor part, std::int64_t window);

// With a communicator of several ranks the state is sharded as in ZeRO stage 1
// (dist/communicator.h): each rank keeps the moments and master weights of its own part of the
// flat parameter vector (shard_bounds), updates that part from the reduce-scattered gradients
// and all-gathers the parameters, so every rank ends the step with the same weights. A model
// built for ZeRO stage 2 (model/gradient_buckets.h) brings its part of the gradient already
// summed over ranks, reduced bucket by bucket during backward.
class AdamW {
 public:
  AdamW(LlamaModel& model, const OptimizerConfig& config);  // one process: the whole state
  // `communicator` must outlive the optimizer; every rank constructs it the same way.
  AdamW(LlamaModel& model, const OptimizerConfig& config, Communicator& communicator);
  // Not movable: the one-process constructor's communicator is a member.
  AdamW(AdamW&&) = delete;
  AdamW& operator=(AdamW&&) = delete;

  // Applies one update (step is 0-based) from the model's accumulated gradients, each first
  // multiplied by grad_scale (e.g. 1 / accumulation steps when losses were summed). With
  // several ranks it is a collective that takes each rank's own, unsummed gradients: it sums
  // over ranks only this rank's part (a reduce-scatter, after which the other parts of the
  // model's gradients are stale), updates that part and all-gathers the parameters. In one
  // process the gradients are already the sum. ZeRO-2: the model's gradient part is the sum.
  OptimizerStepStats step(std::int64_t step, float grad_scale = 1.0f);

  const OptimizerConfig& config() const { return config_; }
  std::int64_t steps_taken() const { return steps_taken_; }

  // The parts of the flat parameter vector the ranks own ({0, n} in one process), and this one's.
  std::span<const std::int64_t> shard_bounds() const { return bounds_; }
  std::int64_t part_begin() const;
  std::int64_t part_end() const;

  // Collectives (every rank calls them) that assemble the whole state on rank 0's host; the
  // other ranks' vectors come back empty. gather_weights: the fp32 weights the update works on
  // (the master copy where the backend keeps one, else the parameters), the exact values a
  // checkpoint must hold for a bit-exact resume. gather_moments: the AdamW moments.
  std::vector<float> gather_weights() const;
  void gather_moments(std::vector<float>& m, std::vector<float>& v) const;
  // This rank's part (part_begin() to part_end()) of the state on the engine, for a resume that
  // streams it there from disk (model/training_state.h): the moments and, where the backend
  // keeps master weights, the fp32 weights (empty otherwise: the parameters are the model's).
  struct StateTensors {
    Tensor m, v, master;
  };
  StateTensors state_tensors() const { return {m_, v_, master_}; }
  void set_steps_taken(std::int64_t steps_taken) { steps_taken_ = steps_taken; }
  bool has_master() const { return keeps_master_; }

  // Bytes per parameter of a trained model on each of world_size ranks of `backend`: the
  // parameter and its gradient, and this rank's share of both moments and, for low-precision
  // parameters, of the fp32 master copy the update works on.
  static double state_bytes_per_parameter(const Backend& backend, std::int64_t world_size = 1);
  // Bytes of optimizer state per parameter of a rank's own part on an engine storing
  // parameters as `activation`: both fp32 moments and, for low-precision parameters, the fp32
  // master copy.
  static std::int64_t state_bytes_per_owned_parameter(DType activation);
  // Elements of device memory a rank's part of the state travels through to rank 0 at a
  // checkpoint (gather_to_rank0's window): for 8B parameters a whole vector is 32 GB, the
  // memory sharding saved.
  static constexpr std::int64_t kGatherWindow = std::int64_t{1} << 24;

 private:
  void allocate_state();
  // Rank 0 receives `part` (this rank's part of a state vector) from every rank, whole.
  std::vector<float> gather(Tensor part) const;

  LlamaModel& model_;
  OptimizerConfig config_;
  SingleProcessCommunicator single_process_;  // the communicator of the one-process constructor
  Communicator& communicator_;
  std::vector<std::int64_t> bounds_;
  bool keeps_master_ = false;     // a rank's part may be empty, so its buffer cannot tell
  BackendBuffer m_, v_, master_;  // this rank's part
  std::int64_t steps_taken_ = 0;
};

}  // namespace minitron
