#include "model/config.h"

#include <cmath>
#include <numbers>

#include "util/checked_json.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Sizes above 2^24 belong to no real model, and bounding them keeps every product of two sizes
// (parameter counts, q_dim) far inside int64.
constexpr std::int64_t kLargestSize = std::int64_t{1} << 24;

std::int64_t get_size(const JsonField& field) {
  const auto value = field.as_int<std::int64_t>();
  if (value <= 0 || value > kLargestSize) field.refuse(str("a positive integer up to ", kLargestSize));
  return value;
}

std::int64_t get_size_or(const JsonField& config, const std::string& key, std::int64_t fallback) {
  std::optional<JsonField> field = config.optional(key);
  return field ? get_size(*field) : fallback;
}

double get_double_or(const JsonField& config, const std::string& key, double fallback) {
  std::optional<JsonField> field = config.optional(key);
  return field ? field->as_float() : fallback;
}

bool get_bool_or(const JsonField& config, const std::string& key, bool fallback) {
  std::optional<JsonField> field = config.optional(key);
  return field ? field->as_bool() : fallback;
}

std::int64_t get_positive_or(const JsonField& config, const std::string& key, std::int64_t fallback) {
  std::optional<JsonField> field = config.optional(key);
  if (!field) return fallback;
  return field->as_int<std::int64_t>(1);
}

std::string get_string_or(const JsonField& config, const std::string& key, const std::string& fallback) {
  std::optional<JsonField> field = config.optional(key);
  return field ? field->as_string() : fallback;
}

// HF allows a token id field to be an int, a list of ints, or null. Token ids are int32 wherever
// they are used (generation stops on them), so a larger one is refused rather than wrapped.
std::vector<std::int64_t> get_token_ids(const JsonField& config, const std::string& key, std::int64_t hf_default) {
  const JsonField field = config.at(key);
  if (!field.exists()) return {hf_default};
  if (field.is_null()) return {};
  if (field.is_array()) {
    const std::vector<std::int32_t> ids = field.as_int_array<std::int32_t>();
    return {ids.begin(), ids.end()};
  }
  return {field.as_int<std::int32_t>()};
}

json token_ids_to_json(const std::vector<std::int64_t>& ids) {
  if (ids.empty()) return nullptr;
  if (ids.size() == 1) return ids[0];
  return ids;
}

// Reads the rope type and llama3 parameters from a 4.x `rope_scaling` or 5.x `rope_parameters`
// object.
void parse_rope_object(const JsonField& rope, ModelConfig& config) {
  if (!rope.is_object()) rope.refuse("null or an object");
  std::string type;
  if (rope.has("rope_type"))
    type = rope.at("rope_type").as_string();
  else if (rope.has("type"))
    type = rope.at("type").as_string();
  else
    rope.at("rope_type").refuse("missing (a nested per-layer-type layout is not supported)", "'default' or 'llama3'");
  if (type == "default") {
    config.rope_scaling = RopeScaling{};
    return;
  }
  if (type != "llama3") rope.at("rope_type").refuse(str("'", type, "' is not implemented"), "'default' or 'llama3'");
  RopeScaling s;
  s.type = RopeScaling::Type::Llama3;
  s.factor = rope.at("factor").as_float();
  s.low_freq_factor = rope.at("low_freq_factor").as_float();
  s.high_freq_factor = rope.at("high_freq_factor").as_float();
  s.original_max_position_embeddings = rope.at("original_max_position_embeddings").as_int<std::int64_t>(1);
  if (!(s.factor >= 1.0)) rope.at("factor").refuse("a number >= 1");
  if (!(s.low_freq_factor > 0) || !(s.high_freq_factor > s.low_freq_factor))
    rope.refuse(str("low_freq_factor ", s.low_freq_factor, " and high_freq_factor ", s.high_freq_factor),
                "0 < low_freq_factor < high_freq_factor");
  config.rope_scaling = s;
}

}  // namespace

