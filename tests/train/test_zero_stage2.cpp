// ZeRO stage 2 on the CPU engine (model/gradient_buckets.h): the buckets, the gradients of one
// process, what each bucket's reduction sees, and whole runs of 2 and 3 ranks as threads over
// TCP on 127.0.0.1 against stage 1 (tests/train/zero_stage_test_util.h), with clipping, several
// micro-batches and resume.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "data/shards.h"
#include "dist/host_communicator.h"
#include "kernels/make_backend.h"
#include "model/gradient_buckets.h"
#include "model/llama.h"
#include "tests/dist/tcp_test_util.h"
#include "tests/prune/prune_test_util.h"
#include "tests/train/data_parallel_test_util.h"
#include "tests/train/distill_test_util.h"
#include "tests/train/zero_stage_test_util.h"
#include "tests/util/error_test_util.h"
#include "train/losses.h"
#include "util/files.h"

namespace minitron {
namespace {

using testing::same_bits;

namespace fs = std::filesystem;

std::vector<std::pair<std::int64_t, std::int64_t>> ranges(const std::vector<GradientBucket>& buckets) {
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  for (const GradientBucket& b : buckets) out.emplace_back(b.begin, b.end);
  return out;
}

// tiny_config by hand: embedding 50 x 32 = 1600; a layer 32 + 64*32 + 2 * 16*32 + 32*64 + 32 +
// 3 * 48*32 = 9792; final norm 32; LM head 1600: 42400 in all, the embedding first.
TEST(GradientBuckets, WholeUnitsFromTheEndWithTheEmbeddingAlone) {
  const ParameterTable table(testing::tiny_config());
  ASSERT_EQ(table.total_numel(), 42400);
  using R = std::vector<std::pair<std::int64_t, std::int64_t>>;
  // One element per bucket: every unit is its own.
  EXPECT_EQ(
      ranges(gradient_buckets(table, 1)),
      (R{{0, 1600}, {1600, 11392}, {11392, 21184}, {21184, 30976}, {30976, 40768}, {40768, 40800}, {40800, 42400}}));
  // 10000: the head, the final norm and layer 3 (11424); layers 2 and 1 (19584); layer 0 is cut
  // off by the embedding.
  EXPECT_EQ(ranges(gradient_buckets(table, 10000)), (R{{0, 1600}, {1600, 11392}, {11392, 30976}, {30976, 42400}}));
  EXPECT_EQ(ranges(gradient_buckets(table, std::int64_t{1} << 40)), (R{{0, 1600}, {1600, 42400}}));
  // A tied head (no lm_head tensor): 40800 elements, the embedding still alone.
  const ParameterTable tied(testing::tiny_config(/*tied=*/true));
  EXPECT_EQ(ranges(gradient_buckets(tied, std::int64_t{1} << 40)), (R{{0, 1600}, {1600, 40800}}));
}

// Stage 2's memory: this rank's part and the slot arena (the largest two buckets in a row of
// backward's order, and below them a tied head's embedding); stage 1 the whole vector.
TEST(GradientBuckets, DeviceBytes) {
  const ParameterTable table(testing::tiny_config());
  const auto one = GradientBuckets::device_bytes(table, DType::F32, 1, 10000, 2, 0);
  EXPECT_EQ(one.gradients, 42400 * 4);
  EXPECT_EQ(one.slots, 0);
  // shard_bounds(42400, 2): 21184 per rank but the last (21216). Buckets of 10000 in backward's
  // order: 11424, 19584, 9792, 1600; the largest two in a row 11424 + 19584.
  const auto two = GradientBuckets::device_bytes(table, DType::F32, 2, 10000, 2, 1);
  EXPECT_EQ(two.gradients, 21216 * 4);
  EXPECT_EQ(two.slots, (11424 + 19584) * 4);
  // Tied, one unit per bucket: the embedding (1600) below two layers (9792 each).
  const ParameterTable tied(testing::tiny_config(/*tied=*/true));
  EXPECT_EQ(GradientBuckets::device_bytes(tied, DType::F32, 2, 1, 1, 0).slots, (1600 + 2 * 9792) * 4);
}

// The places of the buckets in the arena, by hand: alternately at the bottom and the top in
// backward's order, so two buckets in a row never overlap; a tied embedding below them all.
TEST(GradientBuckets, SlotLayout) {
  const ParameterTable table(testing::tiny_config());
  // Buckets [0, 1600) [1600, 11392) [11392, 30976) [30976, 42400); span 31008. Backward's order:
  // 3 at the bottom (0), 2 at the top (31008 - 19584), 1 at the bottom, 0 at the top.
  const GradientSlotLayout layout = gradient_slot_layout(table, gradient_buckets(table, 10000));
  EXPECT_EQ(layout.elements, 31008);
  EXPECT_EQ(layout.offsets, (std::vector<std::int64_t>{31008 - 1600, 0, 31008 - 19584, 0}));
  EXPECT_EQ(layout.slots, (std::vector<int>{1, 0, 1, 0}));
  // Tied, one unit per bucket: embedding [0, 1600), layers 0..3, final norm (32). Backward's
  // order: the norm at the bottom of the span (1600), layer 3 at its top, layer 2 at its bottom...
  const ParameterTable tied(testing::tiny_config(/*tied=*/true));
  const GradientSlotLayout t = gradient_slot_layout(tied, gradient_buckets(tied, 1));
  EXPECT_EQ(t.elements, 1600 + 19584);
  EXPECT_EQ(t.offsets, (std::vector<std::int64_t>{0, 1600, 1600 + 9792, 1600, 1600 + 9792, 1600}));
  EXPECT_EQ(t.slots, (std::vector<int>{2, 0, 1, 0, 1, 0}));
}

// A fused projection's gradient (model/llama.cpp): one destination over q_proj, k_proj and
// v_proj, their numel together at q_proj's offset, first written (beta 0) then accumulated; a run
// whose parameters were written apart is refused.
TEST(GradientBuckets, DestinationOfARunSpansTheAdjacentParameters) {
  const ParameterTable table(testing::tiny_config());
  auto backend = make_backend("cpu");
  GradientBuckets buckets(*backend, table, GradientSharding{});
  buckets.begin_step();
  const LayerOffsets& w = table.layer(1);
  const std::int64_t qkv = 64 * 32 + 2 * 16 * 32;  // tiny_config: q_dim 64, kv_dim 16, hidden 32
  const GradientBuckets::Destination first = buckets.destination_of_run(w.q_proj, 3);
  EXPECT_EQ(first.tensor.numel, qkv);
  EXPECT_EQ(first.tensor.data, buckets.gradients().slice(w.q_proj, qkv).data);
  EXPECT_FALSE(first.accumulate);
  EXPECT_TRUE(buckets.destination_of_run(w.q_proj, 3).accumulate);
  EXPECT_TRUE(buckets.destination(w.v_proj, 16 * 32).accumulate);  // each part written too
  // gate_proj written alone, then as the start of gate|up: up_proj's state differs.
  buckets.destination(w.gate_proj, 48 * 32);
  EXPECT_NE(testing::error_of([&] { buckets.destination_of_run(w.gate_proj, 2); }).find("written apart from"),
            std::string::npos);
}

// A one-process communicator that keeps a copy of each tensor it is asked to reduce, as the
// reduction starts: what a bucket holds then.
class RecordingCommunicator final : public Communicator {
 public:
  explicit RecordingCommunicator(Backend& backend) : backend_(backend) {}
  std::int64_t rank() const override { return 0; }
  std::int64_t world_size() const override { return 1; }
  void all_reduce_sum(Tensor) override {}
  void all_reduce_sum(std::span<double>) override {}
  void reduce_scatter_sum(Tensor, std::span<const std::int64_t>) override {}
  void all_gather(Tensor, std::span<const std::int64_t>) override {}
  void barrier() override {}
  std::int64_t start_reduce_scatter_sum(Tensor t, std::span<const std::int64_t>) override {
    started.emplace_back(static_cast<std::size_t>(t.numel));
    backend_.download(started.back().data(), t);
    return static_cast<std::int64_t>(started.size());
  }
  std::vector<std::vector<float>> started;

