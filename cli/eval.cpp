// minitron eval: perplexity of a model on token shards (--data), or lm-evaluation-harness
// compatible multiple-choice accuracy on a task file (--task, --task-file).
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_setup.h"
#include "cli/options.h"
#include "data/dataloader.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "eval/run_task.h"
#include "kernels/make_backend.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "train/evaluate.h"

namespace minitron::cli {

namespace {

nlohmann::json json_number(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }

int eval_task(const cxxopts::ParseResult& r, const std::string& model_dir) {
  const TaskKind kind = parse_task_kind(r["task"].as<std::string>());
  const std::string task_file = required<std::string>(r, "task-file");
  TaskRunOptions run;
  run.shots = in_range<std::int64_t>(r, "shots", 0, 1000);
  run.limit = in_range<std::int64_t>(r, "limit", 0, std::int64_t{1} << 40);
  run.max_length = in_range<std::int64_t>(r, "max-length", 0, std::int64_t{1} << 24);
  run.show_progress = !r.count("json");
  const std::vector<TaskDoc> docs = load_task_file(kind, task_file);
  std::vector<TaskDoc> fewshot_docs;
  if (r.count("fewshot-file")) fewshot_docs = load_task_file(kind, r["fewshot-file"].as<std::string>());

  const Tokenizer tokenizer = Tokenizer::load(r.count("tokenizer") ? r["tokenizer"].as<std::string>() : model_dir);
  run.encode.add_special_tokens = r.count("add-bos") > 0;
  run.encode.prefix_token = prefix_token_id(tokenizer);
  LoadedCheckpoint checkpoint = load_checkpoint(model_dir);
  check_sequence_length("--max-length", run.max_length, checkpoint.config);
  if (tokenizer.vocab_size() > checkpoint.config.vocab_size)
    fail_expected("--tokenizer", str("vocabulary of ", tokenizer.vocab_size(), " ids"),
                  str("at most the model's vocab_size ", checkpoint.config.vocab_size));
  auto backend = make_backend(choose_device(r["device"].as<std::string>()));
  const TaskRunResult result = run_task(kind, docs, r.count("fewshot-file") ? &fewshot_docs : nullptr, tokenizer,
                                        checkpoint.config, checkpoint.params, *backend, run);

  if (r.count("json")) {
    nlohmann::json rows = nlohmann::json::array();
    for (const MetricRow& row : result.rows)
      rows.push_back({{"task", row.task},
                      {"metric", row.metric},
                      {"value", json_number(row.value)},
                      {"stderr", json_number(row.stderr_value)},
                      {"count", row.count}});
    nlohmann::json out = {{"model", model_dir},       {"task", task_kind_name(kind)},         {"task_file", task_file},
                          {"shots", run.shots},       {"documents", result.questions.size()}, {"results", rows},
                          {"device", backend->name()}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("%-44s %-9s %8s %8s %7s\n", "task", "metric", "value", "stderr", "n");
    for (const MetricRow& row : result.rows) {
      char err[32] = "N/A";
      if (!std::isnan(row.stderr_value)) std::snprintf(err, sizeof err, "%.4f", row.stderr_value);
      std::printf("%-44s %-9s %8.4f %8s %7lld\n", row.task.c_str(), row.metric.c_str(), row.value, err,
                  static_cast<long long>(row.count));
    }
  }
  return 0;
}

}  // namespace

int eval(int argc, char** argv) {
  cxxopts::Options options("eval",
                           "Mean next-token cross-entropy and perplexity of a model on token shards (--data),\n"
                           "or lm-evaluation-harness multiple-choice accuracy on a task file (--task).");
  // clang-format off
  options.add_options()
      ("model", "HF checkpoint directory", cxxopts::value<std::string>())
      ("data", "token shards: a file, a glob or a comma list", cxxopts::value<std::string>())
      ("sequence-length", "tokens per window", cxxopts::value<std::int64_t>()->default_value("256"))
      ("batch-size", "windows per forward pass", cxxopts::value<std::int64_t>()->default_value("8"))
      ("max-windows", "evaluate at most N windows (0 = all)", cxxopts::value<std::int64_t>()->default_value("0"))
      ("device", "cpu or cuda (default: cuda when a GPU is present)", cxxopts::value<std::string>()->default_value(""))
      ("json", "print one JSON object instead of text");
  options.add_options("task")
      ("task", "hellaswag, winogrande, mmlu, arc_easy, arc_challenge or multiple_choice", cxxopts::value<std::string>())
      ("task-file", "the task's documents: JSONL in the Hugging Face dataset's field layout", cxxopts::value<std::string>())
      ("shots", "few-shot examples per question", cxxopts::value<std::int64_t>()->default_value("0"))
      ("fewshot-file", "JSONL the few-shot examples are drawn from, as lm-evaluation-harness draws them "
                       "(random.Random(1234); mmlu: the first K of the subject's dev split); give the harness's "
                       "split (train; mmlu: dev). Default: the task file itself, the question excluded",
       cxxopts::value<std::string>())
      ("limit", "score only the first N documents (0 = all)", cxxopts::value<std::int64_t>()->default_value("0"))
      ("max-length", "left-truncate requests to N tokens (0 = max_position_embeddings)",
       cxxopts::value<std::int64_t>()->default_value("0"))
      ("tokenizer", "tokenizer.json (default: the model directory's)", cxxopts::value<std::string>())
      ("add-bos", "encode with the tokenizer's special tokens (BOS); the harness's default for causal models is off");
  // clang-format on
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;
  const std::string model_dir = required<std::string>(r, "model");
  if (r.count("task")) return eval_task(r, model_dir);
  if (!r.count("data"))
    fail("--data: missing (give --data SHARDS for perplexity, or --task NAME --task-file FILE for a benchmark)");
  const auto shards = resolve_shards(required<std::string>(r, "data"));
  const std::int64_t T = in_range<std::int64_t>(r, "sequence-length", 1, 1 << 20);
  const std::int64_t B = in_range<std::int64_t>(r, "batch-size", 1, 1 << 20);
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
