// gsm8k's filters and exact-match normalisation against hand-written strings; each expectation
// is what Python's re.findall / re.sub give for the patterns of lm_eval/tasks/gsm8k/gsm8k.yaml and
// gsm8k-cot.yaml (worked by hand, the backtracking cases spelled out).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "eval/answer_extraction.h"
#include "eval/scoring.h"

namespace minitron {
namespace {

// r"#### (\-?[0-9\.\,]+)", the first match's group.
TEST(Gsm8kStrictMatch, TakesTheFirstHashNumber) {
  EXPECT_EQ(extract_gsm8k_strict("She has 5.\n#### 72"), "72");
  EXPECT_EQ(extract_gsm8k_strict("#### -1,234.5 dollars"), "-1,234.5");
  EXPECT_EQ(extract_gsm8k_strict("#### 3\n#### 4"), "3");               // findall(...)[0]
  EXPECT_EQ(extract_gsm8k_strict("#### x\n#### 9"), "9");               // the first "#### " has no number
  EXPECT_EQ(extract_gsm8k_strict("#### -x"), kFilterFallback);          // "-" then nothing: no match
  EXPECT_EQ(extract_gsm8k_strict("####5"), kFilterFallback);            // the space is part of the pattern
  EXPECT_EQ(extract_gsm8k_strict("The answer is 5"), kFilterFallback);  // -> "[invalid]"
  EXPECT_EQ(extract_gsm8k_strict("##### 8"), "8");                      // matches from the second '#'
}

// r"The answer is (\-?[0-9\.\,]+)." : '.' is any character but "\n", so the greedy run gives one
// character back when nothing (or a newline) follows it.
TEST(Gsm8kCotStrictMatch, BacktracksForTheTrailingDot) {
  EXPECT_EQ(extract_gsm8k_cot_strict("So 3 + 4 = 7. The answer is 7."), "7");
  EXPECT_EQ(extract_gsm8k_cot_strict("The answer is 18."), "18");
  EXPECT_EQ(extract_gsm8k_cot_strict("The answer is 18"), "1");    // '.' takes the "8"
  EXPECT_EQ(extract_gsm8k_cot_strict("The answer is 18\n"), "1");  // "\n" cannot be '.'
  EXPECT_EQ(extract_gsm8k_cot_strict("The answer is 1.5!"), "1.5");
  EXPECT_EQ(extract_gsm8k_cot_strict("The answer is 7"), kFilterFallback);  // one digit, nothing after
  EXPECT_EQ(extract_gsm8k_cot_strict("The answer is -3 apples"), "-3");
  EXPECT_EQ(extract_gsm8k_cot_strict("The answer is $5."), kFilterFallback);  // '$' is not in the class
}

// r"(-?[$0-9.,]{2,})|(-?[0-9]+)" with group_select -1: the last match, its non-empty group.
TEST(Gsm8kFlexibleExtract, TakesTheLastNumber) {
  EXPECT_EQ(extract_last_number(" 42\n"), "42");
  EXPECT_EQ(extract_last_number("3 apples and 5 pears"), "5");  // single digits: the second alternative
  EXPECT_EQ(extract_last_number("costs $1,200."), "$1,200.");   // the first alternative takes '$' ',' '.'
  EXPECT_EQ(extract_last_number("from -7 to -12"), "-12");
  EXPECT_EQ(extract_last_number("a - 5"), "5");             // "- " is no number: the match starts at "5"
  EXPECT_EQ(extract_last_number("end."), kFilterFallback);  // a lone '.' matches neither alternative
  EXPECT_EQ(extract_last_number("x. 9"), "9");
  EXPECT_EQ(extract_last_number("1.2.3"), "1.2.3");
  EXPECT_EQ(extract_last_number("no digits"), kFilterFallback);
  EXPECT_EQ(extract_last_number("-$5"), "-$5");  // '-' then a two-character run
}

// exact_match's regexes_to_ignore [",", "\$", "(?s).*#### ", "\.$"] then lower().
TEST(Gsm8kNormalisation, RemovesWhatTheYamlIgnores) {
  EXPECT_EQ(normalise_gsm8k_answer("Natalia sold 48/2 = 24 clips.\n#### 1,072"), "1072");
  EXPECT_EQ(normalise_gsm8k_answer("$1,200."), "1200");
  EXPECT_EQ(normalise_gsm8k_answer("#### 3\n#### 4"), "4");  // greedy: up to the last "#### "
  EXPECT_EQ(normalise_gsm8k_answer("5.\n"), "5\n");          // "$" matches before a final newline
  EXPECT_EQ(normalise_gsm8k_answer("5.."), "5.");            // one '.' at the end only
  EXPECT_EQ(normalise_gsm8k_answer("[INVALID]"), "[invalid]");
}

TEST(Gsm8kScoring, StrictAndFlexiblePerDocument) {
  const std::string reference = "He pays 12 * 3 = 36.\n#### 36";
  EXPECT_EQ(score_generation(TaskKind::Gsm8k, " 12 * 3 = 36\n#### 36", reference), (std::vector<double>{1, 1}));
  EXPECT_EQ(score_generation(TaskKind::Gsm8k, " It is 36 dollars.", reference), (std::vector<double>{0, 1}));
  EXPECT_EQ(score_generation(TaskKind::Gsm8k, " #### 36\nThen 40", reference), (std::vector<double>{1, 0}));
  EXPECT_EQ(score_generation(TaskKind::Gsm8k, " $36.", reference), (std::vector<double>{0, 1}));  // "$36." -> "36"
  // gsm8k_cot's reference is answer.split('####')[-1].strip(): "36".
  EXPECT_EQ(score_generation(TaskKind::Gsm8kCot, " 3 * 12 = 36. The answer is 36.", "36"), (std::vector<double>{1, 1}));
}

TEST(Gsm8kScoring, MetricRowsPerFilter) {
  const std::vector<std::vector<double>> scores = {{1, 1}, {0, 1}, {0, 0}, {0, 1}};
  const std::vector<MetricRow> rows = generation_metrics(TaskKind::Gsm8k, scores);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].metric, "exact_match");
  EXPECT_EQ(rows[0].filter, "strict-match");
  EXPECT_DOUBLE_EQ(rows[0].value, 0.25);
  EXPECT_DOUBLE_EQ(rows[0].stderr_value, 0.25);  // sqrt(0.25 * 0.75 / 3) = 0.25
  EXPECT_EQ(rows[1].filter, "flexible-extract");
  EXPECT_DOUBLE_EQ(rows[1].value, 0.75);
  EXPECT_EQ(rows[1].count, 4);
}

// utils.py process_results_mc2 on log-likelihoods chosen so the masses are simple.
TEST(TruthfulQaMc2, NormalisedMassOfTheTrueAnswers) {
  QuestionResult r;
  r.loglikelihoods = {std::log(0.2), std::log(0.1), std::log(0.5), std::log(0.2)};
  r.true_count = 2;
  EXPECT_NEAR(r.true_probability_mass(), 0.3, 1e-15);  // (0.2 + 0.1) / 1.0; rounding of log/exp only
  QuestionResult s;
  s.loglikelihoods = {std::log(0.05), std::log(0.15)};
  s.true_count = 1;
  const std::vector<QuestionResult> both = {r, s};
  const std::vector<MetricRow> rows = task_metrics(TaskKind::TruthfulQaMc2, both);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].metric, "acc");
  EXPECT_NEAR(rows[0].value, (0.3 + 0.25) / 2, 1e-15);  // 0.05 / 0.2 = 0.25
  EXPECT_NEAR(rows[0].stderr_value, 0.025, 1e-15);      // sample std 0.0353553 / sqrt(2)
}

}  // namespace
}  // namespace minitron
