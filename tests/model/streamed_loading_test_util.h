// Streamed loading (model/tensor_streaming.h) on any engine: a sharded checkpoint streamed into
// a model equals the host load followed by set_parameters to the bit; the host memory on top
// during the load stays near one staging chunk, far below a whole-model copy (counted by
// tests/util/host_allocation_counter.h, whose .cpp the test binary lists); a damaged
// shard is refused in one line before anything is written; a rank's part of a training state
// streams in alike. Used by test_streamed_loading (CPU engine) and test_cuda_streamed_loading
// (emulated CUDA engine).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/bf16.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "model/tensor_streaming.h"
#include "model/training_state.h"
#include "tests/util/error_test_util.h"
#include "tests/util/host_allocation_counter.h"
#include "tests/util/temp_dir.h"
#include "util/error.h"

namespace minitron::testing {

namespace fs = std::filesystem;

// Large enough that a whole fp32 copy (5.4 MB) stands far above the staging chunk and the
// parsed headers; the embedding and head (524,288 values each) are 8 staging chunks each.
inline ModelConfig streamed_loading_config() {
  ModelConfig c;
  c.vocab_size = 4096;
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.max_position_embeddings = 64;
  return c;
}

inline constexpr std::int64_t kStagingCapacity = 65536;

// Every value distinct in its low mantissa bits (so bf16 rounding changes most of them) and of
// both signs and many magnitudes.
inline std::vector<float> streamed_loading_params(const ParameterTable& table) {
  std::vector<float> p(static_cast<std::size_t>(table.total_numel()));
  for (std::size_t i = 0; i < p.size(); ++i)
    p[i] = static_cast<float>((static_cast<double>((i * 2654435761u) % 1000003) - 500001.0) / 700001.0) *
           (1.0f + static_cast<float>(i % 5));
  return p;
}

// A checkpoint of at most 1 MB per shard: several shards, the embedding and the head each alone.
inline fs::path write_sharded_checkpoint(const fs::path& dir, const ModelConfig& config,
                                         const std::vector<float>& params, SafetensorsDType dtype) {
  SaveOptions options;
  options.dtype = dtype;
  options.max_shard_bytes = 1'000'000;
  save_checkpoint(dir, config, ParameterTable(config), params, options);
  return dir;
}

inline std::vector<float> downloaded(Backend& backend, Tensor t) {
  std::vector<float> out(static_cast<std::size_t>(t.numel));
  backend.download(out.data(), t);
  return out;
}

inline std::size_t shard_count(const fs::path& dir) {
  std::size_t n = 0;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().starts_with("model-")) ++n;
  return n;
}

// What the engine holds after storing x: x itself on an fp32 engine, x rounded to nearest even
// bf16 on a bf16 one (core/bf16.h, independent of the loader).
inline float stored(const Backend& backend, float x) {
  return backend.activation_dtype() == DType::BF16 ? round_to_bf16(x) : x;
}

inline void expect_streamed_equals_host_load(Backend& backend, SafetensorsDType dtype) {
  TempDir dir;
  const ModelConfig config = streamed_loading_config();
  const ParameterTable table(config);
  const std::vector<float> params = streamed_loading_params(table);
  const fs::path checkpoint = write_sharded_checkpoint(dir / "model", config, params, dtype);
  ASSERT_GE(shard_count(checkpoint), 3u) << "the test means a sharded checkpoint";

  // Today's path: the whole model converted to fp32 on the host, then uploaded at once.
  LlamaModel host_loaded(config, backend, 1, 4, ModelMode::Inference);
  {
    std::vector<float> whole(params.size());
    load_parameters(checkpoint, config, table, whole);
    host_loaded.set_parameters(whole);
  }
  LlamaModel streamed(config, backend, 1, 4, ModelMode::Inference);
  HostStaging staging(kStagingCapacity);
  load_parameters(checkpoint, config, table, backend, streamed.parameters(), staging);
  EXPECT_EQ(staging.high_water(), kStagingCapacity) << "the largest tensors crossed in pieces";

  const std::vector<float> got = downloaded(backend, streamed.parameters());
  const std::vector<float> today = downloaded(backend, host_loaded.parameters());
  ASSERT_EQ(got.size(), params.size());
  EXPECT_EQ(0, std::memcmp(got.data(), today.data(), got.size() * sizeof(float)));
  // And the values themselves: the saved ones as the file's dtype, then the engine's, rounded.
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const float on_disk = dtype == SafetensorsDType::BF16 ? round_to_bf16(params[i]) : params[i];
    const float expected = stored(backend, on_disk);
    if (std::memcmp(&got[i], &expected, sizeof(float)) != 0) ++wrong;
  }
  EXPECT_EQ(wrong, 0u);
}

