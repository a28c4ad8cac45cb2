#include "model/checkpoint.h"

#include <regex>
#include <set>

#include "model/llama.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Messages get long on a wholly wrong checkpoint; the first few problems say enough.
std::string summarize(const std::vector<std::string>& problems) {
  constexpr std::size_t kShown = 5;
  std::string out;
  for (std::size_t i = 0; i < problems.size() && i < kShown; ++i) out += (i ? "; " : "") + problems[i];
  if (problems.size() > kShown) out += str("; and ", problems.size() - kShown, " more");
  return out;
}

}  // namespace

std::vector<std::string> checkpoint_mismatches(const SafetensorsCheckpoint& checkpoint, const ModelConfig& config,
                                               const ParameterTable& table) {
  std::vector<std::string> problems;
  for (const ParamInfo& p : table.entries()) {
    const SafetensorsTensor* t = checkpoint.find(p.name);
    if (!t) {
      problems.push_back(str("tensor '", p.name, "' is missing (expected shape ", shape_string(p.shape), ")"));
    } else if (t->shape != p.shape) {
      problems.push_back(
          str("tensor '", p.name, "' has shape ", shape_string(t->shape), ", expected ", shape_string(p.shape)));
    }
  }
  std::vector<std::string> unexpected;
  for (const std::string& name : checkpoint.names()) {
    if (table.find(name)) continue;
    // Older transformers saved RoPE's inverse frequencies as a buffer; they are derived data.
    if (ends_with(name, ".rotary_emb.inv_freq")) continue;
    if (config.tie_word_embeddings && name == "lm_head.weight") {
      const std::vector<std::int64_t> expected{config.vocab_size, config.hidden_size};
      if (checkpoint.at(name).shape == expected) continue;
      problems.push_back(str("tensor 'lm_head.weight' (tied to the embedding) has shape ",
                             shape_string(checkpoint.at(name).shape), ", expected ", shape_string(expected)));
      continue;
    }
    unexpected.push_back(name);
  }
  if (!unexpected.empty()) {
    std::string list;
    for (std::size_t i = 0; i < unexpected.size() && i < 5; ++i) list += str(i ? ", " : "", "'", unexpected[i], "'");
    if (unexpected.size() > 5) list += str(" and ", unexpected.size() - 5, " more");
    problems.push_back(
        str(unexpected.size(), " unexpected tensor(s) not in a ", config.architecture, " of this config: ", list));
  }
  return problems;
}

namespace {

// Opens dir (every shard's header and size checked) and checks its tensors against the table.
SafetensorsCheckpoint open_matching_checkpoint(const fs::path& dir, const ModelConfig& config,
                                               const ParameterTable& table) {
  SafetensorsCheckpoint checkpoint(dir);
  std::vector<std::string> problems = checkpoint_mismatches(checkpoint, config, table);
  if (!problems.empty())
    fail_expected(dir.string(), summarize(problems), "the tensors and shapes that config.json describes");
  return checkpoint;
}

}  // namespace

void load_parameters(const fs::path& dir, const ModelConfig& config, const ParameterTable& table,
                     std::span<float> params) {
  if (static_cast<std::int64_t>(params.size()) != table.total_numel())
    fail_expected("load_parameters", str("buffer holds ", params.size(), " floats"),
                  str(table.total_numel(), ", the table's total"));
  const SafetensorsCheckpoint checkpoint = open_matching_checkpoint(dir, config, table);
  for (const ParamInfo& p : table.entries())
    checkpoint.read_f32(p.name, params.subspan(static_cast<std::size_t>(p.offset), static_cast<std::size_t>(p.numel)));
}

void load_parameters(const fs::path& dir, const ModelConfig& config, const ParameterTable& table, Backend& backend,
                     Tensor params, HostStaging& staging) {
  if (params.numel != table.total_numel())
    fail_expected("load_parameters", str("destination holds ", params.numel, " elements"),
                  str(table.total_numel(), ", the table's total"));
  const SafetensorsCheckpoint checkpoint = open_matching_checkpoint(dir, config, table);
  for (const ParamInfo& p : table.entries())
    staging.stream(checkpoint.file_of(p.name), checkpoint.at(p.name), 0, backend, params.slice(p.offset, p.numel));
}

