// Width and depth slicing. The proof that every tensor is sliced along the right axis: build a
// teacher whose to-be-pruned channels contribute exactly nothing (zeroed weights), give those
// channels the lowest scores, prune, and compare logits with the teacher's.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "model/checkpoint.h"
#include "prune/scores.h"
#include "prune/search.h"
#include "prune/slicing.h"
#include "prune_test_util.h"

namespace minitron {
namespace {

using testing::forward_logits;
using testing::max_abs;
using testing::max_abs_diff;
using testing::tiny_config;
using testing::tiny_parameters;
using testing::tiny_tokens;

constexpr std::int64_t kB = 2, kT = 6;

// Pruned channels contribute exact zeros, so the pruned model computes the same sums minus
// zero terms; only the summation order/blocking of the shorter matmuls differs: a few fp32
// ulps of the logits (~1e-7 relative), 1e-5 of the largest logit leaves ample margin.
constexpr double kLogitRtol = 1e-5;

// Scores of 1 + (small distinct values) everywhere, 0 on the listed channels.
ImportanceScores scores_with_zeros(const ModelConfig& c) {
  ImportanceScores s = empty_scores(c);
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    std::vector<double> mlp, heads;
    for (std::int64_t j = 0; j < c.intermediate_size; ++j)
      mlp.push_back(1.0 + 0.001 * static_cast<double>((j * 7 + l) % 13));
    for (std::int64_t h = 0; h < c.num_attention_heads; ++h)
      heads.push_back(1.0 + 0.001 * static_cast<double>((h * 5 + l) % 7));
    s.width.mlp.push_back(mlp);
    s.width.heads.push_back(heads);
  }
  for (std::int64_t d = 0; d < c.hidden_size; ++d)
    s.width.hidden.push_back(1.0 + 0.001 * static_cast<double>((d * 3) % 17));
  return s;
}

float* tensor(std::vector<float>& params, const ParameterTable& t, const std::string& name) {
  return params.data() + t.at(name).offset;
}

void compare_logits(const ModelConfig& teacher_config, const std::vector<float>& teacher_params, const PrunePlan& plan,
                    const std::vector<float>& pruned_params) {
  const auto tokens = tiny_tokens(kB * kT, teacher_config.vocab_size);
  const auto want = forward_logits(teacher_config, teacher_params, tokens, kB, kT);
  const auto got = forward_logits(plan.config, pruned_params, tokens, kB, kT);
  EXPECT_LE(max_abs_diff(got, want), kLogitRtol * max_abs(want));
}

TEST(Slicing, FfnNeuronsWithZeroContributionChangeNothing) {
  const ModelConfig c = tiny_config();
  const ParameterTable t(c);
  std::vector<float> params = tiny_parameters(c);
  ImportanceScores s = scores_with_zeros(c);
  // Per layer a different set of 16 of 48 neurons: down_proj's column j zero -> neuron j adds 0.
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    float* down = tensor(params, t, str("model.layers.", l, ".mlp.down_proj.weight"));  // [D, F]
    for (std::int64_t j = l % 3; j < c.intermediate_size; j += 3) {
      s.width.mlp[static_cast<std::size_t>(l)][static_cast<std::size_t>(j)] = 0.0;
      for (std::int64_t d = 0; d < c.hidden_size; ++d) down[d * c.intermediate_size + j] = 0.0f;
    }
  }
  PruneTargets targets;
  targets.intermediate_size = 32;
  const PrunePlan plan = plan_pruning(c, s, targets);
  EXPECT_EQ(plan.config.intermediate_size, 32);
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (std::int64_t j : plan.ffn[static_cast<std::size_t>(l)]) EXPECT_NE(j % 3, l % 3) << "layer " << l;
  compare_logits(c, params, plan, slice_parameters(c, t, params, plan));
}

