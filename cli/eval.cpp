// minitron eval: perplexity of a model on token shards (--data), lm-evaluation-harness compatible
// scores on a task file (--task, --task-file), or a paper's table of tasks (--suite, --task-dir).
// Tasks and suites run data-parallel when launched as several processes (torchrun, srun).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_setup.h"
#include "cli/options.h"
#include "data/chat_template.h"
#include "data/dataloader.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "dist/communicator.h"
#include "dist/environment.h"
#include "eval/generate.h"
#include "eval/results_report.h"
#include "eval/run_task.h"
#include "kernels/make_backend.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "train/evaluate.h"
#include "util/files.h"

namespace minitron::cli {

namespace {

nlohmann::json json_number(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }

std::string format_stderr(double v) {
  char err[32] = "N/A";
  if (!std::isnan(v)) std::snprintf(err, sizeof err, "%.4f", v);
  return err;
}

void print_rows(const TaskReport& report) {
  for (const MetricRow& row : report.result.rows)
    std::printf("%-44s %-12s %-17s %8.4f %8s %7lld\n", row.task.c_str(), row.metric.c_str(), row.filter.c_str(),
                row.value, format_stderr(row.stderr_value).c_str(), static_cast<long long>(row.count));
  if (task_is_generative(report.kind))
    std::printf("%s: %lld of %zu generations reached --max-gen-toks and were scored as they stood\n",
                task_kind_name(report.kind), static_cast<long long>(report.result.generations_at_limit),
                report.result.generation_scores.size());
}

// What every task of one run shares: the model, tokenizer, engine, ranks and prompt settings.
struct EvalSession {
  std::string model_dir;
  Tokenizer tokenizer;
  LoadedCheckpoint checkpoint;
  DistributedEnvironment environment;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> communicator;
  std::unique_ptr<ChatTemplate> chat_template;  // on the heap: options.format points at it
  TaskRunOptions options;                       // shots set per task
  bool lead() const { return environment.rank == 0; }
};

// Loads the model and tokenizer, joins the other ranks of a data-parallel launch, reads the chat
// template (--apply-chat-template) and the flags every task shares.
EvalSession open_session(const cxxopts::ParseResult& r, const std::string& model_dir) {
  EvalSession s{model_dir,
                Tokenizer::load(r.count("tokenizer") ? r["tokenizer"].as<std::string>() : model_dir),
                load_checkpoint(model_dir),
                {},
                {},
                {},
                {},
                {}};
  TaskRunOptions& o = s.options;
  o.limit = in_range<std::int64_t>(r, "limit", 0, std::int64_t{1} << 40);
  o.max_length = in_range<std::int64_t>(r, "max-length", 0, std::int64_t{1} << 24);
  o.max_gen_toks = in_range<std::int64_t>(r, "max-gen-toks", 1, std::int64_t{1} << 24);
  if (r.count("batch-size")) o.batch_size = in_range<std::int64_t>(r, "batch-size", 1, 1 << 16);
  o.encode.add_special_tokens = r.count("add-bos") > 0;
  o.encode.prefix_token = prefix_token_id(s.tokenizer);
  o.stop_tokens = end_of_text_tokens(s.checkpoint.config, s.tokenizer);
  check_sequence_length("--max-length", o.max_length, s.checkpoint.config);
  if (s.tokenizer.vocab_size() > s.checkpoint.config.vocab_size)
    fail_expected("--tokenizer", str("vocabulary of ", s.tokenizer.vocab_size(), " ids"),
                  str("at most the model's vocab_size ", s.checkpoint.config.vocab_size));
  if (r.count("system-instruction")) o.format.system_instruction = r["system-instruction"].as<std::string>();
  o.format.fewshot_as_multiturn = r.count("fewshot-as-multiturn") > 0;
  if (o.format.fewshot_as_multiturn && !r.count("apply-chat-template"))
    fail_expected("--fewshot-as-multiturn", "given without --apply-chat-template",
                  "--apply-chat-template too (the turns are the chat template's)");
  if (r.count("apply-chat-template")) {
    const std::string config_path =
        r.count("tokenizer-config") ? r["tokenizer-config"].as<std::string>() : model_dir + "/tokenizer_config.json";
    ChatTemplateConfig config = load_chat_template_config(config_path, !r.count("chat-template"));
    if (r.count("chat-template")) config.chat_template = read_text_file(r["chat-template"].as<std::string>());
    s.chat_template = std::make_unique<ChatTemplate>(config.chat_template);
    o.format.chat_template = s.chat_template.get();
    o.format.chat_variables.bos_token = config.bos_token;
    o.format.chat_variables.eos_token = config.eos_token;
    o.format.chat_variables.extra_variables = config.other_special_tokens;
    if (r.count("date")) o.format.chat_variables.today = parse_calendar_date(r["date"].as<std::string>());
  }

  s.environment = distributed_environment();
  if (!s.lead()) silence_stdout();
  std::string device = choose_device(r["device"].as<std::string>());
  if (s.environment.world_size > 1) device = device_for_local_rank(device, s.environment.local_rank);
  s.backend = make_backend(device);
  s.communicator = make_communicator(*s.backend, s.environment);
  o.communicator = s.communicator.get();
  o.show_progress = s.lead() && !r.count("json");
  if (s.environment.world_size > 1)
    std::printf("data-parallel evaluation: %lld processes (rank 0 at %s:%d), each scoring every %lld-th document\n",
                static_cast<long long>(s.environment.world_size), s.environment.master_address.c_str(),
                s.environment.master_port, static_cast<long long>(s.environment.world_size));
  return s;
}

TaskReport run_one(EvalSession& s, TaskKind kind, std::int64_t shots, const std::string& task_file,
                   const std::optional<std::string>& fewshot_file) {
  const std::vector<TaskDoc> docs = load_task_file(kind, task_file);
  std::vector<TaskDoc> fewshot_docs;
  if (fewshot_file) fewshot_docs = load_task_file(kind, *fewshot_file);
  TaskRunOptions options = s.options;
  options.shots = shots;
  TaskReport report{kind, shots, static_cast<std::int64_t>(docs.size()), {}};
  report.result = run_task(kind, docs, fewshot_file ? &fewshot_docs : nullptr, s.tokenizer, s.checkpoint.config,
                           s.checkpoint.params, *s.backend, options);
  return report;
}

nlohmann::ordered_json run_config(const EvalSession& s, const cxxopts::ParseResult& r) {
  const TaskRunOptions& o = s.options;
  return {{"model", s.model_dir},
          {"device", s.backend->name()},
          {"limit", o.limit > 0 ? nlohmann::ordered_json(o.limit) : nlohmann::ordered_json(nullptr)},
          {"max_length", o.max_length > 0 ? o.max_length : s.checkpoint.config.max_position_embeddings},
          {"max_gen_toks", o.max_gen_toks},
          {"add_bos_token", o.encode.add_special_tokens},
          {"apply_chat_template", r.count("apply-chat-template") > 0},
          {"fewshot_as_multiturn", o.format.fewshot_as_multiturn},
          {"system_instruction", o.format.system_instruction ? nlohmann::ordered_json(*o.format.system_instruction)
                                                             : nlohmann::ordered_json(nullptr)},
          {"fewshot_seed", kHarnessFewshotSeed},
          {"world_size", s.environment.world_size}};
}

void write_results_json(const EvalSession& s, const cxxopts::ParseResult& r, const std::vector<TaskReport>& reports) {
  if (!r.count("output-json") || !s.lead()) return;
  const std::string path = r["output-json"].as<std::string>();
  write_bytes_atomically(path, harness_results_json(reports, run_config(s, r)).dump(2) + "\n");
}

int eval_task(const cxxopts::ParseResult& r, const std::string& model_dir) {
  const TaskKind kind = parse_task_kind(r["task"].as<std::string>());
  const std::string task_file = required<std::string>(r, "task-file");
  const std::int64_t shots = r.count("shots") ? in_range<std::int64_t>(r, "shots", 0, 1000) : task_default_shots(kind);
  if (r.count("fewshot-file") && builtin_fewshot_pool(kind))
    fail_expected("--fewshot-file", str("given for ", task_kind_name(kind)),
                  "no few-shot file: the task's yaml fixes its exemplars");
  EvalSession s = open_session(r, model_dir);
  std::vector<TaskReport> reports;
  reports.push_back(
      run_one(s, kind, shots, task_file,
              r.count("fewshot-file") ? std::optional(r["fewshot-file"].as<std::string>()) : std::nullopt));
  const TaskReport& report = reports.back();
  write_results_json(s, r, reports);
  if (r.count("json")) {
    nlohmann::json rows = nlohmann::json::array();
    for (const MetricRow& row : report.result.rows)
      rows.push_back({{"task", row.task},
                      {"metric", row.metric},
                      {"filter", row.filter},
                      {"value", json_number(row.value)},
                      {"stderr", json_number(row.stderr_value)},
                      {"count", row.count}});
    const std::size_t scored =
        task_is_generative(kind) ? report.result.generation_scores.size() : report.result.questions.size();
    nlohmann::json out = {{"model", model_dir},         {"task", task_kind_name(kind)},
                          {"task_file", task_file},     {"shots", shots},
                          {"documents", scored},        {"results", rows},
                          {"device", s.backend->name()}};
    if (task_is_generative(kind)) out["generations_at_length_limit"] = report.result.generations_at_limit;
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("%-44s %-12s %-17s %8s %8s %7s\n", "task", "metric", "filter", "value", "stderr", "n");
    print_rows(report);
  }
  return 0;
}

int eval_suite(const cxxopts::ParseResult& r, const std::string& model_dir) {
  const std::string name = r["suite"].as<std::string>();
  const std::vector<SuiteTask>& tasks = suite_tasks(name);
  const std::filesystem::path dir = required<std::string>(r, "task-dir");
  check_suite_files(name, dir);  // every file before the model loads: a missing export fails at once
  EvalSession s = open_session(r, model_dir);
  std::vector<TaskReport> reports;
  for (const SuiteTask& t : tasks) {
    reports.push_back(run_one(s, t.kind, t.shots, (dir / t.task_file).string(),
                              t.fewshot_file ? std::optional((dir / t.fewshot_file).string()) : std::nullopt));
    if (!r.count("json")) print_rows(reports.back());
  }
  write_results_json(s, r, reports);
  if (r.count("json"))
    std::printf("%s\n", harness_results_json(reports, run_config(s, r)).dump().c_str());
  else
    std::printf("\n%s", suite_table({{model_dir, suite_cells(name, reports)}}).c_str());
  return 0;
}

}  // namespace

int eval(int argc, char** argv) {
  cxxopts::Options options(
      "eval",
      "Mean next-token cross-entropy and perplexity of a model on token shards (--data),\n"
      "or lm-evaluation-harness scores on a task file (--task) or a paper's suite of tasks (--suite).");
  // clang-format off
  options.add_options()
      ("model", "HF checkpoint directory", cxxopts::value<std::string>())
      ("data", "token shards: a file, a glob or a comma list", cxxopts::value<std::string>())
      ("sequence-length", "tokens per window", cxxopts::value<std::int64_t>()->default_value("256"))
      ("batch-size", "windows per forward pass (--data; default 8), or documents generated at once by generative "
                     "tasks (default 32; each stops on its own and the next takes its place)",
       cxxopts::value<std::int64_t>())
      ("max-windows", "evaluate at most N windows (0 = all)", cxxopts::value<std::int64_t>()->default_value("0"))
      ("device", "cpu or cuda (default: cuda when a GPU is present)", cxxopts::value<std::string>()->default_value(""))
      ("json", "print one JSON object instead of text");
  options.add_options("task")
      ("task", task_kind_names(), cxxopts::value<std::string>())
      ("task-file", "the task's documents: JSONL in the Hugging Face dataset's field layout", cxxopts::value<std::string>())
      ("shots", "few-shot examples per question (default: the harness yaml's num_fewshot: gsm8k 5, gsm8k_cot 8, "
                "others 0)", cxxopts::value<std::int64_t>())
      ("fewshot-file", "JSONL the few-shot examples are drawn from, as lm-evaluation-harness draws them "
                       "(random.Random(1234); mmlu: the first K of the subject's dev split); give the harness's "
                       "split (train; mmlu: dev). Default: the task file itself, the question excluded",
       cxxopts::value<std::string>())
      ("limit", "score only the first N documents (0 = all)", cxxopts::value<std::int64_t>()->default_value("0"))
      ("max-length", "left-truncate requests to N tokens (0 = max_position_embeddings)",
       cxxopts::value<std::int64_t>()->default_value("0"))
      ("tokenizer", "tokenizer.json (default: the model directory's)", cxxopts::value<std::string>())
      ("add-bos", "encode with the tokenizer's special tokens (BOS); the harness's default for causal models is off")
      ("max-gen-toks", "generative tasks: at most N new tokens (HFLM's max_gen_toks); the prompt keeps the last "
                       "max-length - N tokens", cxxopts::value<std::int64_t>()->default_value("256"))
      ("system-instruction", "a system prompt before the few-shot examples (the harness's --system_instruction)",
       cxxopts::value<std::string>())
      ("apply-chat-template", "render each prompt with the checkpoint's chat_template, as lm_eval --apply_chat_template")
      ("fewshot-as-multiturn", "with --apply-chat-template: each few-shot example a user and an assistant turn")
      ("tokenizer-config", "tokenizer_config.json holding the chat template (default: the model directory's)",
       cxxopts::value<std::string>())
      ("chat-template", "a Jinja file that replaces the checkpoint's chat_template", cxxopts::value<std::string>())
      ("date", "the day a template's strftime_now prints, YYYY-MM-DD", cxxopts::value<std::string>())
      ("suite", "run a paper's table: minitron-base (winogrande 5, arc_challenge 25, mmlu 5, hellaswag 10, gsm8k 5, "
                "truthfulqa_mc2 0)", cxxopts::value<std::string>())
      ("task-dir", "with --suite: the directory of the exported task files (names in eval/README.md)",
       cxxopts::value<std::string>())
      ("output-json", "also write lm-evaluation-harness's results JSON (results, n-shot, versions, stderr) here",
       cxxopts::value<std::string>());
  // clang-format on
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;
  const std::string model_dir = required<std::string>(r, "model");
  if (r.count("task") && r.count("suite")) fail("--suite: given with --task (expected one of them)");
  if (r.count("task")) return eval_task(r, model_dir);
  if (r.count("suite")) return eval_suite(r, model_dir);
  if (launched_world_size() > 1)
    fail_expected("minitron eval --data", "launched as several processes",
                  "one process for perplexity (--task and --suite evaluate data-parallel)");
  if (!r.count("data"))
    fail("--data: missing (give --data SHARDS for perplexity, or --task NAME --task-file FILE for a benchmark)");
  const auto shards = resolve_shards(required<std::string>(r, "data"));
  const std::int64_t T = in_range<std::int64_t>(r, "sequence-length", 1, 1 << 20);
  const std::int64_t B = r.count("batch-size") ? in_range<std::int64_t>(r, "batch-size", 1, 1 << 20) : 8;
  const std::int64_t max_windows = in_range<std::int64_t>(r, "max-windows", 0, std::int64_t{1} << 40);

  LoadedCheckpoint checkpoint = load_checkpoint(model_dir);
  check_sequence_length("--sequence-length", T, checkpoint.config);
  auto backend = make_backend(choose_device(r["device"].as<std::string>()));
  EvalLoader loader(shards, B, T, max_windows > 0 ? std::optional<std::int64_t>(max_windows) : std::nullopt,
                    checkpoint.config.vocab_size);
  if (loader.total_windows() == 0)
    fail_expected("--data", "no complete window in the shards", str("at least ", T + 1, " tokens"));
  LlamaModel model(checkpoint.config, *backend, std::min(B, loader.total_windows()), T, ModelMode::Inference);
  model.set_parameters(checkpoint.params);
  LossWorkspace workspace(*backend, checkpoint.config.vocab_size, model.max_batch() * T);
  EvalResult result = evaluate_loss(model, loader, workspace, /*show_progress=*/!r.count("json"));

  if (r.count("json")) {
    nlohmann::json out = {{"model", model_dir},       {"loss", result.loss},       {"perplexity", result.perplexity},
                          {"tokens", result.tokens},  {"windows", result.windows}, {"sequence_length", T},
                          {"device", backend->name()}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("loss %.4f nats/token | perplexity %.3f | %lld tokens in %lld windows of %lld\n", result.loss,
                result.perplexity, static_cast<long long>(result.tokens), static_cast<long long>(result.windows),
                static_cast<long long>(T));
  }
  return 0;
}

}  // namespace minitron::cli
