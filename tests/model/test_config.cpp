#include "model/config.h"

#include <gtest/gtest.h>

#include <bit>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "tests/model/model_configs.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {
namespace {

using nlohmann::json;
namespace tc = test_configs;

ModelConfig parse(const char* text) { return parse_model_config(json::parse(text)); }

// Expects parse to throw a minitron::Error whose message contains `needle`.
void expect_refused(const json& j, const std::string& needle) {
  try {
    parse_model_config(j);
    ADD_FAILURE() << "accepted a config that should be refused (" << needle << "): " << j.dump();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

json with(const char* text, const std::string& key, const json& value) {
  json j = json::parse(text);
  j[key] = value;
  return j;
}

TEST(ModelConfig, Llama2_7B) {
  ModelConfig c = parse(tc::kLlama2_7B);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::None);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_EQ(c.bos_token_ids, std::vector<std::int64_t>{1});
  EXPECT_EQ(c.eos_token_ids, std::vector<std::int64_t>{2});
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_EQ(c.query_heads_per_group(), 1);
}

TEST(ModelConfig, Llama31_8B_Llama3Rope) {
  ModelConfig c = parse(tc::kLlama31_8B);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.q_dim(), 4096);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.query_heads_per_group(), 4);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::Llama3);
  EXPECT_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.bos_token_ids, std::vector<std::int64_t>{128000});
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(ModelConfig, Llama32_1B_TiedWithEosList) {
  ModelConfig c = parse(tc::kLlama32_1B);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_hidden_layers, 16);
  EXPECT_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.eos_token_ids, (std::vector<std::int64_t>{128001, 128008, 128009}));
}

TEST(ModelConfig, Mistral7B_v03) {
  ModelConfig c = parse(tc::kMistral7B_v03);
  EXPECT_EQ(c.architecture, "MistralForCausalLM");
  EXPECT_EQ(c.model_type, "mistral");
  EXPECT_EQ(c.vocab_size, 32768);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.max_position_embeddings, 32768);
}

TEST(ModelConfig, MistralNemoExplicitHeadDim) {
  ModelConfig c = parse(tc::kMistralNemo12B);
  EXPECT_EQ(c.hidden_size, 5120);
  EXPECT_EQ(c.head_dim, 128);  // not 5120 / 32 = 160
  EXPECT_EQ(c.q_dim(), 4096);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.num_hidden_layers, 40);
}

TEST(ModelConfig, Transformers5RopeParameters) {
  ModelConfig v5 = parse(tc::kLlama32_1B_v5);
  ModelConfig v4 = parse(tc::kLlama32_1B);
  EXPECT_EQ(v5.rope_theta, 500000.0);
  EXPECT_EQ(v5.rope_scaling.type, RopeScaling::Type::Llama3);
  EXPECT_EQ(v5.rope_scaling.factor, v4.rope_scaling.factor);
  EXPECT_EQ(v5.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(v5.torch_dtype, "bfloat16");  // from "dtype"
  // Default rope in the 5.x layout.
  json j = json::parse(tc::kLlama2_7B);
  j.erase("rope_scaling");
  j["rope_theta"] = 1.0;  // must be overridden by rope_parameters
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 250000.0}};
  ModelConfig d = parse_model_config(j);
  EXPECT_EQ(d.rope_theta, 250000.0);
  EXPECT_EQ(d.rope_scaling.type, RopeScaling::Type::None);
}

TEST(ModelConfig, OlderRopeScalingKeyAndDefaults) {
  // Early Llama 3.1 configs said "type" rather than "rope_type".
  json j = json::parse(tc::kLlama31_8B);
  j["rope_scaling"].erase("rope_type");
  j["rope_scaling"]["type"] = "llama3";
  EXPECT_EQ(parse_model_config(j).rope_scaling.type, RopeScaling::Type::Llama3);
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(parse_model_config(j).rope_scaling.type, RopeScaling::Type::None);
  // Omitted fields take transformers' class defaults.
  json minimal = {{"model_type", "llama"},    {"vocab_size", 100},      {"hidden_size", 64},
                  {"intermediate_size", 128}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}};
  ModelConfig m = parse_model_config(minimal);
  EXPECT_EQ(m.architecture, "LlamaForCausalLM");
  EXPECT_EQ(m.num_key_value_heads, 4);
  EXPECT_EQ(m.head_dim, 16);
  EXPECT_EQ(m.rms_norm_eps, 1e-6);
  EXPECT_EQ(m.max_position_embeddings, 2048);
  EXPECT_EQ(m.rope_theta, 10000.0);
  // Null token ids mean none; an inactive sliding window (>= max positions) is accepted.
  minimal["bos_token_id"] = nullptr;
  minimal["sliding_window"] = 4096;
  minimal["max_position_embeddings"] = 4096;
  EXPECT_TRUE(parse_model_config(minimal).bos_token_ids.empty());
}

