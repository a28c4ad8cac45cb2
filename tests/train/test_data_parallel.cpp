// Data-parallel training (run_training with a Communicator): two ranks as threads, each with its
// own CPU engine and model, summing over TCP on 127.0.0.1, against one process that takes both
// ranks' windows as micro-batches. The loader gives rank r of R the positions step*B*R + j*R + r
// of the epoch's order (data/dataloader.h), so with B = 1 rank 0 takes position 2s and rank 1
// position 2s + 1 at step s, exactly the windows that one process with B = 1 and two micro-
// batches takes at its step s: the two runs minimise the same objective on the same data.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <memory>

#include "data/shards.h"
#include "dist/host_communicator.h"
#include "kernels/make_backend.h"
#include "model/llama.h"
#include "model/safetensors.h"
#include "tests/dist/tcp_test_util.h"
#include "tests/train/data_parallel_test_util.h"
#include "tests/train/distill_test_util.h"
#include "tests/util/error_test_util.h"
#include "train/distill.h"
#include "train/hidden_state_loss.h"
#include "train/losses.h"
#include "train/trainer.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;

struct RunResult {
  std::vector<float> params, map;
  TrainSummary summary;
};

// One rank's run of `steps` steps: a fresh engine, student (and teacher with the hidden-state
// map when `hidden`), joined to the other ranks on `port` (world_size 1: no communicator).
RunResult train_rank(const testing::DistillPair& pair, const TrainOptions& options, bool distill, std::int64_t rank,
                     std::int64_t world_size, int port) {
  auto backend = make_backend("cpu");
  const std::int64_t B = options.batch_size, T = options.sequence_length, V = pair.student_config.vocab_size;
  LlamaModel student(pair.student_config, *backend, B, T, ModelMode::Training);
  student.set_parameters(pair.student_params);
  std::unique_ptr<Communicator> communicator = std::make_unique<SingleProcessCommunicator>();
  if (world_size > 1)
    communicator = std::make_unique<HostCommunicator>(
        *backend, std::make_unique<TcpGroup>(testing::local_environment(rank, world_size, port)));
  RunResult result;
  if (distill) {
    LlamaModel teacher(pair.teacher_config, *backend, B, T, ModelMode::Inference);
    teacher.set_parameters(pair.teacher_params);
    LossWorkspace workspace(*backend, V, B * T, 0, /*distillation=*/true);
    HiddenStateDistillation hidden(
        *backend, pair.student_config, pair.teacher_config,
        default_layer_mapping(pair.student_config.num_hidden_layers, pair.teacher_config.num_hidden_layers), B * T, 5);
    TeacherDistillationObjective objective(teacher, workspace, 1.0f, 0.0f, &hidden, 1.0f);
    result.summary = run_training(student, objective, options, *communicator);
    result.map = hidden.get_map();
  } else {
    LossWorkspace workspace(*backend, V, B * T);
    CrossEntropyObjective objective(workspace);
    result.summary = run_training(student, objective, options, *communicator);
  }
  result.params.resize(pair.student_params.size());
  student.get_parameters(result.params);
  return result;
}

// Two ranks with one micro-batch each vs one process with two; returns {rank 0, rank 1, single}.
std::vector<RunResult> compare_runs(const testing::TempDir& dir, bool distill) {
  testing::DistillPair pair;
  write_shard(dir / "train.bin", testing::tiny_tokens(300, pair.student_config.vocab_size, 4));
  TrainOptions single_options = testing::data_parallel_options(dir / "train.bin");
  single_options.grad_accumulation = 2;
  single_options.output = dir / "single";
  std::vector<RunResult> results(3);
  results[2] = train_rank(pair, single_options, distill, 0, 1, 0);

  const int port = testing::free_tcp_port();
  const auto errors = testing::run_ranks(2, [&](std::int64_t rank) {
    TrainOptions o = testing::data_parallel_options(dir / "train.bin");
    o.output = dir / (rank == 0 ? "parallel" : "parallel-rank1");  // rank 1 must create nothing there
    results[static_cast<std::size_t>(rank)] = train_rank(pair, o, distill, rank, 2, port);
  });
  EXPECT_EQ(errors, std::vector<std::string>(2));
  EXPECT_FALSE(fs::exists(dir / "parallel-rank1"));
  EXPECT_TRUE(fs::exists(dir / "parallel" / "model" / "model.safetensors"));
  return results;
}