TEST(Slicing, HeadsWithZeroContributionChangeNothing) {
  const ModelConfig c = tiny_config();  // 8 query heads, 2 KV groups of 4
  const ParameterTable t(c);
  std::vector<float> params = tiny_parameters(c);
  ImportanceScores s = scores_with_zeros(c);
  // In each group, one head (a different one per layer and group) writes nothing: o_proj's
  // columns of that head are zero.
  std::vector<std::set<std::int64_t>> pruned(static_cast<std::size_t>(c.num_hidden_layers));
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    float* o = tensor(params, t, str("model.layers.", l, ".self_attn.o_proj.weight"));  // [D, Hq*hd]
    for (std::int64_t g = 0; g < 2; ++g) {
      const std::int64_t h = g * 4 + (l + g) % 4;
      pruned[static_cast<std::size_t>(l)].insert(h);
      s.width.heads[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)] = 0.0;
      for (std::int64_t d = 0; d < c.hidden_size; ++d)
        for (std::int64_t i = 0; i < c.head_dim; ++i) o[d * c.q_dim() + h * c.head_dim + i] = 0.0f;
    }
  }
  // A high-scoring head that must survive even though a whole group would score higher: heads
  // are ranked inside their group, the same number per group.
  s.width.heads[0][1] = 50.0;
  PruneTargets targets;
  targets.num_attention_heads = 6;
  const PrunePlan plan = plan_pruning(c, s, targets);
  EXPECT_EQ(plan.config.num_attention_heads, 6);
  EXPECT_EQ(plan.config.num_key_value_heads, 2);
  EXPECT_EQ(plan.config.head_dim, 8);
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto& kept = plan.query_heads[static_cast<std::size_t>(l)];
    ASSERT_EQ(kept.size(), 6u);
    EXPECT_EQ(std::count_if(kept.begin(), kept.end(), [](std::int64_t h) { return h < 4; }), 3) << "3 per group";
    for (std::int64_t h : kept)
      EXPECT_FALSE(pruned[static_cast<std::size_t>(l)].count(h)) << "layer " << l << " head " << h;
  }
  compare_logits(c, params, plan, slice_parameters(c, t, params, plan));
}

TEST(Slicing, WholeKvGroupsGoWhenFewerKvHeadsAreAsked) {
  const ModelConfig c = tiny_config();
  const ParameterTable t(c);
  std::vector<float> params = tiny_parameters(c);
  ImportanceScores s = scores_with_zeros(c);
  // Group (l % 2) of each layer writes nothing and scores lowest in sum, though one of its
  // heads scores highest alone: groups are ranked by the sum of their heads.
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::int64_t g = l % 2;
    float* o = tensor(params, t, str("model.layers.", l, ".self_attn.o_proj.weight"));
    for (std::int64_t h = g * 4; h < g * 4 + 4; ++h) {
      s.width.heads[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)] = h == g * 4 ? 2.5 : 0.0;
      for (std::int64_t d = 0; d < c.hidden_size; ++d)
        for (std::int64_t i = 0; i < c.head_dim; ++i) o[d * c.q_dim() + h * c.head_dim + i] = 0.0f;
    }
  }
  PruneTargets targets;
  targets.num_key_value_heads = 1;  // query heads follow: 4 per group as before
  const PrunePlan plan = plan_pruning(c, s, targets);
  EXPECT_EQ(plan.config.num_key_value_heads, 1);
  EXPECT_EQ(plan.config.num_attention_heads, 4);
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l)
    EXPECT_EQ(plan.kv_heads[static_cast<std::size_t>(l)], std::vector<std::int64_t>{1 - l % 2});
  compare_logits(c, params, plan, slice_parameters(c, t, params, plan));
}

