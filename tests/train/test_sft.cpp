// Supervised fine-tuning (TrainOptions::masked_targets on SFT shards): the loss and its gradient
// are the mean over the unmasked targets of the whole step — across micro-batches and across
// data-parallel ranks — and a masked target has no influence at all. Distillation on SFT data
// counts the response rows only.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>

#include "data/shards.h"
#include "dist/host_communicator.h"
#include "kernels/make_backend.h"
#include "model/llama.h"
#include "tests/dist/tcp_test_util.h"
#include "tests/train/data_parallel_test_util.h"
#include "tests/train/distill_test_util.h"
#include "train/distill.h"
#include "train/losses.h"
#include "train/trainer.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;

constexpr std::int64_t kT = 8;

// 17 tokens, one document: two windows of 8 targets. The first window counts only its last
// target (token 8), the second all eight (tokens 9..16): 1 + 8 counted targets, very uneven.
std::vector<std::uint8_t> uneven_mask() {
  std::vector<std::uint8_t> mask(17, 0);
  for (int k = 8; k < 17; ++k) mask[k] = 1;
  return mask;
}

void write_sft(const fs::path& path, const std::vector<std::int32_t>& tokens, const std::vector<std::uint8_t>& mask) {
  write_sft_shard(path, tokens, mask, std::vector<std::int64_t>{0});
}

TrainOptions sft_options(const fs::path& shard, const fs::path& output) {
  TrainOptions o = testing::data_parallel_options(shard);
  o.masked_targets = true;
  o.output = output;
  return o;
}

struct RunResult {
  std::vector<float> params;
  std::vector<double> losses, grad_norms;
};

RunResult train(const ModelConfig& config, const std::vector<float>& initial, const TrainOptions& o,
                std::int64_t rank = 0, std::int64_t world = 1, int port = 0) {
  auto backend = make_backend("cpu");
  LlamaModel model(config, *backend, o.batch_size, o.sequence_length, ModelMode::Training);
  model.set_parameters(initial);
  std::unique_ptr<Communicator> communicator = std::make_unique<SingleProcessCommunicator>();
  if (world > 1)
    communicator = std::make_unique<HostCommunicator>(
        *backend, std::make_unique<TcpGroup>(testing::local_environment(rank, world, port)));
  LossWorkspace workspace(*backend, config.vocab_size, o.batch_size * o.sequence_length);
  CrossEntropyObjective objective(workspace);
  run_training(model, objective, o, *communicator);
  RunResult run;
  run.params.resize(initial.size());
  model.get_parameters(run.params);
  if (rank == 0) {
    run.losses = testing::logged_losses(o.output / "metrics.jsonl");
    run.grad_norms = testing::logged_losses(o.output / "metrics.jsonl", "grad_norm");
  }
  return run;
}

// The mean cross-entropy of one window's counted targets, from a forward pass of its own.
double window_loss(const ModelConfig& config, const std::vector<float>& params, const std::vector<std::int32_t>& tokens,
                   const std::vector<std::uint8_t>& mask, std::int64_t first) {
  auto backend = make_backend("cpu");
  LlamaModel model(config, *backend, 1, kT, ModelMode::Inference);
  model.set_parameters(params);
  std::vector<std::int32_t> inputs(tokens.begin() + first, tokens.begin() + first + kT), targets(kT);
  for (std::int64_t t = 0; t < kT; ++t) targets[t] = mask[first + t + 1] ? tokens[first + t + 1] : -1;
  model.forward(inputs, 1, kT);
  LossWorkspace workspace(*backend, config.vocab_size, kT);
  return cross_entropy_loss(model, targets, workspace);
}

