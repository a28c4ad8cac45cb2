// The state a training run writes beside each resumable checkpoint (output/checkpoint-<step>)
// so that --resume continues bit for bit. training_state.safetensors (F32, one value per
// parameter in the table's order): "params", the fp32 weights the optimizer updates (the HF
// weights beside them may be bf16), and the AdamW moments "adam_m" and "adam_v".
// training_state.json: the TrainingProgress fields under their own names.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

#include <nlohmann/json.hpp>

#include "core/backend.h"
#include "model/tensor_streaming.h"

namespace minitron {

struct TrainingProgress {
  std::int64_t step = 0;             // optimizer steps done, the step to continue from
  std::int64_t optimizer_steps = 0;  // AdamW's own count, which its bias correction uses
  nlohmann::json loader;             // the data position (TrainLoader::state)
  std::string file;                  // read_training_progress: the file it came from, for messages
  // The data order depends on these: a resume must use the same. world_size is 1 in files
  // written before data-parallel training.
  std::int64_t batch_size = 0, sequence_length = 0, grad_accumulation = 0, world_size = 1;
};

// Writes both files into dir (a checkpoint directory being written); the three vectors are whole.
void write_training_state(const std::filesystem::path& dir, const TrainingProgress& progress,
                          std::span<const float> weights, std::span<const float> m, std::span<const float> v);

// Whether dir holds a training state: the mark of a checkpoint --resume can continue from.
bool has_training_state(const std::filesystem::path& dir);

TrainingProgress read_training_progress(const std::filesystem::path& dir);

// Where a resume puts the saved tensors, all on one engine.
struct TrainingStateTargets {
  Tensor parameters;            // every parameter, in the engine's storage dtype (a model's replica)
  std::int64_t part_begin = 0;  // this rank's part of the optimizer state starts at this element
  Tensor m, v;                  // fp32, this rank's part of the AdamW moments
  Tensor master;                // fp32 master weights of the part; empty where the engine keeps none
};

// Streams the saved tensors into `targets` through `staging` (model/tensor_streaming.h): every
// weight into the parameters, and of the moments and master weights only this rank's part is
// read from disk. No host copy of the whole model (or of the part) is made. The sizes of all
// three saved tensors are checked before anything is written, on every rank alike (so a damaged
// file fails every rank, not only those whose part lies past its end), and a refused file leaves
// the targets as they were.
void load_training_tensors(const std::filesystem::path& dir, Backend& backend, const TrainingStateTargets& targets,
                           HostStaging& staging);

}  // namespace minitron
