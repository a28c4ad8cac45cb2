// `minitron pipeline` end to end through the built binary on a tiny random teacher: every step
// runs, the report is written, a rerun skips every finished step without touching its outputs,
// and removing one step's done.json reruns exactly that step.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "data/shards.h"
#include "model/checkpoint.h"
#include "pipeline/recipe.h"
#include "pipeline/report.h"
#include "tests/prune/prune_test_util.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::minitron;
using testing::slurp;

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class Pipeline : public ::testing::Test {
 protected:
  void SetUp() override {
    ModelConfig c = testing::tiny_config();
    c.rms_norm_eps = 1e-5;
    SaveOptions save;
    save.dtype = SafetensorsDType::F32;
    save_checkpoint(dir_ / "teacher", c, ParameterTable(c), testing::tiny_parameters(c), save);
    write_shard(dir_ / "train.bin", testing::tiny_tokens(600, c.vocab_size, 5));
    write_shard(dir_ / "val.bin", testing::tiny_tokens(200, c.vocab_size, 9));
    recipe_ = {
        {"name", "tiny"},
        {"teacher", (dir_ / "teacher").string()},
        {"device", "cpu"},
        {"batch_size", 2},
        {"sequence_length", 16},
        {"data", {{"train", (dir_ / "train.bin").string()}, {"validation", (dir_ / "val.bin").string()}}},
        {"correction", {{"steps", 2}, {"warmup_steps", 0}, {"original_learning_rate", 1e-3}}},
        {"importance", {{"samples", 4}, {"layer_windows", 3}}},
        {"students",
         {{{"name", "width"}, {"hidden_size", 16}, {"intermediate_size", 24}}, {{"name", "depth"}, {"num_layers", 2}}}},
        {"distillation",
         {{"steps", 3},
          {"learning_rate", 1e-3},
          {"min_learning_rate", 1e-4},
          {"warmup_steps", 0},
          {"global_batch_size", 4}}},
        {"baseline", true},
        {"evaluation", {{"eval_windows", 4}}}};
  }
  CommandResult run(const nlohmann::json& recipe) {
    std::ofstream(dir_ / "recipe.json") << recipe.dump(2);
    return minitron(dir_,
                    str("pipeline --config ", (dir_ / "recipe.json").string(), " --run-dir ", (dir_ / "run").string()));
  }
  // The recipe as load_recipe reads it.
  Recipe load(const nlohmann::json& recipe) {
    std::ofstream(dir_ / "loaded.json") << recipe.dump();
    return load_recipe(dir_ / "loaded.json");
  }
  // The pipeline refuses the recipe (exit 1) with `message` among its errors.
  void expect_refused(const nlohmann::json& recipe, const std::string& message) {
    const CommandResult r = run(recipe);
    EXPECT_EQ(r.status, 1) << message;
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
  }
  testing::TempDir dir_;
  nlohmann::json recipe_;
};

