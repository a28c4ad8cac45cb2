#include "pipeline/pipeline.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "data/dataloader.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "eval/generate.h"
#include "eval/results_report.h"
#include "eval/run_task.h"
#include "kernels/make_backend.h"
#include "model/checkpoint.h"
#include "pipeline/report.h"
#include "train/evaluate.h"
#include "util/checked_json.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void invoke(const char* step, CommandFunction command, std::vector<std::string> args) {
  MINITRON_ASSERT(command != nullptr, "pipeline: no command for step ", step);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string line = "  $ minitron";
  for (const std::string& a : args) line += " " + a;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  const int rc = command(static_cast<int>(args.size()), argv.data());
  if (rc != 0) fail(str("pipeline step ", step, ": 'minitron ", args[0], "' exited with status ", rc));
}

std::string number(double v) {
  std::ostringstream s;
  s.precision(10);
  s << v;
  return s.str();
}

std::int64_t batch_of(const Recipe& r, const RecipeTraining& t) {
  return t.batch_size > 0 ? t.batch_size : r.batch_size;
}

// Sequences per optimizer step as the recipe asks for them (grad_accumulation's: on one process).
std::int64_t sequences_per_step(const Recipe& r, const RecipeTraining& t) {
  return t.global_batch_size > 0 ? t.global_batch_size : batch_of(r, t) * t.grad_accumulation;
}

// The flags every training step shares (train, correct and distill take the same ones).
std::vector<std::string> training_flags(const Recipe& r, const RecipeTraining& t, const fs::path& output,
                                        double learning_rate, double min_learning_rate) {
  const std::int64_t eval_interval = t.eval_interval > 0 ? t.eval_interval : std::max<std::int64_t>(1, t.steps / 10);
  std::vector<std::string> f = {"--data",
                                r.train_data,
                                "--validation-data",
                                r.validation_data,
                                "--output",
                                output.string(),
                                "--batch-size",
                                std::to_string(batch_of(r, t)),
                                "--sequence-length",
                                std::to_string(r.sequence_length),
                                "--steps",
                                std::to_string(t.steps),
                                "--learning-rate",
                                number(learning_rate),
                                "--min-learning-rate",
                                number(min_learning_rate),
                                "--warmup-steps",
                                std::to_string(t.warmup_steps),
                                "--weight-decay",
                                number(t.weight_decay),
                                "--seed",
                                std::to_string(r.seed),
                                "--eval-interval",
                                std::to_string(eval_interval),
                                "--eval-windows",
                                std::to_string(r.eval_windows),
                                "--save-dtype",
                                r.save_dtype,
                                "--log-interval",
                                std::to_string(std::max<std::int64_t>(1, t.steps / 20)),
                                "--resume"};
  if (t.global_batch_size > 0)
    f.insert(f.end(), {"--global-batch-size", std::to_string(t.global_batch_size)});
  else
    f.insert(f.end(), {"--grad-accumulation", std::to_string(t.grad_accumulation)});
  if (!r.device.empty()) f.insert(f.end(), {"--device", r.device});
  if (t.recompute != "none") f.insert(f.end(), {"--recompute", t.recompute});
  if (t.zero_stage != 0) f.insert(f.end(), {"--zero-stage", std::to_string(t.zero_stage)});
  return f;
}

class StepRunner {
 public:
  explicit StepRunner(const fs::path& run_dir) : run_dir_(run_dir) {}
  // Runs body unless dir/done.json exists; done.json is written last, so an interrupted step
  // is rerun (training steps then resume from their newest checkpoint).
  template <typename Body>
  void run(const std::string& name, const fs::path& dir, Body&& body) {
    PipelineStepStatus status;
    status.name = name;
    if (fs::exists(dir / "done.json")) {
      status.skipped = true;
      std::printf("== step %s: already done (skipped; delete %s to redo it)\n", name.c_str(),
                  (dir / "done.json").c_str());
    } else {
      std::printf("== step %s\n", name.c_str());
      std::fflush(stdout);
      fs::create_directories(dir);
      const auto t0 = std::chrono::steady_clock::now();
      body();
      status.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      write_bytes_atomically(dir / "done.json", json{{"step", name}, {"seconds", status.seconds}}.dump(2) + "\n");
      std::printf("== step %s: done in %.1f s\n", name.c_str(), status.seconds);
    }
    std::fflush(stdout);
    steps_.push_back(status);
  }
  std::vector<PipelineStepStatus> steps() const { return steps_; }

