// The scores file refuses non-finite scores at save time: JSON has no NaN (nlohmann writes
// null), so a diverged calibration would otherwise leave a file that only fails, with a JSON
// type error, when prune reads it.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>

#include "prune/scores.h"
#include "prune_test_util.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;

// Saving must fail with a one-line error naming the site and layer, and write nothing.
void expect_refused(const ImportanceScores& s, const testing::TempDir& dir, const std::string& site) {
  const fs::path path = dir / "scores.json";
  try {
    save_scores(path, s);
    ADD_FAILURE() << "saved non-finite scores; expected an error naming " << site;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(site), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  EXPECT_FALSE(fs::exists(path));
}

TEST(ScoresFile, RefusesNonFiniteScoresNamingSiteAndLayer) {
  testing::TempDir dir;
  const ModelConfig config = testing::tiny_config();
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  {
    ImportanceScores s = random_scores(config, 1);
    s.width.mlp[2][5] = nan;
    expect_refused(s, dir, "mlp neuron 5 of layer 2");
  }
  {
    ImportanceScores s = random_scores(config, 1);
    s.width.heads[3][1] = inf;
    expect_refused(s, dir, "attention head 1 of layer 3");
  }
  {
    ImportanceScores s = random_scores(config, 1);
    s.width.head_channels.assign(4, std::vector<double>(64, 1.0));
    s.width.head_channels[1][9] = -inf;
    expect_refused(s, dir, "attention channel 9 (o_proj input) of layer 1");
  }
  {
    ImportanceScores s = random_scores(config, 1);
    s.width.hidden[7] = nan;
    expect_refused(s, dir, "hidden channel 7");
  }
  {
    ImportanceScores s = random_scores(config, 1);
    s.layers.block_removal_loss.at(2)[1] = nan;
    expect_refused(s, dir, "loss without layers 1-2");
  }
  {
    ImportanceScores s = random_scores(config, 1);
    s.layers.block_importance[0] = nan;
    expect_refused(s, dir, "block importance of layer 0");
  }
  // Finite scores still save and read back.
  const ImportanceScores s = random_scores(config, 1);
  save_scores(dir / "scores.json", s);
  EXPECT_EQ(load_scores(dir / "scores.json").width.mlp, s.width.mlp);
}

}  // namespace
}  // namespace minitron