void expect_same_training(const testing::TempDir& dir, const std::vector<RunResult>& r) {
  // Every rank applies the same summed gradient to the same weights: the replicas stay
  // identical to the bit.
  ASSERT_EQ(r[0].params.size(), r[1].params.size());
  EXPECT_EQ(0, std::memcmp(r[0].params.data(), r[1].params.data(), r[0].params.size() * sizeof(float)));
  EXPECT_EQ(r[0].map, r[1].map);
  EXPECT_EQ(r[0].summary.steps, 3);
  EXPECT_EQ(r[0].summary.last_train_loss, r[1].summary.last_train_loss);

  const std::vector<double> parallel = testing::logged_losses(dir / "parallel" / "metrics.jsonl");
  const std::vector<double> single = testing::logged_losses(dir / "single" / "metrics.jsonl");
  ASSERT_EQ(parallel.size(), 3u);
  ASSERT_EQ(single.size(), 3u);
  // Step 1 runs both micro-batches on the same initial weights, and the logged loss is
  // 0 + l0/2 + l1/2 in double either way (rank order on rank 0; micro-batch order in one
  // process): the same bits.
  EXPECT_EQ(parallel[0], single[0]);
  // Later steps start from weights that differ in the last bits: the gradient of the two
  // micro-batches is summed in another order (one process accumulates the second into the
  // first inside each GEMM, beta = 1; two ranks add two finished fp32 gradients on rank 0),
  // ~1e-7 relative per element, which the Adam update passes on scaled by the learning rate.
  // Losses of ~4 agreed to ~5e-8 when this was written; 1e-5 relative leaves margin for
  // another BLAS, while a wrong window changes them by ~1e-1.
  for (std::size_t s = 1; s < 3; ++s)
    EXPECT_NEAR(parallel[s], single[s], 1e-5 * std::abs(single[s])) << "step " << s + 1;
  // Weights (~0.3) after 3 steps: they differed by ~1e-7 (a few fp32 ulps) when this was
  // written. Adam moves each weight by up to ~lr = 1e-2 per step whatever its gradient's size,
  // so an element whose gradient is near zero (where rounding is a large relative change) may
  // differ by more; 1e-4 (1% of one step) allows that, while a wrong window or a missing sum
  // in steps 1-2 moves weights by whole steps (~1e-2).
  EXPECT_LE(testing::max_abs_diff(r[0].params, r[2].params), 1e-4);
  EXPECT_GT(testing::max_abs_diff(r[2].params, testing::DistillPair().student_params), 1e-3);  // it trained
  EXPECT_LE(testing::max_abs_diff(r[0].map, r[2].map), 1e-4);
}

TEST(DataParallel, CrossEntropyMatchesGradAccumulation) {
  testing::TempDir dir;
  const auto r = compare_runs(dir, /*distill=*/false);
  expect_same_training(dir, r);
}

TEST(DataParallel, DistillationWithHiddenStateMapMatchesGradAccumulation) {
  testing::TempDir dir;
  const auto r = compare_runs(dir, /*distill=*/true);
  ASSERT_FALSE(r[2].map.empty());  // the student (16 wide) maps to the teacher (32 wide) through W
  expect_same_training(dir, r);
  // The loss terms are logged as the mean over every micro-batch of every rank, like the loss:
  // at step 1, 0 + t0/2 + t1/2 in double either way, the same bits.
  for (const char* term : {"kl", "l_is"}) {
    const std::vector<double> parallel = testing::logged_losses(dir / "parallel" / "metrics.jsonl", term);
    const std::vector<double> single = testing::logged_losses(dir / "single" / "metrics.jsonl", term);
    ASSERT_EQ(parallel.size(), 3u) << term;
    ASSERT_EQ(single.size(), 3u) << term;
    EXPECT_EQ(parallel[0], single[0]) << term;
  }
}

