// Data-parallel training on the emulated CUDA engine with NCCL (the emulated NCCL of
// emu/nccl.cpp), bootstrapped over TcpGroup as make_communicator does for "cuda": two
// ranks as threads vs one process with two micro-batches (the loader hands the same windows:
// see test_data_parallel.cpp). Built only where the emulator serves NCCL.
#include <gtest/gtest.h>

#include <cstring>

#include "data/shards.h"
#include "dist/make_nccl_communicator.h"
#include "kernels/cuda/cuda_backend.h"
#include "model/llama.h"
#include "tests/dist/tcp_test_util.h"
#include "tests/prune/prune_test_util.h"
#include "tests/train/data_parallel_test_util.h"
#include "tests/train/zero_stage_test_util.h"
#include "train/losses.h"
#include "train/trainer.h"
#include "util/files.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;

struct Result {
  std::vector<float> params;
};

Result train(const ModelConfig& config, const std::vector<float>& init, TrainOptions o, std::int64_t rank,
             std::int64_t world, int port) {
  cuda::CudaBackend backend(0);
  LlamaModel model(config, backend, o.batch_size, o.sequence_length, ModelMode::Training);
  model.set_parameters(init);
  LossWorkspace workspace(backend, config.vocab_size, o.batch_size * o.sequence_length);
  CrossEntropyObjective objective(workspace);
  if (world == 1) {
    run_training(model, objective, o);
  } else {
    TcpGroup bootstrap(testing::local_environment(rank, world, port));
    auto communicator = make_nccl_communicator(backend, bootstrap);
    run_training(model, objective, o, *communicator);
  }
  Result r;
  r.params.resize(init.size());
  model.get_parameters(r.params);
  return r;
}

// What both tests train: a tiny model the CUDA kernels take, and 200 tokens at dir/train.bin.
struct TinyCudaModel {
  ModelConfig config = testing::tiny_config();
  std::vector<float> init;
  explicit TinyCudaModel(const fs::path& dir) {
    config.head_dim = 16;  // the CUDA attention kernels take 16, 32, 64, 96 or 128
    config.num_hidden_layers = 2;
    init = testing::tiny_parameters(config, 3);
    write_shard(dir / "train.bin", testing::tiny_tokens(200, config.vocab_size, 4));
  }
};

TEST(CudaDataParallel, NcclRanksMatchGradAccumulation) {
  testing::TempDir dir;
  const TinyCudaModel model(dir.path());
  const ModelConfig& config = model.config;
  const std::vector<float>& init = model.init;
  TrainOptions o = testing::data_parallel_options(dir / "train.bin");
  o.steps = 2;
  TrainOptions single = o;
  single.grad_accumulation = 2;
  single.output = dir / "single";
  const Result one = train(config, init, single, 0, 1, 0);
  std::vector<Result> ranks(2);
  const int port = testing::free_tcp_port();
  const auto errors = testing::run_ranks(2, [&](std::int64_t rank) {
    TrainOptions p = o;
    p.output = dir / (rank == 0 ? "parallel" : "parallel-rank1");
    ranks[static_cast<std::size_t>(rank)] = train(config, init, p, rank, 2, port);
  });
  ASSERT_EQ(errors, std::vector<std::string>(2));
  EXPECT_FALSE(fs::exists(dir / "parallel-rank1"));
  EXPECT_EQ(0, std::memcmp(ranks[0].params.data(), ranks[1].params.data(), ranks[0].params.size() * sizeof(float)));
  const auto a = testing::logged_losses(dir / "single" / "metrics.jsonl"),
             b = testing::logged_losses(dir / "parallel" / "metrics.jsonl");
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  // Step 1: the same windows on the same weights, 0 + l0/2 + l1/2 in double either way.
  EXPECT_EQ(a[0], b[0]);
  // Step 2 starts from weights whose fp32 gradients were summed in another order (NCCL across
  // ranks vs accumulation into one buffer); rounded to bf16 for the forward, an element can
  // land one bf16 step (2^-8 relative) apart, which moves a loss of ~6 by far less than 1%.
  EXPECT_NEAR(a[1], b[1], 1e-2 * a[1]);
  // Weights up to ~1 after two Adam steps of 1e-2: a one-ulp bf16 difference is <= 2^-8.
  EXPECT_LE(testing::max_abs_diff(one.params, ranks[0].params), 1.0 / 256);
}