TEST(Sft, MicroBatchesWithUnevenCountsGiveTheOneBatchLossAndGradient) {
  testing::TempDir dir;
  const ModelConfig config = testing::tiny_config();
  const std::vector<float> initial = testing::tiny_parameters(config, 21);
  const std::vector<std::int32_t> tokens = testing::tiny_tokens(17, config.vocab_size, 5);
  write_sft(dir / "sft.bin", tokens, uneven_mask());

  TrainOptions micro = sft_options(dir / "sft.bin", dir / "micro");
  micro.steps = 1;
  micro.grad_accumulation = 2;  // one window each: 1 and 8 counted targets
  TrainOptions whole = sft_options(dir / "sft.bin", dir / "whole");
  whole.steps = 1;
  whole.batch_size = 2;  // both windows in one batch: one mean over 9 targets
  const RunResult a = train(config, initial, micro), b = train(config, initial, whole);
  ASSERT_EQ(a.losses.size(), 1u);
  ASSERT_EQ(b.losses.size(), 1u);

  // The loss of the step, from each window's own mean: (1 x l0 + 8 x l1) / 9, not (l0 + l1) / 2.
  const double l0 = window_loss(config, initial, tokens, uneven_mask(), 0);
  const double l1 = window_loss(config, initial, tokens, uneven_mask(), kT);
  const double token_mean = (l0 + 8 * l1) / 9, mean_of_means = (l0 + l1) / 2;
  ASSERT_GT(std::abs(token_mean - mean_of_means), 1e-3) << "the windows' losses must differ for the test to tell";
  // fp32 logits and per-row losses summed in double: ~1e-7 relative apart by reduction order.
  EXPECT_NEAR(a.losses[0], token_mean, 1e-5 * token_mean);
  EXPECT_NEAR(b.losses[0], token_mean, 1e-5 * token_mean);
  // The gradient: its norm from two micro-batches (each scaled by 1/9 per target) against one
  // batch (1/9 per target in one loss call); fp32 GEMM accumulation in another order, ~1e-7
  // relative per element, so 1e-5 of the norm, where mean-of-means scaling changes it by tens of %.
  ASSERT_EQ(a.grad_norms.size(), 1u);
  EXPECT_NEAR(a.grad_norms[0], b.grad_norms[0], 1e-5 * b.grad_norms[0]);
}

TEST(Sft, DataParallelRanksGiveTheOneProcessRun) {
  testing::TempDir dir;
  const ModelConfig config = testing::tiny_config();
  const std::vector<float> initial = testing::tiny_parameters(config, 22);
  // Four windows; rank r takes window position 2s + r at step s, the one process micro-batch r.
  std::vector<std::uint8_t> mask(33, 0);
  for (int k : {3, 9, 10, 11, 12, 13, 14, 15, 16, 20, 30, 31, 32}) mask[k] = 1;
  write_sft(dir / "sft.bin", testing::tiny_tokens(33, config.vocab_size, 6), mask);
  TrainOptions single = sft_options(dir / "sft.bin", dir / "single");
  single.steps = 2;
  single.grad_accumulation = 2;
  const RunResult one = train(config, initial, single);

  std::vector<RunResult> ranks(2);
  const int port = testing::free_tcp_port();
  const auto errors = testing::run_ranks(2, [&](std::int64_t rank) {
    TrainOptions o = sft_options(dir / "sft.bin", dir / (rank == 0 ? "parallel" : "parallel-rank1"));
    o.steps = 2;
    ranks[static_cast<std::size_t>(rank)] = train(config, initial, o, rank, 2, port);
  });
  EXPECT_EQ(errors, std::vector<std::string>(2));
  EXPECT_EQ(ranks[0].params, ranks[1].params);  // the replicas stay identical
  ASSERT_EQ(ranks[0].losses.size(), 2u);
  // Step 1: the same weights, counts and per-micro-batch losses, summed in the same order: the same bits.
  EXPECT_EQ(ranks[0].losses[0], one.losses[0]);
  // Step 2 starts from weights a few fp32 ulps apart (gradients summed in another order, see
  // test_data_parallel): 1e-5 relative.
  EXPECT_NEAR(ranks[0].losses[1], one.losses[1], 1e-5 * one.losses[1]);
  EXPECT_NEAR(ranks[0].grad_norms[0], one.grad_norms[0], 1e-5 * one.grad_norms[0]);
  // Adam moves a weight by up to lr = 1e-2 a step; 1e-4 allows rounding where a gradient is near 0.
  EXPECT_LE(testing::max_abs_diff(ranks[0].params, one.params), 1e-4);
}