TEST_F(Pipeline, RunsEveryStepThenSkipsThemOnRerun) {
  CommandResult first = run(recipe_);
  ASSERT_EQ(first.status, 0) << first.out << first.err;
  EXPECT_EQ(occurrences(first.out, "already done"), 0u);
  const fs::path run_dir = dir_ / "run";
  const nlohmann::json report = nlohmann::json::parse(slurp(run_dir / "report.json"));
  // teacher, corrected, and per student: pruned, distilled, baseline.
  ASSERT_EQ(report["models"].size(), 8u);
  for (const nlohmann::json& m : report["models"])
    EXPECT_TRUE(std::isfinite(m["validation_loss"].get<double>())) << m.dump();
  EXPECT_EQ(report["models"][0]["key"], "teacher");
  EXPECT_EQ(report["models"][4]["key"], "baseline-width");
  // Distilled and baseline models saw the same tokens: 3 steps x global batch 4 x 16, the global
  // batch passed on to distill and the baseline's train (2 micro-batches of 2 on one process).
  EXPECT_EQ(report["models"][3]["training_tokens"], 192);
  EXPECT_EQ(report["models"][4]["training_tokens"], 192);
  EXPECT_EQ(occurrences(first.out, "--global-batch-size 4"), 4u) << first.out;  // 2 students x (distill, baseline)
  EXPECT_EQ(occurrences(first.out, "--grad-accumulation 1"), 1u) << first.out;  // correction's default
  EXPECT_EQ(report["findings"].size(), 5u);  // correction, and two claims per student
  EXPECT_EQ(slurp(run_dir / "loss_curves.svg").rfind("<svg", 0), 0u);
  EXPECT_NE(slurp(run_dir / "report.md").find("| model |"), std::string::npos);
  const ModelConfig depth = load_model_config(run_dir / "03-prune-depth" / "model");
  EXPECT_EQ(depth.num_hidden_layers, 2);
  const ModelConfig width = load_model_config(run_dir / "03-prune-width" / "model");
  EXPECT_EQ(width.hidden_size, 16);
  EXPECT_EQ(width.intermediate_size, 24);

  const fs::path weights = run_dir / "04-distill-width" / "model" / "model.safetensors";
  ASSERT_TRUE(fs::exists(weights));
  const auto stamp = fs::last_write_time(weights);
  const std::string results = slurp(run_dir / "06-evaluate" / "results.json");

  CommandResult second = run(recipe_);
  ASSERT_EQ(second.status, 0) << second.out << second.err;
  // correct, importance, 2 x (prune, distill, baseline), evaluate.
  EXPECT_EQ(occurrences(second.out, "already done"), 9u) << second.out;
  EXPECT_EQ(fs::last_write_time(weights), stamp);
  EXPECT_EQ(slurp(run_dir / "06-evaluate" / "results.json"), results);

  // An unfinished step (no done.json) is run again, and only it.
  fs::remove(run_dir / "05-baseline-depth" / "done.json");
  CommandResult third = run(recipe_);
  ASSERT_EQ(third.status, 0) << third.out << third.err;
  EXPECT_EQ(occurrences(third.out, "already done"), 8u) << third.out;
  EXPECT_NE(third.out.find("== step baseline-depth\n"), std::string::npos) << third.out;
}

TEST_F(Pipeline, RefusesUnknownRecipeKeys) {
  nlohmann::json recipe = recipe_;
  recipe["distillation"]["learning_rte"] = 1e-3;
  expect_refused(recipe, "distillation.learning_rte: unknown key");
}

// A recompute mode is read per training step and refused, naming its key, when it is no mode.
TEST_F(Pipeline, ReadsAndRefusesRecomputeModes) {
  nlohmann::json recipe = recipe_;
  recipe["distillation"]["recompute"] = "selective";
  const Recipe loaded = load(recipe);
  EXPECT_EQ(loaded.distillation.recompute, "selective");
  EXPECT_EQ(loaded.correction.recompute, "none");
  recipe["correction"]["recompute"] = "partial";
  expect_refused(recipe, "correction.recompute: 'partial' (expected none, selective or full)");
}

// A ZeRO stage likewise: 1 or 2, absent (0: the default, 2 on several ranks) or refused.
TEST_F(Pipeline, ReadsAndRefusesZeroStages) {
  nlohmann::json recipe = recipe_;
  recipe["distillation"]["zero_stage"] = 2;
  const Recipe loaded = load(recipe);
  EXPECT_EQ(loaded.distillation.zero_stage, 2);
  EXPECT_EQ(loaded.correction.zero_stage, 0);
  recipe["correction"]["zero_stage"] = 3;
  expect_refused(recipe, "correction.zero_stage: 3 (expected 1 or 2 (or no zero_stage: 2 with several ranks))");
}

// global_batch_size: sequences per step over all ranks, exclusive with grad_accumulation and a
// multiple of the step's batch_size (whatever the ranks, a micro-batch holds batch_size sequences).
TEST_F(Pipeline, ReadsAndRefusesGlobalBatchSizes) {
  nlohmann::json recipe = recipe_;
  recipe["correction"]["global_batch_size"] = 6;
  const Recipe loaded = load(recipe);
  EXPECT_EQ(loaded.correction.global_batch_size, 6);
  EXPECT_EQ(loaded.distillation.global_batch_size, 4);

  recipe["correction"]["grad_accumulation"] = 3;
  expect_refused(recipe, "correction: both global_batch_size and grad_accumulation given");
  recipe["correction"].erase("grad_accumulation");
  recipe["correction"]["global_batch_size"] = 5;
  expect_refused(recipe, "correction.global_batch_size: 5 (expected a multiple of its batch_size 2)");
  recipe["correction"]["global_batch_size"] = 0;
  expect_refused(recipe, "correction.global_batch_size: 0 (expected at least 1)");
}

