// Scoring of generated answers as lm-evaluation-harness scores gsm8k and gsm8k_cot: each filter
// of the task's filter_list turns the generation into an answer, which exact_match compares with
// the target after the metric's normalisation.
//
// Harness sources:
//  - lm_eval/filters/extraction.py RegexFilter.apply: re.findall(pattern, text); no match: the
//    fallback "[invalid]"; else match[group_select] (0: the first, -1: the last); a tuple (the
//    pattern has several groups) gives its first non-empty group; .strip().
//  - lm_eval/filters/selection.py TakeFirstFilter: the first of the (one) responses.
//  - lm_eval/api/metrics.py exact_match_hf_evaluate: each of regexes_to_ignore removed (re.sub
//    with "") from prediction and reference in order, then lower() when ignore_case, then ==.
//  - gsm8k.yaml: strict-match "#### (\-?[0-9\.\,]+)", flexible-extract
//    "(-?[$0-9.,]{2,})|(-?[0-9]+)" with group_select -1; gsm8k-cot.yaml: strict-match
//    "The answer is (\-?[0-9\.\,]+)." and the same flexible-extract; both: ignore_case true,
//    ignore_punctuation false, regexes_to_ignore [",", "\$", "(?s).*#### ", "\.$"].
// The patterns are matched by hand-written scanners that follow Python's re semantics for these
// patterns exactly (leftmost match, alternatives in order, greedy runs with backtracking), not by
// a general regex engine.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "eval/tasks.h"

namespace minitron {

inline constexpr const char* kFilterFallback = "[invalid]";

// gsm8k strict-match: the first "#### <number>" (findall(r"#### (\-?[0-9\.\,]+)")[0]).
std::string extract_gsm8k_strict(const std::string& text);
// gsm8k_cot strict-match: the first findall(r"The answer is (\-?[0-9\.\,]+).") group.
std::string extract_gsm8k_cot_strict(const std::string& text);
// flexible-extract: the last match of r"(-?[$0-9.,]{2,})|(-?[0-9]+)", its non-empty group.
std::string extract_last_number(const std::string& text);

// exact_match's normalisation for gsm8k: remove ",", "$", everything up to the last "#### ", a
// final "." (Python's "$" also matches before a trailing "\n"); then ASCII lower case.
std::string normalise_gsm8k_answer(const std::string& text);

// The filters of a generative task, in the yaml's order: "strict-match", "flexible-extract".
std::vector<std::string> generation_filter_names(TaskKind kind);

// One generation scored by every filter: 1 or 0 per filter, in generation_filter_names order.
std::vector<double> score_generation(TaskKind kind, const std::string& generation, const std::string& reference);

}  // namespace minitron
