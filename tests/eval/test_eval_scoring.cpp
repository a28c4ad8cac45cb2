// Scoring against tests/eval/data/expected_scores.json, written by tools/make_eval_fixtures.py:
// an independent Python re-implementation of the harness's request building and tokenisation
// (plain BPE) and the PyTorch reference model (float64) on tests/fixtures/llama3_gqa.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "eval/run_task.h"
#include "eval/scoring.h"
#include "kernels/make_backend.h"
#include "model/checkpoint.h"
#include "util/error.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

fs::path source(const std::string& rel) { return fs::path(MINITRON_SOURCE_DIR) / rel; }

const json& expected() {
  static const json j = [] {
    std::ifstream in(source("tests/eval/data/expected_scores.json"));
    return json::parse(in);
  }();
  return j;
}

const Tokenizer& tiny_tokenizer() {
  static const Tokenizer t = Tokenizer::load(source("tests/eval/data/tokenizer.json"));
  return t;
}

// Ids of the tiny tokenizer (tools/make_eval_fixtures.py): ' ' 3, '\n' 4, 'a'..'z' 5..30,
// 'A'..'Z' 31..56, then . , : ? ' - _ at 57..63, merges th 64, the 65, " the" 66.
TEST(EncodePair, TrailingWhitespaceMovesToTheContinuation) {
  const EncodedRequest r = encode_request(tiny_tokenizer(), {"The sky is ", " blue"}, {});
  EXPECT_EQ(r.context, (std::vector<std::int32_t>{50, 12, 9, 3, 23, 15, 29, 3, 13, 23}));  // "The sky is"
  EXPECT_EQ(r.continuation, (std::vector<std::int32_t>{3, 3, 6, 16, 25, 9}));              // "  blue"
  const EncodedRequest merged = encode_request(tiny_tokenizer(), {"Is it", " the end"}, {});
  EXPECT_EQ(merged.continuation, (std::vector<std::int32_t>{66, 3, 9, 18, 8}));  // " the" is one token
  EncodeOptions bos;
  bos.add_special_tokens = true;
  const EncodedRequest with_bos = encode_request(tiny_tokenizer(), {"Is", " it"}, bos);
  EXPECT_EQ(with_bos.context, (std::vector<std::int32_t>{1, 39, 23}));  // <s> I s
  EXPECT_EQ(with_bos.continuation, (std::vector<std::int32_t>{3, 13, 24}));
  bos.prefix_token = 2;
  const EncodedRequest empty = encode_request(tiny_tokenizer(), {"", "ab"}, bos);
  EXPECT_EQ(empty.context, (std::vector<std::int32_t>{2}));
}

TEST(ScoringWindow, LeftTruncatesAndMarksContinuationTargets) {
  const ScoringWindow w = scoring_window({{10, 11, 12, 13}, {20, 21}}, 4);
  // (ctx + cont)[-5:][:-1] = [11, 12, 13, 20]; the last two positions predict 20, 21.
  EXPECT_EQ(w.inputs, (std::vector<std::int32_t>{11, 12, 13, 20}));
  EXPECT_EQ(w.targets, (std::vector<std::int32_t>{-1, -1, 20, 21}));
  EXPECT_THROW(scoring_window({{1}, {2, 3, 4}}, 2), Error);  // the continuation alone does not fit
}

TEST(Metrics, StandardErrorsAsTheHarness) {
  // mean_stderr of [1, 0, 0, 1]: sample std sqrt(1/3), over sqrt(4).
  const std::vector<double> scores{1, 0, 0, 1};
  EXPECT_NEAR(mean_stderr(scores), std::sqrt(1.0 / 3.0) / 2.0, 1e-15);  // double rounding only
  EXPECT_TRUE(std::isnan(mean_stderr(std::vector<double>{1})));
  // pooled over groups of sizes 4 and 2 with stderrs a, b: sqrt((3*4*a^2 + 1*2*b^2) / (6 - 2) / 6).
  const double a = 0.25, b = 0.5;
  EXPECT_NEAR(pooled_stderr(std::vector<double>{a, b}, std::vector<std::int64_t>{4, 2}),
              std::sqrt((12 * a * a + 2 * b * b) / 4.0 / 6.0), 1e-15);  // double rounding only
  QuestionResult q{{-3.0, -4.0, -2.9}, {10, 20, 1}, 0, ""};
  EXPECT_FALSE(q.correct());       // argmax is choice 2
  EXPECT_FALSE(q.correct_norm());  // normed: -0.3, -0.2, -2.9 -> choice 1
  q.gold = 1;
  EXPECT_TRUE(q.correct_norm());
  QuestionResult tie{{-1.0, -1.0}, {1, 1}, 0, ""};
  EXPECT_TRUE(tie.correct());  // np.argmax takes the first maximum
}

