#include "model/checkpoint.h"
#include "model/training_state.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>

#include "core/bf16.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/util/error_test_util.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

ModelConfig tiny_config(bool tied = false) {
  json j = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"vocab_size", 64},
            {"hidden_size", 32},
            {"intermediate_size", 48},
            {"num_hidden_layers", 2},
            {"num_attention_heads", 4},
            {"num_key_value_heads", 2},
            {"head_dim", 8},
            {"max_position_embeddings", 128},
            {"rms_norm_eps", 1e-5},
            {"rope_theta", 10000.0},
            {"tie_word_embeddings", tied},
            {"bos_token_id", 1},
            {"eos_token_id", 2},
            {"torch_dtype", "float32"},
            {"transformers_version", "4.44.0"}};
  return parse_model_config(j);
}

std::vector<float> random_params(const ParameterTable& table, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> p(static_cast<std::size_t>(table.total_numel()));
  for (float& x : p) x = normal(rng);
  return p;
}

SaveOptions save_options(SafetensorsDType dtype, std::uint64_t max_shard_bytes = kDefaultMaxShardBytes) {
  SaveOptions options;
  options.dtype = dtype;
  options.max_shard_bytes = max_shard_bytes;
  return options;
}

std::map<std::string, std::string> directory_bytes(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& entry : fs::directory_iterator(dir))
    out[entry.path().filename().string()] = read_text_file(entry.path());
  return out;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            str("minitron_ck_", ::getpid(), "_", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  void expect_load_error(const fs::path& dir, const ModelConfig& config, const std::vector<std::string>& needles) {
    ParameterTable table(config);
    std::vector<float> params(static_cast<std::size_t>(table.total_numel()));
    try {
      load_parameters(dir, config, table, params);
      ADD_FAILURE() << "loaded a bad checkpoint";
    } catch (const Error& e) {
      for (const auto& needle : needles) EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }

  fs::path root_;
};

TEST_F(CheckpointTest, F32RoundTripIsExact) {
  ModelConfig config = tiny_config();
  ParameterTable table(config);
  std::vector<float> params = random_params(table, 1);
  save_checkpoint(root_ / "ck", config, table, params, save_options(SafetensorsDType::F32));
  LoadedCheckpoint loaded = load_checkpoint(root_ / "ck");
  EXPECT_EQ(loaded.params, params);
  EXPECT_EQ(loaded.config.torch_dtype, "float32");
  EXPECT_EQ(loaded.config.hidden_size, 32);
  EXPECT_EQ(loaded.config.source["transformers_version"], "4.44.0");
  EXPECT_EQ(loaded.table.total_numel(), table.total_numel());
  EXPECT_TRUE(fs::exists(root_ / "ck" / "model.safetensors"));
}

TEST_F(CheckpointTest, Bf16RoundTripAndByteIdenticalRewrite) {
  ModelConfig config = tiny_config();
  ParameterTable table(config);
  std::vector<float> params = random_params(table, 2);
  write_bytes_atomically(root_ / "tokenizer.json", "{\"model\": {}}");
  SaveOptions options;
  options.copy_files = {root_ / "tokenizer.json"};
  save_checkpoint(root_ / "a", config, table, params, options);
  json saved_config = json::parse(read_text_file(root_ / "a" / "config.json"));
  EXPECT_EQ(saved_config["torch_dtype"], "bfloat16");
  EXPECT_EQ(read_text_file(root_ / "a" / "tokenizer.json"), "{\"model\": {}}");

  LoadedCheckpoint loaded = load_checkpoint(root_ / "a");
  for (std::size_t i = 0; i < params.size(); ++i) ASSERT_EQ(loaded.params[i], round_to_bf16(params[i])) << i;
  options.copy_files = companion_files(root_ / "a");
  ASSERT_EQ(options.copy_files.size(), 1u);
  save_checkpoint(root_ / "b", loaded.config, loaded.table, loaded.params, options);
  EXPECT_EQ(directory_bytes(root_ / "a"), directory_bytes(root_ / "b"));
}

TEST_F(CheckpointTest, ShardedRoundTrip) {
  ModelConfig config = tiny_config();
  ParameterTable table(config);
  std::vector<float> params = random_params(table, 3);
  // 8 KiB shards: the 64x32 embedding alone is 4 KiB in BF16, so several shards result.
  save_checkpoint(root_ / "s", config, table, params, save_options(SafetensorsDType::BF16, 8192));
  EXPECT_TRUE(fs::exists(root_ / "s" / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(root_ / "s" / "model.safetensors"));
  LoadedCheckpoint loaded = load_checkpoint(root_ / "s");
  for (std::size_t i = 0; i < params.size(); ++i) ASSERT_EQ(loaded.params[i], round_to_bf16(params[i])) << i;
  save_checkpoint(root_ / "s2", loaded.config, loaded.table, loaded.params, save_options(SafetensorsDType::BF16, 8192));
  EXPECT_EQ(directory_bytes(root_ / "s"), directory_bytes(root_ / "s2"));
}

TEST_F(CheckpointTest, FailedSaveLeavesExistingDirectoryUntouched) {
  ModelConfig config = tiny_config();
  ParameterTable table(config);
  std::vector<float> params = random_params(table, 4);
  save_checkpoint(root_ / "ck", config, table, params);
  const auto before = directory_bytes(root_ / "ck");
  std::vector<float> other = random_params(table, 5);
  SaveOptions options;
  options.copy_files = {root_ / "no_such_tokenizer.json"};  // fails after the weights were written
  EXPECT_THROW(save_checkpoint(root_ / "ck", config, table, other, options), Error);
  EXPECT_EQ(directory_bytes(root_ / "ck"), before);
  std::vector<float> short_buffer(10);
  EXPECT_THROW(save_checkpoint(root_ / "ck", config, table, short_buffer), Error);
  EXPECT_EQ(directory_bytes(root_ / "ck"), before);
  // No temporary directories left behind.
  std::size_t entries = 0;
  for (const auto& e : fs::directory_iterator(root_)) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1u);
}

// Expects fn to throw an Error whose message contains every needle.
template <typename Fn>
void expect_error(Fn fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no error (expected one mentioning '" << needles.front() << "')";
  } catch (const Error& e) {
    for (const auto& needle : needles) EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// Runs a block with the current directory changed, restoring it after.
class ScopedCurrentDirectory {
 public:
  explicit ScopedCurrentDirectory(const fs::path& dir) : saved_(fs::current_path()) { fs::current_path(dir); }
  ~ScopedCurrentDirectory() { fs::current_path(saved_); }

 private:
  fs::path saved_;
};

// F1: an output directory never loses files the tool did not write.
TEST_F(CheckpointTest, SaveRefusesDirectoriesHoldingOtherFiles) {
  ModelConfig config = tiny_config();
  ParameterTable table(config);
  std::vector<float> params = random_params(table, 6);
  const fs::path victim = root_ / "victim";
  fs::create_directories(victim / "sub");
  write_bytes_atomically(victim / "notes.txt", "precious");
  write_bytes_atomically(victim / "config.json", "{}");  // checkpoint-like names do not make it one
  expect_error([&] { save_checkpoint(victim, config, table, params); },
               {victim.string(), "holds 'notes.txt' and 1 more entries", "move those files away"});
  EXPECT_EQ(read_text_file(victim / "notes.txt"), "precious");
  EXPECT_TRUE(fs::is_directory(victim / "sub"));
  EXPECT_EQ(read_text_file(victim / "config.json"), "{}");
  // Only the subdirectory in the way: still refused, named with a slash.
  fs::remove(victim / "notes.txt");
  expect_error([&] { save_checkpoint(victim, config, table, params); }, {"holds 'sub/'"});
  // A file where the directory should be.
  write_bytes_atomically(root_ / "file", "x");
  expect_error([&] { save_checkpoint(root_ / "file", config, table, params); }, {"exists and is not a directory"});
  EXPECT_EQ(read_text_file(root_ / "file"), "x");
  // No temporary or moved-aside directories are left behind by the refusals.
  for (const auto& entry : fs::directory_iterator(root_))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
}

TEST_F(CheckpointTest, SaveReplacesItsOwnAndHuggingFaceCheckpoints) {
  ModelConfig config = tiny_config();
  ParameterTable table(config);
  const std::vector<float> first = random_params(table, 7), second = random_params(table, 8);
  // An empty directory, then our own sharded checkpoint with extra files, then HF's file names.
  fs::create_directories(root_ / "ck");
  SaveOptions options = save_options(SafetensorsDType::F32, 8192);
  options.extra_files = {{"pruning.json", "{\"a\": 1}"}, {"search.json", "{}"}};
  save_checkpoint(root_ / "ck", config, table, first, options);
  EXPECT_EQ(read_text_file(root_ / "ck" / "pruning.json"), "{\"a\": 1}");
  EXPECT_TRUE(fs::exists(root_ / "ck" / "model.safetensors.index.json"));
  for (const char* name : {"generation_config.json", "special_tokens_map.json", "tokenizer.model", "merges.txt",
                           "training_state.json", "hidden_state_map.safetensors", "pytorch_model-00001-of-00002.bin"})
    write_bytes_atomically(root_ / "ck" / name, "hf");
  save_checkpoint(root_ / "ck", config, table, second, save_options(SafetensorsDType::F32));
  EXPECT_EQ(load_checkpoint(root_ / "ck").params, second);
  EXPECT_FALSE(fs::exists(root_ / "ck" / "pruning.json"));  // replaced as a whole
  EXPECT_FALSE(fs::exists(root_ / "ck" / "model.safetensors.index.json"));
  // A trailing slash names the same directory.
  save_checkpoint(str((root_ / "ck").string(), "/"), config, table, first, save_options(SafetensorsDType::F32));
  EXPECT_EQ(load_checkpoint(root_ / "ck").params, first);
  // Extra file names may not collide with the checkpoint's own or escape the directory.
  options.extra_files = {{"config.json", "{}"}};
  expect_error([&] { save_checkpoint(root_ / "ck", config, table, first, options); }, {"already taken"});
  options.extra_files = {{"../x.json", "{}"}};
  expect_error([&] { save_checkpoint(root_ / "ck", config, table, first, options); }, {"not a plain file name"});
  EXPECT_FALSE(fs::exists(root_ / "x.json"));
}

TEST_F(CheckpointTest, OutputMayNotBeTheCurrentDirectoryOrOverlapTheInput) {
  ModelConfig config = tiny_config();
  ParameterTable table(config);
  std::vector<float> params = random_params(table, 9);
  const fs::path work = root_ / "work";
  save_checkpoint(work / "teacher", config, table, params);
  write_bytes_atomically(work / "scores.json", "{}");
  {
    ScopedCurrentDirectory cd(work);
    // Even a directory holding only a checkpoint is refused when the process stands in it.
    expect_error([&] { save_checkpoint(".", config, table, params); }, {"is the current directory"});
    expect_error([&] { save_checkpoint("..", config, table, params); }, {"contains the current directory"});
    expect_error([&] { save_checkpoint("teacher/..", config, table, params); }, {"is the current directory"});
    const std::vector<fs::path> inputs{"teacher"};
    expect_error([&] { check_checkpoint_output("teacher", inputs, "--output teacher"); },
                 {"--output teacher", "is the input model directory teacher"});
    expect_error([&] { check_checkpoint_output("./teacher/", inputs, "--output ./teacher/"); },
                 {"is the input model directory"});
    expect_error([&] { check_checkpoint_output("teacher/pruned", inputs, "--output teacher/pruned"); },
                 {"lies inside the input model directory teacher"});
    const std::vector<fs::path> nested{"runs/teacher/model"};
    expect_error([&] { check_checkpoint_output("runs", nested, "--output runs"); },
                 {"contains the input model directory runs/teacher/model"});
    EXPECT_NO_THROW(check_checkpoint_output("pruned", inputs, "--output pruned"));
    EXPECT_NO_THROW(
        check_checkpoint_output("teacher-pruned", inputs, "--output teacher-pruned"));  // a prefix is not a parent
  }
  EXPECT_TRUE(fs::exists(work / "scores.json"));
  EXPECT_EQ(load_checkpoint(work / "teacher").params.size(), params.size());
}

TEST_F(CheckpointTest, MismatchesAreNamed) {
  ModelConfig config = tiny_config();
  ParameterTable table(config);
  std::vector<float> params = random_params(table, 6);
  std::vector<SafetensorsEntry> entries;
  for (const ParamInfo& p : table.entries()) entries.push_back({p.name, p.shape, params.data() + p.offset});
  auto write = [&](const std::string& name, std::vector<SafetensorsEntry> e) {
    fs::create_directories(root_ / name);
    save_model_config(config, root_ / name / "config.json");
    write_safetensors_model(root_ / name, e, SafetensorsDType::F32);
    return root_ / name;
  };

  auto missing = entries;
  missing.erase(missing.begin() + 3);  // model.layers.0.self_attn.k_proj.weight
  expect_load_error(write("missing", missing), config, {"model.layers.0.self_attn.k_proj.weight", "missing"});

  auto reshaped = entries;
  reshaped[2].shape = {8, 128};  // q_proj [32, 32] stored as [8, 128]: same bytes, wrong shape
  expect_load_error(write("shape", reshaped), config,
                    {"model.layers.0.self_attn.q_proj.weight", "[8, 128]", "expected [32, 32]"});

  auto extra = entries;
  extra.push_back({"model.layers.0.self_attn.q_proj.bias", {32}, params.data()});
  expect_load_error(write("extra", extra), config, {"unexpected", "model.layers.0.self_attn.q_proj.bias"});

  // Harmless extras load: rotary inv_freq buffers, and lm_head.weight of a tied model.
  auto harmless = entries;
  harmless.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", {4}, params.data()});
  fs::path ok = write("harmless", harmless);
  std::vector<float> back(params.size());
  load_parameters(ok, config, table, back);
  EXPECT_EQ(back, params);

  ModelConfig tied = tiny_config(true);
  ParameterTable tied_table(tied);
  std::vector<float> tied_params = random_params(tied_table, 7);
  std::vector<SafetensorsEntry> tied_entries;
  for (const ParamInfo& p : tied_table.entries())
    tied_entries.push_back({p.name, p.shape, tied_params.data() + p.offset});
  tied_entries.push_back({"lm_head.weight", {64, 32}, tied_params.data()});
  fs::path tied_dir = root_ / "tied";
  fs::create_directories(tied_dir);
  save_model_config(tied, tied_dir / "config.json");
  write_safetensors_model(tied_dir, tied_entries, SafetensorsDType::F32);
  LoadedCheckpoint t = load_checkpoint(tied_dir);
  EXPECT_EQ(t.params, tied_params);
  tied_entries.back().shape = {32, 64};
  write_safetensors_model(tied_dir, tied_entries, SafetensorsDType::F32);
  expect_load_error(tied_dir, tied, {"lm_head.weight", "[32, 64]"});

  std::vector<float> wrong_size(5);
  EXPECT_THROW(load_parameters(ok, config, table, wrong_size), Error);
  EXPECT_THROW(load_checkpoint(root_ / "nowhere"), Error);
}

// Runs a command, returning its exit status and standard output.
int run_command(const std::string& command, std::string& output) {
  output.clear();
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return -1;
  char buffer[4096];
  std::size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  return ::pclose(pipe);
}

TEST_F(CheckpointTest, IndependentPythonReaderAgrees) {
  std::string ignored;
  // find_spec only locates torch; importing it costs seconds, and the script does that once.
  if (!fs::exists("/usr/bin/python3") ||
      run_command("/usr/bin/python3 -c 'import numpy, importlib.util, sys; "
                  "sys.exit(importlib.util.find_spec(\"torch\") is None)' >/dev/null 2>&1",
                  ignored) != 0)
    GTEST_SKIP() << "/usr/bin/python3 with torch and numpy is not available";
  ModelConfig config = tiny_config();
  ParameterTable table(config);
  std::vector<float> params = random_params(table, 8);
  const std::vector<std::tuple<std::string, SafetensorsDType, std::uint64_t>> cases = {
      {"bf16", SafetensorsDType::BF16, kDefaultMaxShardBytes}, {"f32_sharded", SafetensorsDType::F32, 8192}};
  std::string command = "/usr/bin/python3 " MINITRON_SOURCE_DIR "/tools/check_hf_checkpoint.py";
  for (const auto& [name, dtype, shard] : cases) {
    save_checkpoint(root_ / name, config, table, params, save_options(dtype, shard));
    command += " " + (root_ / name).string();
  }
  std::string out;
  int status = run_command(command + " 2>&1", out);
  ASSERT_EQ(status, 0) << out;
  std::istringstream lines(out);
  for (const auto& [name, dtype, shard] : cases) {
    std::string line;
    ASSERT_TRUE(std::getline(lines, line)) << out;
    json result = json::parse(line);
    EXPECT_EQ(result["directory"], (root_ / name).string());
    ASSERT_EQ(result["tensors"].size(), table.entries().size());
    for (const ParamInfo& p : table.entries()) {
      const json& t = result["tensors"][p.name];
      EXPECT_EQ(t["shape"].get<std::vector<std::int64_t>>(), p.shape);
      EXPECT_EQ(t["dtype"], dtype == SafetensorsDType::BF16 ? "BF16" : "F32");
      float first = params[static_cast<std::size_t>(p.offset)];
      if (dtype == SafetensorsDType::BF16) first = round_to_bf16(first);
      EXPECT_EQ(t["first"].get<double>(), static_cast<double>(first)) << p.name;
      double sum = 0;
      for (std::int64_t i = 0; i < p.numel; ++i) {
        float v = params[static_cast<std::size_t>(p.offset + i)];
        sum += dtype == SafetensorsDType::BF16 ? round_to_bf16(v) : v;
      }
      // float64 sums of the same float32 values in another order (numpy pairwise vs
      // sequential): error ~ n * 1e-16 * sum|v|, far below 1e-9 for n <= 2048, |v| < 1.
      EXPECT_NEAR(t["sum"].get<double>(), sum, 1e-9) << p.name;
    }
    std::cout << name << ": " << result["checks"].dump() << "\n";
  }
}

// The training state reads back as written, each rank taking its own part of the moments; a
// file from before data-parallel training (no world_size) reads as one process's.
TEST_F(CheckpointTest, TrainingStateRoundTripsWithAPartOfTheMoments) {
  std::vector<float> weights(10), m(10), v(10);
  for (std::size_t i = 0; i < weights.size(); ++i) {
    weights[i] = 0.5f + static_cast<float>(i);
    m[i] = -0.25f * static_cast<float>(i);
    v[i] = 0.125f * static_cast<float>(i * i);
  }
  TrainingProgress written;
  written.step = 7;
  written.optimizer_steps = 6;
  written.loader = {{"epoch", 1}, {"position", 42}};
  written.batch_size = 4;
  written.sequence_length = 32;
  written.grad_accumulation = 2;
  written.world_size = 3;
  write_training_state(root_, written, weights, m, v);

  const TrainingProgress read = read_training_progress(root_);
  EXPECT_EQ(std::tie(read.step, read.optimizer_steps, read.batch_size, read.sequence_length, read.grad_accumulation,
                     read.world_size),
            std::tie(written.step, written.optimizer_steps, written.batch_size, written.sequence_length,
                     written.grad_accumulation, written.world_size));
  EXPECT_EQ(read.loader, written.loader);
  CpuBackend<float> cpu;
  BackendBuffer read_weights(cpu, 10, DType::F32), part_m(cpu, 4, DType::F32), part_v(cpu, 4, DType::F32),
      part_master(cpu, 4, DType::F32);
  HostStaging staging(3);  // smaller than the part: each tensor crosses in pieces
  load_training_tensors(root_, cpu, {read_weights, 3, part_m, part_v, part_master}, staging);
  auto host = [&](const BackendBuffer& b) {
    std::vector<float> out(static_cast<std::size_t>(b.numel()));
    cpu.download(out.data(), b);
    return out;
  };
  EXPECT_EQ(host(read_weights), weights);
  EXPECT_EQ(host(part_master), std::vector<float>(weights.begin() + 3, weights.begin() + 7));
  EXPECT_EQ(host(part_m), std::vector<float>(m.begin() + 3, m.begin() + 7));
  EXPECT_EQ(host(part_v), std::vector<float>(v.begin() + 3, v.begin() + 7));
  EXPECT_EQ(staging.high_water(), 3);

  json older = json::parse(read_text_file(root_ / "training_state.json"));
  older.erase("world_size");
  write_bytes_atomically(root_ / "training_state.json", older.dump(2));
  EXPECT_EQ(read_training_progress(root_).world_size, 1);
}

// A damaged or hand-edited training_state.json is refused naming the field, not read as a
// truncated or wrapped number (a step of 7.5 would resume at 7, 2^64 - 1 at -1).
TEST_F(CheckpointTest, TrainingProgressRefusesFieldsThatAreNotTheirIntegers) {
  const std::vector<float> zeros(4, 0.0f);
  TrainingProgress written;
  written.batch_size = written.sequence_length = written.grad_accumulation = 1;
  write_training_state(root_, written, zeros, zeros, zeros);
  const json valid = json::parse(read_text_file(root_ / "training_state.json"));
  const std::string file = (root_ / "training_state.json").string();
  for (const auto& [field, value, expected] :
       {std::tuple<std::string, json, std::string>{"step", 7.5, "is 7.5 (expected an integer from 0 to "},
        {"batch_size", 0, "is 0 (expected an integer from 1 to "},
        {"world_size", "2", "is \"2\" (expected an integer from 1 to "},
        {"optimizer_steps", json::parse("18446744073709551615"), "is 18446744073709551615 (expected an integer"}}) {
    json damaged = valid;
    damaged[field] = value;
    write_bytes_atomically(root_ / "training_state.json", damaged.dump(2));
    EXPECT_THAT(testing::error_of([&] { read_training_progress(root_); }),
                ::testing::HasSubstr(str(file, ": ", field, " ", expected)))
        << field;
  }
  json missing = valid;
  missing.erase("loader");
  write_bytes_atomically(root_ / "training_state.json", missing.dump(2));
  EXPECT_THAT(testing::error_of([&] { read_training_progress(root_); }),
              ::testing::HasSubstr(str(file, ": loader is missing")));
}

}  // namespace
}  // namespace minitron
