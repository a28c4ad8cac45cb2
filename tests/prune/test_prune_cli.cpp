// End to end through the built binary: `minitron importance` then `minitron prune` (explicit
// sizes, a random baseline, a parameter budget with a short distillation search, and refusals)
// on a tiny random model and a tiny shard.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "data/shards.h"
#include "model/checkpoint.h"
#include "prune/scores.h"
#include "prune/search.h"
#include "prune/slicing.h"
#include "prune_test_util.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::minitron;
using testing::slurp;

class PruneCli : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = testing::tiny_config();
    config_.rms_norm_eps = 1e-5;
    SaveOptions save;
    save.dtype = SafetensorsDType::F32;
    save_checkpoint(dir_ / "teacher", config_, ParameterTable(config_), testing::tiny_parameters(config_), save);
    write_shard(dir_ / "data.bin", testing::tiny_tokens(400, config_.vocab_size, 5));
  }
  std::string teacher() const { return (dir_ / "teacher").string(); }
  std::string data() const { return (dir_ / "data.bin").string(); }
  std::string scores() const { return (dir_ / "scores.json").string(); }

  CommandResult importance() {
    return minitron(dir_,
                    str("importance --model ", teacher(), " --data ", data(), " --device cpu --samples 5 ",
                        "--sequence-length 16 --batch-size 2 --layer-windows 3 --block-size 1,2 --output ", scores()));
  }

  testing::TempDir dir_;
  ModelConfig config_;
};

TEST_F(PruneCli, ImportanceThenPrune) {
  CommandResult r = importance();
  ASSERT_EQ(r.status, 0) << r.err;
  const ImportanceScores s = load_scores(scores());
  check_scores_match(s, config_, scores());
  EXPECT_EQ(s.provenance.at("samples"), 5);
  EXPECT_EQ(s.provenance.at("sequence_length"), 16);
  EXPECT_EQ(s.provenance.at("aggregation").at("batch"), "l2");
  EXPECT_EQ(s.layers.windows, 3);
  EXPECT_EQ(s.layers.block_removal_loss.at(2).size(), 3u);
  EXPECT_EQ(s.layers.block_importance.size(), 4u);
  EXPECT_EQ(s.width.mlp.size(), 4u);

  const fs::path out = dir_ / "pruned";
  r = minitron(dir_,
               str("prune --model ", teacher(), " --scores ", scores(), " --output ", out.string(),
                   " --hidden-size 24 --intermediate-size 24 --num-attention-heads 4 --num-layers 2",
                   " --save-dtype float32 --data ", data(), " --sequence-length 16 --eval-windows 2 --device cpu"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("zero-shot validation loss"), std::string::npos) << r.out;
  const LoadedCheckpoint pruned = load_checkpoint(out);
  EXPECT_EQ(pruned.config.hidden_size, 24);
  EXPECT_EQ(pruned.config.intermediate_size, 24);
  EXPECT_EQ(pruned.config.num_attention_heads, 4);
  EXPECT_EQ(pruned.config.num_hidden_layers, 2);
  EXPECT_NE(r.out.find(str("parameters ", pruned.table.total_numel())), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(out / "pruning.json"));
  // The command applies the library's plan to the checkpoint's weights.
  PruneTargets t;
  t.hidden_size = 24;
  t.intermediate_size = 24;
  t.num_attention_heads = 4;
  t.num_layers = 2;
  const LoadedCheckpoint teacher_checkpoint = load_checkpoint(teacher());
  const PrunePlan plan = plan_pruning(config_, s, t);
  EXPECT_EQ(pruned.params, slice_parameters(config_, teacher_checkpoint.table, teacher_checkpoint.params, plan));

  // Random baseline at the same size, and depth by Block Importance.
  r = minitron(dir_, str("prune --model ", teacher(), " --random-scores 3 --output ", (dir_ / "random").string(),
                         " --intermediate-size 24 --hidden-size 24"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = minitron(dir_, str("prune --model ", teacher(), " --scores ", scores(), " --output ", (dir_ / "bi").string(),
                         " --num-layers 3 --layer-criterion block-importance"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(load_checkpoint(dir_ / "bi").config.num_hidden_layers, 3);

  // Refusals: one clear line, non-zero exit, no output directory.
  const auto refused = [&](const std::string& args, const std::string& text) {
    CommandResult bad = minitron(dir_, str("prune --model ", teacher(), " --scores ", scores(), " --output ",
                                           (dir_ / "refused").string(), " ", args));
    EXPECT_EQ(bad.status, 1) << args;
    EXPECT_NE(bad.err.find("minitron: error: "), std::string::npos) << bad.err;
    EXPECT_NE(bad.err.find(text), std::string::npos) << bad.err;
    EXPECT_FALSE(fs::exists(dir_ / "refused")) << args;
  };
  refused("--hidden-size 64", "above the model's hidden_size = 32");
  refused("--hidden-size 20", "multiple of 8");
  refused("--num-attention-heads 6 --num-key-value-heads 4", "above the model's num_key_value_heads");
  refused("--num-attention-heads 5", "cannot be split evenly");
  refused("--num-layers 1", "block-removal losses for k = 3");
  refused("--drop-layers 0-3", "drops every layer");
  refused("", "no target given");
  CommandResult other = minitron(dir_, str("prune --model ", out.string(), " --scores ", scores(), " --output ",
                                           (dir_ / "refused").string(), " --intermediate-size 16"));
  EXPECT_EQ(other.status, 1);
  EXPECT_NE(other.err.find("scores were measured on a model with hidden_size = 32"), std::string::npos) << other.err;
}

TEST_F(PruneCli, ParameterBudgetSearch) {
  ASSERT_EQ(importance().status, 0);
  const std::int64_t budget = parameter_count(config_) * 7 / 10;
  const fs::path out = dir_ / "searched";
  CommandResult r =
      minitron(dir_, str("prune --model ", teacher(), " --scores ", scores(), " --output ", out.string(),
                         " --target-params ", budget, " --data ", data(), " --sequence-length 16 --batch-size 2",
                         " --eval-windows 2 --max-candidates 3 --search-steps 2 --search-candidates 2 --device cpu"));
  ASSERT_EQ(r.status, 0) << r.err << r.out;
  const nlohmann::json search = nlohmann::json::parse(slurp(out / "search.json"));
  ASSERT_EQ(search.at("ranked").size(), 3u);
  EXPECT_TRUE(search["ranked"][0].contains("distilled_loss"));
  EXPECT_TRUE(search["ranked"][1].contains("distilled_loss"));
  const LoadedCheckpoint best = load_checkpoint(out);
  EXPECT_EQ(best.table.total_numel(), search["ranked"][0]["parameters"].get<std::int64_t>());
  EXPECT_LE(std::abs(static_cast<double>(best.table.total_numel() - budget)), 0.05 * static_cast<double>(budget));
  EXPECT_TRUE(fs::exists(out / "pruning.json"));
  // The candidates' distillation runs are gone once ranked: only the checkpoint remains.
  for (const auto& entry : fs::directory_iterator(dir_.path()))
    EXPECT_EQ(entry.path().filename().string().find(".search"), std::string::npos) << entry.path();

  r = minitron(dir_, str("prune --model ", teacher(), " --scores ", scores(), " --output ", out.string(),
                         " --target-params ", budget));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("needs --data"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace minitron