// Hidden channels: with embedding columns and every o_proj/down_proj output row of a channel
// zero, that channel of the residual stream is 0 everywhere. RMSNorm then still divides by the
// mean square over all D channels, the pruned model by the mean over D' channels:
// x * w / sqrt(sum/D + eps) == x * (w * sqrt(D/D')) / sqrt(sum/D' + eps * D/D'), so scaling the
// pruned norm weights by sqrt(D/D') reproduces the teacher up to the epsilon term, which the
// tiny config's eps = 1e-12 makes negligible against mean squares of order 0.1-1. (The issue
// text says sqrt(D'/D); the pruned mean square is the larger one, so its weights must grow.)
void scale_norms(const ModelConfig& pc, std::vector<float>& params, double factor) {
  const ParameterTable t(pc);
  for (const ParamInfo& p : t.entries())
    if (p.kind == ParamKind::Norm)
      for (std::int64_t i = 0; i < p.numel; ++i)
        params[static_cast<std::size_t>(p.offset + i)] *= static_cast<float>(factor);
}

std::vector<std::int64_t> zero_hidden_channels(const ModelConfig& c, std::vector<float>& params, ImportanceScores& s) {
  const ParameterTable t(c);
  std::vector<std::int64_t> gone{1, 6, 9, 14, 20, 23, 27, 31};
  for (std::int64_t ch : gone) {
    s.width.hidden[static_cast<std::size_t>(ch)] = 0.0;
    float* embed = params.data() + t.embed_tokens();
    for (std::int64_t v = 0; v < c.vocab_size; ++v) embed[v * c.hidden_size + ch] = 0.0f;
    for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
      float* o = params.data() + t.layer(l).o_proj;        // [D, q_dim]: row ch
      float* down = params.data() + t.layer(l).down_proj;  // [D, F]: row ch
      for (std::int64_t i = 0; i < c.q_dim(); ++i) o[ch * c.q_dim() + i] = 0.0f;
      for (std::int64_t i = 0; i < c.intermediate_size; ++i) down[ch * c.intermediate_size + i] = 0.0f;
    }
  }
  return gone;
}

class HiddenSlicing : public ::testing::TestWithParam<bool> {};

TEST_P(HiddenSlicing, ZeroChannelsMatchAfterNormRescaling) {
  const ModelConfig c = tiny_config(/*tied=*/GetParam());
  const ParameterTable t(c);
  std::vector<float> params = tiny_parameters(c);
  ImportanceScores s = scores_with_zeros(c);
  const auto gone = zero_hidden_channels(c, params, s);
  PruneTargets targets;
  targets.hidden_size = 24;
  const PrunePlan plan = plan_pruning(c, s, targets);
  for (std::int64_t ch : plan.hidden) EXPECT_EQ(std::count(gone.begin(), gone.end(), ch), 0);
  std::vector<float> pruned = slice_parameters(c, t, params, plan);
  EXPECT_EQ(static_cast<std::int64_t>(pruned.size()), ParameterTable(plan.config).total_numel());
  scale_norms(plan.config, pruned, std::sqrt(32.0 / 24.0));
  compare_logits(c, params, plan, pruned);
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, HiddenSlicing, ::testing::Bool());

TEST(Slicing, DroppingLayersWithoutResidualContributionChangesNothing) {
  const ModelConfig c = tiny_config();
  const ParameterTable t(c);
  std::vector<float> params = tiny_parameters(c);
  // Layers 1 and 2 add nothing to the residual stream: o_proj and down_proj are zero.
  for (std::int64_t l : {1, 2}) {
    std::fill_n(params.data() + t.layer(l).o_proj, c.hidden_size * c.q_dim(), 0.0f);
    std::fill_n(params.data() + t.layer(l).down_proj, c.hidden_size * c.intermediate_size, 0.0f);
  }
  ImportanceScores s = empty_scores(c);
  s.layers.block_removal_loss[2] = {3.0, 2.0, 3.5};  // block 1-2 hurts least
  PruneTargets by_count;
  by_count.num_layers = 2;
  const PrunePlan plan = plan_pruning(c, s, by_count);
  ASSERT_TRUE(plan.dropped_block);
  EXPECT_EQ(*plan.dropped_block, (std::pair<std::int64_t, std::int64_t>(1, 2)));
  EXPECT_EQ(plan.layers, (std::vector<std::int64_t>{0, 3}));
  compare_logits(c, params, plan, slice_parameters(c, t, params, plan));

  PruneTargets explicit_block;
  explicit_block.drop_layers = parse_layer_range("1-2");
  const PrunePlan same = plan_pruning(c, empty_scores(c), explicit_block);
  EXPECT_EQ(same.layers, plan.layers);
  EXPECT_EQ(slice_parameters(c, t, params, same), slice_parameters(c, t, params, plan));
}

