// `minitron importance --task`: the accuracy it records for a removed block equals
// `minitron eval --task` on a checkpoint with that block dropped by `minitron prune
// --drop-layers` (and the baseline equals eval on the unpruned model); `prune --layer-criterion
// task` drops the block those accuracies rank best. End to end through the built binary on a
// tiny random model with the evaluation tests' 67-id character tokenizer.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "data/shards.h"
#include "model/checkpoint.h"
#include "prune/scores.h"
#include "prune_test_util.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::minitron;

class ImportanceTask : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = testing::tiny_config();
    config_.vocab_size = 67;  // the tokenizer's
    config_.rms_norm_eps = 1e-5;
    config_.max_position_embeddings = 128;
    SaveOptions save;
    save.dtype = SafetensorsDType::F32;
    save_checkpoint(dir_ / "model", config_, ParameterTable(config_), testing::tiny_parameters(config_, 11), save);
    write_shard(dir_ / "data.bin", testing::tiny_tokens(400, config_.vocab_size, 5));
    // Hand-made questions in the generic layout, within the tokenizer's alphabet.
    std::ofstream task(dir_ / "task.jsonl");
    const char* lines[] = {
        R"({"context": "The cat sat on the", "choices": ["mat", "sky", "sea"], "label": 0})",
        R"({"context": "Snow is", "choices": ["white", "loud", "late"], "label": 0})",
        R"({"context": "Fish swim in the", "choices": ["tree", "water", "fire"], "label": 1})",
        R"({"context": "Birds can", "choices": ["fly", "read", "melt"], "label": 0})",
        R"({"context": "At night the sky is", "choices": ["green", "dark", "salty"], "label": 1})",
        R"({"context": "We eat with a", "choices": ["cloud", "song", "spoon"], "label": 2})",
        R"({"context": "Ice is", "choices": ["hot", "cold", "tall"], "label": 1})",
        R"({"context": "A dog says", "choices": ["moo", "woof", "quack"], "label": 1})",
    };
    for (const char* l : lines) task << l << "\n";
  }
  std::string model() const { return (dir_ / "model").string(); }
  std::string tokenizer() const { return (fs::path(MINITRON_SOURCE_DIR) / "tests/eval/data/tokenizer.json").string(); }
  std::string task_flags() const {
    return str(" --task multiple_choice --task-file ", (dir_ / "task.jsonl").string(), " --shots 1 --tokenizer ",
               tokenizer(), " --device cpu");
  }
  double eval_accuracy(const std::string& model_dir) {
    const CommandResult r = minitron(dir_, str("eval --model ", model_dir, task_flags(), " --json"));
    EXPECT_EQ(r.status, 0) << r.err;
    const nlohmann::json j = nlohmann::json::parse(r.out);
    for (const nlohmann::json& row : j["results"])
      if (row["metric"] == "acc") return row["value"].get<double>();
    ADD_FAILURE() << "no acc row in " << r.out;
    return -1;
  }

  testing::TempDir dir_;
  ModelConfig config_;
};

TEST_F(ImportanceTask, BlockAccuracyEqualsEvalOfThePrunedModel) {
  const std::string scores = (dir_ / "scores.json").string();
  CommandResult r =
      minitron(dir_, str("importance --model ", model(), " --data ", (dir_ / "data.bin").string(),
                         " --samples 2 --sequence-length 16 --batch-size 2 --layer-windows 2 --block-size 2",
                         task_flags(), " --output ", scores));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("multiple_choice accuracy"), std::string::npos) << r.out;
  const ImportanceScores s = load_scores(scores);
  EXPECT_EQ(s.layers.task, "multiple_choice");
  EXPECT_EQ(s.provenance.at("layer_ranking_task").at("shots"), 1);
  ASSERT_TRUE(s.layers.baseline_task_score.has_value());
  ASSERT_EQ(s.layers.block_removal_task_score.at(1).size(), 4u);
  ASSERT_EQ(s.layers.block_removal_task_score.at(2).size(), 3u);
  ASSERT_EQ(s.layers.block_removal_loss.at(2).size(), 3u);  // the losses are still there

  // Accuracies are means of 0/1 over 8 questions: equal exactly unless a log-likelihood
  // comparison sits within float rounding of a tie, which these random weights do not produce.
  EXPECT_EQ(*s.layers.baseline_task_score, eval_accuracy(model()));
  for (const auto& [k, accuracies] : s.layers.block_removal_task_score)
    for (std::size_t start = 0; start < accuracies.size(); ++start) {
      const std::string pruned = (dir_ / str("pruned-", k, "-", start)).string();
      r = minitron(dir_, str("prune --model ", model(), " --scores ", scores, " --drop-layers ", start, "-",
                             start + k - 1, " --save-dtype float32 --device cpu --output ", pruned));
      ASSERT_EQ(r.status, 0) << r.err;
      EXPECT_EQ(accuracies[start], eval_accuracy(pruned)) << "block " << start << ".." << start + k - 1;
    }
  std::printf("baseline %.3f; k=1: %s; k=2: %s\n", *s.layers.baseline_task_score,
              nlohmann::json(s.layers.block_removal_task_score.at(1)).dump().c_str(),
              nlohmann::json(s.layers.block_removal_task_score.at(2)).dump().c_str());
}

