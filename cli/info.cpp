// minitron info: what a model is (architecture, sizes, rope), how many parameters it has and
// what a token costs, read from config.json alone; safetensors headers, when present, are
// checked against the parameter table.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/options.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/parameters.h"
#include "model/safetensors.h"

namespace minitron::cli {

namespace {

namespace fs = std::filesystem;

// 8030261248 -> "8.03B": three significant digits, as model cards quote sizes.
std::string human(double value, const char* unit = "") {
  const char* suffixes[] = {"", "K", "M", "B", "T"};
  int i = 0;
  while (value >= 999.5 && i < 4) {
    value /= 1000;
    ++i;
  }
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.3g%s%s", value, suffixes[i], unit);
  return buffer;
}

std::string human_flops(double value) {
  const char* suffixes[] = {"", "K", "M", "G", "T", "P"};
  int i = 0;
  while (value >= 999.5 && i < 5) {
    value /= 1000;
    ++i;
  }
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.3g %sFLOP", value, suffixes[i]);
  return buffer;
}

std::string ids_string(const std::vector<std::int64_t>& ids) {
  if (ids.empty()) return "none";
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) s += str(i ? ", " : "", ids[i]);
  return s;
}

}  // namespace

int info(int argc, char** argv) {
  cxxopts::Options options("info", "Show a model's architecture, parameter counts and FLOPs per token");
  // clang-format off
  options.add_options()
      ("model", "Model directory (config.json, optional safetensors) or a config.json path", cxxopts::value<std::string>())
      ("sequence-length", "Sequence length for attention FLOPs (default: min(max_position_embeddings, 4096))",
       cxxopts::value<std::int64_t>())
      ("json", "Print one JSON object instead of text");
  // clang-format on
  cxxopts::ParseResult result;
  if (!parse_options(options, argc, argv, result)) return 0;
  const fs::path model = required<std::string>(result, "model");
  const ModelConfig config = load_model_config(model);
  const std::int64_t sequence_length = result.count("sequence-length")
                                           ? in_range<std::int64_t>(result, "sequence-length", 1, std::int64_t{1} << 24)
                                           : std::min<std::int64_t>(config.max_position_embeddings, 4096);
  const ParameterTable table(config);
  const ModelCounts counts = count_model(config, sequence_length);

  // Safetensors headers beside the config, if any: only headers are read (memory-mapped).
  const fs::path dir = fs::is_directory(model) ? model : model.parent_path();
  std::vector<std::string> problems;
  nlohmann::json checkpoint = nullptr;
  std::size_t checkpoint_files = 0, checkpoint_tensors = 0;
  if (SafetensorsCheckpoint::present(dir.empty() ? fs::path(".") : dir)) {
    SafetensorsCheckpoint ck(dir.empty() ? fs::path(".") : dir);
    problems = checkpoint_mismatches(ck, config, table);
    std::set<std::string> dtypes;
    for (const auto& file : ck.files())
      for (const auto& t : file->tensors()) dtypes.insert(safetensors_dtype_name(t.dtype));
    checkpoint_files = ck.files().size();
    checkpoint_tensors = ck.names().size();
    checkpoint = {{"files", checkpoint_files},
                  {"tensors", checkpoint_tensors},
                  {"dtypes", dtypes},
                  {"matches_config", problems.empty()},
                  {"problems", problems}};
  }

  const char* rope_type = config.rope_scaling.type == RopeScaling::Type::Llama3 ? "llama3" : "default";
  if (result.count("json")) {
    nlohmann::json out = {{"architecture", config.architecture},
                          {"model_type", config.model_type},
                          {"vocab_size", config.vocab_size},
                          {"hidden_size", config.hidden_size},
                          {"intermediate_size", config.intermediate_size},
                          {"num_hidden_layers", config.num_hidden_layers},
                          {"num_attention_heads", config.num_attention_heads},
                          {"num_key_value_heads", config.num_key_value_heads},
                          {"head_dim", config.head_dim},
                          {"max_position_embeddings", config.max_position_embeddings},
                          {"rms_norm_eps", config.rms_norm_eps},
                          {"rope_theta", config.rope_theta},
                          {"rope_type", rope_type},
                          {"tie_word_embeddings", config.tie_word_embeddings},
                          {"torch_dtype", config.torch_dtype},
                          {"total_params", counts.total_params},
                          {"non_embedding_params", counts.non_embedding_params},
                          {"sequence_length", sequence_length},
                          {"forward_flops_per_token", counts.forward_flops_per_token},
                          {"training_flops_per_token", counts.training_flops_per_token},
                          {"checkpoint", checkpoint}};
    if (config.rope_scaling.type == RopeScaling::Type::Llama3)
      out["rope_scaling"] = {
          {"factor", config.rope_scaling.factor},
          {"low_freq_factor", config.rope_scaling.low_freq_factor},
          {"high_freq_factor", config.rope_scaling.high_freq_factor},
          {"original_max_position_embeddings", config.rope_scaling.original_max_position_embeddings}};
    std::puts(out.dump().c_str());
  } else {
    std::printf("architecture          %s (model_type %s)\n", config.architecture.c_str(), config.model_type.c_str());
    std::printf("layers                %lld\n", static_cast<long long>(config.num_hidden_layers));
    std::printf("hidden size           %lld\n", static_cast<long long>(config.hidden_size));
    std::printf("ffn size              %lld\n", static_cast<long long>(config.intermediate_size));
    std::printf("attention             %lld query heads, %lld kv heads (%lld per group), head_dim %lld\n",
                static_cast<long long>(config.num_attention_heads), static_cast<long long>(config.num_key_value_heads),
                static_cast<long long>(config.query_heads_per_group()), static_cast<long long>(config.head_dim));
    std::printf("vocabulary            %lld\n", static_cast<long long>(config.vocab_size));
    std::printf("max positions         %lld\n", static_cast<long long>(config.max_position_embeddings));
    if (config.rope_scaling.type == RopeScaling::Type::Llama3)
      std::printf("rope                  theta %g, llama3 (factor %g, low %g, high %g, original %lld)\n",
                  config.rope_theta, config.rope_scaling.factor, config.rope_scaling.low_freq_factor,
                  config.rope_scaling.high_freq_factor,
                  static_cast<long long>(config.rope_scaling.original_max_position_embeddings));
    else
      std::printf("rope                  theta %g, default\n", config.rope_theta);
    std::printf("rms_norm_eps          %g\n", config.rms_norm_eps);
    std::printf("tied embeddings       %s\n", config.tie_word_embeddings ? "yes" : "no");
    std::printf("bos / eos             %s / %s\n", ids_string(config.bos_token_ids).c_str(),
                ids_string(config.eos_token_ids).c_str());
    std::printf("dtype                 %s\n", config.torch_dtype.c_str());
    std::printf("parameters            %s (%lld)\n", human(static_cast<double>(counts.total_params)).c_str(),
                static_cast<long long>(counts.total_params));
    std::printf("non-embedding         %s (%lld)\n", human(static_cast<double>(counts.non_embedding_params)).c_str(),
                static_cast<long long>(counts.non_embedding_params));
    std::printf("forward / token       %s at sequence length %lld\n",
                human_flops(counts.forward_flops_per_token).c_str(), static_cast<long long>(sequence_length));
    std::printf("training / token      %s (3x forward)\n", human_flops(counts.training_flops_per_token).c_str());
    if (!checkpoint.is_null())
      std::printf("checkpoint            %zu file(s), %zu tensors, %s\n", checkpoint_files, checkpoint_tensors,
                  problems.empty() ? "matches config.json" : "DOES NOT match config.json");
  }
  if (!problems.empty()) {
    std::string message;
    for (std::size_t i = 0; i < problems.size() && i < 5; ++i) message += (i ? "; " : "") + problems[i];
    if (problems.size() > 5) message += str("; and ", problems.size() - 5, " more");
    fail_expected(dir.string(), message, "the tensors and shapes that config.json describes");
  }
  return 0;
}

}  // namespace minitron::cli
