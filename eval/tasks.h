// Multiple-choice benchmark files (JSONL in the Hugging Face datasets' field layouts) turned
// into the (context, continuation) requests lm-evaluation-harness builds for them.
//
// The harness sources these follow (EleutherAI/lm-evaluation-harness, v0.4 layout):
//  - hellaswag: lm_eval/tasks/hellaswag/{hellaswag.yaml,utils.py}: query = preprocess(
//    activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), choices = preprocess(ending).
//  - winogrande: lm_eval/tasks/winogrande/{default.yaml,preprocess_winogrande.py}: one context
//    per option (sentence up to "_" with the option substituted), one shared continuation
//    (the rest of the sentence after "_", stripped) — "partial scoring".
//  - mmlu: lm_eval/tasks/mmlu/default/_default_template_yaml and mmlu_<subject>.yaml: the
//    description "The following are multiple choice questions (with answers) about
//    <subject with spaces>.\n\n", "<question.strip()>\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:",
//    choices "A".."D", few-shot from the dev split's first K (sampler first_n).
//  - few-shot sampling (lm_eval/api/samplers.py ContextSampler.get_context / sample,
//    lm_eval/api/task.py, lm_eval/evaluator.py set_fewshot_seed): one random.Random(1234) per
//    task, advanced across documents in order; see FewshotSampler below.
//  - arc_easy / arc_challenge: lm_eval/tasks/arc/arc_easy.yaml: "Question: <q>\nAnswer:",
//    choices = choices.text, gold = choices.label.index(answerKey).
//  - multiple_choice: this project's generic layout {context, choices, label}.
//  - gsm8k: lm_eval/tasks/gsm8k/gsm8k.yaml: "Question: <question>\nAnswer:", target = the whole
//    answer (its "#### <number>" line included), few-shot from train (default sampler, K drawn).
//  - gsm8k_cot: lm_eval/tasks/gsm8k/gsm8k-cot.yaml: "Q: <question>\nA:", target =
//    answer.split('####')[-1].strip(); few-shot: the yaml's eight fixed exemplars (first_n).
//  - truthfulqa_mc1 / truthfulqa_mc2: lm_eval/tasks/truthfulqa/truthfulqa_mc1.yaml (mc2 includes
//    it): the fixed six-question QA preamble, "\n\nQ: <question>\nA:", choices =
//    mc1_targets.choices (mc2_targets.choices), gold 0; mc2's true answers are the labels before
//    the first 0 (utils.py process_results_mc2).
// Every continuation is target_delimiter " " + choice; few-shot examples are
// "<doc_to_text> <gold choice>" joined and followed by fewshot_delimiter "\n\n"
// (lm_eval/api/samplers.py).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/python_random.h"