// A checkpoint written by two ranks, resumed by two ranks, continues to the same weights to
// the bit; resuming it with another number of ranks is refused on every rank.
TEST(DataParallel, ResumeKeepsRanksAndRefusesAnotherWorldSize) {
  testing::TempDir dir;
  testing::DistillPair pair;
  write_shard(dir / "train.bin", testing::tiny_tokens(300, pair.student_config.vocab_size, 4));
  TrainOptions o = testing::data_parallel_options(dir / "train.bin");
  o.steps = 4;
  o.save_interval = 2;
  auto parallel = [&](const fs::path& out, bool resume) {
    std::vector<RunResult> results(2);
    const int port = testing::free_tcp_port();
    const auto errors = testing::run_ranks(2, [&](std::int64_t rank) {
      TrainOptions options = o;
      options.output = out;  // every rank reads the checkpoint; rank 0 alone writes
      options.resume = resume;
      results[static_cast<std::size_t>(rank)] = train_rank(pair, options, false, rank, 2, port);
    });
    return std::make_pair(results, errors);
  };
  const auto [full, full_errors] = parallel(dir / "full", false);
  ASSERT_EQ(full_errors, std::vector<std::string>(2));
  fs::create_directories(dir / "resumed");
  fs::copy(dir / "full" / "checkpoint-2", dir / "resumed" / "checkpoint-2", fs::copy_options::recursive);
  const auto [resumed, resumed_errors] = parallel(dir / "resumed", true);
  ASSERT_EQ(resumed_errors, std::vector<std::string>(2));
  for (std::size_t r = 0; r < 2; ++r) {
    EXPECT_EQ(0, std::memcmp(full[0].params.data(), resumed[r].params.data(), full[0].params.size() * sizeof(float)))
        << "rank " << r;
  }
  const std::vector<double> full_losses = testing::logged_losses(dir / "full" / "metrics.jsonl");
  ASSERT_EQ(full_losses.size(), 4u);
  EXPECT_EQ(std::vector<double>(full_losses.begin() + 2, full_losses.end()),
            testing::logged_losses(dir / "resumed" / "metrics.jsonl"));

  // The same checkpoint resumed by one process: refused, naming both world sizes.
  fs::create_directories(dir / "alone");
  fs::copy(dir / "full" / "checkpoint-2", dir / "alone" / "checkpoint-2", fs::copy_options::recursive);
  TrainOptions alone = o;
  alone.output = dir / "alone";
  alone.resume = true;
  try {
    train_rank(pair, alone, false, 0, 1, 0);
    ADD_FAILURE() << "a two-rank checkpoint was resumed by one process";
  } catch (const Error& e) {
    EXPECT_EQ(
        std::string(e.what()),
        "--resume from " + (dir / "alone" / "checkpoint-2").string() +
            ": this run has 1 process(es) (WORLD_SIZE) but the checkpoint was written by 2 (expected WORLD_SIZE=2 "
            "as in the interrupted run (the data order depends on it))");
  }

  // Ranks that see different --output contents (storage not shared) refuse together, naming
  // what each found, before any of them trains from a different step.
  const int port = testing::free_tcp_port();
  const auto errors = testing::run_ranks(2, [&](std::int64_t rank) {
    TrainOptions options = o;
    options.output = rank == 0 ? dir / "resumed" : dir / "unshared";  // rank 1's has no checkpoint
    options.resume = true;
    train_rank(pair, options, false, rank, 2, port);
  });
  for (std::size_t r = 0; r < 2; ++r)
    EXPECT_EQ(errors[r], str("--resume from ", (r == 0 ? dir / "resumed" : dir / "unshared").string(),
                             ": the ranks found different newest checkpoints (rank 0: checkpoint-2, rank 1: none) "
                             "(expected --output on a file system that every rank sees)"));
}

// Each rank reads only its part of the saved moments, so their whole size is checked first, on
// every rank alike: a shortened adam_m is refused even where the part would still lie inside it.
TEST(DataParallel, ResumeRefusesMomentsOfAnotherSize) {
  testing::TempDir dir;
  testing::DistillPair pair;
  write_shard(dir / "train.bin", testing::tiny_tokens(300, pair.student_config.vocab_size, 4));
  TrainOptions o = testing::data_parallel_options(dir / "train.bin");
  o.steps = 3;
  o.save_interval = 2;
  o.output = dir / "run";
  train_rank(pair, o, false, 0, 1, 0);
  const fs::path state = dir / "run" / "checkpoint-2" / "training_state.safetensors";
  const auto n = static_cast<std::int64_t>(pair.student_params.size());
  std::vector<float> params(static_cast<std::size_t>(n)), m(params.size()), v(params.size());
  {
    SafetensorsFile file(state);
    file.read_f32("params", params);
    file.read_f32("adam_m", m);
    file.read_f32("adam_v", v);
  }
  const std::vector<std::int64_t> whole{n}, shorter{n - 1};
  write_safetensors_file(
      state,
      std::vector<SafetensorsEntry>{
          {"params", whole, params.data()}, {"adam_m", shorter, m.data()}, {"adam_v", whole, v.data()}},
      SafetensorsDType::F32);
  o.resume = true;
  EXPECT_EQ(testing::error_of([&] { train_rank(pair, o, false, 0, 1, 0); }),
            str(state.string(), ": tensor 'adam_m': ", n - 1, " elements (expected ", n,
                ", one per parameter of the model)"));
}

