#include "model/config.h"

#include <cmath>
#include <numbers>

#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string field_name(const std::string& where, const std::string& key) {
  return str(where, ": field '", key, "'");
}

const char* json_type_name(const json& value) { return value.type_name(); }

bool present(const json& object, const std::string& key) {
  return object.contains(key) && !object.at(key).is_null();
}

std::int64_t as_int(const json& value, const std::string& what) {
  if (value.is_number_integer()) {
    if (value.is_number_unsigned() && value.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
      fail_expected(what, "integer is too large", "a value below 2^63");
    return value.get<std::int64_t>();
  }
  // Some exporters write sizes as 4096.0; accept floats that hold an exact integer.
  if (value.is_number_float()) {
    double d = value.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return static_cast<std::int64_t>(d);
  }
  fail_expected(what, str("found ", json_type_name(value), " ", value.dump()), "an integer");
}

double as_double(const json& value, const std::string& what) {
  if (!value.is_number()) fail_expected(what, str("found ", json_type_name(value), " ", value.dump()), "a number");
  return value.get<double>();
}

std::int64_t get_int(const json& object, const std::string& key, const std::string& where) {
  if (!present(object, key)) fail_expected(field_name(where, key), "missing", "an integer");
  return as_int(object.at(key), field_name(where, key));
}

std::int64_t get_int_or(const json& object, const std::string& key, const std::string& where,
                        std::int64_t fallback) {
  return present(object, key) ? as_int(object.at(key), field_name(where, key)) : fallback;
}

double get_double_or(const json& object, const std::string& key, const std::string& where, double fallback) {
  return present(object, key) ? as_double(object.at(key), field_name(where, key)) : fallback;
}

bool get_bool_or(const json& object, const std::string& key, const std::string& where, bool fallback) {
  if (!present(object, key)) return fallback;
  const json& v = object.at(key);
  if (!v.is_boolean()) fail_expected(field_name(where, key), str("found ", v.dump()), "true or false");
  return v.get<bool>();
}

std::string get_string_or(const json& object, const std::string& key, const std::string& where,
                          const std::string& fallback) {
  if (!present(object, key)) return fallback;
  const json& v = object.at(key);
  if (!v.is_string()) fail_expected(field_name(where, key), str("found ", v.dump()), "a string");
  return v.get<std::string>();
}

// HF allows a token id field to be an int, a list of ints, or null.
std::vector<std::int64_t> get_token_ids(const json& object, const std::string& key, const std::string& where,
                                        std::int64_t hf_default) {
  if (!object.contains(key)) return {hf_default};
  const json& v = object.at(key);
  if (v.is_null()) return {};
  if (v.is_array()) {
    std::vector<std::int64_t> ids;
    for (const json& item : v) ids.push_back(as_int(item, field_name(where, key)));
    return ids;
  }
  return {as_int(v, field_name(where, key))};
}

json token_ids_to_json(const std::vector<std::int64_t>& ids) {
  if (ids.empty()) return nullptr;
  if (ids.size() == 1) return ids[0];
  return ids;
}

void require_positive(std::int64_t value, const std::string& where, const std::string& key) {
  if (value <= 0) fail_expected(field_name(where, key), str("value ", value), "a positive integer");
}

// Reads the rope type and llama3 parameters from a 4.x `rope_scaling` or 5.x `rope_parameters`
// object. `key` names the object in messages.
void parse_rope_object(const json& rope, const std::string& where, const std::string& key, ModelConfig& config) {
  const std::string what = field_name(where, key);
  auto sub = [&](const std::string& name) { return field_name(where, key + "." + name); };
  if (!rope.is_object()) fail_expected(what, str("found ", rope.dump()), "null or an object");
  std::string type;
  if (present(rope, "rope_type")) type = get_string_or(rope, "rope_type", where, "");
  else if (present(rope, "type")) type = get_string_or(rope, "type", where, "");
  else
    fail_expected(sub("rope_type"), "missing (a nested per-layer-type layout is not supported)",
                  "'default' or 'llama3'");
  if (type == "default") {
    config.rope_scaling = RopeScaling{};
    return;
  }
  if (type != "llama3")
    fail_expected(sub("rope_type"), str("'", type, "' is not implemented"), "'default' or 'llama3'");
  RopeScaling s;
  s.type = RopeScaling::Type::Llama3;
  auto required_number = [&](const char* name) {
    if (!present(rope, name)) fail_expected(sub(name), "missing", "a number (llama3 rope needs it)");
    return as_double(rope.at(name), sub(name));
  };
  s.factor = required_number("factor");
  s.low_freq_factor = required_number("low_freq_factor");
  s.high_freq_factor = required_number("high_freq_factor");
  if (!present(rope, "original_max_position_embeddings"))
    fail_expected(sub("original_max_position_embeddings"), "missing", "an integer (llama3 rope needs it)");
  s.original_max_position_embeddings =
      as_int(rope.at("original_max_position_embeddings"), sub("original_max_position_embeddings"));
  if (!(s.factor >= 1.0)) fail_expected(sub("factor"), str("value ", s.factor), "a number >= 1");
  if (!(s.low_freq_factor > 0) || !(s.high_freq_factor > s.low_freq_factor))
    fail_expected(sub("low_freq_factor/high_freq_factor"),
                  str("values ", s.low_freq_factor, " and ", s.high_freq_factor),
                  "0 < low_freq_factor < high_freq_factor");
  if (s.original_max_position_embeddings <= 0)
    fail_expected(sub("original_max_position_embeddings"), str("value ", s.original_max_position_embeddings),
                  "a positive integer");
  config.rope_scaling = s;
}

}  // namespace

