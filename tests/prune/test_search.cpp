// The architecture search as a library call (prune/search.h): the ranking by zero-shot loss,
// the short distillation of the best candidates, the scratch space it leaves behind (none), and
// search.json. The command's flags and messages are tested in test_prune_cli.
#include <gtest/gtest.h>

#include <algorithm>

#include "data/dataloader.h"
#include "data/shards.h"
#include "prune/search.h"
#include "prune_test_util.h"

namespace minitron {
namespace {

TEST(ArchitectureSearch, RanksByZeroShotLossThenDistilsTheBest) {
  testing::TempDir dir;
  const ModelConfig config = testing::tiny_config();
  const LoadedCheckpoint teacher{config, ParameterTable(config), testing::tiny_parameters(config)};
  // Random scores hold block-removal losses for every block size, so every depth can be ranked.
  const ImportanceScores scores = random_scores(config, 3);
  write_shard(dir / "data.bin", testing::tiny_tokens(400, config.vocab_size, 5));
  const HeldOutWindows validation =
      read_windows(TokenWindows({dir / "data.bin"}, 16, config.vocab_size), 0, 2, "validation");
  auto backend = make_backend("cpu");

  ArchitectureSearchOptions options;
  options.target_parameters = parameter_count(config) * 7 / 10;
  options.max_candidates = 4;
  options.batch_size = 2;
  options.distillation_steps = 2;
  options.distilled_candidates = 2;
  options.train_shards = options.validation_shards = {dir / "data.bin"};
  options.teacher_directory = dir / "teacher";
  options.work_directory = dir / "work";
  const ArchitectureSearchResult result = search_architectures(teacher, scores, *backend, validation, options);

  const std::size_t fitting = enumerate_architectures(config, options.target_parameters, options.tolerance).size();
  EXPECT_EQ(result.fitting_architectures, fitting);
  ASSERT_EQ(result.ranked.size(), std::min<std::size_t>(4, fitting));
  ASSERT_GE(result.ranked.size(), 3u);
  const auto& ranked = result.ranked;
  // The two distilled first, by distilled loss; they were the two best by zero-shot loss.
  ASSERT_TRUE(ranked[0].distilled_loss && ranked[1].distilled_loss);
  EXPECT_LE(*ranked[0].distilled_loss, *ranked[1].distilled_loss);
  for (std::size_t i = 2; i < ranked.size(); ++i) {
    EXPECT_FALSE(ranked[i].distilled_loss) << i;
    EXPECT_GE(ranked[i].zero_shot_loss, std::max(ranked[0].zero_shot_loss, ranked[1].zero_shot_loss)) << i;
    if (i > 2) {
      EXPECT_GE(ranked[i].zero_shot_loss, ranked[i - 1].zero_shot_loss) << i;
    }
  }
  // Each zero-shot loss is that of the candidate's pruned weights (the same CPU sums: exact).
  for (const RankedArchitecture& c : ranked) {
    const PrunePlan plan = plan_pruning(config, scores, targets_of(c.architecture, options.layer_criterion));
    const std::vector<float> params = slice_parameters(config, teacher.table, teacher.params, plan);
    EXPECT_EQ(c.zero_shot_loss, zero_shot_loss(plan.config, params, *backend, validation, options.batch_size))
        << architecture_string(c.architecture);
  }
  // The candidates' runs are gone once they are ranked.
  EXPECT_FALSE(std::filesystem::exists(options.work_directory));

  const nlohmann::json json = search_to_json(result, options, validation);
  EXPECT_EQ(json.at("fitting_architectures"), fitting);
  EXPECT_EQ(json.at("search_steps"), 2);
  EXPECT_EQ(json.at("sequence_length"), 16);
  EXPECT_EQ(json.at("validation_windows"), 2);
  ASSERT_EQ(json.at("ranked").size(), ranked.size());
  EXPECT_EQ(json["ranked"][0].at("distilled_loss"), *ranked[0].distilled_loss);
  EXPECT_EQ(json["ranked"][0].at("parameters"), ranked[0].architecture.parameters);
  EXPECT_FALSE(json["ranked"][2].contains("distilled_loss"));
}

TEST(ArchitectureSearch, RefusesABudgetNotBelowTheTeacher) {
  const ModelConfig config = testing::tiny_config();
  const LoadedCheckpoint teacher{config, ParameterTable(config), testing::tiny_parameters(config)};
  auto backend = make_backend("cpu");
  ArchitectureSearchOptions options;
  options.target_parameters = parameter_count(config);
  try {
    search_architectures(teacher, random_scores(config, 3), *backend, HeldOutWindows{}, options);
    ADD_FAILURE() << "a budget of the teacher's own size was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--target-params"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("is not below the teacher's"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace minitron
