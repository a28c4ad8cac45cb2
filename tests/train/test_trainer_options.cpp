// run_training's checkpoint retention (--save-total-limit), its clean-up of what a killed save
// leaves, and whole runs with activation recomputation (--recompute) against none.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "data/shards.h"
#include "kernels/make_backend.h"
#include "model/llama.h"
#include "tests/prune/prune_test_util.h"
#include "train/losses.h"
#include "train/trainer.h"
#include "util/error.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;

std::set<std::string> entries(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.insert(entry.path().filename().string());
  return names;
}

// A cross-entropy objective whose save_state throws on the save numbered fail_at (1-based),
// as a disk filling up in the middle of writing a checkpoint would.
class FailingSaveObjective : public CrossEntropyObjective {
 public:
  FailingSaveObjective(LossWorkspace& workspace, int fail_at) : CrossEntropyObjective(workspace), fail_at_(fail_at) {}
  void save_state(const fs::path& checkpoint) const override {
    if (++saves_ == fail_at_) fail(str("disk full writing ", checkpoint.string()));
  }

 private:
  int fail_at_;
  mutable int saves_ = 0;
};

class TrainerOptions : public ::testing::Test {
 protected:
  void SetUp() override {
    write_shard(dir / "train.bin", testing::tiny_tokens(400, config.vocab_size));
    options.batch_size = B;
    options.sequence_length = T;
    options.steps = 7;
    options.save_interval = 2;
    options.optimizer.learning_rate = 1e-2;
    options.optimizer.warmup_steps = 1;
    options.save_dtype = SafetensorsDType::F32;
    options.train_shards = {dir / "train.bin"};
  }
  // Trains a fresh model into dir/out; returns its final parameters.
  std::vector<float> train(const std::string& out, TrainOptions o,
                           ActivationRecompute recompute = ActivationRecompute::None, int fail_save_at = 0) {
    LlamaModel model(config, *backend, B, T, ModelMode::Training, recompute);
    model.set_parameters(testing::tiny_parameters(config));
    LossWorkspace workspace(*backend, config.vocab_size, B * T);
    FailingSaveObjective objective(workspace, fail_save_at);
    o.output = dir / out;
    run_training(model, objective, o);
    std::vector<float> params(static_cast<std::size_t>(model.table().total_numel()));
    model.get_parameters(params);
    return params;
  }

  testing::TempDir dir;
  const ModelConfig config = testing::tiny_config();
  const std::int64_t B = 2, T = 8;
  std::unique_ptr<Backend> backend = make_backend("cpu");
  TrainOptions options;
};

TEST_F(TrainerOptions, SaveTotalLimitKeepsTheNewestCheckpoints) {
  train("all", options);  // checkpoints at steps 2, 4 and 6
  EXPECT_EQ(entries(dir / "all"),
            (std::set<std::string>{"checkpoint-2", "checkpoint-4", "checkpoint-6", "metrics.jsonl", "model"}));
  TrainOptions limited = options;
  limited.save_total_limit = 2;
  train("two", limited);
  EXPECT_EQ(entries(dir / "two"), (std::set<std::string>{"checkpoint-4", "checkpoint-6", "metrics.jsonl", "model"}));
  limited.save_total_limit = 1;
  train("one", limited);
  EXPECT_EQ(entries(dir / "one"), (std::set<std::string>{"checkpoint-6", "metrics.jsonl", "model"}));
  EXPECT_EQ(latest_checkpoint(dir / "one"), dir / "one" / "checkpoint-6");
}

// The older checkpoint goes only once the new one is complete: a save that fails midway leaves
// the last good checkpoint in place.
TEST_F(TrainerOptions, SaveTotalLimitKeepsTheOldCheckpointWhenASaveFails) {
  TrainOptions limited = options;
  limited.save_total_limit = 1;
  EXPECT_THROW(train("failed", limited, ActivationRecompute::None, /*fail_save_at=*/2), Error);
  EXPECT_EQ(entries(dir / "failed"), (std::set<std::string>{"checkpoint-2", "metrics.jsonl"}));
  EXPECT_EQ(latest_checkpoint(dir / "failed"), dir / "failed" / "checkpoint-2");
}

// What a kill -9 during a save leaves is cleared when the next run starts; a moved-aside copy
// whose directory is missing is the last complete version and comes back. Other entries stay.
TEST_F(TrainerOptions, LeftoversOfAKilledSaveAreRemovedAtStart) {
  train("first", options);
  const fs::path out = dir / "first";
  for (const char* name :
       {".checkpoint-8.tmp-4242", ".model.tmp-17", ".checkpoint-2.removing-99", ".checkpoint-4.old-5"}) {
    fs::create_directories(out / name);
    std::ofstream(out / name / "model.safetensors") << "partial";
  }
  fs::rename(out / "checkpoint-6", out / ".checkpoint-6.old-4242");  // killed between a replacing save's renames
  fs::create_directories(out / ".keep.tmp-1");                       // not a name a save writes
  TrainOptions resumed = options;
  resumed.resume = true;
  resumed.steps = 9;
  train("first", resumed);
  EXPECT_EQ(entries(out), (std::set<std::string>{".keep.tmp-1", "checkpoint-2", "checkpoint-4", "checkpoint-6",
                                                 "checkpoint-8", "metrics.jsonl", "model"}));
  EXPECT_TRUE(fs::exists(out / "checkpoint-6" / "training_state.json"));  // the restored one
  // Resumed from the restored checkpoint-6: the log (appended to) has step 7 from both runs,
  // step 5 from the first only.
  std::ifstream in(out / "metrics.jsonl");
  const std::string log(std::istreambuf_iterator<char>(in), {});
  auto count = [&](const std::string& what) {
    std::size_t n = 0;
    for (std::size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count("\"step\":7,"), 2u) << log;
  EXPECT_EQ(count("\"step\":5,"), 1u) << log;
}

TEST_F(TrainerOptions, RecomputeModesTrainBitIdentically) {
  TrainOptions o = options;
  o.save_interval = 0;
  o.steps = 3;
  const std::vector<float> none = train("none", o, ActivationRecompute::None);
  for (ActivationRecompute r : {ActivationRecompute::Selective, ActivationRecompute::Full}) {
    const std::vector<float> params = train(activation_recompute_name(r), o, r);
    ASSERT_EQ(params.size(), none.size());
    EXPECT_EQ(0, std::memcmp(params.data(), none.data(), none.size() * sizeof(float))) << activation_recompute_name(r);
  }
}

TEST_F(TrainerOptions, RefusesANegativeSaveTotalLimit) {
  TrainOptions o = options;
  o.save_total_limit = -1;
  try {
    train("negative", o);
    ADD_FAILURE() << "a negative limit passed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--save-total-limit"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace minitron