TEST(ScoringWindow, RefusesAnEmptyContextInsteadOfWrapping) {
  // With no context token nothing predicts the first continuation token; the scored span
  // must lie inside the inputs (before the fix the start index wrapped and nothing was scored).
  EXPECT_THROW(scoring_window({{}, {20, 21}}, 8), Error);
}

// Whitespace-only contexts (" ", "\n", " \n ") encode to no tokens once their whitespace moves
// to the continuation. They must score exactly as the empty-context path ([prefix] +
// encode(continuation)) scores the moved-whitespace continuation, computed here one request at
// a time through that other branch; before the fix every choice scored 0 and choice 0 (the
// gibberish one) won every tie.
TEST(EncodePair, WhitespaceOnlyContextScoresLikeTheEmptyContext) {
  const auto docs = load_task_file(TaskKind::MultipleChoice, source("tests/eval/data/whitespace_context.jsonl"));
  LoadedCheckpoint checkpoint = load_checkpoint(source("tests/fixtures/llama3_gqa"));
  auto backend = make_backend("cpu");
  TaskRunOptions options;
  options.encode.prefix_token = 1;  // <s> of the tiny tokenizer
  const TaskRunResult result = run_task(TaskKind::MultipleChoice, docs, nullptr, tiny_tokenizer(), checkpoint.config,
                                        checkpoint.params, *backend, options);
  ASSERT_EQ(result.questions.size(), docs.size());

  const std::int64_t T = checkpoint.config.max_position_embeddings;
  LlamaModel model(checkpoint.config, *backend, 1, T, ModelMode::Inference);
  model.set_parameters(checkpoint.params);
  LossWorkspace workspace(*backend, checkpoint.config.vocab_size, T);
  double expected_correct = 0;
  for (std::size_t i = 0; i < docs.size(); ++i) {
    const Question q = build_question(TaskKind::MultipleChoice, docs[i], "");
    std::vector<double> independent;
    for (std::size_t c = 0; c < q.requests.size(); ++c) {
      const ChoiceRequest& r = q.requests[c];
      ASSERT_EQ(r.context.find_first_not_of(" \n"), std::string::npos) << "the fixture's contexts are whitespace";
      const EncodedRequest empty = encode_request(tiny_tokenizer(), {"", r.context + r.continuation}, options.encode);
      ASSERT_EQ(empty.context, std::vector<std::int32_t>{1});
      const ScoringWindow w = scoring_window(empty, T);
      independent.push_back(score_batch(model, workspace, std::span(&w, 1))[0]);
      const double got = result.questions[i].loglikelihoods[c];
      EXPECT_LT(got, 0.0) << "question " << i << " choice " << c << " scored nothing";
      // Same tokens and positions, but batch 1 here against one batch of all choices in
      // run_task: the fp32 GEMMs may round differently per batch shape (~1e-6 per token).
      EXPECT_NEAR(got, independent.back(), 1e-5 * static_cast<double>(empty.continuation.size()))
          << "question " << i << " choice " << c;
    }
    const QuestionResult reference{independent, q.choice_lengths, q.gold, ""};
    EXPECT_EQ(result.questions[i].correct(), reference.correct()) << "question " << i;
    expected_correct += reference.correct() ? 1.0 : 0.0;
  }
  EXPECT_DOUBLE_EQ(task_accuracy(TaskKind::MultipleChoice, result),
                   expected_correct / static_cast<double>(docs.size()));
}

class ExpectedRuns : public testing::TestWithParam<int> {};

