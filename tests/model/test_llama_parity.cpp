// Parity with an independent implementation: tools/llama_reference.py (PyTorch, float64)
// wrote logits, loss, every gradient and the weights after 3 AdamW steps for three tiny
// models (tests/fixtures/README.md). The fp32 engine must reproduce them.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/make_backend.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "train/losses.h"
#include "train/optimizer.h"

namespace minitron {
namespace {

const std::filesystem::path kFixtures = std::filesystem::path(MINITRON_SOURCE_DIR) / "tests/fixtures";

struct Fixture {
  LoadedCheckpoint checkpoint;
  std::int64_t batch = 0, sequence = 0;
  std::vector<std::int32_t> inputs, targets;
  std::unique_ptr<SafetensorsFile> expected;

  explicit Fixture(const std::string& name) : checkpoint(load_checkpoint(kFixtures / name)) {
    nlohmann::json tokens = nlohmann::json::parse(std::ifstream(kFixtures / name / "tokens.json"));
    batch = tokens["batch"];
    sequence = tokens["seq"];
    for (const auto& row : tokens["inputs"])
      for (int t : row) inputs.push_back(t);
    for (const auto& row : tokens["targets"])
      for (int t : row) targets.push_back(t);
    expected = std::make_unique<SafetensorsFile>(kFixtures / name / "expected.safetensors");
  }
  std::vector<float> tensor(const std::string& name) const {
    const SafetensorsTensor& t = expected->at(name);
    std::int64_t n = 1;
    for (auto d : t.shape) n *= d;
    std::vector<float> out(static_cast<std::size_t>(n));
    expected->read_f32(t, out);
    return out;
  }
};

// Normwise relative error ||a - b|| / ||b||: robust for tensors with tiny elements.
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(b[i]) * b[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-300));
}

std::vector<float> slice(const std::vector<float>& all, const ParamInfo& info) {
  return {all.begin() + info.offset, all.begin() + info.offset + info.numel};
}

class LlamaParity : public ::testing::TestWithParam<std::string> {};

TEST_P(LlamaParity, ForwardAndGradients) {
  Fixture f(GetParam());
  const ModelConfig& config = f.checkpoint.config;
  auto backend = make_backend("cpu");
  LlamaModel model(config, *backend, f.batch, f.sequence, ModelMode::Training);
  model.set_parameters(f.checkpoint.params);
  LossWorkspace workspace(*backend, config.vocab_size, f.batch * f.sequence, /*rows_per_chunk=*/5);

  model.zero_gradients();
  model.forward(f.inputs, f.batch, f.sequence);
  const double loss = cross_entropy_loss(model, f.targets, workspace, 1.0f);
  model.backward();

  // fp32 forward with reductions of at most ~100 terms: ~1e-6 relative; 1e-5 leaves margin.
  EXPECT_NEAR(loss, f.tensor("loss")[0], 1e-5 * std::abs(loss));
  const std::int64_t rows = f.batch * f.sequence, V = config.vocab_size;
  BackendBuffer logits(*backend, rows * V, DType::F32);
  model.logits(logits, 0, rows);
  std::vector<float> host(static_cast<std::size_t>(rows * V));
  backend->download(host.data(), logits);
  EXPECT_LT(relative_error(host, f.tensor("logits")), 1e-5);
  std::vector<float> hidden(static_cast<std::size_t>(rows * config.hidden_size));
  backend->download(hidden.data(), model.final_hidden());
  EXPECT_LT(relative_error(hidden, f.tensor("hidden_final")), 1e-5);

  std::vector<float> grads(static_cast<std::size_t>(model.table().total_numel()));
  backend->download(grads.data(), model.gradients());
  for (const ParamInfo& info : model.table().entries()) {
    // Gradients chain a few more fp32 reductions and the softmax Jacobian: 1e-4 relative.
    EXPECT_LT(relative_error(slice(grads, info), f.tensor("grad." + info.name)), 1e-4) << info.name;
  }
}

TEST_P(LlamaParity, ThreeAdamWSteps) {
  Fixture f(GetParam());
  for (const char* prefix : {"adamw3", "adamw3_clip"}) {
    if (!f.expected->find(str(prefix, "_losses"))) continue;
    const ModelConfig& config = f.checkpoint.config;
    auto backend = make_backend("cpu");
    LlamaModel model(config, *backend, f.batch, f.sequence, ModelMode::Training);
    model.set_parameters(f.checkpoint.params);
    LossWorkspace workspace(*backend, config.vocab_size, f.batch * f.sequence);
    OptimizerConfig oc;  // tools/make_fixtures.py: constant lr 1e-2, betas (0.9, 0.95), wd 0.1
    oc.learning_rate = oc.min_learning_rate = 1e-2;
    oc.warmup_steps = 0;
    oc.total_steps = 3;
    oc.weight_decay = 0.1;
    oc.grad_clip = std::string(prefix) == "adamw3_clip" ? 0.5 : 0.0;
    AdamW optimizer(model, oc);
    std::vector<float> losses = f.tensor(str(prefix, "_losses"));
    std::vector<float> norms = f.tensor(str(prefix, "_grad_norms"));
    for (std::int64_t step = 0; step < 3; ++step) {
      model.zero_gradients();
      model.forward(f.inputs, f.batch, f.sequence);
      double loss = cross_entropy_loss(model, f.targets, workspace, 1.0f);
      model.backward();
      OptimizerStepStats stats = optimizer.step(step);
      // Losses after updates of size lr = 1e-2 stay at fp32 forward precision (see above).
      EXPECT_NEAR(loss, losses[static_cast<std::size_t>(step)], 2e-5 * std::abs(loss)) << prefix << " step " << step;
      if (oc.grad_clip > 0) {
        EXPECT_NEAR(stats.grad_norm, norms[static_cast<std::size_t>(step)], 1e-4 * stats.grad_norm);
      }
    }
    std::vector<float> params(static_cast<std::size_t>(model.table().total_numel()));
    model.get_parameters(params);
    for (const ParamInfo& info : model.table().entries()) {
      // Adam's step m / (sqrt(v) + eps) normalises gradients, so an element whose gradient is
      // near zero can move by up to lr per step on fp32 noise; normwise 1e-4 over the tensor
      // is still far below the 3 * lr = 3e-2 an update moves each weight.
      EXPECT_LT(relative_error(slice(params, info), f.tensor(str(prefix, ".", info.name))), 1e-4)
          << prefix << " " << info.name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LlamaParity, ::testing::Values("llama3_gqa", "nemo_headdim", "llama32_tied"));

}  // namespace
}  // namespace minitron