 private:
  Backend& backend_;
};

constexpr std::int64_t kBatch = 2, kSequence = 8;

// One micro-batch's forward and backward of window `window` of a fixed token stream.
void backward_window(LlamaModel& model, LossWorkspace& workspace, std::int64_t window) {
  const std::vector<std::int32_t> tokens = testing::tiny_tokens(200, model.config().vocab_size, 4);
  const std::int64_t N = kBatch * kSequence;
  const std::span<const std::int32_t> all(tokens);
  model.forward(all.subspan(window * N, N), kBatch, kSequence);
  cross_entropy_loss(model, all.subspan(window * N + 1, N), workspace, 1.0f);
  model.backward();
}

// The gradient of `micro_batches` windows accumulated into a model whose gradients are kept as
// `sharding`, in one process; `poison` first fills the gradient buffer with NaN (a buffer left
// from an earlier step).
std::vector<float> accumulated_gradient(bool tied, const GradientSharding& sharding, int micro_batches, bool poison) {
  auto backend = make_backend("cpu");
  const ModelConfig config = testing::tiny_config(tied);
  LlamaModel model(config, *backend, kBatch, kSequence, ModelMode::Training, ActivationRecompute::None, sharding);
  model.set_parameters(testing::tiny_parameters(config, 3));
  LossWorkspace workspace(*backend, config.vocab_size, kBatch * kSequence);
  if (poison) {
    const std::vector<float> nan(static_cast<std::size_t>(model.gradients().numel),
                                 std::numeric_limits<float>::quiet_NaN());
    backend->upload(model.gradients(), nan.data());
  }
  model.zero_gradients();
  for (int m = 0; m < micro_batches; ++m) backward_window(model, workspace, m);
  return testing::gradients(model);
}

// In one process stage 2's part is the whole vector, reduced bucket by bucket by the identity:
// the same gradient as stage 1 to the bit for one micro-batch, whatever the buckets.
TEST(ZeroStage2, OneProcessGradientIsStageOnes) {
  for (bool tied : {false, true}) {
    const std::vector<float> stage1 = accumulated_gradient(tied, {}, 1, false);
    SingleProcessCommunicator single;
    for (std::int64_t bucket : {std::int64_t{1}, std::int64_t{10000}, kDefaultBucketElements}) {
      const std::vector<float> stage2 = accumulated_gradient(tied, {2, &single, bucket}, 1, false);
      EXPECT_TRUE(same_bits(stage1, stage2)) << "tied " << tied << ", buckets of " << bucket;
    }
  }
}

// Several micro-batches: stage 2 adds whole micro-batch gradients into its part where stage 1's
// GEMMs accumulate into theirs (and norms add per row): the same sum in another association.
TEST(ZeroStage2, AccumulatedGradientMatchesStageOne) {
  SingleProcessCommunicator single;
  const std::vector<float> stage1 = accumulated_gradient(false, {}, 3, false);
  const std::vector<float> stage2 = accumulated_gradient(false, {2, &single, 1}, 3, false);
  double scale = 0;
  for (float g : stage1) scale = std::max(scale, static_cast<double>(std::abs(g)));
  ASSERT_GT(scale, 0);
  // Three terms of fp32 summed in another order: a few ulps (2^-23 relative) of the largest
  // gradient; 1e-5 of it leaves margin while a lost or doubled micro-batch moves it by ~1/3.
  EXPECT_LE(testing::max_abs_diff(stage1, stage2), 1e-5 * scale);
}

// zero_gradients() writes nothing (no memset), and the first write of each parameter overwrites:
// a buffer full of NaN gives the same gradient as a fresh one, in both stages.
TEST(ZeroStage2, StaleGradientBufferCannotLeakIn) {
  auto backend = make_backend("cpu");
  const ModelConfig config = testing::tiny_config();
  LlamaModel model(config, *backend, kBatch, kSequence, ModelMode::Training);
  const std::vector<float> nan(static_cast<std::size_t>(model.gradients().numel),
                               std::numeric_limits<float>::quiet_NaN());
  backend->upload(model.gradients(), nan.data());
  model.zero_gradients();
  const std::vector<float> after_zero = testing::gradients(model);
  EXPECT_TRUE(std::isnan(after_zero.front()) && std::isnan(after_zero.back())) << "zero_gradients cleared the buffer";

  SingleProcessCommunicator single;
  for (bool tied : {false, true}) {
    EXPECT_TRUE(same_bits(accumulated_gradient(tied, {}, 2, false), accumulated_gradient(tied, {}, 2, true)))
        << "stage 1, tied " << tied;
    EXPECT_TRUE(same_bits(accumulated_gradient(tied, {2, &single, 1}, 2, false),
                          accumulated_gradient(tied, {2, &single, 1}, 2, true)))
        << "stage 2, tied " << tied;
  }
}

// Each bucket is reduced once per micro-batch, from the end of the vector to its start, and
// holds its whole gradient when its reduction starts: stage 1's gradient of that range.
TEST(ZeroStage2, EachBucketIsReducedOnceWhenWhole) {
  for (bool tied : {false, true}) {
    const std::vector<float> whole = accumulated_gradient(tied, {}, 1, false);
    auto backend = make_backend("cpu");
    const ModelConfig config = testing::tiny_config(tied);
    RecordingCommunicator recorder(*backend);
    LlamaModel model(config, *backend, kBatch, kSequence, ModelMode::Training, ActivationRecompute::None,
                     {2, &recorder, 1});
    model.set_parameters(testing::tiny_parameters(config, 3));
    LossWorkspace workspace(*backend, config.vocab_size, kBatch * kSequence);
    model.zero_gradients();
    backward_window(model, workspace, 0);
    const std::vector<GradientBucket>& buckets = model.gradient_buckets().buckets();
    ASSERT_EQ(recorder.started.size(), buckets.size()) << "tied " << tied;
    for (std::size_t i = 0; i < buckets.size(); ++i) {
      const GradientBucket& b = buckets[buckets.size() - 1 - i];
      const std::vector<float> expected(whole.begin() + b.begin, whole.begin() + b.end);
      EXPECT_TRUE(same_bits(recorder.started[i], expected))
          << "tied " << tied << ": bucket [" << b.begin << ", " << b.end << ") reduced as the " << i + 1
          << "th did not hold its whole gradient";
    }
    // The second micro-batch of the step reduces every bucket again, once.
    backward_window(model, workspace, 1);
    EXPECT_EQ(recorder.started.size(), 2 * buckets.size());
  }
}

struct TcpFixture : testing::TcpTrainingSetup {
  TrainOptions options(const std::string& name) const {
    TrainOptions o = TcpTrainingSetup::options(name);
    // Far below the gradient norm (~5 here): every step is clipped.
    o.optimizer.grad_clip = 0.05;
    return o;
  }
};

TEST(ZeroStage2, TcpRanksEqualStageOneToTheBit) {
  TcpFixture f;
  for (int world : {2, 3}) {
    const testing::StageRun stage1 =
        testing::tcp_run(f.config, f.init, f.options(str("s1-", world)), world, 1, kDefaultBucketElements);
    ASSERT_EQ(stage1.grad_norms.size(), 3u);
    for (double norm : stage1.grad_norms) EXPECT_GT(norm, 0.05) << "the clip must bite";
    for (std::int64_t bucket : {std::int64_t{1}, std::int64_t{10000}, kDefaultBucketElements}) {
      const testing::StageRun stage2 =
          testing::tcp_run(f.config, f.init, f.options(str("s2-", world, "-", bucket)), world, 2, bucket);
      EXPECT_GT(stage2.buckets, 1);
      testing::expect_same_bits(stage1, stage2, str(world, " ranks, buckets of ", bucket));
    }
  }
}

// Two micro-batches per step: equal within the reassociation of the sums (see above).
TEST(ZeroStage2, TcpRanksWithAccumulationMatchStageOne) {
  TcpFixture f;
  TrainOptions o = f.options("s1");
  o.grad_accumulation = 2;
  const testing::StageRun stage1 = testing::tcp_run(f.config, f.init, o, 2, 1, kDefaultBucketElements);
  o.output = f.dir / "s2";
  const testing::StageRun stage2 = testing::tcp_run(f.config, f.init, o, 2, 2, 1);
  // Adam steps of lr 1e-2 from gradients that differ by a few fp32 ulps: weights (~0.3) within
  // 1e-4 (1% of a step; an element with a near-zero gradient may flip further), while a lost
  // or doubled micro-batch moves them by whole steps.
  EXPECT_LE(testing::max_abs_diff(stage1.params, stage2.params), 1e-4);
  ASSERT_EQ(stage1.losses.size(), 3u);
  ASSERT_EQ(stage2.losses.size(), 3u);
  EXPECT_EQ(stage1.losses[0], stage2.losses[0]);  // the first step's forward is on the same weights
  for (std::size_t s = 1; s < 3; ++s) EXPECT_NEAR(stage1.losses[s], stage2.losses[s], 1e-5 * stage1.losses[s]);
}

// A stage 2 run resumed from its checkpoint continues to stage 1's uninterrupted weights, and a
// stage 1 checkpoint resumes under stage 2 alike (the checkpoint holds no gradient).
TEST(ZeroStage2, TcpResumeEqualsStageOne) {
  TcpFixture f;
  TrainOptions o = f.options("s1");
  o.steps = 4;
  o.save_interval = 2;
  const testing::StageRun stage1 = testing::tcp_run(f.config, f.init, o, 2, 1, kDefaultBucketElements);
  for (const char* source : {"s1", "s2"}) {
    if (std::string(source) == "s2") {
      TrainOptions full = o;
      full.output = f.dir / "s2";
      testing::expect_same_bits(stage1, testing::tcp_run(f.config, f.init, full, 2, 2, 1), "uninterrupted stage 2");
    }
    const fs::path resumed = f.dir / str("resumed-from-", source);
    fs::create_directories(resumed);
    fs::copy(f.dir / source / "checkpoint-2", resumed / "checkpoint-2", fs::copy_options::recursive);
    TrainOptions r = o;
    r.output = resumed;
    r.resume = true;
    const testing::StageRun run = testing::tcp_run(f.config, f.init, r, 2, 2, 1);
    EXPECT_TRUE(same_bits(stage1.params, run.params)) << "resumed from " << source;
    EXPECT_EQ(std::vector<double>(stage1.losses.begin() + 2, stage1.losses.end()), run.losses) << source;
    EXPECT_EQ(read_text_file(f.dir / "s1" / "model" / "model.safetensors"),
              read_text_file(resumed / "model" / "model.safetensors"))
        << source;
  }
}

// Ranks built for different stages would call different collectives: refused on every rank.
TEST(ZeroStage2, RanksMustAgreeOnTheStage) {
  TcpFixture f;
  const int port = testing::free_tcp_port();
  const auto errors = testing::run_ranks(2, [&](std::int64_t rank) {
    auto backend = make_backend("cpu");
    HostCommunicator communicator(*backend, std::make_unique<TcpGroup>(testing::local_environment(rank, 2, port)));
    testing::train_with_stage(f.config, f.init, *backend, communicator, f.options(str("run-", rank)), rank == 0 ? 2 : 1,
                              kDefaultBucketElements);
  });
  for (const std::string& error : errors)
    EXPECT_EQ(error,
              "data-parallel rank 1: --zero-stage is 1 but rank 0's is 2 (expected every rank started with the same "
              "command line and the same model files)");
}

}  // namespace
}  // namespace minitron