 private:
  fs::path run_dir_;
  std::vector<PipelineStepStatus> steps_;
};

std::string prune_target_flags_description(const RecipeStudent& s) {
  std::string d;
  auto add = [&](const char* k, const std::optional<std::int64_t>& v) {
    if (v) d += str(d.empty() ? "" : ", ", k, " ", *v);
  };
  add("hidden", s.hidden_size);
  add("ffn", s.intermediate_size);
  add("heads", s.num_attention_heads);
  add("kv heads", s.num_key_value_heads);
  add("layers", s.num_layers);
  if (!s.drop_layers.empty()) d += str(d.empty() ? "" : ", ", "drop ", s.drop_layers);
  if (!s.target_params.empty()) d += str(d.empty() ? "" : ", ", "budget ", s.target_params);
  if (!s.layer_criterion.empty()) d += str(d.empty() ? "" : ", ", "layers by ", s.layer_criterion);
  return d;
}

}  // namespace

std::vector<PipelineStepStatus> run_pipeline(const Recipe& recipe, const fs::path& run_dir,
                                             const PipelineCommands& commands) {
  if (!fs::is_directory(recipe.teacher))
    fail_expected(str("recipe teacher ", recipe.teacher.string()), "not a directory", "an HF checkpoint directory");
  const ModelConfig teacher_config = load_model_config(recipe.teacher);
  // Task files and the tokenizer are checked now, not after hours of training at the evaluate step.
  std::vector<RecipeTask> all_tasks = recipe.tasks;
  if (recipe.importance_task) all_tasks.push_back(*recipe.importance_task);
  for (const RecipeTask& task : all_tasks) {
    load_task_file(parse_task_kind(task.task), task.task_file);
    if (!task.fewshot_file.empty()) load_task_file(parse_task_kind(task.task), task.fewshot_file);
  }
  if (recipe.suite) check_suite_files(recipe.suite->name, recipe.suite->task_dir);
  if ((!all_tasks.empty() || recipe.suite) && !fs::is_regular_file(recipe.teacher / "tokenizer.json"))
    fail_expected(str("recipe tasks (evaluation.tasks, importance.task) with teacher ", recipe.teacher.string()),
                  "the teacher has no tokenizer.json",
                  "a tokenizer.json beside the teacher's config.json (every derived model copies it)");
  fs::create_directories(run_dir);
  StepRunner steps(run_dir);
  const std::string device_flag = recipe.device;
  auto with_device = [&](std::vector<std::string> args) {
    if (!device_flag.empty()) args.insert(args.end(), {"--device", device_flag});
    return args;
  };

  // 1. Teacher correction: the teacher fine-tuned on the distillation data at 1/5 of the peak LR.
  fs::path corrected = recipe.teacher;
  if (recipe.correction.enabled) {
    const fs::path dir = run_dir / "01-correct";
    steps.run("correct", dir, [&] {
      std::vector<std::string> args = {"correct", "--model", recipe.teacher.string(), "--original-learning-rate",
                                       number(recipe.correction.original_learning_rate)};
      auto flags = training_flags(recipe, recipe.correction, dir, recipe.correction.learning_rate,
                                  recipe.correction.min_learning_rate);
      args.insert(args.end(), flags.begin(), flags.end());
      invoke("correct", commands.correct, args);
    });
    corrected = dir / "model";
  }

  // 2. Importance of the (corrected) teacher's heads, neurons, channels and layers.
  const fs::path scores = run_dir / "02-importance" / "scores.json";
  std::set<std::int64_t> block_sizes;
  for (const RecipeStudent& s : recipe.students)
    if (s.num_layers && *s.num_layers < teacher_config.num_hidden_layers)
      block_sizes.insert(teacher_config.num_hidden_layers - *s.num_layers);
  steps.run("importance", scores.parent_path(), [&] {
    std::vector<std::string> args = {
        "importance",
        "--model",
        corrected.string(),
        "--data",
        recipe.calibration_data,
        "--samples",
        std::to_string(recipe.importance_samples),
        "--sequence-length",
        std::to_string(recipe.importance_sequence_length > 0 ? recipe.importance_sequence_length
                                                             : recipe.sequence_length),
        "--batch-size",
        std::to_string(recipe.importance_batch_size > 0 ? recipe.importance_batch_size : recipe.batch_size),
        "--layer-windows",
        std::to_string(recipe.importance_layer_windows),
        "--layer-data",
        recipe.validation_data,
        "--output",
        scores.string()};
    if (!block_sizes.empty()) {
      std::string sizes;
      for (std::int64_t k : block_sizes) sizes += (sizes.empty() ? "" : ",") + std::to_string(k);
      args.insert(args.end(), {"--block-size", sizes});
    }
    if (const auto& t = recipe.importance_task) {
      args.insert(args.end(), {"--task", t->task, "--task-file", t->task_file, "--shots", std::to_string(t->shots),
                               "--limit", std::to_string(t->limit)});
      if (!t->fewshot_file.empty()) args.insert(args.end(), {"--fewshot-file", t->fewshot_file});
    }
    invoke("importance", commands.importance, with_device(args));
  });

  // 3-5. Per student: prune, distill from the corrected teacher, and (when asked) the same
  // architecture from random init trained with cross-entropy on the same tokens.
  std::vector<ReportModel> models;
  models.push_back({"teacher", "teacher (original)", recipe.teacher, 0});
  if (recipe.correction.enabled)
    models.push_back(
        {"corrected", "teacher (corrected)", corrected,
         recipe.correction.steps * sequences_per_step(recipe, recipe.correction) * recipe.sequence_length});
  const std::int64_t distill_tokens =
      recipe.distillation.steps * sequences_per_step(recipe, recipe.distillation) * recipe.sequence_length;
  for (const RecipeStudent& s : recipe.students) {
    const fs::path pruned = run_dir / str("03-prune-", s.name);
    steps.run("prune-" + s.name, pruned, [&] {
      std::vector<std::string> args = {"prune",
                                       "--model",
                                       corrected.string(),
                                       "--scores",
                                       scores.string(),
                                       "--output",
                                       (pruned / "model").string(),
                                       "--save-dtype",
                                       recipe.save_dtype,
                                       "--data",
                                       recipe.validation_data,
                                       "--sequence-length",
                                       std::to_string(recipe.sequence_length),
                                       "--batch-size",
                                       std::to_string(recipe.batch_size)};
      auto add = [&](const char* flag, const std::optional<std::int64_t>& v) {
        if (v) args.insert(args.end(), {flag, std::to_string(*v)});
      };
      add("--hidden-size", s.hidden_size);
      add("--intermediate-size", s.intermediate_size);
      add("--num-attention-heads", s.num_attention_heads);
      add("--num-key-value-heads", s.num_key_value_heads);
      add("--num-layers", s.num_layers);
      if (!s.drop_layers.empty()) args.insert(args.end(), {"--drop-layers", s.drop_layers});
      if (!s.target_params.empty()) args.insert(args.end(), {"--target-params", s.target_params});
      if (!s.layer_criterion.empty()) args.insert(args.end(), {"--layer-criterion", s.layer_criterion});
      invoke("prune", commands.prune, with_device(args));
    });
    models.push_back({"pruned-" + s.name,
                      str(s.name, " pruned (", prune_target_flags_description(s), "), before distillation"),
                      pruned / "model", 0});

    const fs::path distilled = run_dir / str("04-distill-", s.name);
    steps.run("distill-" + s.name, distilled, [&] {
      std::vector<std::string> args = {"distill",
                                       "--teacher",
                                       corrected.string(),
                                       "--student",
                                       (pruned / "model").string(),
                                       "--temperature",
                                       number(recipe.distillation.temperature),
                                       "--hard-label-weight",
                                       number(recipe.distillation.hard_label_weight)};
      auto flags = training_flags(recipe, recipe.distillation, distilled, recipe.distillation.learning_rate,
                                  recipe.distillation.min_learning_rate);
      args.insert(args.end(), flags.begin(), flags.end());
      if (recipe.distillation.intermediate_loss_weight > 0)
        args.insert(args.end(), {"--intermediate-loss-weight", number(recipe.distillation.intermediate_loss_weight),
                                 "--intermediate-layers=" + recipe.distillation.intermediate_layers});
      invoke("distill", commands.distill, args);
    });
    models.push_back({"distilled-" + s.name, str(s.name, " distilled"), distilled / "model", distill_tokens});

    if (recipe.baseline) {
      const fs::path baseline = run_dir / str("05-baseline-", s.name);
      steps.run("baseline-" + s.name, baseline, [&] {
        const double lr = recipe.baseline_learning_rate.value_or(recipe.distillation.learning_rate);
        const double min_lr = recipe.distillation.min_learning_rate * lr / recipe.distillation.learning_rate;
        std::vector<std::string> args = {"train", "--config", (pruned / "model" / "config.json").string()};
        if (fs::exists(corrected / "tokenizer.json"))
          args.insert(args.end(), {"--tokenizer", (corrected / "tokenizer.json").string()});
        auto flags = training_flags(recipe, recipe.distillation, baseline, lr, min_lr);
        args.insert(args.end(), flags.begin(), flags.end());
        invoke("baseline", commands.train, args);
      });
      models.push_back(
          {"baseline-" + s.name, str(s.name, " from random init, cross-entropy"), baseline / "model", distill_tokens});
    }
  }

  // 6. Evaluation of every model on the same validation windows (and tasks, when configured).
  const fs::path evaluation = run_dir / "06-evaluate";
  steps.run("evaluate", evaluation, [&] {
    json results = json::array();
    std::string device = recipe.device;
    if (device.empty()) {
      device = "cpu";
      for (const std::string& d : available_devices())
        if (d == "cuda") device = d;
    }
    auto backend = make_backend(device);
    const auto shards = resolve_shards(recipe.validation_data);
    for (const ReportModel& m : models) {
      LoadedCheckpoint checkpoint = load_checkpoint(m.dir);
      LlamaModel model(checkpoint.config, *backend, recipe.batch_size, recipe.sequence_length, ModelMode::Inference);
      model.set_parameters(checkpoint.params);
      EvalLoader loader(shards, recipe.batch_size, recipe.sequence_length,
                        recipe.eval_windows > 0 ? std::optional<std::int64_t>(recipe.eval_windows) : std::nullopt,
                        checkpoint.config.vocab_size);
      LossWorkspace workspace(*backend, checkpoint.config.vocab_size, recipe.batch_size * recipe.sequence_length);
      const EvalResult r = evaluate_loss(model, loader, workspace);
      json entry = {{"key", m.key},
                    {"label", m.label},
                    {"dir", m.dir.string()},
                    {"parameters", checkpoint.table.total_numel()},
                    {"validation_loss", r.loss},
                    {"validation_perplexity", r.perplexity},
                    {"validation_tokens", r.tokens},
                    {"training_tokens", m.training_tokens},
                    {"tasks", json::object()}};
      std::printf("  %-28s validation loss %.4f (perplexity %.2f)\n", m.key.c_str(), r.loss, r.perplexity);
      for (const RecipeTask& task : recipe.tasks) {
        const TaskKind kind = parse_task_kind(task.task);
        const std::vector<TaskDoc> docs = load_task_file(kind, task.task_file);
        std::vector<TaskDoc> fewshot_docs;
        if (!task.fewshot_file.empty()) fewshot_docs = load_task_file(kind, task.fewshot_file);
        const Tokenizer tokenizer = Tokenizer::load(m.dir);
        if (tokenizer.vocab_size() > checkpoint.config.vocab_size)  // ids past the embedding would read out of bounds
          fail_expected(str("evaluation.tasks ", task.task, " on ", m.dir.string()),
                        str("tokenizer of ", tokenizer.vocab_size(), " ids"),
                        str("at most the model's vocab_size ", checkpoint.config.vocab_size));
        TaskRunOptions options;
        options.shots = task.shots;
        options.limit = task.limit;
        options.encode.prefix_token = prefix_token_id(tokenizer);
        options.stop_tokens = end_of_text_tokens(checkpoint.config, tokenizer);
        const TaskRunResult tr = run_task(kind, docs, task.fewshot_file.empty() ? nullptr : &fewshot_docs, tokenizer,
                                          checkpoint.config, checkpoint.params, *backend, options);
        for (const MetricRow& row : tr.rows) {
          const std::string metric = row.filter == "none" ? row.metric : row.metric + "," + row.filter;
          entry["tasks"][row.task + "/" + metric] = row.value;
          std::printf("  %-28s %s %s %.4f\n", "", row.task.c_str(), metric.c_str(), row.value);
        }
      }
      if (recipe.suite) {
        const Tokenizer tokenizer = Tokenizer::load(m.dir);
        TaskRunOptions options;
        options.limit = recipe.suite->limit;
        options.max_gen_toks = recipe.suite->max_gen_toks;
        options.encode.prefix_token = prefix_token_id(tokenizer);
        options.stop_tokens = end_of_text_tokens(checkpoint.config, tokenizer);
        std::vector<TaskReport> reports;
        for (const SuiteTask& t : suite_tasks(recipe.suite->name)) {
          const fs::path dir = recipe.suite->task_dir;
          const std::vector<TaskDoc> docs = load_task_file(t.kind, dir / t.task_file);
          std::vector<TaskDoc> pool;
          if (t.fewshot_file) pool = load_task_file(t.kind, dir / t.fewshot_file);
          options.shots = t.shots;
          TaskReport report{t.kind, t.shots, static_cast<std::int64_t>(docs.size()), {}};
          report.result = run_task(t.kind, docs, t.fewshot_file ? &pool : nullptr, tokenizer, checkpoint.config,
                                   checkpoint.params, *backend, options);
          reports.push_back(std::move(report));
        }
        json cells = json::array();
        for (const SuiteCell& c : suite_cells(recipe.suite->name, reports)) {
          cells.push_back({{"column", c.column}, {"value", c.value ? json(*c.value) : json(nullptr)}});
          if (c.value) std::printf("  %-28s %s %.4f\n", "", c.column.c_str(), *c.value);
        }
        const nlohmann::ordered_json harness =
            harness_results_json(reports, {{"model", m.dir.string()}, {"limit", recipe.suite->limit}});
        entry["suite"] = {{"name", recipe.suite->name}, {"cells", cells}, {"harness", json::parse(harness.dump())}};
      }
      results.push_back(entry);
    }
    write_bytes_atomically(evaluation / "results.json", results.dump(2) + "\n");
  });

  const fs::path results_path = evaluation / "results.json";
  write_report(recipe, run_dir,
               parse_untrusted_json(read_text_file(results_path), results_path.string(), "the evaluation's results"));
  return steps.steps();
}

}  // namespace minitron
