// `minitron pipeline` with evaluation tasks in the recipe: report.json carries every model's
// task accuracies, and they equal `minitron eval --task` run on the same checkpoints; the
// importance.task, layer_criterion and fewshot_file keys reach the steps they configure. A tiny
// random teacher with the evaluation tests' 67-id character tokenizer, through the built binary.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <utility>

#include <nlohmann/json.hpp>

#include "data/shards.h"
#include "model/checkpoint.h"
#include "tests/eval/suite_task_files.h"
#include "tests/prune/prune_test_util.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::minitron;
using testing::slurp;

fs::path source(const std::string& rel) { return fs::path(MINITRON_SOURCE_DIR) / rel; }

// A tiny teacher (with the eval tokenizer, which travels with every model the pipeline derives
// from it) and train/val shards in dir.
ModelConfig write_teacher_and_shards(const fs::path& dir, std::uint64_t seed) {
  ModelConfig c = testing::tiny_config();
  c.vocab_size = 67;  // the tokenizer's
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 128;
  SaveOptions save;
  save.dtype = SafetensorsDType::F32;
  save_checkpoint(dir / "teacher", c, ParameterTable(c), testing::tiny_parameters(c, seed), save);
  fs::copy_file(source("tests/eval/data/tokenizer.json"), dir / "teacher" / "tokenizer.json");
  write_shard(dir / "train.bin", testing::tiny_tokens(600, c.vocab_size, 5));
  write_shard(dir / "val.bin", testing::tiny_tokens(200, c.vocab_size, 9));
  return c;
}

// A recipe over write_teacher_and_shards' teacher and shards: no correction, one depth-pruned
// student of 2 layers, `distill_steps` of distillation, and the given evaluation section.
nlohmann::json tiny_recipe(const testing::TempDir& dir, const std::string& name, int distill_steps,
                           nlohmann::json evaluation) {
  return {{"name", name},
          {"teacher", (dir / "teacher").string()},
          {"device", "cpu"},
          {"batch_size", 2},
          {"sequence_length", 16},
          {"data", {{"train", (dir / "train.bin").string()}, {"validation", (dir / "val.bin").string()}}},
          {"correction", {{"enabled", false}}},
          {"importance", {{"samples", 4}, {"layer_windows", 2}}},
          {"students", {{{"name", "depth"}, {"num_layers", 2}}}},
          {"distillation",
           {{"steps", distill_steps}, {"learning_rate", 1e-3}, {"min_learning_rate", 1e-4}, {"warmup_steps", 0}}},
          {"evaluation", std::move(evaluation)}};
}