namespace minitron {

enum class TaskKind {
  HellaSwag,
  Winogrande,
  Mmlu,
  ArcEasy,
  ArcChallenge,
  MultipleChoice,
  Gsm8k,
  Gsm8kCot,
  TruthfulQaMc1,
  TruthfulQaMc2
};

// "hellaswag", "winogrande", "mmlu", "arc_easy", "arc_challenge", "multiple_choice", "gsm8k",
// "gsm8k_cot", "truthfulqa_mc1", "truthfulqa_mc2".
TaskKind parse_task_kind(const std::string& name);
const char* task_kind_name(TaskKind kind);
// The names parse_task_kind accepts, comma-separated (for flag help and errors).
const char* task_kind_names();
// Whether the harness reports acc_norm for the task (hellaswag, arc, generic) or acc only.
bool task_reports_acc_norm(TaskKind kind);
// Whether the task generates text (generate_until: gsm8k, gsm8k_cot) rather than scoring choices.
bool task_is_generative(TaskKind kind);
// The task yaml's num_fewshot, the harness's default when --num_fewshot is not given (gsm8k 5,
// gsm8k_cot 8, the others 0).
std::int64_t task_default_shots(TaskKind kind);
// The task yaml's metadata.version, as the harness's results JSON reports it under "versions".
double task_version(TaskKind kind);

// One document after the harness's per-task processing.
struct TaskDoc {
  std::string query;                 // doc_to_text (winogrande: the sentence before "_")
  std::vector<std::string> choices;  // doc_to_choice: what continuations are built from and
                                     // what acc_norm divides by (winogrande: the options)
  std::string target;                // winogrande: the shared continuation text; gsm8k, gsm8k_cot:
                                     // doc_to_target (the reference answer, and a few-shot answer)
  int gold = 0;
  std::int64_t true_count = 0;  // truthfulqa_mc2: how many leading choices are true answers
  std::string subject;          // mmlu only
  nlohmann::json source;        // the JSON object as read: the harness removes the evaluated
                                // document from its few-shot draw by dict equality
};

// The harness's HellaSwag text clean-up: strip, " [title]" -> ". ", drop "[...]" spans,
// "  " -> " " (one pass, as str.replace does).
std::string hellaswag_preprocess(const std::string& text);
// Python's str.capitalize() on ASCII letters (first upper, the rest lower); other bytes kept.
std::string python_capitalize(const std::string& text);
// Python's str.strip() on ASCII whitespace.
std::string python_strip(const std::string& text);

// Parses one JSON object (a JSONL line) of the given task's layout. `where` names the line
// in errors ("file.jsonl:12").
TaskDoc parse_task_doc(TaskKind kind, const std::string& json_line, const std::string& where);
// All documents of a JSONL file (blank lines skipped).
std::vector<TaskDoc> load_task_file(TaskKind kind, const std::filesystem::path& path);

// One scored request: the model scores `continuation` after `context`.
struct ChoiceRequest {
  std::string context, continuation;
};
struct Question {
  std::vector<ChoiceRequest> requests;       // one per choice
  std::vector<std::int64_t> choice_lengths;  // acc_norm divisors: len(choice) in code points
  int gold = 0;
  std::string subject;
};

// A few-shot example's two halves: what doc_to_text gives (winogrande: the gold option's context)
// and its answer (the gold choice; winogrande: the shared continuation; gsm8k: the target). With a
// chat template and --fewshot-as-multiturn they are a user and an assistant turn.
std::string fewshot_question(TaskKind kind, const TaskDoc& doc);
std::string fewshot_answer(TaskKind kind, const TaskDoc& doc);
// The text one document contributes as a few-shot example, without the "\n\n" delimiter:
// fewshot_question + " " + fewshot_answer.
std::string fewshot_example(TaskKind kind, const TaskDoc& doc);
// mmlu's description ("The following are multiple choice questions (with answers) about
// <subject>.\n\n"); empty for the other tasks.
std::string task_description(TaskKind kind, const std::string& subject);
// The few-shot pool a task's yaml fixes (gsm8k_cot's eight exemplars), or nullptr when the
// examples come from a split (--fewshot-file, or the evaluated file).
const std::vector<TaskDoc>* builtin_fewshot_pool(TaskKind kind);
// The QA preamble truthfulqa_mc1/mc2 put before every question (truthfulqa_mc1.yaml).
extern const char* const kTruthfulQaPreamble;
// The few-shot prefix: for mmlu the subject description, then each example + "\n\n".
std::string fewshot_prefix(TaskKind kind, const std::string& subject, const std::vector<const TaskDoc*>& shots);
// The requests for `doc` after `prefix`.
Question build_question(TaskKind kind, const TaskDoc& doc, const std::string& prefix);

// lm-evaluation-harness's few-shot selection, reproduced draw for draw:
//  - the default sampler (hellaswag, winogrande, arc, multiple_choice): per document,
//    fewshotex = rnd.sample(pool, n); examples = [x for x in fewshotex if x != doc][:shots],
//    with one rnd = random.Random(1234) (fewshot_random_seed) per task, advanced across the
//    documents in order (ContextSampler.get_context; Task.build_all_requests).
//  - mmlu's first_n sampler: the first n documents of the subject's pool, then the same
//    removal (FirstNSampler.sample); gsm8k_cot's first_n over its eight fixed exemplars.
//  - n = shots + 1 when the task config's fewshot_split == test_split, else shots. In the
//    harness's yaml files hellaswag and winogrande set neither (None == None: shots + 1),
//    arc sets test_split only (shots), mmlu both, differently (shots); gsm8k: train vs test
//    (shots); gsm8k_cot: test_split only (shots); truthfulqa: neither (shots + 1). Without a few-shot
//    file the pool is the evaluated file itself, i.e. fewshot_split == test_split (shots + 1).
//  - x != doc is dict equality: TaskDoc::source compared as JSON values. The harness keeps
//    fewer than `shots` examples when a drawn document equals the evaluated one and n = shots.
inline constexpr std::int64_t kHarnessFewshotSeed = 1234;

// n for a task: documents drawn per evaluated document.
std::int64_t fewshot_draw_count(TaskKind kind, bool pool_is_eval_docs, std::int64_t shots);

class FewshotSampler {
 public:
  // pool must outlive the sampler; pool_is_eval_docs: the pool is the evaluated file itself.
  FewshotSampler(TaskKind kind, const std::vector<TaskDoc>& pool, bool pool_is_eval_docs, std::int64_t shots,
                 std::int64_t seed = kHarnessFewshotSeed);
  // The examples for the next evaluated document, in prompt order. Call once per document in
  // document order (the RNG advances). shots == 0 draws nothing, as the harness.
  std::vector<const TaskDoc*> next(const TaskDoc& doc);

 private:
  TaskKind kind_;
  const std::vector<TaskDoc>& pool_;
  std::int64_t shots_, draws_;
  PythonRandom rng_;
};

// Number of Unicode code points of UTF-8 text (Python's len()); invalid bytes count one each.
std::int64_t utf8_length(const std::string& text);

}  // namespace minitron