// A checkpoint written by two NCCL ranks and resumed by two: each rank takes its part of the
// fp32 master weights and moments back from the file, so the run continues to the same bits.
// The final model (fp32) holds the master weights gathered from both ranks.
TEST(CudaDataParallel, ResumeOfShardedStateIsBitExact) {
  testing::TempDir dir;
  const TinyCudaModel model(dir.path());
  const ModelConfig& config = model.config;
  const std::vector<float>& init = model.init;
  TrainOptions o = testing::data_parallel_options(dir / "train.bin");
  o.steps = 4;
  o.save_interval = 2;
  auto parallel = [&](const fs::path& out, bool resume) {
    std::vector<Result> ranks(2);
    const int port = testing::free_tcp_port();
    const auto errors = testing::run_ranks(2, [&](std::int64_t rank) {
      TrainOptions p = o;
      p.output = out;
      p.resume = resume;
      ranks[static_cast<std::size_t>(rank)] = train(config, init, p, rank, 2, port);
    });
    EXPECT_EQ(errors, std::vector<std::string>(2));
    return ranks;
  };
  const std::vector<Result> full = parallel(dir / "full", false);
  fs::create_directories(dir / "resumed");
  fs::copy(dir / "full" / "checkpoint-2", dir / "resumed" / "checkpoint-2", fs::copy_options::recursive);
  const std::vector<Result> resumed = parallel(dir / "resumed", true);
  ASSERT_EQ(full.size(), 2u);
  ASSERT_EQ(resumed.size(), 2u);
  for (std::size_t r = 0; r < 2; ++r) EXPECT_EQ(full[0].params, resumed[r].params) << "rank " << r;
  EXPECT_EQ(read_text_file(dir / "full" / "model" / "model.safetensors"),
            read_text_file(dir / "resumed" / "model" / "model.safetensors"));
}

// `world` NCCL ranks trained with ZeRO `stage` (buckets of bucket_elements); rank 0's run.
testing::StageRun stage_run(const TinyCudaModel& model, const TrainOptions& o, int world, int stage,
                            std::int64_t bucket_elements, bool overlap_parameter_gather = true) {
  std::vector<testing::StageRun> ranks(static_cast<std::size_t>(world));
  const int port = testing::free_tcp_port();
  const auto errors = testing::run_ranks(world, [&](std::int64_t rank) {
    cuda::CudaBackend backend(0);
    TcpGroup bootstrap(testing::local_environment(rank, world, port));
    auto communicator = make_nccl_communicator(backend, bootstrap);
    ranks[static_cast<std::size_t>(rank)] = testing::train_with_stage(
        model.config, model.init, backend, *communicator, o, stage, bucket_elements, overlap_parameter_gather);
  });
  EXPECT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world)));
  for (int r = 1; r < world; ++r) EXPECT_EQ(ranks[0].params, ranks[static_cast<std::size_t>(r)].params) << "rank " << r;
  return ranks[0];
}

// ZeRO-2's buckets, reduce-scattered on NCCL's own stream during backward, give ZeRO-1's run to
// the bit on 2 and 3 ranks (the emulated NCCL sums in rank order in both), with every step
// clipped; and a ZeRO-2 run resumed from its checkpoint continues to ZeRO-1's weights.
TEST(CudaDataParallel, ZeroStage2EqualsStageOneToTheBit) {
  testing::TempDir dir;
  const TinyCudaModel model(dir.path());
  TrainOptions o = testing::data_parallel_options(dir / "train.bin");
  o.steps = 2;
  o.optimizer.grad_clip = 0.05;  // far below the norm: both steps are clipped
  for (int world : {2, 3}) {
    o.output = dir / str("s1-", world);
    const testing::StageRun stage1 = stage_run(model, o, world, 1, kDefaultBucketElements);
    ASSERT_EQ(stage1.grad_norms.size(), 2u);
    for (double norm : stage1.grad_norms) EXPECT_GT(norm, 0.05);
    for (std::int64_t bucket : {std::int64_t{1}, kDefaultBucketElements}) {
      o.output = dir / str("s2-", world, "-", bucket);
      const testing::StageRun stage2 = stage_run(model, o, world, 2, bucket);
      EXPECT_GT(stage2.buckets, 1);
      testing::expect_same_bits(stage1, stage2, str(world, " ranks, buckets of ", bucket));
    }
  }
}