TEST(Slicing, WidthAndDepthCombine) {
  const ModelConfig c = tiny_config();
  const ParameterTable t(c);
  std::vector<float> params = tiny_parameters(c);
  ImportanceScores s = scores_with_zeros(c);
  zero_hidden_channels(c, params, s);
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    float* down = params.data() + t.layer(l).down_proj;
    for (std::int64_t j = 0; j < c.intermediate_size; j += 2) {
      s.width.mlp[static_cast<std::size_t>(l)][static_cast<std::size_t>(j)] = 0.0;
      for (std::int64_t d = 0; d < c.hidden_size; ++d) down[d * c.intermediate_size + j] = 0.0f;
    }
    float* o = params.data() + t.layer(l).o_proj;
    for (std::int64_t h : {0, 7}) {
      s.width.heads[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)] = 0.0;
      for (std::int64_t d = 0; d < c.hidden_size; ++d)
        for (std::int64_t i = 0; i < c.head_dim; ++i) o[d * c.q_dim() + h * c.head_dim + i] = 0.0f;
    }
  }
  std::fill_n(params.data() + t.layer(3).o_proj, c.hidden_size * c.q_dim(), 0.0f);
  std::fill_n(params.data() + t.layer(3).down_proj, c.hidden_size * c.intermediate_size, 0.0f);
  s.layers.block_importance = {0.5, 0.4, 0.3, 0.0};
  PruneTargets targets;
  targets.hidden_size = 24;
  targets.intermediate_size = 24;
  targets.num_attention_heads = 6;
  targets.num_layers = 3;
  targets.layer_criterion = LayerCriterion::BlockImportance;
  const PrunePlan plan = plan_pruning(c, s, targets);
  EXPECT_EQ(plan.layers, (std::vector<std::int64_t>{0, 1, 2}));
  std::vector<float> pruned = slice_parameters(c, t, params, plan);
  scale_norms(plan.config, pruned, std::sqrt(32.0 / 24.0));
  compare_logits(c, params, plan, pruned);
  EXPECT_EQ(parameter_count(plan.config), ParameterTable(plan.config).total_numel());
}

TEST(Slicing, PrunedCheckpointRoundTrips) {
  testing::TempDir dir;
  const ModelConfig c = tiny_config();
  const ParameterTable t(c);
  const std::vector<float> params = tiny_parameters(c);
  PruneTargets targets;
  targets.hidden_size = 16;
  targets.num_attention_heads = 4;
  targets.drop_layers = std::pair<std::int64_t, std::int64_t>(0, 0);
  const PrunePlan plan = plan_pruning(c, scores_with_zeros(c), targets);
  const std::vector<float> pruned = slice_parameters(c, t, params, plan);
  SaveOptions save;
  save.dtype = SafetensorsDType::F32;
  save_checkpoint(dir / "pruned", plan.config, ParameterTable(plan.config), pruned, save);
  const LoadedCheckpoint back = load_checkpoint(dir / "pruned");
  EXPECT_EQ(back.params, pruned);
  EXPECT_EQ(back.config.hidden_size, 16);
  EXPECT_EQ(back.config.num_attention_heads, 4);
  EXPECT_EQ(back.config.num_key_value_heads, 2);
  EXPECT_EQ(back.config.num_hidden_layers, 3);
  EXPECT_EQ(back.config.head_dim, 8);
  const nlohmann::json json = nlohmann::json::parse(std::ifstream(dir / "pruned" / "config.json"));
  EXPECT_EQ(json.at("head_dim"), 8) << "head_dim (4 heads x 8 != hidden 16) must be explicit";
}