TEST(Sft, AMaskedTargetHasNoInfluence) {
  testing::TempDir dir;
  const ModelConfig config = testing::tiny_config();
  const std::vector<float> initial = testing::tiny_parameters(config, 23);
  // One window (9 tokens): token 8 is a target only, never an input.
  std::vector<std::int32_t> tokens = testing::tiny_tokens(9, config.vocab_size, 7);
  std::vector<std::uint8_t> mask = {0, 1, 1, 0, 1, 1, 1, 1, 0};
  auto run = [&](const std::string& name) {
    write_sft(dir / (name + ".bin"), tokens, mask);
    return train(config, initial, sft_options(dir / (name + ".bin"), dir / name)).params;
  };
  const std::vector<float> base = run("base");
  tokens[8] = (tokens[8] + 1) % static_cast<std::int32_t>(config.vocab_size);
  const std::vector<float> changed = run("changed");
  EXPECT_EQ(0, std::memcmp(base.data(), changed.data(), base.size() * sizeof(float)));  // to the bit
  mask[8] = 1;  // counted, the same change of target now moves the weights
  const std::vector<float> counted_a = run("counted_a");
  tokens[8] = (tokens[8] + 1) % static_cast<std::int32_t>(config.vocab_size);
  const std::vector<float> counted_b = run("counted_b");
  EXPECT_GT(testing::max_abs_diff(counted_a, counted_b), 1e-6);
}

// The sum of the cross-entropy over a document's counted targets, from a forward pass of the
// document alone (targets -1 where not counted).
double document_loss_sum(const ModelConfig& config, const std::vector<float>& params,
                         const std::vector<std::int32_t>& inputs, const std::vector<std::int32_t>& targets) {
  auto backend = make_backend("cpu");
  const auto T = static_cast<std::int64_t>(inputs.size());
  LlamaModel model(config, *backend, 1, T, ModelMode::Inference);
  model.set_parameters(params);
  model.forward(inputs, 1, T);
  LossWorkspace workspace(*backend, config.vocab_size, T);
  const auto counted = std::count_if(targets.begin(), targets.end(), [](std::int32_t t) { return t >= 0; });
  return cross_entropy_loss(model, targets, workspace) * static_cast<double>(counted);
}

// Two documents packed in one window (starts 0 and 4): sft's loss is the one of each document run
// alone (padding-free packing), not the one of the window read as one sequence.
TEST(Sft, PackedDocumentsAttendOnlyWithinTheirOwn) {
  testing::TempDir dir;
  const ModelConfig config = testing::tiny_config();
  const std::vector<float> initial = testing::tiny_parameters(config, 25);
  const std::vector<std::int32_t> tokens = testing::tiny_tokens(kT + 1, config.vocab_size, 8);
  write_sft_shard(dir / "sft.bin", tokens, std::vector<std::uint8_t>(kT + 1, 1), std::vector<std::int64_t>{0, 4});
  TrainOptions o = sft_options(dir / "sft.bin", dir / "run");
  o.steps = 1;
  const RunResult run = train(config, initial, o);
  ASSERT_EQ(run.losses.size(), 1u);

  // Document 1: inputs 0..3, targets 1..3 (token 4 starts document 2: no target); document 2:
  // inputs 4..7, targets 5..8. 3 + 4 counted targets.
  auto slice = [&](int from, int to) { return std::vector<std::int32_t>(tokens.begin() + from, tokens.begin() + to); };
  std::vector<std::int32_t> first_targets = slice(1, 5);
  first_targets[3] = -1;
  const double alone = (document_loss_sum(config, initial, slice(0, 4), first_targets) +
                        document_loss_sum(config, initial, slice(4, 8), slice(5, 9))) /
                       7;
  std::vector<std::int32_t> window_targets = slice(1, 9);
  window_targets[3] = -1;
  const double as_one_sequence = document_loss_sum(config, initial, slice(0, 8), window_targets) / 7;
  ASSERT_GT(std::abs(alone - as_one_sequence), 1e-3) << "cross-talk must change the loss for the test to tell";
  // fp32 logits and per-row losses summed in double, in another grouping: ~1e-7 relative apart.
  EXPECT_NEAR(run.losses[0], alone, 1e-5 * alone);
}