TEST(CudaDataParallel, ZeroStage2ResumeEqualsStageOne) {
  testing::TempDir dir;
  const TinyCudaModel model(dir.path());
  TrainOptions o = testing::data_parallel_options(dir / "train.bin");
  o.steps = 4;
  o.save_interval = 2;
  o.output = dir / "s1";
  const testing::StageRun stage1 = stage_run(model, o, 2, 1, kDefaultBucketElements);
  o.output = dir / "s2";
  stage_run(model, o, 2, 2, 1);
  fs::create_directories(dir / "resumed");
  fs::copy(dir / "s2" / "checkpoint-2", dir / "resumed" / "checkpoint-2", fs::copy_options::recursive);
  o.output = dir / "resumed";
  o.resume = true;
  const testing::StageRun resumed = stage_run(model, o, 2, 2, 1);
  EXPECT_EQ(stage1.params, resumed.params);
  EXPECT_EQ(std::vector<double>(stage1.losses.begin() + 2, stage1.losses.end()), resumed.losses);
  EXPECT_EQ(read_text_file(dir / "s1" / "model" / "model.safetensors"),
            read_text_file(dir / "resumed" / "model" / "model.safetensors"));
}

// The bf16 parameters all-gathered bucket by bucket on NCCL's own stream beside the next forward
// (model/parameter_gather.h; one rooted broadcast per rank's piece of a bucket) against the one
// ncclAllGather in the optimizer step: the same bits on 2 and 3 ranks, ZeRO stage 1 and 2, with
// every layer's activations recomputed (the second forward inside backward reads them too), and a
// resumed run. (The emulator's streams do not run concurrently: the order of waits and layers is
// test_parameter_gather.cpp's.)
TEST(CudaDataParallel, OverlappedParameterGatherEqualsOnePiece) {
  testing::TempDir dir;
  const TinyCudaModel model(dir.path());
  TrainOptions o = testing::data_parallel_options(dir / "train.bin");
  o.steps = 2;
  for (int world : {2, 3})
    for (int stage : {1, 2})
      for (ActivationRecompute recompute : {ActivationRecompute::None, ActivationRecompute::Full}) {
        if (world == 3 && recompute == ActivationRecompute::Full) continue;  // the 2-rank runs cover it
        const std::string what = str(world, " ranks, stage ", stage, ", ", activation_recompute_name(recompute));
        o.recompute = recompute;
        o.output = dir / str("one-piece-", world, stage, static_cast<int>(recompute));
        const testing::StageRun one_piece = stage_run(model, o, world, stage, 1, false);
        o.output = dir / str("overlapped-", world, stage, static_cast<int>(recompute));
        testing::expect_same_bits(one_piece, stage_run(model, o, world, stage, 1, true), what);
      }
}

TEST(CudaDataParallel, OverlappedParameterGatherResumes) {
  testing::TempDir dir;
  const TinyCudaModel model(dir.path());
  TrainOptions o = testing::data_parallel_options(dir / "train.bin");
  o.steps = 4;
  o.save_interval = 2;
  o.output = dir / "one-piece";
  const testing::StageRun one_piece = stage_run(model, o, 2, 2, 1, false);
  o.output = dir / "overlapped";
  stage_run(model, o, 2, 2, 1, true);
  fs::create_directories(dir / "resumed");
  fs::copy(dir / "overlapped" / "checkpoint-2", dir / "resumed" / "checkpoint-2", fs::copy_options::recursive);
  o.output = dir / "resumed";
  o.resume = true;
  const testing::StageRun resumed = stage_run(model, o, 2, 2, 1, true);
  EXPECT_EQ(one_piece.params, resumed.params);
  EXPECT_EQ(std::vector<double>(one_piece.losses.begin() + 2, one_piece.losses.end()), resumed.losses);
  EXPECT_EQ(read_text_file(dir / "one-piece" / "model" / "model.safetensors"),
            read_text_file(dir / "resumed" / "model" / "model.safetensors"));
}

}  // namespace
}  // namespace minitron