TEST(Slicing, ChoosesTopKInOriginalOrder) {
  const std::vector<double> scores{0.5, 3.0, 1.0, 3.0, 0.1, 2.0};
  EXPECT_EQ(top_k_in_order(scores, 3), (std::vector<std::int64_t>{1, 3, 5}));
  EXPECT_EQ(top_k_in_order(scores, 4), (std::vector<std::int64_t>{1, 2, 3, 5}));
  EXPECT_EQ(top_k_in_order(std::vector<double>{1, 1, 1}, 2), (std::vector<std::int64_t>{0, 1})) << "ties keep lower";
  ImportanceScores s = empty_scores(tiny_config());
  s.layers.block_importance = {0.5, 0.1, 0.2, 0.9};
  EXPECT_EQ(least_important_block(s, 4, 2, LayerCriterion::BlockImportance), 1);
  EXPECT_EQ(least_important_block(s, 4, 1, LayerCriterion::BlockImportance), 1);
  EXPECT_EQ(least_important_block(s, 4, 3, LayerCriterion::BlockImportance), 0);
}

// Hand-written accuracies and losses (values a 4-question task can produce: multiples of 1/4),
// so every choice below follows from the documented rule by inspection.
TEST(Slicing, TaskCriterionKeepsTheHighestAccuracyBlock) {
  const ModelConfig c = tiny_config();  // 4 layers: 3 blocks of 2, 4 single layers
  ImportanceScores s = empty_scores(c);
  s.layers.block_removal_loss[2] = {1.0, 5.0, 2.0};
  s.layers.block_removal_task_score[2] = {0.25, 0.75, 0.5};
  // Block 1-2 keeps the most accuracy although its loss is the worst; loss alone picks 0-1.
  EXPECT_EQ(least_important_block(s, 4, 2, LayerCriterion::Task), 1);
  EXPECT_EQ(least_important_block(s, 4, 2, LayerCriterion::Loss), 0);

  // Equal accuracies: the lower removal loss wins...
  s.layers.block_removal_task_score[2] = {0.75, 0.5, 0.75};
  s.layers.block_removal_loss[2] = {3.0, 1.0, 2.5};
  EXPECT_EQ(least_important_block(s, 4, 2, LayerCriterion::Task), 2);
  // ...and with equal losses too, the earliest block.
  s.layers.block_removal_loss[2] = {2.5, 1.0, 2.5};
  EXPECT_EQ(least_important_block(s, 4, 2, LayerCriterion::Task), 0);
  // Without losses for that size only the earliest-block rule is left.
  s.layers.block_removal_loss.erase(2);
  s.layers.block_removal_task_score[2] = {0.5, 0.75, 0.75};
  EXPECT_EQ(least_important_block(s, 4, 2, LayerCriterion::Task), 1);

  // k = 1: the single-layer losses break the tie (as 'importance' writes them, without a
  // block_removal_loss entry for k = 1 in older files).
  s.layers.single_removal_loss = {3.0, 2.0, 1.0, 2.0};
  s.layers.block_removal_task_score[1] = {0.5, 0.5, 0.25, 0.5};
  EXPECT_EQ(least_important_block(s, 4, 1, LayerCriterion::Task), 1) << "tie of 0, 1, 3; losses 3, 2, 2 -> 1";

  // Through plan_pruning: --num-layers 2 drops the chosen block.
  PruneTargets t;
  t.num_layers = 2;
  t.layer_criterion = LayerCriterion::Task;
  const PrunePlan plan = plan_pruning(c, s, t);
  ASSERT_TRUE(plan.dropped_block);
  EXPECT_EQ(*plan.dropped_block, (std::pair<std::int64_t, std::int64_t>(1, 2)));
  EXPECT_EQ(plan.layers, (std::vector<std::int64_t>{0, 3}));

  EXPECT_EQ(parse_layer_criterion("task"), LayerCriterion::Task);
  EXPECT_STREQ(layer_criterion_name(LayerCriterion::Task), "task");
  EXPECT_STREQ(layer_criterion_name(LayerCriterion::BlockImportance), "block-importance");
}

