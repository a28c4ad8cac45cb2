// The model description: a parsed Hugging Face config.json of a Llama- or Mistral-family model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace minitron {

struct RopeScaling {
  enum class Type { None, Llama3 };
  Type type = Type::None;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";  // or "MistralForCausalLM"
  std::string model_type = "llama";               // or "mistral"
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;
  std::int64_t head_dim = 0;  // explicit in config.json, or hidden_size / num_attention_heads
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  std::int64_t max_position_embeddings = 2048;
  std::vector<std::int64_t> bos_token_ids;  // HF allows an int or a list; kept as a list
  std::vector<std::int64_t> eos_token_ids;
  std::string torch_dtype = "bfloat16";

  // The config.json this was parsed from (empty for configs built in code). Writing keeps
  // every field we do not model (e.g. transformers_version) and overwrites the ones we do.
  nlohmann::json source;

  std::int64_t q_dim() const { return num_attention_heads * head_dim; }
  std::int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  std::int64_t query_heads_per_group() const { return num_attention_heads / num_key_value_heads; }
};

// Parses and validates; throws minitron::Error naming the field for anything the engine does
// not implement (biases, an active sliding window, other rope types or activations, other
// architectures) or any inconsistent size. `where` names the source in messages.
ModelConfig parse_model_config(const nlohmann::json& json, const std::string& where = "config.json");
ModelConfig load_model_config(const std::filesystem::path& path_or_dir);

// The HF config.json for this config (transformers 4.x layout, head_dim always explicit).
nlohmann::json model_config_to_json(const ModelConfig& config);
void save_model_config(const ModelConfig& config, const std::filesystem::path& path);

// Inverse frequencies of RoPE for this config (head_dim / 2 values), including llama3
// scaling, computed as transformers does (fp32).
std::vector<float> rope_inverse_frequencies(const ModelConfig& config);

}  // namespace minitron