// Replicas that would not start identical are refused on every rank before the first step:
// different weights (a node-local model copy that differs) or a different --steps (which would
// leave rank 0 waiting forever in a collective rank 1 never calls).
TEST(DataParallel, RanksMustStartAlike) {
  testing::TempDir dir;
  testing::DistillPair pair;
  write_shard(dir / "train.bin", testing::tiny_tokens(300, pair.student_config.vocab_size, 4));
  testing::DistillPair other = pair;
  other.student_params[7] += 0.5f;
  // Rank 1 starts from rank1_pair's weights, with `change` applied to its options.
  const auto launch = [&](const testing::DistillPair& rank1_pair, const std::function<void(TrainOptions&)>& change) {
    const int port = testing::free_tcp_port();
    return testing::run_ranks(2, [&](std::int64_t rank) {
      TrainOptions o = testing::data_parallel_options(dir / "train.bin");
      o.output = dir / str("run-", rank);
      if (rank == 1) change(o);
      train_rank(rank == 1 ? rank1_pair : pair, o, false, rank, 2, port);
    });
  };
  for (const std::string& error : launch(other, [](TrainOptions&) {})) {
    EXPECT_EQ(error.rfind("data-parallel rank 1: the weights' sum of squares is ", 0), 0u) << error;
    EXPECT_NE(error.find("(expected every rank started with the same command line and the same model files)"),
              std::string::npos)
        << error;
  }
  const std::string expected = " (expected every rank started with the same command line and the same model files)";
  for (const std::string& error : launch(pair, [](TrainOptions& o) { o.steps = 4; }))
    EXPECT_EQ(error, "data-parallel rank 1: --steps is 4 but rank 0's is 3" + expected);
  // Checkpoints are collectives: ranks saving at different steps would wait on each other.
  for (const std::string& error : launch(pair, [](TrainOptions& o) { o.save_interval = 2; }))
    EXPECT_EQ(error, "data-parallel rank 1: --save-interval is 2 but rank 0's is 0" + expected);
  // Each rank updates its own part of the weights, so its optimizer must be everyone's.
  for (const std::string& error : launch(pair, [](TrainOptions& o) { o.optimizer.learning_rate = 0.5; }))
    EXPECT_EQ(error, "data-parallel rank 1: --learning-rate is 0.5 but rank 0's is 0.01" + expected);
  for (const std::string& error : launch(pair, [](TrainOptions& o) { o.optimizer.grad_clip = 0; }))
    EXPECT_EQ(error, "data-parallel rank 1: --grad-clip is 0 but rank 0's is 1" + expected);
  EXPECT_FALSE(fs::exists(dir / "run-0" / "model"));
}

TEST(MakeCommunicator, OneProcessNeedsNoConnection) {
  auto backend = make_backend("cpu");
  const auto communicator = make_communicator(*backend, DistributedEnvironment{});
  EXPECT_EQ(communicator->world_size(), 1);
  EXPECT_EQ(communicator->rank(), 0);
}

TEST(MakeCommunicator, RefusesTheDoubleEngineBeforeJoining) {
  auto backend = make_backend("cpu-f64");
  // Nobody listens on the port and the wait is 60 s: only a refusal before joining returns at once.
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(testing::error_of(
                [&] { make_communicator(*backend, testing::local_environment(1, 2, testing::free_tcp_port(), 60)); }),
            "--device cpu-f64: its gradients are f64; training on several processes sums f32 gradients "
            "(expected --device cpu (cpu-f64 is for gradient checks in one process))");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 30.0);
}

TEST(HostCommunicator, RefusesTensorsOtherThanF32) {
  auto backend = make_backend("cpu-f64");
  HostCommunicator communicator(*backend, std::make_unique<TcpGroup>(DistributedEnvironment{}));
  BackendBuffer t(*backend, 4, DType::F64);
  EXPECT_EQ(
      testing::error_of([&] { communicator.all_reduce_sum(Tensor(t)); }),
      "all_reduce_sum on cpu-f64: a tensor of dtype f64 (expected f32 (the cpu engine's parameters and gradients; "
      "the cpu-f64 engine is for gradient checks in one process))");
}

}  // namespace
}  // namespace minitron
