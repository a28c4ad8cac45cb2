// Model checkpoints as Hugging Face writes them: a directory with config.json and safetensors
// (one file or shards with an index), read into and written from the contiguous fp32 buffer
// laid out by the ParameterTable.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/parameters.h"
#include "model/safetensors.h"

namespace minitron {

// Problems that keep a checkpoint's tensors from matching the table: missing tensors, shape
// mismatches ("name: found [a, b], expected [c, d]"), unexpected tensors. Harmless extras are
// not problems: `*.rotary_emb.inv_freq` buffers, and lm_head.weight of the embedding's shape
// when the config ties embeddings. Empty means the checkpoint loads.
std::vector<std::string> checkpoint_mismatches(const SafetensorsCheckpoint& checkpoint, const ModelConfig& config,
                                               const ParameterTable& table);

// Reads every table tensor into params (size table.total_numel()), converting to fp32.
// Throws an Error naming the directory and the first problems found.
void load_parameters(const std::filesystem::path& dir, const ModelConfig& config, const ParameterTable& table,
                     std::span<float> params);

struct LoadedCheckpoint {
  ModelConfig config;
  ParameterTable table;
  std::vector<float> params;  // table order
};
LoadedCheckpoint load_checkpoint(const std::filesystem::path& dir);

struct SaveOptions {
  SafetensorsDType dtype = SafetensorsDType::BF16;  // BF16 or F32
  std::uint64_t max_shard_bytes = kDefaultMaxShardBytes;
  // Files copied beside the weights under their own names (tokenizer.json, ...). Each must exist.
  std::vector<std::filesystem::path> copy_files;
};

// The tokenizer and generation files of a model directory that exist there, for copy_files.
std::vector<std::filesystem::path> companion_files(const std::filesystem::path& model_dir);

// Writes config.json (torch_dtype matching the saved dtype), the safetensors and the copied
// files into a temporary directory and renames it over dir: an existing dir survives a failure.
void save_checkpoint(const std::filesystem::path& dir, const ModelConfig& config, const ParameterTable& table,
                     std::span<const float> params, const SaveOptions& options = {});

}  // namespace minitron