ModelConfig parse_model_config(const json& j, const std::string& where) {
  if (!j.is_object()) fail_expected(where, str("found a JSON ", json_type_name(j)), "a JSON object");
  ModelConfig c;
  c.source = j;

  // Architecture: the `architectures` list names the class transformers instantiates.
  std::string arch;
  if (present(j, "architectures")) {
    const json& a = j.at("architectures");
    if (!a.is_array() || a.size() != 1 || !a[0].is_string())
      fail_expected(field_name(where, "architectures"), str("found ", a.dump()),
                    "[\"LlamaForCausalLM\"] or [\"MistralForCausalLM\"]");
    arch = a[0].get<std::string>();
  }
  std::string model_type = get_string_or(j, "model_type", where, "");
  if (arch.empty() && model_type.empty())
    fail_expected(where, "neither 'architectures' nor 'model_type' is present", "a Llama or Mistral config.json");
  if (!arch.empty() && arch != "LlamaForCausalLM" && arch != "MistralForCausalLM")
    fail_expected(field_name(where, "architectures"), str("'", arch, "' is not supported"),
                  "LlamaForCausalLM or MistralForCausalLM");
  if (!model_type.empty() && model_type != "llama" && model_type != "mistral")
    fail_expected(field_name(where, "model_type"), str("'", model_type, "' is not supported"), "llama or mistral");
  if (arch.empty()) arch = model_type == "llama" ? "LlamaForCausalLM" : "MistralForCausalLM";
  if (model_type.empty()) model_type = arch == "LlamaForCausalLM" ? "llama" : "mistral";
  if ((arch == "LlamaForCausalLM") != (model_type == "llama"))
    fail_expected(field_name(where, "model_type"), str("'", model_type, "' does not match architecture ", arch),
                  arch == "LlamaForCausalLM" ? "llama" : "mistral");
  c.architecture = arch;
  c.model_type = model_type;
  const bool mistral = model_type == "mistral";

  // Sizes.
  c.vocab_size = get_int(j, "vocab_size", where);
  c.hidden_size = get_int(j, "hidden_size", where);
  c.intermediate_size = get_int(j, "intermediate_size", where);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", where);
  c.num_attention_heads = get_int(j, "num_attention_heads", where);
  c.num_key_value_heads = get_int_or(j, "num_key_value_heads", where, c.num_attention_heads);
  require_positive(c.vocab_size, where, "vocab_size");
  require_positive(c.hidden_size, where, "hidden_size");
  require_positive(c.intermediate_size, where, "intermediate_size");
  require_positive(c.num_hidden_layers, where, "num_hidden_layers");
  require_positive(c.num_attention_heads, where, "num_attention_heads");
  require_positive(c.num_key_value_heads, where, "num_key_value_heads");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail_expected(field_name(where, "num_key_value_heads"),
                  str(c.num_key_value_heads, " does not divide num_attention_heads ", c.num_attention_heads),
                  "a divisor of num_attention_heads");
  if (present(j, "head_dim")) {
    c.head_dim = get_int(j, "head_dim", where);
    require_positive(c.head_dim, where, "head_dim");
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      fail_expected(field_name(where, "head_dim"),
                    str("absent, and hidden_size ", c.hidden_size, " is not divisible by num_attention_heads ",
                        c.num_attention_heads),
                    "an explicit head_dim");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0)
    fail_expected(field_name(where, "head_dim"), str("value ", c.head_dim, " is odd"), "an even head_dim (RoPE rotates pairs)");

  // transformers' class defaults for fields a config may omit.
  c.max_position_embeddings = get_int_or(j, "max_position_embeddings", where, mistral ? 4096 * 32 : 2048);
  require_positive(c.max_position_embeddings, where, "max_position_embeddings");
  c.rms_norm_eps = get_double_or(j, "rms_norm_eps", where, 1e-6);
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps))
    fail_expected(field_name(where, "rms_norm_eps"), str("value ", c.rms_norm_eps), "a positive number");
  c.tie_word_embeddings = get_bool_or(j, "tie_word_embeddings", where, false);
  c.bos_token_ids = get_token_ids(j, "bos_token_id", where, 1);
  c.eos_token_ids = get_token_ids(j, "eos_token_id", where, 2);
  // transformers 5 renamed torch_dtype to dtype.
  c.torch_dtype = get_string_or(j, "torch_dtype", where, get_string_or(j, "dtype", where, c.torch_dtype));

  // What the engine does not implement.
  std::string act = get_string_or(j, "hidden_act", where, "silu");
  if (act != "silu")
    fail_expected(field_name(where, "hidden_act"), str("'", act, "' is not implemented"), "silu");
  if (get_bool_or(j, "attention_bias", where, false))
    fail_expected(field_name(where, "attention_bias"), "true (biased q/k/v/o projections are not implemented)", "false");
  if (get_bool_or(j, "mlp_bias", where, false))
    fail_expected(field_name(where, "mlp_bias"), "true (biased MLP projections are not implemented)", "false");
  if (present(j, "sliding_window")) {
    std::int64_t window = as_int(j.at("sliding_window"), field_name(where, "sliding_window"));
    if (window < c.max_position_embeddings)
      fail_expected(field_name(where, "sliding_window"),
                    str(window, " is active (below max_position_embeddings ", c.max_position_embeddings,
                        "); sliding-window attention is not implemented"),
                    "null");
  }

  // RoPE: transformers 5.x `rope_parameters`, else 4.x `rope_theta` + `rope_scaling`.
  if (present(j, "rope_parameters")) {
    const json& rope = j.at("rope_parameters");
    if (!rope.is_object())
      fail_expected(field_name(where, "rope_parameters"), str("found ", rope.dump()), "an object");
    parse_rope_object(rope, where, "rope_parameters", c);
    c.rope_theta = get_double_or(rope, "rope_theta", field_name(where, "rope_parameters"),
                                 get_double_or(j, "rope_theta", where, 10000.0));
  } else {
    c.rope_theta = get_double_or(j, "rope_theta", where, 10000.0);
    if (present(j, "rope_scaling")) parse_rope_object(j.at("rope_scaling"), where, "rope_scaling", c);
  }
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
    fail_expected(field_name(where, "rope_theta"), str("value ", c.rope_theta), "a positive number");
  return c;
}

ModelConfig load_model_config(const fs::path& path_or_dir) {
  fs::path path = fs::is_directory(path_or_dir) ? path_or_dir / "config.json" : path_or_dir;
  if (!fs::exists(path))
    fail_expected(path.string(), "no such file", "a model directory holding config.json, or a config.json path");
  std::string text = read_text_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail_expected(path.string(), str("invalid JSON: ", e.what()), "a Hugging Face config.json");
  }
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