// The host bytes on top of what was held before, at the peak of f.
template <typename F>
std::int64_t host_bytes_on_top(F&& f) {
  const std::int64_t before = host_live();
  reset_host_peak();
  f();
  return host_peak() - before;
}

// The allowance for what a load parses beside the staging: each shard's JSON header and the
// index (about 30 tensors), the tensor maps, the mismatch check's names. Measured at about 11
// KiB; 256 KiB leaves room for another standard library's node sizes and stays 20 times below
// the model's fp32 copy.
inline constexpr std::int64_t kHeaderAllowance = 256 << 10;

inline void expect_streamed_load_holds_no_whole_copy(Backend& backend) {
  TempDir dir;
  const ModelConfig config = streamed_loading_config();
  const ParameterTable table(config);
  const std::int64_t whole_bytes = table.total_numel() * 4;
  const fs::path checkpoint =
      write_sharded_checkpoint(dir / "model", config, streamed_loading_params(table), SafetensorsDType::BF16);
  LlamaModel model(config, backend, 1, 4, ModelMode::Inference);

  // The counter sees a whole-model copy when one is made: today's path.
  const std::int64_t host_path = host_bytes_on_top([&] {
    std::vector<float> whole(static_cast<std::size_t>(table.total_numel()));
    load_parameters(checkpoint, config, table, whole);
    model.set_parameters(whole);
  });
  EXPECT_GE(host_path, whole_bytes);

  HostStaging staging(kStagingCapacity);
  const std::int64_t streamed =
      host_bytes_on_top([&] { load_parameters(checkpoint, config, table, backend, model.parameters(), staging); });
  const std::int64_t bound = host_staging_bytes(backend.activation_dtype(), kStagingCapacity) + kHeaderAllowance;
  EXPECT_LE(streamed, bound) << "whole model " << whole_bytes << " bytes";
  EXPECT_LT(bound * 4, whole_bytes) << "the bound must stay far below a whole-model copy to mean anything";
}

// A shard cut short (a copy that stopped, a full disk) is refused in one line naming it, and
// the model keeps the weights it had: every shard is checked before the first tensor streams.
inline void expect_truncated_shard_refused_and_nothing_loaded(Backend& backend) {
  TempDir dir;
  const ModelConfig config = streamed_loading_config();
  const ParameterTable table(config);
  const fs::path checkpoint =
      write_sharded_checkpoint(dir / "model", config, streamed_loading_params(table), SafetensorsDType::BF16);
  const std::size_t shards = shard_count(checkpoint);
  ASSERT_GE(shards, 3u);
  // The last shard: the earlier ones are complete, and would stream first if nothing checked.
  const fs::path last = checkpoint / str("model-", std::string(5 - std::to_string(shards).size(), '0'), shards, "-of-",
                                         std::string(5 - std::to_string(shards).size(), '0'), shards, ".safetensors");
  ASSERT_TRUE(fs::exists(last)) << last;
  fs::resize_file(last, fs::file_size(last) - 6);

  LlamaModel model(config, backend, 1, 4, ModelMode::Inference);
  const std::vector<float> before(static_cast<std::size_t>(table.total_numel()), 0.75f);  // exact in bf16
  model.set_parameters(before);
  HostStaging staging(kStagingCapacity);
  const std::string error =
      error_of([&] { load_parameters(checkpoint, config, table, backend, model.parameters(), staging); });
  EXPECT_NE(error.find(last.string()), std::string::npos) << error;
  EXPECT_NE(error.find("file is truncated"), std::string::npos) << error;
  EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  EXPECT_EQ(downloaded(backend, model.parameters()), before) << "a refused checkpoint was half-loaded";
  EXPECT_EQ(staging.high_water(), 0);
}

