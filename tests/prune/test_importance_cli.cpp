// `minitron importance` through the built binary: flags checked against the model before any
// forward pass, numbers too large for an int64 named by their flag, a 1-layer model end to
// end, and --task taking eval's --add-bos / --max-length with the same meaning.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

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

class ImportanceCli : public ::testing::Test {
 protected:
  // A model of `layers` layers over the evaluation tests' 67-id character tokenizer.
  std::string make_model(const std::string& name, std::int64_t layers) {
    ModelConfig config = testing::tiny_config();
    config.num_hidden_layers = layers;
    config.vocab_size = 67;
    config.rms_norm_eps = 1e-5;
    config.max_position_embeddings = 128;
    SaveOptions save;
    save.dtype = SafetensorsDType::F32;
    save_checkpoint(dir_ / name, config, ParameterTable(config), testing::tiny_parameters(config, 11), save);
    return (dir_ / name).string();
  }
  void SetUp() override {
    write_shard(dir_ / "data.bin", testing::tiny_tokens(400, 67, 5));
    std::ofstream task(dir_ / "task.jsonl");
    task << R"({"context": "The cat sat on the", "choices": ["mat", "sky", "sea"], "label": 0})"
         << "\n"
         << R"({"context": "Fish swim in the", "choices": ["tree", "water", "fire"], "label": 1})"
         << "\n"
         << R"({"context": "We eat with a", "choices": ["cloud", "song", "spoon"], "label": 2})"
         << "\n"
         << R"({"context": "A dog says", "choices": ["moo", "woof", "quack"], "label": 1})"
         << "\n";
  }
  std::string common() const {
    return str(" --data ", (dir_ / "data.bin").string(),
               " --device cpu --samples 2 --sequence-length 16 --batch-size 2 ", "--output ",
               (dir_ / "scores.json").string());
  }
  std::string task_flags() const {
    return str(" --task multiple_choice --task-file ", (dir_ / "task.jsonl").string(), " --tokenizer ",
               (fs::path(MINITRON_SOURCE_DIR) / "tests/eval/data/tokenizer.json").string());
  }

  testing::TempDir dir_;
};

// Before the fix: the scores file was written, then the summary asked for the cheapest block
// of k = 1 >= L layers and died with "internal error at prune/slicing.cpp".
TEST_F(ImportanceCli, OneLayerModelRunsEndToEnd) {
  const std::string model = make_model("one", 1);
  const CommandResult r =
      minitron(dir_, str("importance --model ", model, common(), " --layer-windows 2", task_flags()));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err.find("internal error"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("layer   0: loss without it"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("cheapest block"), std::string::npos) << r.out;  // no block short of the whole model
  const ImportanceScores s = load_scores(dir_ / "scores.json");
  EXPECT_EQ(s.layers.single_removal_loss.size(), 1u);
  EXPECT_EQ(s.width.mlp.size(), 1u);
}

// Before the fix --block-size was refused only after the calibration (the banner, printed
// before the first forward pass, came first); now before the weights load.
TEST_F(ImportanceCli, BlockSizeCheckedBeforeAnyForwardPass) {
  const std::string four = make_model("four", 4);
  CommandResult r = minitron(dir_, str("importance --model ", four, common(), " --layer-windows 2 --block-size 2,4"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--block-size: value 4 is out of range (expected an integer from 1 to 3)"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.out.find("importance of"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "scores.json"));

  const std::string one = make_model("one", 1);
  r = minitron(dir_, str("importance --model ", one, common(), " --layer-windows 2 --block-size 1"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--block-size: 1 on a model with 1 layer"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("importance of"), std::string::npos) << r.out;
}

// Before the fix both printed "minitron: error: stoll".
TEST_F(ImportanceCli, HugeNumbersNameTheirFlagAndRange) {
  const std::string four = make_model("four", 4);
  CommandResult r = minitron(dir_, str("importance --model ", four, common(), " --block-size 99999999999999999999"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--block-size: value 99999999999999999999 is out of range (expected an integer from 1 to 3)"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("stoll"), std::string::npos) << r.err;
  // Flags cxxopts parses itself: its message names only the value; the flag is named too.
  r = minitron(dir_, str("importance --model ", four, common(), " --samples 99999999999999999999"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--samples: '99999999999999999999' is not a number of this flag's type, or is out of its range"),
            std::string::npos)
      << r.err;
  r = minitron(dir_, str("prune --model ", four, " --random-scores 1 --output ", (dir_ / "pruned").string(),
                         " --drop-layers 1-99999999999999999999"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--drop-layers: value 99999999999999999999 is out of range (expected an integer from 0 to "),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("stoll"), std::string::npos) << r.err;
}

// importance --task --add-bos --max-length N scores the task as eval does with the same flags:
// the accuracy with every layer equals eval's, and the provenance records both.
TEST_F(ImportanceCli, TaskTakesEvalsAddBosAndMaxLength) {
  const std::string model = make_model("four", 4);
  const std::string flags = str(task_flags(), " --add-bos --max-length 9");
  CommandResult r = minitron(dir_, str("importance --model ", model, common(), " --layer-windows 2", flags));
  ASSERT_EQ(r.status, 0) << r.err;
  const ImportanceScores s = load_scores(dir_ / "scores.json");
  const nlohmann::json& task = s.provenance.at("layer_ranking_task");
  EXPECT_EQ(task.at("add_bos"), true);
  EXPECT_EQ(task.at("max_length"), 9);
  ASSERT_TRUE(s.layers.baseline_task_score.has_value());

  r = minitron(dir_, str("eval --model ", model, flags, " --device cpu --json"));
  ASSERT_EQ(r.status, 0) << r.err;
  double eval_acc = -1;
  const nlohmann::json eval_json = nlohmann::json::parse(r.out);
  for (const nlohmann::json& row : eval_json.at("results"))
    if (row["metric"] == "acc") eval_acc = row["value"].get<double>();
  // Means of 0/1 over the same 4 questions on the same weights and inputs: equal exactly.
  EXPECT_EQ(*s.layers.baseline_task_score, eval_acc);
}

}  // namespace
}  // namespace minitron
