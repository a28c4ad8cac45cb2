// The parameter all-gather overlapped with the next forward (model/parameter_gather.h) on the
// CPU engine: the order in which the forward waits for each bucket against the layers it runs,
// what a forward and a backward (with recomputation) compute from gathered parameters, and whole
// runs of 2 and 3 TCP ranks, ZeRO stage 1 and 2, with resume and recomputation, against the
// gather in one piece in the optimizer step.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data/shards.h"
#include "dist/host_communicator.h"
#include "kernels/make_backend.h"
#include "model/llama.h"
#include "model/parameter_gather.h"
#include "tests/dist/tcp_test_util.h"
#include "tests/prune/prune_test_util.h"
#include "tests/train/data_parallel_test_util.h"
#include "tests/train/distill_test_util.h"
#include "tests/train/zero_stage_test_util.h"
#include "train/losses.h"
#include "util/files.h"

namespace minitron {
namespace {

using testing::same_bits;

namespace fs = std::filesystem;

// What the forward asked of the gathers and what it ran, in order: "gather k" (the k-th bucket's
// gather started), "wait k" (the compute stream made to wait for it), "layer l" (layer l's first
// op about to be queued: ActivationSite::LayerInput).
using Log = std::vector<std::string>;

// A communicator of rank 0 of two whose gathers land only when waited for, as a gather on a
// stream of its own lands for the compute stream only after the wait on its event: until then the
// bucket holds NaN, so an op that reads it too early computes NaN (or, for an op that only moves
// values, stale ones that differ from the gathered bits).
class DeferredGatherCommunicator final : public Communicator {
 public:
  DeferredGatherCommunicator(Backend& backend, std::vector<float> gathered, Log& log)
      : backend_(backend), gathered_(std::move(gathered)), log_(log) {}
  std::int64_t rank() const override { return 0; }
  std::int64_t world_size() const override { return 2; }
  void all_reduce_sum(Tensor) override {}
  void all_reduce_sum(std::span<double>) override {}
  void reduce_scatter_sum(Tensor, std::span<const std::int64_t>) override {}
  void all_gather(Tensor, std::span<const std::int64_t>) override { ADD_FAILURE() << "an all_gather in one piece"; }
  void barrier() override {}
  std::int64_t start_all_gather(Tensor t, std::span<const std::int64_t> bounds) override {
    EXPECT_EQ(bounds.size(), 3u);
    EXPECT_EQ(bounds.back(), t.numel);
    started_.push_back(t);
    backend_.upload(t, std::vector<float>(static_cast<std::size_t>(t.numel), kNaN).data());
    log_.push_back(str("gather ", started_.size()));
    return static_cast<std::int64_t>(started_.size());
  }
  // Like NCCL's: the gathers run in order, so a wait covers the earlier ones.
  void wait_collective(std::int64_t ticket) override {
    log_.push_back(str("wait ", ticket));
    for (; landed_ < ticket; ++landed_) {
      const Tensor t = started_[static_cast<std::size_t>(landed_)];
      const std::int64_t offset = (static_cast<float*>(t.data) - base_);
      backend_.upload(t, gathered_.data() + offset);
    }
  }
  void set_base(Tensor parameters) { base_ = static_cast<float*>(parameters.data); }

 private:
  static constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  Backend& backend_;
  std::vector<float> gathered_;  // the whole vector every rank holds after the gather
  Log& log_;
  float* base_ = nullptr;
  std::vector<Tensor> started_;
  std::int64_t landed_ = 0;
};

class LayerLog final : public ActivationObserver {
 public:
  explicit LayerLog(Log& log) : log_(log) {}
  bool wants(ActivationSite site) const override { return site == ActivationSite::LayerInput; }
  void observe(ActivationSite, std::int64_t layer, Tensor, std::int64_t, std::int64_t, std::int64_t) override {
    log_.push_back(str("layer ", layer));
  }