TEST(Sft, TokenShardsAreRefusedAndSftShardsNeedSft) {
  testing::TempDir dir;
  const ModelConfig config = testing::tiny_config();
  const std::vector<float> initial = testing::tiny_parameters(config, 24);
  write_shard(dir / "tokens.bin", testing::tiny_tokens(40, config.vocab_size));
  write_sft(dir / "sft.bin", testing::tiny_tokens(40, config.vocab_size), std::vector<std::uint8_t>(40, 1));
  auto message = [&](const TrainOptions& o) -> std::string {
    try {
      train(config, initial, o);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(message(sft_options(dir / "tokens.bin", dir / "a")).find("SFT shards from minitron tokenize --chat"),
            std::string::npos);
  TrainOptions plain = sft_options(dir / "sft.bin", dir / "b");
  plain.masked_targets = false;
  EXPECT_NE(message(plain).find("train SFT shards with minitron sft"), std::string::npos);
}

// Distillation on SFT data: the KL's mean over the counted rows only, and a masked row adds no
// gradient: with the last row masked, changing the last input token (which, causally, only the
// last row sees) leaves the student's gradient identical to the bit.
TEST(SftDistillation, KlCountsResponseRowsOnly) {
  const testing::DistillPair pair;
  const std::int64_t T = 6, V = pair.student_config.vocab_size;
  testing::DistillModels models(pair, 1, T);
  std::vector<std::int32_t> inputs = testing::tiny_tokens(T, V, 8);
  const std::vector<std::int32_t> targets = {3, -1, 7, 9, -1, -1};
  LossWorkspace workspace(*models.backend, V, T, 0, /*distillation=*/true);

  // Every row's KL, from the plain loop (no gradient): the reference mean over rows 0, 2, 3.
  models.teacher.forward(inputs, 1, T);
  models.student.forward(inputs, 1, T);
  const std::span<const double> rows =
      for_each_logits_chunk(models.student, &models.teacher, {}, workspace, 1, false, [&](const LogitsChunk& chunk) {
        models.backend->kl_divergence(chunk.losses[0], chunk.logits, chunk.teacher_logits, chunk.rows, V, 1.0f, 0.0f);
      });
  const double expected = (rows[0] + rows[2] + rows[3]) / 3;

  auto gradient = [&](const std::vector<std::int32_t>& in, double* loss) {
    TeacherDistillationObjective objective(models.teacher, workspace, 1.0f, 0.0f, nullptr, 0.0f,
                                           /*response_only=*/true);
    models.student.zero_gradients();
    *loss = objective.step(models.student, in, targets, {}, 1, T, 1.0f);
    models.student.backward();
    return testing::gradients(models.student);
  };
  double loss = 0, loss_changed = 0;
  const std::vector<float> g = gradient(inputs, &loss);
  // fp32 per-row KLs (~0.1-1) summed in double; the kernel may round a row differently when it
  // also writes the gradient, by ~1e-7 relative.
  EXPECT_NEAR(loss, expected, 1e-6);
  inputs[T - 1] = (inputs[T - 1] + 1) % static_cast<std::int32_t>(V);
  const std::vector<float> g_changed = gradient(inputs, &loss_changed);
  EXPECT_EQ(loss, loss_changed);
  EXPECT_EQ(0, std::memcmp(g.data(), g_changed.data(), g.size() * sizeof(float)));
  EXPECT_GT(testing::max_abs_diff(g, std::vector<float>(g.size(), 0.0f)), 1e-6);  // it has a gradient
}

}  // namespace
}  // namespace minitron
