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

enum class TaskKind { HellaSwag, Winogrande, Mmlu, ArcEasy, ArcChallenge, MultipleChoice };

// "hellaswag", "winogrande", "mmlu", "arc_easy", "arc_challenge", "multiple_choice".
TaskKind parse_task_kind(const std::string& name);
const char* task_kind_name(TaskKind kind);
// Whether the harness reports acc_norm for the task (hellaswag, arc, generic) or acc only.
bool task_reports_acc_norm(TaskKind kind);

// One document after the harness's per-task processing.
struct TaskDoc {
  std::string query;                 // doc_to_text (winogrande: the sentence before "_")
  std::vector<std::string> choices;  // doc_to_choice: what continuations are built from and
                                     // what acc_norm divides by (winogrande: the options)
  std::string target;                // winogrande only: the shared continuation text
  int gold = 0;
  std::string subject;    // mmlu only
  nlohmann::json source;  // the JSON object as read: the harness removes the evaluated
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

// The text one document contributes as a few-shot example, without the "\n\n" delimiter.
std::string fewshot_example(TaskKind kind, const TaskDoc& doc);
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
//    removal (FirstNSampler.sample).
//  - n = shots + 1 when the task config's fewshot_split == test_split, else shots. In the
//    harness's yaml files hellaswag and winogrande set neither (None == None: shots + 1),
//    arc sets test_split only (shots), mmlu both, differently (shots). Without a few-shot
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
