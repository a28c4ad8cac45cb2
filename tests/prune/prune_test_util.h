// Shared helpers of the pruning tests: tiny configs, seeded weights, logits of a forward pass,
// a temporary directory, and a runner for the built binary.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/make_backend.h"
#include "model/llama.h"
#include "tests/util/temp_dir.h"
#include "util/error.h"

namespace minitron::testing {

// Llama with GQA (8 query heads in 2 groups), head_dim 8 so q_dim (64) != hidden (32), and a
// tiny RMSNorm epsilon so that hidden-channel pruning can be compared exactly (see test_slicing).
inline ModelConfig tiny_config(bool tied = false) {
  ModelConfig c;
  c.vocab_size = 50;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-12;
  c.tie_word_embeddings = tied;
  c.max_position_embeddings = 64;
  c.torch_dtype = "float32";
  return c;
}

// Seeded weights larger than HF's 0.02 init so that every layer visibly changes the logits.
inline std::vector<float> tiny_parameters(const ModelConfig& c, std::uint64_t seed = 7) {
  ParameterTable table(c);
  std::vector<float> params(static_cast<std::size_t>(table.total_numel()));
  initialize_parameters(c, table, params, seed, 0.3);
  // Norm weights away from 1 so that a wrongly sliced norm shows.
  for (const ParamInfo& p : table.entries())
    if (p.kind == ParamKind::Norm)
      for (std::int64_t i = 0; i < p.numel; ++i)
        params[static_cast<std::size_t>(p.offset + i)] = 1.0f + 0.05f * static_cast<float>((i * 7 + p.offset) % 11);
  return params;
}

inline std::vector<std::int32_t> tiny_tokens(std::int64_t n, std::int64_t vocab, std::int64_t seed = 3) {
  std::vector<std::int32_t> out;
  for (std::int64_t i = 0; i < n; ++i) out.push_back(static_cast<std::int32_t>((i * 17 + seed * 5 + i * i) % vocab));
  return out;
}

// fp32 logits [B*T, V] of a CPU forward pass.
inline std::vector<float> forward_logits(const ModelConfig& c, const std::vector<float>& params,
                                         const std::vector<std::int32_t>& tokens, std::int64_t B, std::int64_t T) {
  auto backend = make_backend("cpu");
  LlamaModel model(c, *backend, B, T, ModelMode::Inference);
  model.set_parameters(params);
  model.forward(tokens, B, T);
  BackendBuffer logits(*backend, B * T * c.vocab_size, DType::F32);
  model.logits(logits, 0, B * T);
  std::vector<float> out(static_cast<std::size_t>(B * T * c.vocab_size));
  backend->download(out.data(), logits);
  return out;
}

inline double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::abs(x)));
  return m;
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
  return m;
}

#if defined(MINITRON_BINARY)
// Runs the built `minitron` binary (MINITRON_BINARY) with args, capturing its exit status and
// output through files in dir.
struct CommandResult {
  int status = -1;
  std::string out, err;
};

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline CommandResult minitron(const TempDir& dir, const std::string& args) {
  const std::string command =
      str(MINITRON_BINARY, " ", args, " > ", (dir / "stdout.txt").string(), " 2> ", (dir / "stderr.txt").string());
  CommandResult r;
  const int raw = std::system(command.c_str());
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.out = slurp(dir / "stdout.txt");
  r.err = slurp(dir / "stderr.txt");
  return r;
}
#endif  // MINITRON_BINARY

}  // namespace minitron::testing