ModelConfig parse_model_config(const json& j, const std::string& where) {
  const JsonField config(j, where);
  if (!config.is_object()) config.refuse("a JSON object");
  ModelConfig c;
  c.source = j;

  // Architecture: the `architectures` list names the class transformers instantiates.
  std::string arch;
  if (std::optional<JsonField> a = config.optional("architectures")) {
    if (!a->is_array() || a->size() != 1 || !(*a)[0].is_string())
      a->refuse("[\"LlamaForCausalLM\"] or [\"MistralForCausalLM\"]");
    arch = (*a)[0].as_string();
  }
  std::string model_type = get_string_or(config, "model_type", "");
  if (arch.empty() && model_type.empty())
    fail_expected(where, "neither 'architectures' nor 'model_type' is present", "a Llama or Mistral config.json");
  if (!arch.empty() && arch != "LlamaForCausalLM" && arch != "MistralForCausalLM")
    config.at("architectures").refuse(str("'", arch, "' is not supported"), "LlamaForCausalLM or MistralForCausalLM");
  if (!model_type.empty() && model_type != "llama" && model_type != "mistral")
    config.at("model_type").refuse(str("'", model_type, "' is not supported"), "llama or mistral");
  if (arch.empty()) arch = model_type == "llama" ? "LlamaForCausalLM" : "MistralForCausalLM";
  if (model_type.empty()) model_type = arch == "LlamaForCausalLM" ? "llama" : "mistral";
  if ((arch == "LlamaForCausalLM") != (model_type == "llama"))
    config.at("model_type")
        .refuse(str("'", model_type, "' does not match architecture ", arch),
                arch == "LlamaForCausalLM" ? "llama" : "mistral");
  c.architecture = arch;
  c.model_type = model_type;
  const bool mistral = model_type == "mistral";

  // Sizes.
  c.vocab_size = get_size(config.at("vocab_size"));
  c.hidden_size = get_size(config.at("hidden_size"));
  c.intermediate_size = get_size(config.at("intermediate_size"));
  c.num_hidden_layers = get_size(config.at("num_hidden_layers"));
  c.num_attention_heads = get_size(config.at("num_attention_heads"));
  c.num_key_value_heads = get_size_or(config, "num_key_value_heads", c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    config.at("num_key_value_heads")
        .refuse(str(c.num_key_value_heads, " does not divide num_attention_heads ", c.num_attention_heads),
                "a divisor of num_attention_heads");
  if (config.has("head_dim")) {
    c.head_dim = get_size(config.at("head_dim"));
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      config.at("head_dim")
          .refuse(str("absent, and hidden_size ", c.hidden_size, " is not divisible by num_attention_heads ",
                      c.num_attention_heads),
                  "an explicit head_dim");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0)
    config.at("head_dim").refuse(str("value ", c.head_dim, " is odd"), "an even head_dim (RoPE rotates pairs)");

  // transformers' class defaults for fields a config may omit.
  c.max_position_embeddings = get_positive_or(config, "max_position_embeddings", mistral ? 4096 * 32 : 2048);
  c.rms_norm_eps = get_double_or(config, "rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps > 0)) config.at("rms_norm_eps").refuse("a positive number");
  c.tie_word_embeddings = get_bool_or(config, "tie_word_embeddings", false);
  c.bos_token_ids = get_token_ids(config, "bos_token_id", 1);
  c.eos_token_ids = get_token_ids(config, "eos_token_id", 2);
  // transformers 5 renamed torch_dtype to dtype.
  c.torch_dtype = get_string_or(config, "torch_dtype", get_string_or(config, "dtype", c.torch_dtype));

  // What the engine does not implement.
  std::string act = get_string_or(config, "hidden_act", "silu");
  if (act != "silu") config.at("hidden_act").refuse(str("'", act, "' is not implemented"), "silu");
  if (get_bool_or(config, "attention_bias", false))
    config.at("attention_bias").refuse("true (biased q/k/v/o projections are not implemented)", "false");
  if (get_bool_or(config, "mlp_bias", false))
    config.at("mlp_bias").refuse("true (biased MLP projections are not implemented)", "false");
  if (std::optional<JsonField> sliding_window = config.optional("sliding_window")) {
    const auto window = sliding_window->as_int<std::int64_t>();
    if (window < c.max_position_embeddings)
      sliding_window->refuse(str(window, " is active (below max_position_embeddings ", c.max_position_embeddings,
                                 "); sliding-window attention is not implemented"),
                             "null");
  }

  // RoPE: transformers 5.x `rope_parameters`, else 4.x `rope_theta` + `rope_scaling`.
  if (std::optional<JsonField> rope = config.optional("rope_parameters")) {
    if (!rope->is_object()) rope->refuse("an object");
    parse_rope_object(*rope, c);
    c.rope_theta = get_double_or(*rope, "rope_theta", get_double_or(config, "rope_theta", 10000.0));
  } else {
    c.rope_theta = get_double_or(config, "rope_theta", 10000.0);
    if (std::optional<JsonField> scaling = config.optional("rope_scaling")) parse_rope_object(*scaling, c);
  }
  if (!(c.rope_theta > 0)) config.at("rope_theta").refuse(str("value ", c.rope_theta), "a positive number");
  return c;
}

ModelConfig load_model_config(const fs::path& path_or_dir) {
  fs::path path = fs::is_directory(path_or_dir) ? path_or_dir / "config.json" : path_or_dir;
  if (!fs::exists(path))
    fail_expected(path.string(), "no such file", "a model directory holding config.json, or a config.json path");
  const json j = parse_untrusted_json(read_text_file(path), path.string(), "a Hugging Face config.json");
  return parse_model_config(j, path.string());
}

json model_config_to_json(const ModelConfig& c) {
  json j = c.source.is_object() ? c.source : json::object();
  j["architectures"] = json::array({c.architecture});
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["bos_token_id"] = token_ids_to_json(c.bos_token_ids);
  j["eos_token_id"] = token_ids_to_json(c.eos_token_ids);
  j["torch_dtype"] = c.torch_dtype;
  if (j.contains("dtype")) j["dtype"] = c.torch_dtype;
  // One RoPE description only: the 4.x layout, which transformers 5 still reads.
  j.erase("rope_parameters");
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type == RopeScaling::Type::Llama3) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  return j;
}

void save_model_config(const ModelConfig& config, const fs::path& path) {
  write_bytes_atomically(path, model_config_to_json(config).dump(2) + "\n");
}

std::vector<float> rope_inverse_frequencies(const ModelConfig& config) {
  // Mirrors transformers' _compute_default_rope_parameters and _compute_llama3_parameters op for
  // op in fp32 (python scalars enter each op as fp32), so positions rotate by the same angles.
  const std::int64_t dim = config.head_dim;
  const float base = static_cast<float>(config.rope_theta);
  std::vector<float> inv_freq(static_cast<std::size_t>(dim / 2));
  for (std::int64_t i = 0; i < dim / 2; ++i) {
    float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv_freq[static_cast<std::size_t>(i)] = 1.0f / std::pow(base, exponent);
  }
  if (config.rope_scaling.type != RopeScaling::Type::Llama3) return inv_freq;

  const RopeScaling& s = config.rope_scaling;
  const float factor = static_cast<float>(s.factor);
  const float low_freq_factor = static_cast<float>(s.low_freq_factor);
  const double old_context_len = static_cast<double>(s.original_max_position_embeddings);
  const float low_freq_wavelen = static_cast<float>(old_context_len / s.low_freq_factor);
  const float high_freq_wavelen = static_cast<float>(old_context_len / s.high_freq_factor);
  const float two_pi = static_cast<float>(2 * std::numbers::pi);
  const float factor_range = static_cast<float>(s.high_freq_factor - s.low_freq_factor);
  for (float& f : inv_freq) {
    float wavelen = two_pi / f;
    float llama = wavelen > low_freq_wavelen ? f / factor : f;
    bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      float smooth = (static_cast<float>(old_context_len) / wavelen - low_freq_factor) / factor_range;
      f = (1.0f - smooth) * llama / factor + smooth * llama;
    } else {
      f = llama;
    }
  }
  return inv_freq;
}

}  // namespace minitron