TEST(Slicing, TaskCriterionRefusesScoresWithoutTaskAccuracies) {
  const ModelConfig c = tiny_config();
  ImportanceScores s = empty_scores(c);
  s.layers.block_removal_loss[2] = {1.0, 5.0, 2.0};  // losses alone do not rank by task
  auto message = [&](std::int64_t k) -> std::string {
    try {
      least_important_block(s, 4, k, LayerCriterion::Task);
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "accepted scores without task accuracies for k = " << k;
    return "";
  };
  std::string m = message(2);
  EXPECT_NE(m.find("--layer-criterion task"), std::string::npos) << m;
  EXPECT_NE(m.find("has them for k = none"), std::string::npos) << m;
  EXPECT_NE(m.find("minitron importance --task NAME --task-file FILE --block-size 2"), std::string::npos) << m;

  s.layers.block_removal_task_score[1] = {0.5, 0.5, 0.25, 0.5};
  m = message(2);
  EXPECT_NE(m.find("has them for k = 1"), std::string::npos) << m;

  s.layers.block_removal_task_score[2] = {0.5, 0.75};  // one block short
  m = message(2);
  EXPECT_NE(m.find("task_score for block size 2 has 2 values"), std::string::npos) << m;
  EXPECT_NE(m.find("expected 3"), std::string::npos) << m;

  PruneTargets t;
  t.num_layers = 1;  // k = 3: never measured
  t.layer_criterion = LayerCriterion::Task;
  try {
    plan_pruning(c, s, t);
    ADD_FAILURE() << "accepted --num-layers 1 without task accuracies for k = 3";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--block-size 3"), std::string::npos) << e.what();
  }
}

// Every refusal is a minitron::Error whose message names the problem.
void expect_refused(const ModelConfig& c, const ImportanceScores& s, const PruneTargets& targets,
                    const std::string& text) {
  try {
    plan_pruning(c, s, targets);
    ADD_FAILURE() << "accepted a target that should fail with '" << text << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

TEST(Slicing, RefusesImpossibleTargets) {
  const ModelConfig c = tiny_config();
  const ImportanceScores s = scores_with_zeros(c);
  PruneTargets t;
  t.hidden_size = 40;
  expect_refused(c, s, t, "above the model's hidden_size = 32");
  t = {};
  t.hidden_size = 20;
  expect_refused(c, s, t, "not a multiple of 8");
  t = {};
  t.intermediate_size = 0;
  expect_refused(c, s, t, "positive");
  t = {};
  t.num_attention_heads = 7;
  expect_refused(c, s, t, "cannot be split evenly across 2 KV groups");
  t = {};
  t.num_attention_heads = 8;
  t.num_key_value_heads = 1;
  expect_refused(c, s, t, "each group has only 4");
  t = {};
  t.num_key_value_heads = 3;
  expect_refused(c, s, t, "above the model's num_key_value_heads = 2");
  t = {};
  t.num_layers = 0;
  expect_refused(c, s, t, "dropping every layer");
  t = {};
  t.drop_layers = parse_layer_range("0-3");
  expect_refused(c, s, t, "drops every layer");
  t = {};
  t.drop_layers = parse_layer_range("2-5");
  expect_refused(c, s, t, "outside the model's layers");
  t = {};
  t.num_layers = 2;  // k = 2, but the scores hold no block-removal losses
  expect_refused(c, s, t, "needs block-removal losses for k = 2");
  t.layer_criterion = LayerCriterion::BlockImportance;
  expect_refused(c, s, t, "no block_importance");
  t = {};
  t.intermediate_size = 24;
  expect_refused(c, empty_scores(c), t, "no MLP scores");
  EXPECT_THROW(parse_layer_range("30-15"), Error);
  EXPECT_THROW(parse_layer_range("a-b"), Error);
  EXPECT_THROW(parse_layer_criterion("random"), Error);
  EXPECT_THROW(parse_layer_criterion("accuracy"), Error);

  // Scores of another model.
  ModelConfig other = c;
  other.intermediate_size = 64;
  try {
    check_scores_match(scores_with_zeros(other), c, "scores.json");
    ADD_FAILURE() << "accepted scores of another model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("intermediate_size = 64"), std::string::npos) << e.what();
  }
  check_scores_match(s, c, "scores.json");  // its own are fine
}

// Task accuracies per removed block are checked like the losses, one per block start, when the
// scores are loaded for pruning (rather than later, when a block is chosen).
TEST(Scores, TaskScoreLengthsAreChecked) {
  const ModelConfig c = tiny_config();  // 4 layers: blocks of 2 start at layers 0, 1 and 2
  ImportanceScores s = empty_scores(c);
  s.layers.block_removal_task_score[2] = {0.5, 0.6, 0.7};
  check_scores_match(s, c, "scores.json");
  auto message = [&]() -> std::string {
    try {
      check_scores_match(s, c, "scores.json");
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "accepted task scores of the wrong length";
    return "";
  };
  s.layers.block_removal_task_score[2] = {0.5, 0.6};
  const std::string short_row = message();
  EXPECT_NE(short_row.find("layers.block_removal_task_score for block size 2 has 2 values"), std::string::npos)
      << short_row;
  EXPECT_NE(short_row.find("expected 4 - k + 1 values"), std::string::npos) << short_row;
  EXPECT_EQ(short_row.find('\n'), std::string::npos) << short_row;
  s.layers.block_removal_task_score.clear();
  s.layers.block_removal_task_score[5] = {0.5};  // a block larger than the model
  EXPECT_NE(message().find("for block size 5 has 1 values"), std::string::npos);
}

TEST(Scores, JsonRoundTrip) {
  testing::TempDir dir;
  const ModelConfig c = tiny_config();
  ImportanceScores s = scores_with_zeros(c);
  s.layers.windows = 3;
  s.layers.baseline_loss = 2.5;
  s.layers.single_removal_loss = {2.6, 2.7, 2.8, 2.9};
  s.layers.block_removal_loss[2] = {3.0, 3.1, 3.2};
  s.layers.block_importance = {0.1, 0.2, 0.3, 0.4};
  s.provenance = {{"samples", 8}};
  save_scores(dir / "scores.json", s);
  const ImportanceScores back = load_scores(dir / "scores.json");
  EXPECT_EQ(back.width.mlp, s.width.mlp);
  EXPECT_EQ(back.width.heads, s.width.heads);
  EXPECT_EQ(back.width.hidden, s.width.hidden);
  EXPECT_EQ(back.layers.single_removal_loss, s.layers.single_removal_loss);
  EXPECT_EQ(back.layers.block_removal_loss, s.layers.block_removal_loss);
  EXPECT_EQ(back.layers.block_importance, s.layers.block_importance);
  EXPECT_EQ(*back.layers.baseline_loss, 2.5);
  EXPECT_EQ(back.provenance["samples"], 8);
  check_scores_match(back, c, "scores.json");
  testing::TempDir other;
  std::ofstream(other / "bad.json") << R"({"format": "something-else"})";
  EXPECT_THROW(load_scores(other / "bad.json"), Error);
}

TEST(Search, ParameterCountsAndBudget) {
  for (bool tied : {false, true}) {
    ModelConfig c = tiny_config(tied);
    EXPECT_EQ(parameter_count(c), ParameterTable(c).total_numel());
    c.num_attention_heads = 4;
    c.num_key_value_heads = 1;
    EXPECT_EQ(parameter_count(c), ParameterTable(c).total_numel());
  }
  EXPECT_EQ(parse_parameter_count("4.5B"), 4'500'000'000);
  EXPECT_EQ(parse_parameter_count("350M"), 350'000'000);
  EXPECT_EQ(parse_parameter_count("20K"), 20'000);
  EXPECT_EQ(parse_parameter_count("123456"), 123'456);
  EXPECT_THROW(parse_parameter_count("4.5X"), Error);
  EXPECT_THROW(parse_parameter_count("-1M"), Error);
  // Out of range is refused before rounding (llround of 1e30 is undefined), naming the flag.
  for (const char* huge : {"1e30", "1e300T", "inf", "2000T", "0.1"}) {
    try {
      parse_parameter_count(huge);
      ADD_FAILURE() << huge << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--target-params"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(parse_parameter_count("1000T"), 1'000'000'000'000'000);

  const ModelConfig c = tiny_config();
  const std::int64_t target = parameter_count(c) * 7 / 10;
  const auto found = enumerate_architectures(c, target, 0.05);
  ASSERT_FALSE(found.empty());
  for (const Architecture& a : found) {
    ModelConfig pc = c;
    pc.hidden_size = a.hidden_size;
    pc.intermediate_size = a.intermediate_size;
    pc.num_attention_heads = a.num_attention_heads;
    pc.num_key_value_heads = a.num_key_value_heads;
    pc.num_hidden_layers = a.num_layers;
    EXPECT_EQ(a.parameters, ParameterTable(pc).total_numel());
    EXPECT_LE(std::abs(static_cast<double>(a.parameters - target)), 0.05 * static_cast<double>(target));
    EXPECT_EQ(a.hidden_size % kHiddenSizeMultiple, 0);
    EXPECT_EQ(a.num_attention_heads % a.num_key_value_heads, 0);
    ImportanceScores scores = scores_with_zeros(c);
    scores.layers.block_importance = {0.4, 0.1, 0.2, 0.3};
    EXPECT_NO_THROW(plan_pruning(c, scores, targets_of(a, LayerCriterion::BlockImportance))) << architecture_string(a);
  }
  const auto few = spread_subset(found, 3);
  EXPECT_EQ(few.size(), std::min<std::size_t>(3, found.size()));

  // The paper's 8B -> 4B width target (hidden 3072, FFN 9216, 32 heads, 32 layers) is on the grid.
  ModelConfig llama = c;
  llama.vocab_size = 128256;
  llama.hidden_size = 4096;
  llama.intermediate_size = 14336;
  llama.num_hidden_layers = 32;
  llama.num_attention_heads = 32;
  llama.num_key_value_heads = 8;
  llama.head_dim = 128;
  // Meta's published total for Llama-3.1-8B.
  EXPECT_EQ(parameter_count(llama), 8'030'261'248);
  ModelConfig width = llama;
  width.hidden_size = 3072;
  width.intermediate_size = 9216;
  const auto grid = enumerate_architectures(llama, parameter_count(width), 0.001);
  EXPECT_TRUE(std::any_of(grid.begin(), grid.end(), [](const Architecture& a) {
    return a.hidden_size == 3072 && a.intermediate_size == 9216 && a.num_attention_heads == 32 && a.num_layers == 32;
  }));
  for (const Architecture& a : grid) {  // the grid's counts (linear in depth) match a full table
    ModelConfig pc = llama;
    pc.hidden_size = a.hidden_size;
    pc.intermediate_size = a.intermediate_size;
    pc.num_attention_heads = a.num_attention_heads;
    pc.num_hidden_layers = a.num_layers;
    EXPECT_EQ(a.parameters, ParameterTable(pc).total_numel()) << architecture_string(a);
  }
}

}  // namespace
}  // namespace minitron