TEST_P(ExpectedRuns, MatchesTheReference) {
  const json& run = expected()["runs"][static_cast<std::size_t>(GetParam())];
  SCOPED_TRACE(run["name"].get<std::string>());
  const TaskKind kind = parse_task_kind(run["task"]);
  const auto docs = load_task_file(kind, source("tests/eval/data/" + run["task_file"].get<std::string>()));
  std::vector<TaskDoc> pool;
  const bool has_pool = run.contains("fewshot_file");
  if (has_pool) pool = load_task_file(kind, source("tests/eval/data/" + run["fewshot_file"].get<std::string>()));
  const std::int64_t shots = run["shots"], max_length = run["max_length"];

  // The exact strings and ids the harness would produce.
  ASSERT_EQ(docs.size(), run["questions"].size());
  FewshotSampler sampler(kind, has_pool ? pool : docs, !has_pool, shots);
  for (std::size_t i = 0; i < docs.size(); ++i) {
    const json& eq = run["questions"][i];
    const auto fewshot = sampler.next(docs[i]);
    const Question q = build_question(kind, docs[i], fewshot_prefix(kind, docs[i].subject, fewshot));
    ASSERT_EQ(q.requests.size(), eq["requests"].size());
    EXPECT_EQ(q.gold, eq["gold"].get<int>());
    EXPECT_EQ(q.choice_lengths, eq["choice_lengths"].get<std::vector<std::int64_t>>());
    for (std::size_t c = 0; c < q.requests.size(); ++c) {
      const json& er = eq["requests"][c];
      EXPECT_EQ(q.requests[c].context, er["context"].get<std::string>());
      EXPECT_EQ(q.requests[c].continuation, er["continuation"].get<std::string>());
      const EncodedRequest enc = encode_request(tiny_tokenizer(), q.requests[c], {});
      EXPECT_EQ(enc.context, er["context_ids"].get<std::vector<std::int32_t>>());
      EXPECT_EQ(enc.continuation, er["continuation_ids"].get<std::vector<std::int32_t>>());
    }
  }

  // Scores on the CPU engine (fp32).
  LoadedCheckpoint checkpoint = load_checkpoint(source("tests/fixtures/llama3_gqa"));
  auto backend = make_backend("cpu");
  TaskRunOptions options;
  options.shots = shots;
  options.max_length = max_length;
  const TaskRunResult result = run_task(kind, docs, has_pool ? &pool : nullptr, tiny_tokenizer(), checkpoint.config,
                                        checkpoint.params, *backend, options);
  ASSERT_EQ(result.questions.size(), docs.size());
  double worst = 0;  // reported, to watch the margin against the tolerance
  for (std::size_t i = 0; i < docs.size(); ++i) {
    const json& eq = run["questions"][i];
    for (std::size_t c = 0; c < result.questions[i].loglikelihoods.size(); ++c) {
      const double want = eq["requests"][c]["loglikelihood"];
      worst = std::max(worst, std::abs(result.questions[i].loglikelihoods[c] - want));
      const double n = static_cast<double>(eq["requests"][c]["continuation_ids"].size());
      // Per token, log p is off by at most ~2x the logits' error; the fixture README's fp32
      // logit tolerance is 1e-5 of max|logit| (~5 here), with headroom for contexts of a few
      // hundred positions (vs the fixture's 7): 1e-4 per token, summed over n tokens.
      EXPECT_NEAR(result.questions[i].loglikelihoods[c], want, 1e-4 * n) << "question " << i << " choice " << c;
    }
    EXPECT_EQ(result.questions[i].correct() ? 1.0 : 0.0, eq["acc"].get<double>()) << "question " << i;
    EXPECT_EQ(result.questions[i].correct_norm() ? 1.0 : 0.0, eq["acc_norm"].get<double>()) << "question " << i;
  }
  std::printf("largest log-likelihood error: %.3g nats\n", worst);
  ASSERT_EQ(result.rows.size(), run["metrics"].size());
  for (std::size_t m = 0; m < result.rows.size(); ++m) {
    const json& em = run["metrics"][m];
    EXPECT_EQ(result.rows[m].task, em["task"].get<std::string>());
    EXPECT_EQ(result.rows[m].metric, em["metric"].get<std::string>());
    EXPECT_EQ(result.rows[m].count, em["count"].get<std::int64_t>());
    EXPECT_NEAR(result.rows[m].value, em["value"].get<double>(), 1e-12);  // means of 0/1: exact but for rounding
    if (em["stderr"].is_null())
      EXPECT_TRUE(std::isnan(result.rows[m].stderr_value));
    else
      EXPECT_NEAR(result.rows[m].stderr_value, em["stderr"].get<double>(), 1e-12);  // same formula, double rounding
  }
}

INSTANTIATE_TEST_SUITE_P(AllRuns, ExpectedRuns, testing::Range(0, 8), [](const testing::TestParamInfo<int>& info) {
  return expected()["runs"][static_cast<std::size_t>(info.param)]["name"].get<std::string>();
});

}  // namespace
}  // namespace minitron