 private:
  Log& log_;
};

constexpr std::int64_t kBatch = 2, kSequence = 8;

struct Pass {
  Log log;
  double loss = 0;
  std::vector<float> hidden, gradients;
};

// One forward (and, with `backward`, the loss's backward) of a model whose parameters arrive
// through the deferred gather of `bucket_elements` buckets; with gather = false they are set
// directly (the reference).
Pass run_pass(bool gather, std::int64_t bucket_elements, ActivationRecompute recompute, bool backward) {
  auto backend = make_backend("cpu");
  const ModelConfig config = testing::tiny_config();
  const std::vector<float> params = testing::tiny_parameters(config, 3);
  Pass pass;
  DeferredGatherCommunicator communicator(*backend, params, pass.log);
  GradientSharding sharding;
  sharding.bucket_elements = bucket_elements;
  LlamaModel model(config, *backend, kBatch, kSequence, ModelMode::Training, recompute, sharding);
  // Before the gather each rank holds other weights (last step's) everywhere but its own part.
  model.set_parameters(gather ? testing::tiny_parameters(config, 4) : params);
  if (gather) {
    communicator.set_base(model.parameters());
    model.gather_parameters(communicator, shard_bounds(model.table().total_numel(), 2));
  }
  LossWorkspace workspace(*backend, config.vocab_size, kBatch * kSequence);
  const std::vector<std::int32_t> tokens = testing::tiny_tokens(200, config.vocab_size, 4);
  const std::span<const std::int32_t> all(tokens);
  LayerLog layers(pass.log);
  ForwardOptions options;
  options.observer = &layers;
  model.zero_gradients();
  model.forward(all.subspan(0, kBatch * kSequence), kBatch, kSequence, options);
  pass.hidden.resize(static_cast<std::size_t>(kBatch * kSequence * config.hidden_size));
  backend->download(pass.hidden.data(), model.final_hidden());
  pass.loss = cross_entropy_loss(model, all.subspan(1, kBatch * kSequence), workspace, backward ? 1.0f : 0.0f);
  if (backward) {
    model.backward();
    pass.gradients = testing::gradients(model);
  }
  return pass;
}

// Every gather starts before the forward; each bucket is waited for just before the first layer
// that reads it, and after the layers before it are queued (so their compute overlaps its
// gather). tiny_config's 7 units (embedding, 4 layers, final norm, LM head) by hand:
// test_zero_stage2.cpp's GradientBuckets test gives their bucket ranges.
TEST(ParameterGather, ForwardWaitsForEachBucketJustBeforeItsFirstLayer) {
  // One unit per bucket: 1 the embedding, 2..5 the layers, 6 the final norm, 7 the LM head.
  EXPECT_EQ(run_pass(true, 1, ActivationRecompute::None, false).log,
            (Log{"gather 1", "gather 2", "gather 3", "gather 4", "gather 5", "gather 6", "gather 7", "wait 1", "wait 2",
                 "layer 0", "wait 3", "layer 1", "wait 4", "layer 2", "wait 5", "layer 3", "wait 6", "wait 7"}));
  // Buckets of 10000: the embedding; layer 0; layers 1 and 2; layer 3, the final norm and the head.
  EXPECT_EQ(run_pass(true, 10000, ActivationRecompute::None, false).log,
            (Log{"gather 1", "gather 2", "gather 3", "gather 4", "wait 1", "wait 2", "layer 0", "wait 3", "layer 1",
                 "layer 2", "wait 4", "layer 3"}));
}

// What the forward computes (the final hidden state, the loss) and what backward computes from
// it, recomputing every layer's activations (a second forward inside backward) or none, are the
// reference's to the bit: no op read a bucket before its gather landed (NaN until then).
TEST(ParameterGather, ForwardAndBackwardReadOnlyGatheredParameters) {
  for (ActivationRecompute recompute : {ActivationRecompute::None, ActivationRecompute::Full}) {
    const Pass reference = run_pass(false, 1, recompute, true);
    ASSERT_TRUE(std::isfinite(reference.loss));
    for (std::int64_t bucket : {std::int64_t{1}, std::int64_t{10000}, kDefaultBucketElements}) {
      const Pass gathered = run_pass(true, bucket, recompute, true);
      const std::string what = str(activation_recompute_name(recompute), ", buckets of ", bucket);
      EXPECT_EQ(reference.loss, gathered.loss) << what;
      EXPECT_TRUE(same_bits(reference.hidden, gathered.hidden)) << what;
      EXPECT_TRUE(same_bits(reference.gradients, gathered.gradients)) << what;
    }
  }
}

// Reading the parameters outside a forward (a checkpoint, the final model) waits for the whole
// gather first.
TEST(ParameterGather, ParametersWaitForEveryBucket) {
  auto backend = make_backend("cpu");
  const ModelConfig config = testing::tiny_config();
  const std::vector<float> params = testing::tiny_parameters(config, 3);
  Log log;
  DeferredGatherCommunicator communicator(*backend, params, log);
  GradientSharding sharding;
  sharding.bucket_elements = 1;
  LlamaModel model(config, *backend, kBatch, kSequence, ModelMode::Training, ActivationRecompute::None, sharding);
  communicator.set_base(model.parameters());
  model.gather_parameters(communicator, shard_bounds(model.table().total_numel(), 2));
  std::vector<float> got(params.size());
  model.get_parameters(got);
  EXPECT_TRUE(same_bits(params, got));
  EXPECT_EQ(log.back(), "wait 7");
}

// wait(begin, end) waits for exactly the buckets that hold an element of [begin, end), once.
TEST(ParameterGather, WaitsForTheBucketsOfARange) {
  auto backend = make_backend("cpu");
  const ParameterTable table(testing::tiny_config());
  BackendBuffer parameters(*backend, table.total_numel(), DType::F32);
  Log log;
  DeferredGatherCommunicator communicator(*backend, std::vector<float>(42400, 1.0f), log);
  communicator.set_base(parameters.tensor());
  // Buckets of 10000: [0, 1600) [1600, 11392) [11392, 30976) [30976, 42400).
  ParameterGather gather(table, 10000);
  ASSERT_EQ(gather.buckets().size(), 4u);
  gather.start(communicator, parameters.tensor(), shard_bounds(42400, 2));
  log.clear();
  gather.wait(11391, 11393);  // the last element of bucket 2 and the first of bucket 3
  EXPECT_EQ(log, (Log{"wait 2", "wait 3"}));
  gather.wait(1600, 30976);  // both waited for already
  EXPECT_EQ(log.size(), 2u);
  EXPECT_TRUE(gather.pending());
  gather.wait_layer(3);  // layer 3 is [30976, 40768)
  EXPECT_EQ(log.back(), "wait 4");
  gather.wait_all();
  EXPECT_EQ(log, (Log{"wait 2", "wait 3", "wait 4", "wait 1"}));
  EXPECT_FALSE(gather.pending());
}

using TcpFixture = testing::TcpTrainingSetup;
// Buckets of 10000 elements: the gather moves 4 buckets (and the gradient buckets with stage 2),
// some of them inside one rank's part, some across two.
constexpr std::int64_t kGatherBuckets = 10000;

// The gather is a copy: bucket by bucket it gives every rank the bits of the one all_gather.
TEST(ParameterGather, TcpRanksEqualTheGatherInOnePiece) {
  TcpFixture f;
  for (int world : {2, 3})
    for (int stage : {1, 2})
      for (ActivationRecompute recompute : {ActivationRecompute::None, ActivationRecompute::Full}) {
        const std::string what = str(world, " ranks, stage ", stage, ", ", activation_recompute_name(recompute));
        TrainOptions o = f.options(str("one-piece-", world, stage, static_cast<int>(recompute)));
        o.recompute = recompute;
        const testing::StageRun one_piece = testing::tcp_run(f.config, f.init, o, world, stage, kGatherBuckets, false);
        o.output = f.dir / str("overlapped-", world, stage, static_cast<int>(recompute));
        testing::expect_same_bits(one_piece, testing::tcp_run(f.config, f.init, o, world, stage, kGatherBuckets, true),
                                  what);
      }
}

// A run resumed from its checkpoint (written with the overlap) continues to the weights of an
// uninterrupted run gathering in one piece.
TEST(ParameterGather, TcpResumeEqualsTheGatherInOnePiece) {
  TcpFixture f;
  TrainOptions o = f.options("one-piece");
  o.steps = 4;
  o.save_interval = 2;
  for (int stage : {1, 2}) {
    o.output = f.dir / str("one-piece-", stage);
    o.resume = false;
    const testing::StageRun one_piece = testing::tcp_run(f.config, f.init, o, 2, stage, kGatherBuckets, false);
    o.output = f.dir / str("overlapped-", stage);
    testing::tcp_run(f.config, f.init, o, 2, stage, kGatherBuckets, true);
    const fs::path resumed = f.dir / str("resumed-", stage);
    fs::create_directories(resumed);
    fs::copy(o.output / "checkpoint-2", resumed / "checkpoint-2", fs::copy_options::recursive);
    o.output = resumed;
    o.resume = true;
    const testing::StageRun run = testing::tcp_run(f.config, f.init, o, 2, stage, kGatherBuckets, true);
    EXPECT_TRUE(same_bits(one_piece.params, run.params)) << "stage " << stage;
    EXPECT_EQ(std::vector<double>(one_piece.losses.begin() + 2, one_piece.losses.end()), run.losses);
    EXPECT_EQ(read_text_file(f.dir / str("one-piece-", stage) / "model" / "model.safetensors"),
              read_text_file(resumed / "model" / "model.safetensors"));
  }
}

}  // namespace
}  // namespace minitron