// A rank's part of a training state: every weight into the replica, and only the part of the
// master weights and moments. The host bytes on top stay near the staging chunk. A damaged
// state (a moment shorter than the weights) is refused before anything is written.
inline void expect_training_state_part_streamed(Backend& backend, DType storage) {
  TempDir dir;
  const std::int64_t n = 1 << 20, begin = 300'001, part = 400'000;  // a part starting off any chunk boundary
  std::vector<float> weights(static_cast<std::size_t>(n)), m(weights.size()), v(weights.size());
  for (std::size_t i = 0; i < weights.size(); ++i) {
    weights[i] = static_cast<float>(i) * 1e-3f + 0.1234567f;
    m[i] = -static_cast<float>(i) * 2e-4f;
    v[i] = static_cast<float>(i % 977) * 3e-5f;
  }
  TrainingProgress progress;
  progress.batch_size = progress.sequence_length = progress.grad_accumulation = 1;
  write_training_state(dir.path(), progress, weights, m, v);
  {  // release the writer's memory before measuring
    std::vector<float>().swap(m);
    std::vector<float>().swap(v);
  }
  BackendBuffer params(backend, n, storage), part_m(backend, part, DType::F32), part_v(backend, part, DType::F32),
      master(backend, part, DType::F32);
  HostStaging staging(kStagingCapacity);
  const std::int64_t on_top = host_bytes_on_top([&] {
    load_training_tensors(dir.path(), backend, {params, begin, part_m, part_v, master}, staging);
  });
  EXPECT_LE(on_top, host_staging_bytes(storage, kStagingCapacity) + kHeaderAllowance);

  const std::vector<float> got = downloaded(backend, params);
  std::size_t wrong_params = 0, wrong_part = 0;
  const std::vector<float> got_master = downloaded(backend, master), got_m = downloaded(backend, part_m),
                           got_v = downloaded(backend, part_v);
  for (std::int64_t i = 0; i < n; ++i) {
    const auto u = static_cast<std::size_t>(i);
    if (got[u] != (storage == DType::BF16 ? round_to_bf16(weights[u]) : weights[u])) ++wrong_params;
  }
  for (std::int64_t i = 0; i < part; ++i) {
    const auto u = static_cast<std::size_t>(i), whole = static_cast<std::size_t>(begin + i);
    if (got_master[u] != weights[whole] || got_m[u] != -static_cast<float>(whole) * 2e-4f ||
        got_v[u] != static_cast<float>(whole % 977) * 3e-5f)
      ++wrong_part;
  }
  EXPECT_EQ(wrong_params, 0u);
  EXPECT_EQ(wrong_part, 0u);

  // adam_v one element short: refused naming it, and nothing is written.
  {
    std::vector<float> short_v(static_cast<std::size_t>(n - 1), 0.0f), zeros(weights.size(), 0.0f);
    const std::vector<std::int64_t> whole{n}, shorter{n - 1};
    write_safetensors_file(
        dir / "training_state.safetensors",
        std::vector<SafetensorsEntry>{
            {"params", whole, zeros.data()}, {"adam_m", whole, zeros.data()}, {"adam_v", shorter, short_v.data()}},
        SafetensorsDType::F32);
  }
  EXPECT_EQ(error_of([&] {
              load_training_tensors(dir.path(), backend, {params, begin, part_m, part_v, master}, staging);
            }),
            str((dir / "training_state.safetensors").string(), ": tensor 'adam_v': ", n - 1, " elements (expected ", n,
                ", one per parameter of the model)"));
  EXPECT_EQ(downloaded(backend, params), got) << "a refused training state was half-loaded";
  EXPECT_EQ(downloaded(backend, part_m), got_m);
}

}  // namespace minitron::testing