TEST(ModelConfig, Refusals) {
  expect_refused(with(tc::kLlama2_7B, "architectures", json::array({"GPTNeoXForCausalLM"})), "architectures");
  expect_refused(with(tc::kLlama2_7B, "architectures", "LlamaForCausalLM"), "architectures");
  expect_refused(with(tc::kLlama2_7B, "model_type", "gemma"), "model_type");
  expect_refused(with(tc::kLlama2_7B, "model_type", "mistral"), "model_type");
  expect_refused(with(tc::kLlama31_8B, "attention_bias", true), "attention_bias");
  expect_refused(with(tc::kLlama31_8B, "mlp_bias", true), "mlp_bias");
  expect_refused(with(tc::kLlama2_7B, "hidden_act", "gelu"), "hidden_act");
  expect_refused(with(tc::kMistral7B_v03, "sliding_window", 4096), "sliding_window");
  for (const char* type : {"linear", "dynamic", "yarn", "longrope", "su"}) {
    json j = json::parse(tc::kLlama2_7B);
    j["rope_scaling"] = {{"type", type}, {"factor", 2.0}};
    expect_refused(j, "rope_scaling");
    json k = json::parse(tc::kLlama2_7B);
    k["rope_parameters"] = {{"rope_type", type}, {"factor", 2.0}, {"rope_theta", 10000.0}};
    expect_refused(k, "rope_parameters");
  }
  json nested = json::parse(tc::kLlama2_7B);
  nested["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}}}};
  expect_refused(nested, "rope_parameters.rope_type");
  json missing_factor = json::parse(tc::kLlama31_8B);
  missing_factor["rope_scaling"].erase("low_freq_factor");
  expect_refused(missing_factor, "low_freq_factor");
  expect_refused(with(tc::kLlama31_8B, "num_key_value_heads", 5), "num_key_value_heads");
  // Token ids are int32 where they are used: 2^32 + 2 would stop generation at token 2.
  expect_refused(with(tc::kLlama31_8B, "eos_token_id", 4294967298LL), "eos_token_id is 4294967298");
  expect_refused(with(tc::kLlama31_8B, "eos_token_id", json::array({128001, 4294967298LL})), "eos_token_id[1]");
  expect_refused(with(tc::kLlama31_8B, "bos_token_id", 7.5), "bos_token_id is 7.5");
  expect_refused(with(tc::kLlama31_8B, "num_key_value_heads", 0), "num_key_value_heads");
  expect_refused(with(tc::kLlama31_8B, "hidden_size", -4096), "hidden_size");
  expect_refused(with(tc::kLlama31_8B, "intermediate_size", 0), "intermediate_size");
  expect_refused(with(tc::kLlama31_8B, "num_hidden_layers", 0), "num_hidden_layers");
  expect_refused(with(tc::kLlama31_8B, "vocab_size", "128256"), "vocab_size");
  expect_refused(with(tc::kLlama31_8B, "vocab_size", 1.5), "vocab_size");
  expect_refused(with(tc::kLlama31_8B, "head_dim", 127), "head_dim");
  expect_refused(with(tc::kLlama31_8B, "hidden_size", 4100), "head_dim");  // 4100 / 32 is not whole
  expect_refused(with(tc::kLlama31_8B, "tie_word_embeddings", "yes"), "tie_word_embeddings");
  expect_refused(with(tc::kLlama31_8B, "rope_theta", -1.0), "rope_theta");
  expect_refused(with(tc::kLlama31_8B, "rms_norm_eps", 0.0), "rms_norm_eps");
  expect_refused(with(tc::kLlama31_8B, "eos_token_id", json::array({1, "x"})), "eos_token_id");
  json no_size = json::parse(tc::kLlama31_8B);
  no_size.erase("hidden_size");
  expect_refused(no_size, "hidden_size");
  expect_refused(json::array(), "JSON object");
}

TEST(ModelConfig, ToJsonKeepsUnknownFieldsAndWritesV4Layout) {
  ModelConfig c = parse(tc::kLlama32_1B_v5);
  json j = model_config_to_json(c);
  EXPECT_EQ(j["transformers_version"], "5.0.0.dev0");
  EXPECT_EQ(j["initializer_range"], 0.02);
  EXPECT_FALSE(j.contains("rope_parameters"));
  EXPECT_EQ(j["rope_theta"], 500000.0);
  EXPECT_EQ(j["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(j["rope_scaling"]["factor"], 32.0);
  EXPECT_EQ(j["rope_scaling"]["original_max_position_embeddings"], 8192);
  EXPECT_EQ(j["head_dim"], 64);
  EXPECT_EQ(j["architectures"], json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["torch_dtype"], "bfloat16");

  // Changed sizes are written, head_dim explicit even when hidden/heads would give another value.
  ModelConfig pruned = parse(tc::kMistralNemo12B);
  pruned.hidden_size = 3072;
  pruned.intermediate_size = 9216;
  pruned.torch_dtype = "float32";
  pruned.eos_token_ids = {2, 3};
  json p = model_config_to_json(pruned);
  EXPECT_EQ(p["hidden_size"], 3072);
  EXPECT_EQ(p["head_dim"], 128);
  EXPECT_EQ(p["torch_dtype"], "float32");
  EXPECT_EQ(p["eos_token_id"], json::array({2, 3}));
  EXPECT_EQ(p["rope_scaling"], nullptr);
  EXPECT_EQ(p["sliding_window"], nullptr);  // kept from the source
  ModelConfig back = parse_model_config(p);
  EXPECT_EQ(back.hidden_size, 3072);
  EXPECT_EQ(back.head_dim, 128);
  EXPECT_EQ(back.eos_token_ids, (std::vector<std::int64_t>{2, 3}));

  // A config built in code (no source) round-trips too.
  ModelConfig made;
  made.vocab_size = 256;
  made.hidden_size = 64;
  made.intermediate_size = 192;
  made.num_hidden_layers = 2;
  made.num_attention_heads = 4;
  made.num_key_value_heads = 2;
  made.head_dim = 16;
  ModelConfig again = parse_model_config(model_config_to_json(made));
  EXPECT_EQ(again.num_key_value_heads, 2);
  EXPECT_EQ(again.rms_norm_eps, made.rms_norm_eps);
  EXPECT_EQ(again.max_position_embeddings, made.max_position_embeddings);
}

TEST(ModelConfig, SaveAndLoadFile) {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / str("minitron_test_config_", ::getpid());
  fs::create_directories(dir);
  ModelConfig c = parse(tc::kLlama31_8B);
  save_model_config(c, dir / "config.json");
  ModelConfig back = load_model_config(dir);  // a directory works as well as the file path
  EXPECT_EQ(back.vocab_size, c.vocab_size);
  EXPECT_EQ(back.rope_scaling.factor, 8.0);
  EXPECT_EQ(back.source["transformers_version"], "4.43.0.dev0");
  write_bytes_atomically(dir / "bad.json", "{\"vocab_size\": ");
  EXPECT_THROW(load_model_config(dir / "bad.json"), Error);
  EXPECT_THROW(load_model_config(dir / "absent.json"), Error);
  fs::remove_all(dir);
}

// ------------------------------------------------------------------------------------ RoPE

std::int64_t ulp_distance(float a, float b) {
  auto key = [](float x) {
    std::int32_t i = std::bit_cast<std::int32_t>(x);
    return i < 0 ? std::int64_t{INT32_MIN} - i : std::int64_t{i};
  };
  return std::llabs(key(a) - key(b));
}

TEST(Rope, InverseFrequenciesMatchTransformers) {
  // Expected values: tests/model/fixtures/make_rope_fixture.py (PyTorch running transformers'
  // rope functions).
  json fixture = json::parse(read_text_file(MINITRON_SOURCE_DIR "/tests/model/fixtures/rope_inverse_frequencies.json"));
  ASSERT_EQ(fixture["cases"].size(), 4u);
  for (const json& c : fixture["cases"]) {
    ModelConfig config = parse(tc::kLlama2_7B);
    config.rope_theta = c["rope_theta"].get<double>();
    config.head_dim = c["head_dim"].get<std::int64_t>();
    if (!c["rope_scaling"].is_null()) {
      config.rope_scaling.type = RopeScaling::Type::Llama3;
      config.rope_scaling.factor = c["rope_scaling"]["factor"];
      config.rope_scaling.low_freq_factor = c["rope_scaling"]["low_freq_factor"];
      config.rope_scaling.high_freq_factor = c["rope_scaling"]["high_freq_factor"];
      config.rope_scaling.original_max_position_embeddings = c["rope_scaling"]["original_max_position_embeddings"];
    }
    std::vector<float> got = rope_inverse_frequencies(config);
    const std::vector<double> expected = c["inv_freq"].get<std::vector<double>>();
    ASSERT_EQ(got.size(), expected.size()) << c["name"];
    for (std::size_t i = 0; i < got.size(); ++i) {
      // 1 ulp: PyTorch's vectorized powf (SLEEF, 1.0-ulp bound) and libm's powf may round the
      // same exact power differently (seen once, mistral-nemo i=37); every other op is a single
      // correctly rounded fp32 op in both.
      EXPECT_LE(ulp_distance(got[i], static_cast<float>(expected[i])), 1)
          << c["name"] << " i=" << i << " got " << got[i] << " expected " << expected[i];
    }
  }
}

TEST(Rope, Llama3LeavesHighFrequenciesAndScalesLowOnes) {
  ModelConfig plain = parse(tc::kLlama31_8B);
  ModelConfig scaled = plain;
  plain.rope_scaling = RopeScaling{};
  std::vector<float> a = rope_inverse_frequencies(plain), b = rope_inverse_frequencies(scaled);
  ASSERT_EQ(a.size(), 64u);
  EXPECT_EQ(a[0], b[0]);           // wavelength 2*pi, far below 8192/4
  EXPECT_EQ(a[63] / 8.0f, b[63]);  // wavelength far above 8192: divided by factor 8
  EXPECT_EQ(a[0], 1.0f);
}

}  // namespace
}  // namespace minitron