TEST_F(Pipeline, DistillRefusesAVocabularyMismatch) {
  ModelConfig other = testing::tiny_config();
  other.vocab_size = 60;
  SaveOptions save;
  save.dtype = SafetensorsDType::F32;
  save_checkpoint(dir_ / "student", other, ParameterTable(other), testing::tiny_parameters(other), save);
  const std::string common = str(" --data ", (dir_ / "train.bin").string(), " --output ", (dir_ / "out").string(),
                                 " --device cpu --batch-size 2 --sequence-length 16 --steps 1");
  CommandResult r = minitron(
      dir_, str("distill --teacher ", (dir_ / "teacher").string(), " --student ", (dir_ / "student").string(), common));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("vocab_size 50"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("sharing one tokenizer"), std::string::npos) << r.err;

  // Same vocabulary size, different tokenizer.json files.
  save_checkpoint(dir_ / "student2", testing::tiny_config(), ParameterTable(testing::tiny_config()),
                  testing::tiny_parameters(testing::tiny_config()), save);
  std::ofstream(dir_ / "teacher" / "tokenizer.json") << R"({"model": {"type": "BPE", "vocab": {"a": 0}}})";
  std::ofstream(dir_ / "student2" / "tokenizer.json") << R"({"model": {"type": "BPE", "vocab": {"b": 0}}})";
  r = minitron(dir_, str("distill --teacher ", (dir_ / "teacher").string(), " --student ", (dir_ / "student2").string(),
                         common));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("tokenizer.json files"), std::string::npos) << r.err;
}

TEST(LossCurves, SvgHasOnePolylinePerSeries) {
  const std::string svg = loss_curves_svg({{"a <b>", {{0, 3.0}, {10, 2.0}}}, {"c", {{0, 3.5}, {10, 2.5}}}}, "t");
  EXPECT_EQ(occurrences(svg, "<polyline"), 2u);
  EXPECT_NE(svg.find("a &lt;b&gt;"), std::string::npos);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
}

// The shipped recipes parse, and their distillation runs match the published settings: tokens
// = steps x global_batch_size x sequence_length, the global batch being the paper's on any number
// of GPUs (grad_accumulation would multiply it by the ranks).
TEST(ShippedRecipes, DistillationMatchesThePublishedSettings) {
  const fs::path dir = fs::path(MINITRON_SOURCE_DIR) / "recipes";
  auto tokens = [](const Recipe& r) {
    const RecipeTraining& d = r.distillation;
    return static_cast<double>(d.steps) * static_cast<double>(d.global_batch_size) *
           static_cast<double>(r.sequence_length);
  };
  for (const char* name : {"llama-3.1-minitron-4b-width.json", "llama-3.1-minitron-4b-depth.json"}) {
    SCOPED_TRACE(name);
    const Recipe r = load_recipe(dir / name);
    // arXiv 2408.11796: peak 1e-4, min 1e-5, 40 warm-up steps, global batch 1152, 94B tokens.
    EXPECT_EQ(r.distillation.learning_rate, 1e-4);
    EXPECT_EQ(r.distillation.min_learning_rate, 1e-5);
    EXPECT_EQ(r.distillation.warmup_steps, 40);
    EXPECT_EQ(r.distillation.global_batch_size, 1152);
    EXPECT_NEAR(tokens(r), 94e9, 0.001 * 94e9);  // whole steps: 9960 x 1152 x 8192 is 93.99e9
  }
  const Recipe mn = load_recipe(dir / "mn-minitron-8b.json");
  // NVIDIA's Mistral-NeMo-Minitron-8B release: peak 1e-4, min 4.5e-7, 60 warm-up steps,
  // global batch 768, 380B tokens; teacher correction ~0.1T tokens.
  EXPECT_EQ(mn.distillation.learning_rate, 1e-4);
  EXPECT_EQ(mn.distillation.min_learning_rate, 4.5e-7);
  EXPECT_EQ(mn.distillation.warmup_steps, 60);
  EXPECT_EQ(mn.distillation.global_batch_size, 768);
  EXPECT_NEAR(tokens(mn), 380e9, 0.001 * 380e9);  // whole steps: 60400 x 768 x 8192 is 380.007e9
  const RecipeTraining& c = mn.correction;
  EXPECT_EQ(c.global_batch_size, 1152);
  EXPECT_NEAR(static_cast<double>(c.steps * c.global_batch_size * mn.sequence_length), 0.1e12,
              0.001 * 0.1e12);  // whole steps: 10600 x 1152 x 8192 is 100.03e9
  EXPECT_NO_THROW(load_recipe(dir / "demo.json"));
}

}  // namespace
}  // namespace minitron
