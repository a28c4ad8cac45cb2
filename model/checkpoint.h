// Model checkpoints as Hugging Face writes them: a directory with config.json and safetensors
// (one file or shards with an index), read into and written from the contiguous fp32 buffer
// laid out by the ParameterTable.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "model/config.h"
#include "model/parameters.h"
#include "model/safetensors.h"
#include "model/tensor_streaming.h"

namespace minitron {

class LlamaModel;

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

// The streamed load: every table tensor from the checkpoint into `params` (a tensor of `backend`
// holding table.total_numel() elements in table order), tensor by tensor through `staging`, so no
// host copy of the whole model is ever made. Every file, name and shape is checked before the first
// element is written: a refused checkpoint (a truncated shard, a wrong shape) leaves params as it was.
void load_parameters(const std::filesystem::path& dir, const ModelConfig& config, const ParameterTable& table,
                     Backend& backend, Tensor params, HostStaging& staging);
// The same into a model's parameters, through a staging chunk of the default size.
void load_parameters(const std::filesystem::path& dir, LlamaModel& model);

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
  // Small files written beside the weights (name, contents), inside the temporary directory so
  // they land together with the checkpoint: prune's pruning.json and search.json.
  std::vector<std::pair<std::string, std::string>> extra_files;
};

// The tokenizer and generation files of a model directory that exist there, for copy_files.
std::vector<std::filesystem::path> companion_files(const std::filesystem::path& model_dir);

// True for a file a checkpoint directory holds when Hugging Face's save_pretrained or minitron
// wrote it: config.json, generation_config.json, model.safetensors, model-NNNNN-of-NNNNN.safetensors
// and the index, pytorch_model*.bin (and index), the tokenizer files, and minitron's pruning.json,
// search.json, training_state.* and hidden_state_map.*. Subdirectories and other names are not.
bool is_checkpoint_entry(const std::filesystem::directory_entry& entry);

// check_replaceable_directory(dir, is_checkpoint_entry, inputs, label): call it on a command's
// output checkpoint directory before the long work, so a refusal comes first, not at the save.
void check_checkpoint_output(const std::filesystem::path& dir, std::span<const std::filesystem::path> inputs,
                             const std::string& label);

// Writes config.json (torch_dtype matching the saved dtype), the safetensors and the copied
// files into a temporary directory and renames it over dir: an existing dir survives a failure.
// An existing dir is replaced only when it holds nothing but checkpoint files
// (is_checkpoint_entry); otherwise this throws before writing anything.
void save_checkpoint(const std::filesystem::path& dir, const ModelConfig& config, const ParameterTable& table,
                     std::span<const float> params, const SaveOptions& options = {});

}  // namespace minitron
