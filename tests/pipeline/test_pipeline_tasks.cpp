// `minitron pipeline` with evaluation tasks in the recipe: report.json carries every model's
// task accuracies, and they equal `minitron eval --task` run on the same checkpoints. A tiny
// random teacher with the evaluation tests' 67-id character tokenizer, through the built binary.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "data/shards.h"
#include "model/checkpoint.h"
#include "tests/prune/prune_test_util.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::minitron;
using testing::slurp;

fs::path source(const std::string& rel) { return fs::path(MINITRON_SOURCE_DIR) / rel; }

TEST(PipelineTasks, ReportCarriesTheTaskAccuraciesOfEveryModel) {
  testing::TempDir dir;
  ModelConfig c = testing::tiny_config();
  c.vocab_size = 67;  // the tokenizer's
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 128;
  SaveOptions save;
  save.dtype = SafetensorsDType::F32;
  save_checkpoint(dir / "teacher", c, ParameterTable(c), testing::tiny_parameters(c, 13), save);
  // The teacher's tokenizer travels with every model the pipeline derives from it.
  fs::copy_file(source("tests/eval/data/tokenizer.json"), dir / "teacher" / "tokenizer.json");
  write_shard(dir / "train.bin", testing::tiny_tokens(600, c.vocab_size, 5));
  write_shard(dir / "val.bin", testing::tiny_tokens(200, c.vocab_size, 9));
  {
    std::ofstream task(dir / "task.jsonl");
    task << R"({"context": "The cat sat on the", "choices": ["mat", "sky", "sea"], "label": 0})" << "\n"
         << R"({"context": "Fish swim in the", "choices": ["tree", "water", "fire"], "label": 1})" << "\n"
         << R"({"context": "At night the sky is", "choices": ["green", "dark", "salty"], "label": 1})" << "\n"
         << R"({"context": "We eat with a", "choices": ["cloud", "song", "spoon"], "label": 2})" << "\n";
  }
  const std::string arc = source("tests/eval/data/arc_easy.jsonl").string();
  const nlohmann::json recipe = {
      {"name", "tiny-tasks"}, {"teacher", (dir / "teacher").string()}, {"device", "cpu"},
      {"batch_size", 2}, {"sequence_length", 16},
      {"data", {{"train", (dir / "train.bin").string()}, {"validation", (dir / "val.bin").string()}}},
      {"correction", {{"enabled", false}}},
      {"importance", {{"samples", 4}, {"layer_windows", 2}}},
      {"students", {{{"name", "depth"}, {"num_layers", 2}}}},
      {"distillation", {{"steps", 2}, {"learning_rate", 1e-3}, {"min_learning_rate", 1e-4}, {"warmup_steps", 0}}},
      {"evaluation", {{"eval_windows", 2},
                      {"tasks", {{{"task", "multiple_choice"}, {"task_file", (dir / "task.jsonl").string()}},
                                 {{"task", "arc_easy"}, {"task_file", arc}, {"shots", 1}}}}}}};
  std::ofstream(dir / "recipe.json") << recipe.dump(2);
  const CommandResult r =
      minitron(dir, str("pipeline --config ", (dir / "recipe.json").string(), " --run-dir ", (dir / "run").string()));
  ASSERT_EQ(r.status, 0) << r.out << r.err;

  const nlohmann::json report = nlohmann::json::parse(slurp(dir / "run" / "report.json"));
  ASSERT_EQ(report["models"].size(), 3u);  // teacher, pruned, distilled
  const std::string report_md = slurp(dir / "run" / "report.md");
  EXPECT_NE(report_md.find("arc_easy/acc_norm"), std::string::npos) << report_md;
  struct Run {
    std::string flags;
    std::vector<std::string> keys;
  };
  const std::vector<Run> runs = {
      {str("--task multiple_choice --task-file ", (dir / "task.jsonl").string()),
       {"multiple_choice/acc", "multiple_choice/acc_norm"}},
      {str("--task arc_easy --shots 1 --task-file ", arc), {"arc_easy/acc", "arc_easy/acc_norm"}}};
  for (const nlohmann::json& m : report["models"]) {
    SCOPED_TRACE(m["key"].get<std::string>());
    ASSERT_EQ(m["tasks"].size(), 4u) << m.dump();
    for (const Run& run : runs) {
      const CommandResult e = minitron(dir, str("eval --model ", m["dir"].get<std::string>(), " ", run.flags, " --device cpu --json"));
      ASSERT_EQ(e.status, 0) << e.err;
      const nlohmann::json rows = nlohmann::json::parse(e.out)["results"];
      ASSERT_EQ(rows.size(), run.keys.size());
      for (std::size_t i = 0; i < rows.size(); ++i) {
        const std::string key = rows[i]["task"].get<std::string>() + "/" + rows[i]["metric"].get<std::string>();
        EXPECT_EQ(key, run.keys[i]);
        // The same code on the same weights and the same model shape: bit-identical scores.
        EXPECT_EQ(m["tasks"][key].get<double>(), rows[i]["value"].get<double>()) << key;
      }
    }
  }
}

// Task problems surface before the first step runs, not at the evaluate step hours later.
TEST(PipelineTasks, RefusesBadTasksBeforeAnyStep) {
  testing::TempDir dir;
  const ModelConfig c = testing::tiny_config();
  SaveOptions save;
  save.dtype = SafetensorsDType::F32;
  save_checkpoint(dir / "teacher", c, ParameterTable(c), testing::tiny_parameters(c), save);  // no tokenizer.json
  write_shard(dir / "train.bin", testing::tiny_tokens(600, c.vocab_size, 5));
  nlohmann::json recipe = {
      {"teacher", (dir / "teacher").string()}, {"device", "cpu"}, {"batch_size", 2}, {"sequence_length", 16},
      {"data", {{"train", (dir / "train.bin").string()}, {"validation", (dir / "train.bin").string()}}},
      {"students", {{{"name", "depth"}, {"num_layers", 2}}}},
      {"evaluation", {{"tasks", {{{"task", "arc_easy"}, {"task_file", (dir / "missing.jsonl").string()}}}}}}};
  auto run = [&] {
    std::ofstream(dir / "recipe.json") << recipe.dump(2);
    return minitron(dir, str("pipeline --config ", (dir / "recipe.json").string(), " --run-dir ", (dir / "run").string()));
  };
  CommandResult r = run();
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("missing.jsonl"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("== step"), std::string::npos) << r.out;

  recipe["evaluation"]["tasks"][0]["task_file"] = source("tests/eval/data/arc_easy.jsonl").string();
  r = run();
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("no tokenizer.json"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("== step"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace minitron
