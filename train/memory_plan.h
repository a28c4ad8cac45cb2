// The memory plan of a training run on the CUDA engine: every device allocation a rank makes,
// added up by part from the same size functions the engine allocates by (LlamaModel::memory,
// LossWorkspace::bytes, AdamW's shard bounds, kernels/cuda/device_memory.h), without building
// or loading anything. `minitron plan` prints it; train, correct and distill refuse before
// allocating when it does not fit the device, naming the cheapest change that does.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/backend.h"
#include "model/activation_recompute.h"
#include "model/config.h"

namespace minitron {

// What the plan needs to know about a run.
struct TrainingShape {
  ModelConfig model;                                 // the trained model (a distillation's student)
  std::optional<ModelConfig> teacher;                // a distillation's teacher: weights and inference buffers only
  std::int64_t batch_size = 1, sequence_length = 1;  // per rank and micro-batch
  ActivationRecompute recompute = ActivationRecompute::None;
  int zero_stage = 1;  // 2: the gradient sharded too (model/gradient_buckets.h)
  std::int64_t world_size = 1;
  std::int64_t loss_chunk_rows = 0;     // distill's --loss-chunk-rows (0: the engine's default)
  bool validation = false;              // rank 0 keeps a second loss workspace for validation
  std::int64_t intermediate_pairs = 0;  // distill's intermediate-state loss: its layer pairs (0 = off)
};

struct MemoryPart {
  std::string name;
  std::int64_t bytes = 0;
};

// One rank's device memory at its high-water mark: every part is allocated at once then (the
// checkpoint window while the optimizer state is gathered, the rest for the whole run).
struct MemoryPlan {
  std::int64_t rank = 0;
  std::vector<MemoryPart> parts;  // the same names in the same order for every shape
  std::int64_t peak() const;
  std::int64_t bytes(const std::string& part) const;  // 0 for a name not in parts
  // Host memory beside the device's, not in peak() (host_memory_part_names() order): the chunk
  // every rank streams weights and resumed state through (model/tensor_streaming.h), and what
  // rank 0 gathers at each resumable checkpoint. They never coexist: loading ends before training.
  std::vector<MemoryPart> host_parts;
};

// The names of MemoryPlan::host_parts, in order.
const std::vector<std::string>& host_memory_part_names();

// The names of MemoryPlan::parts, in order.
const std::vector<std::string>& memory_part_names();

// Rank `rank`'s plan; ranks differ in their optimizer share (the last holds the remainder) and
// rank 0 alone validates.
MemoryPlan plan_training_memory(const TrainingShape& shape, std::int64_t rank);
// The rank with the highest peak: what every GPU must hold.
MemoryPlan plan_training_memory(const TrainingShape& shape);

// Device memory that minitron's cudaMalloc calls never see, kept free on top of the peak: the
// CUDA context (about 0.5 GiB on an H100), NCCL's own channel buffers (up to about 1 GiB at 8
// ranks) and the driver's rounding of a few hundred allocations to 2 MiB pages. An estimate, not
// a measurement: 2 GiB.
inline constexpr std::int64_t kDeviceReserveBytes = std::int64_t{2} << 30;

bool fits(const MemoryPlan& plan, std::int64_t device_bytes);

// The cheapest change that makes `shape` fit `device_bytes`, tried in this order: ZeRO stage 2
// (with several ranks), recompute selective, recompute full, more ranks (the fewest that fit in any mode at least as
// thrifty as the current one, the least recomputation among equals), a shorter sequence (the longest that fits,
// likewise). A flag-like phrase ("--recompute selective", "4 ranks (...) with --recompute full"), or empty when none of
// them fits.
std::string fitting_change(const TrainingShape& shape, std::int64_t device_bytes);

// "12.3 GiB"
std::string format_gib(std::int64_t bytes);
// "24.0 MiB" below 1 GiB, else as format_gib: for the host parts, some of which are small.
std::string format_size(std::int64_t bytes);
// The plan as aligned "part  GiB" lines with the peak and the device.
std::string format_memory_plan(const MemoryPlan& plan, std::int64_t device_bytes);
nlohmann::ordered_json memory_plan_json(const TrainingShape& shape, const MemoryPlan& plan, std::int64_t device_bytes);

// Refuses (an Error with the plan's breakdown and fitting_change) a run that does not fit
// device_bytes; `what` names the command ("train", "distill").
void check_training_memory(const TrainingShape& shape, std::int64_t device_bytes, const std::string& what);
// The same against Backend::memory_bytes(); nothing to check where that is unknown (the CPU).
void check_training_memory(const TrainingShape& shape, const Backend& backend, const std::string& what);

}  // namespace minitron