TEST(PipelineTasks, ReportCarriesTheTaskAccuraciesOfEveryModel) {
  testing::TempDir dir;
  const ModelConfig c = write_teacher_and_shards(dir.path(), 13);
  {
    std::ofstream task(dir / "task.jsonl");
    task << R"({"context": "The cat sat on the", "choices": ["mat", "sky", "sea"], "label": 0})"
         << "\n"
         << R"({"context": "Fish swim in the", "choices": ["tree", "water", "fire"], "label": 1})"
         << "\n"
         << R"({"context": "At night the sky is", "choices": ["green", "dark", "salty"], "label": 1})"
         << "\n"
         << R"({"context": "We eat with a", "choices": ["cloud", "song", "spoon"], "label": 2})"
         << "\n";
  }
  const std::string arc = source("tests/eval/data/arc_easy.jsonl").string();
  const nlohmann::json recipe =
      tiny_recipe(dir, "tiny-tasks", 2,
                  {{"eval_windows", 2},
                   {"tasks",
                    {{{"task", "multiple_choice"}, {"task_file", (dir / "task.jsonl").string()}},
                     {{"task", "arc_easy"}, {"task_file", arc}, {"shots", 1}}}}});
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
      const CommandResult e =
          minitron(dir, str("eval --model ", m["dir"].get<std::string>(), " ", run.flags, " --device cpu --json"));
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

// The recipe keys that carry a task into the other steps: importance.task (blocks ranked by its
// accuracy), students[].layer_criterion "task" (prune drops the block it ranks best) and
// evaluation.tasks[].fewshot_file (the evaluation's few-shot pool).
TEST(PipelineTasks, TaskKeysReachImportancePruneAndEvaluation) {
  testing::TempDir dir;
  const ModelConfig c = write_teacher_and_shards(dir.path(), 18);
  {
    std::ofstream task(dir / "task.jsonl");
    task << R"({"context": "The cat sat on the", "choices": ["mat", "sky", "sea"], "label": 0})"
         << "\n"
         << R"({"context": "Snow is", "choices": ["white", "loud", "late"], "label": 0})"
         << "\n"
         << R"({"context": "Fish swim in the", "choices": ["tree", "water", "fire"], "label": 1})"
         << "\n"
         << R"({"context": "Birds can", "choices": ["fly", "read", "melt"], "label": 0})"
         << "\n"
         << R"({"context": "At night the sky is", "choices": ["green", "dark", "salty"], "label": 1})"
         << "\n"
         << R"({"context": "We eat with a", "choices": ["cloud", "song", "spoon"], "label": 2})"
         << "\n";
    // A few-shot pool in arc's layout, distinct from the arc questions themselves.
    std::ofstream pool(dir / "arc_pool.jsonl");
    pool
        << R"({"id": "pool-1", "question": "Which of these is hot?", "choices": {"text": ["fire", "snow"], "label": ["A", "B"]}, "answerKey": "A"})"
        << "\n"
        << R"({"id": "pool-2", "question": "What do cows eat?", "choices": {"text": ["rocks", "grass", "glass"], "label": ["A", "B", "C"]}, "answerKey": "B"})"
        << "\n";
  }
  const std::string task_file = (dir / "task.jsonl").string(), arc = source("tests/eval/data/arc_easy.jsonl").string();
  const std::string pool = (dir / "arc_pool.jsonl").string();
  // The evaluation repeats the importance task exactly (file, shots, limit), so the pruned
  // model's evaluated accuracy must be the one importance recorded for the dropped block.
  const nlohmann::json mc = {{"task", "multiple_choice"}, {"task_file", task_file}, {"shots", 1}, {"limit", 5}};
  nlohmann::json recipe =
      tiny_recipe(dir, "tiny-task-keys", 2,
                  {{"eval_windows", 2},
                   {"tasks", {mc, {{"task", "arc_easy"}, {"task_file", arc}, {"shots", 1}, {"fewshot_file", pool}}}}});
  recipe["importance"]["task"] = mc;
  recipe["students"][0]["layer_criterion"] = "task";
  auto run = [&] {
    fs::remove_all(dir / "run");
    std::ofstream(dir / "recipe.json") << recipe.dump(2);
    return minitron(dir,
                    str("pipeline --config ", (dir / "recipe.json").string(), " --run-dir ", (dir / "run").string()));
  };
  CommandResult r = run();
  ASSERT_EQ(r.status, 0) << r.out << r.err;

  // importance.task reached `minitron importance`.
  const nlohmann::json scores = nlohmann::json::parse(slurp(dir / "run" / "02-importance" / "scores.json"));
  const nlohmann::json& provenance = scores["provenance"]["layer_ranking_task"];
  EXPECT_EQ(provenance["task"], "multiple_choice");
  EXPECT_EQ(provenance["task_file"], task_file);
  EXPECT_EQ(provenance["shots"], 1);
  EXPECT_EQ(provenance["limit"], 5);
  std::vector<double> accuracy, loss;
  for (const nlohmann::json& block : scores["layers"]["block_removal_loss"])
    if (block["block_size"] == 2) {
      accuracy = block["task_score"].get<std::vector<double>>();
      loss = block["loss"].get<std::vector<double>>();
    }
  ASSERT_EQ(accuracy.size(), 3u) << scores["layers"].dump();
  ASSERT_EQ(loss.size(), 3u);
  // The best block by the documented order: accuracy descending, loss ascending, earliest.
  std::size_t want = 0;
  for (std::size_t b = 1; b < accuracy.size(); ++b)
    if (std::pair(-accuracy[b], loss[b]) < std::pair(-accuracy[want], loss[want])) want = b;
  std::printf("blocks of 2: accuracy %s, loss %s\n", nlohmann::json(accuracy).dump().c_str(),
              nlohmann::json(loss).dump().c_str());
  // Seed 18 gives a teacher whose best block by loss is another one, so the prune step's choice
  // shows that layer_criterion reached it (the default, loss, would pick differently).
  ASSERT_NE(want, static_cast<std::size_t>(std::min_element(loss.begin(), loss.end()) - loss.begin()));

  // layer_criterion reached `minitron prune`.
  const nlohmann::json plan = nlohmann::json::parse(slurp(dir / "run" / "03-prune-depth" / "model" / "pruning.json"));
  EXPECT_EQ(plan["dropped_layers"], nlohmann::json::array({want, want + 1})) << plan.dump();
  EXPECT_EQ(plan["layer_criterion"], "task");

  const nlohmann::json report = nlohmann::json::parse(slurp(dir / "run" / "report.json"));
  ASSERT_EQ(report["models"].size(), 3u);  // teacher, pruned, distilled
  const nlohmann::json* pruned = nullptr;
  for (const nlohmann::json& m : report["models"])
    if (m["key"] == "pruned-depth") pruned = &m;
  ASSERT_NE(pruned, nullptr) << report.dump();
  EXPECT_NE((*pruned)["label"].get<std::string>().find("layers by task"), std::string::npos) << (*pruned)["label"];
  // Exact: the same questions and prompts on the same weights without the block (importance
  // skips it, the pruned checkpoint lacks it; test_importance_task shows these agree).
  EXPECT_EQ((*pruned)["tasks"]["multiple_choice/acc"].get<double>(), accuracy[want]);

  // fewshot_file reached the evaluation: every model's arc scores equal `eval --fewshot-file`,
  // and the pool visibly matters (the teacher scores differently with the default pool).
  auto arc_scores = [&](const std::string& model_dir, const std::string& extra) {
    const CommandResult e = minitron(dir, str("eval --model ", model_dir, " --task arc_easy --task-file ", arc,
                                              " --shots 1", extra, " --device cpu --json"));
    EXPECT_EQ(e.status, 0) << e.err;
    std::map<std::string, double> out;
    const nlohmann::json parsed = nlohmann::json::parse(e.out);  // outlives the loop over its rows
    for (const nlohmann::json& row : parsed["results"])
      out[row["task"].get<std::string>() + "/" + row["metric"].get<std::string>()] = row["value"].get<double>();
    return out;
  };
  for (const nlohmann::json& m : report["models"]) {
    SCOPED_TRACE(m["key"].get<std::string>());
    const auto want_scores = arc_scores(m["dir"].get<std::string>(), " --fewshot-file " + pool);
    ASSERT_EQ(want_scores.size(), 2u);
    // The same code on the same weights and the same model shape: bit-identical scores.
    for (const auto& [key, value] : want_scores) EXPECT_EQ(m["tasks"][key].get<double>(), value) << key;
    if (m["key"] == "teacher") {
      EXPECT_NE(arc_scores(m["dir"].get<std::string>(), ""), want_scores);
    }
  }

  // Bad values of the new keys are refused before any step.
  recipe["evaluation"]["tasks"][1]["fewshot_file"] = (dir / "no_pool.jsonl").string();
  r = run();
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("no_pool.jsonl"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("== step"), std::string::npos) << r.out;
  recipe["evaluation"]["tasks"][1]["fewshot_file"] = pool;
  recipe["students"][0]["layer_criterion"] = "accuracy";
  r = run();
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("students[0].layer_criterion: 'accuracy' (expected loss, block-importance or task)"),
            std::string::npos)
      << r.err;
  recipe["students"][0]["layer_criterion"] = "task";
  recipe["importance"].erase("task");
  r = run();
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("students[0].layer_criterion: task, but the recipe has no importance.task"), std::string::npos)
      << r.err;
  recipe["importance"]["task"] = {{"task", "multiple_choice"}, {"task_file", task_file}, {"shot", 1}};
  r = run();
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("importance.task.shot: unknown key"), std::string::npos) << r.err;
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
      {"teacher", (dir / "teacher").string()},
      {"device", "cpu"},
      {"batch_size", 2},
      {"sequence_length", 16},
      {"data", {{"train", (dir / "train.bin").string()}, {"validation", (dir / "train.bin").string()}}},
      {"students", {{{"name", "depth"}, {"num_layers", 2}}}},
      {"evaluation", {{"tasks", {{{"task", "arc_easy"}, {"task_file", (dir / "missing.jsonl").string()}}}}}}};
  auto run = [&] {
    std::ofstream(dir / "recipe.json") << recipe.dump(2);
    return minitron(dir,
                    str("pipeline --config ", (dir / "recipe.json").string(), " --run-dir ", (dir / "run").string()));
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

// evaluation.suite: every model runs the paper's suite; report.md gets its table (one row a
// model) and each model's cells are the numbers `minitron eval --suite` gives on its checkpoint.
TEST(PipelineTasks, SuiteTableInTheReportEqualsEvalSuite) {
  testing::TempDir dir;
  write_teacher_and_shards(dir.path(), 17);
  const fs::path tasks = dir / "tasks";
  test::write_suite_task_files(tasks, MINITRON_SOURCE_DIR);

  const nlohmann::json recipe = tiny_recipe(
      dir, "tiny-suite", 1,
      {{"eval_windows", 1},
       {"suite", {{"name", "minitron-base"}, {"task_dir", tasks.string()}, {"limit", 1}, {"max_gen_toks", 8}}}});
  std::ofstream(dir / "recipe.json") << recipe.dump(2);
  const CommandResult r =
      minitron(dir, str("pipeline --config ", (dir / "recipe.json").string(), " --run-dir ", (dir / "run").string()));
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  const std::string report_md = slurp(dir / "run" / "report.md");
  EXPECT_NE(report_md.find("## minitron-base (lm-evaluation-harness scores, %)\n\n| Model | Winogrande (5) | ARC "
                           "Challenge (25) | MMLU (5) | HellaSwag (10) | GSM8K (5) | TruthfulQA (0) |"),
            std::string::npos)
      << report_md;
  const nlohmann::json report = nlohmann::json::parse(slurp(dir / "run" / "report.json"));
  ASSERT_EQ(report["models"].size(), 3u);
  for (const nlohmann::json& m : report["models"]) {
    SCOPED_TRACE(m["key"].get<std::string>());
    const CommandResult e =
        minitron(dir, str("eval --model ", m["dir"].get<std::string>(), " --suite minitron-base", " --task-dir ",
                          tasks.string(), " --limit 1 --max-gen-toks 8", " --device cpu --json"));
    ASSERT_EQ(e.status, 0) << e.err;
    const nlohmann::json harness = nlohmann::json::parse(e.out);
    const nlohmann::json& cells = m["suite"]["cells"];
    ASSERT_EQ(cells.size(), 6u);
    const std::vector<std::pair<std::string, std::string>> where = {
        {"winogrande", "acc,none"},     {"arc_challenge", "acc_norm,none"},    {"mmlu", "acc,none"},
        {"hellaswag", "acc_norm,none"}, {"gsm8k", "exact_match,strict-match"}, {"truthfulqa_mc2", "acc,none"}};
    for (std::size_t i = 0; i < where.size(); ++i)  // the same code and weights: bit-identical
      EXPECT_EQ(cells[i]["value"].get<double>(), harness["results"][where[i].first][where[i].second].get<double>())
          << where[i].first;
  }
}

}  // namespace
}  // namespace minitron