// `prune --num-layers N --layer-criterion task` drops the block whose removal keeps the highest
// accuracy (ties: the lower removal loss, then the earliest block), and `eval` of the result
// gives that accuracy. 8 questions on a random model: ties are likely, so the rule is exercised.
TEST_F(ImportanceTask, PruneByTaskAccuracyDropsTheBestBlock) {
  const std::string scores = (dir_ / "scores.json").string();
  CommandResult r =
      minitron(dir_, str("importance --model ", model(), " --data ", (dir_ / "data.bin").string(),
                         " --samples 2 --sequence-length 16 --batch-size 2 --layer-windows 2 --block-size 2",
                         task_flags(), " --output ", scores));
  ASSERT_EQ(r.status, 0) << r.err;
  const ImportanceScores s = load_scores(scores);
  for (const std::int64_t k : {1, 2}) {
    SCOPED_TRACE(str("block size ", k));
    const std::vector<double>& accuracy = s.layers.block_removal_task_score.at(k);
    const std::vector<double>& loss = s.layers.block_removal_loss.at(k);
    // The documented order as a key: accuracy descending, then loss ascending; strict < keeps
    // the earliest block of a full tie.
    std::size_t want = 0;
    for (std::size_t b = 1; b < accuracy.size(); ++b)
      if (std::pair(-accuracy[b], loss[b]) < std::pair(-accuracy[want], loss[want])) want = b;
    std::printf("k=%lld: accuracy %s, loss %s\n", static_cast<long long>(k), nlohmann::json(accuracy).dump().c_str(),
                nlohmann::json(loss).dump().c_str());
    // With these weights k = 2 ranks differently by loss, so the criterion visibly decides.
    if (k == 2) {
      ASSERT_NE(want, static_cast<std::size_t>(std::min_element(loss.begin(), loss.end()) - loss.begin()));
    }
    const fs::path pruned = dir_ / str("by-task-", k);
    r = minitron(dir_,
                 str("prune --model ", model(), " --scores ", scores, " --num-layers ", config_.num_hidden_layers - k,
                     " --layer-criterion task --save-dtype float32 --device cpu --output ", pruned.string()));
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("(by task: multiple_choice accuracy without them"), std::string::npos) << r.out;
    const nlohmann::json plan = nlohmann::json::parse(testing::slurp(pruned / "pruning.json"));
    EXPECT_EQ(plan.at("dropped_layers"), nlohmann::json::array({want, want + static_cast<std::size_t>(k) - 1}))
        << plan.dump();
    EXPECT_EQ(plan.at("layer_criterion"), "task");
    // Exact: the same questions on the same weights with the block gone (see the test above).
    EXPECT_EQ(eval_accuracy(pruned.string()), accuracy[want]);
  }

  // No task accuracies for the block size: the refusal names the importance flags that make them.
  r = minitron(dir_, str("prune --model ", model(), " --scores ", scores,
                         " --num-layers 1 --layer-criterion task --device cpu --output ", (dir_ / "none").string()));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--layer-criterion task: dropping 3 layers needs task accuracies for blocks of 3, the scores "
                       "file has them for k = 1, 2"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("minitron importance --task NAME --task-file FILE --block-size 3"), std::string::npos) << r.err;
  r = minitron(dir_,
               str("prune --model ", model(), " --random-scores 1 --num-layers 2 --layer-criterion task --device cpu",
                   " --output ", (dir_ / "none").string()));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("has them for k = none"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "none"));
}

TEST_F(ImportanceTask, RefusesATaskWithoutItsFile) {
  const CommandResult r =
      minitron(dir_, str("importance --model ", model(), " --data ", (dir_ / "data.bin").string(),
                         " --samples 2 --sequence-length 16 --task winogrande --device cpu --output ",
                         (dir_ / "s.json").string()));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--task-file: missing"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace minitron