void load_parameters(const fs::path& dir, LlamaModel& model) {
  HostStaging staging;
  load_parameters(dir, model.config(), model.table(), model.backend(), model.parameters(), staging);
}

LoadedCheckpoint load_checkpoint(const fs::path& dir) {
  ModelConfig config = load_model_config(dir / "config.json");
  ParameterTable table(config);
  LoadedCheckpoint out{config, table, std::vector<float>(static_cast<std::size_t>(table.total_numel()))};
  load_parameters(dir, out.config, out.table, out.params);
  return out;
}

std::vector<fs::path> companion_files(const fs::path& model_dir) {
  std::vector<fs::path> out;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                           "generation_config.json"}) {
    if (fs::is_regular_file(model_dir / name)) out.push_back(model_dir / name);
  }
  return out;
}

bool is_checkpoint_entry(const fs::directory_entry& entry) {
  static const std::set<std::string> names{
      // Hugging Face save_pretrained (model and tokenizer)
      "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
      "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
      "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
      // minitron: prune's records, the trainer's resumable state, distillation's hidden-state map
      "pruning.json", "search.json", "training_state.json", "training_state.safetensors", "hidden_state_map.json",
      "hidden_state_map.safetensors"};
  if (!entry.is_regular_file()) return false;
  const std::string name = entry.path().filename().string();
  if (names.count(name)) return true;
  // Shards: model-00001-of-00004.safetensors, pytorch_model-00001-of-00002.bin.
  static const std::regex shard(R"((model-[0-9]+-of-[0-9]+\.safetensors)|(pytorch_model-[0-9]+-of-[0-9]+\.bin))");
  return std::regex_match(name, shard);
}

void check_checkpoint_output(const fs::path& dir, std::span<const fs::path> inputs, const std::string& label) {
  check_replaceable_directory(dir, is_checkpoint_entry, inputs, label);
}

void save_checkpoint(const fs::path& dir, const ModelConfig& config, const ParameterTable& table,
                     std::span<const float> params, const SaveOptions& options) {
  if (static_cast<std::int64_t>(params.size()) != table.total_numel())
    fail_expected("save_checkpoint", str("buffer holds ", params.size(), " floats"),
                  str(table.total_numel(), ", the table's total"));
  if (options.dtype == SafetensorsDType::F16)
    fail_expected("save_checkpoint", "F16 output is not supported", "BF16 or F32");
  std::set<std::string> copied_names{"config.json", "model.safetensors", "model.safetensors.index.json"};
  for (const fs::path& f : options.copy_files) {
    const std::string name = f.filename().string();
    if (!copied_names.insert(name).second || name.starts_with("model-"))
      fail_expected(f.string(), str("name '", name, "' is already taken in the checkpoint"),
                    "distinct companion file names");
  }
  for (const auto& [name, contents] : options.extra_files) {
    if (!copied_names.insert(name).second || name.starts_with("model-"))
      fail_expected(name, str("name '", name, "' is already taken in the checkpoint"), "distinct file names");
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
      fail_expected(str("'", name, "'"), "is not a plain file name", "a file name inside the checkpoint directory");
  }

  ModelConfig saved = config;
  saved.torch_dtype = options.dtype == SafetensorsDType::BF16 ? "bfloat16" : "float32";
  std::vector<SafetensorsEntry> entries;
  for (const ParamInfo& p : table.entries()) entries.push_back({p.name, p.shape, params.data() + p.offset});

  write_directory_atomically(
      dir,
      [&](const fs::path& tmp) {
        save_model_config(saved, tmp / "config.json");
        write_safetensors_model(tmp, entries, options.dtype, options.max_shard_bytes);
        // Copied last, inside the temporary directory: a missing file fails the whole save and
        // leaves any existing checkpoint at dir as it was.
        for (const fs::path& f : options.copy_files) {
          if (!fs::is_regular_file(f)) fail_expected(f.string(), "file to copy does not exist", "an existing file");
          std::error_code error;
          if (!fs::copy_file(f, tmp / f.filename(), error))
            fail_expected(f.string(), str("cannot copy into the checkpoint: ", error.message()), "a readable file");
        }
        for (const auto& [name, contents] : options.extra_files) write_bytes_atomically(tmp / name, contents);
      },
      is_checkpoint_entry);
}

}  // namespace minitron
