// minitron distill: train a (pruned) student to match a teacher's next-token distribution.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "cli/distill_options.h"
#include "cli/model_setup.h"
#include "cli/options.h"
#include "data/dataloader.h"
#include "data/shards.h"
#include "model/checkpoint.h"
#include "model/parameters.h"
#include "train/distill.h"
#include "train/evaluate.h"
#include "train/trainer.h"
#include "util/files.h"
#include "util/progress.h"

namespace minitron::cli {

namespace fs = std::filesystem;

namespace {

fs::path checkpoint_dir(const cxxopts::ParseResult& r, const std::string& flag) {
  fs::path dir = required<std::string>(r, flag);
  if (!fs::is_directory(dir))
    fail_expected(str("--", flag, " ", dir.string()), "not a directory",
                  "an HF checkpoint directory with config.json and safetensors");
  return dir;
}

// Distillation compares distributions token id by token id: both models must read the same
// tokenizer. Vocab sizes must match; tokenizer.json files, when both exist, byte for byte.
void check_same_vocabulary(const fs::path& teacher, const ModelConfig& tc, const fs::path& student,
                           const ModelConfig& sc) {
  if (tc.vocab_size != sc.vocab_size)
    fail_expected("distill",
                  str("teacher ", teacher.string(), " has vocab_size ", tc.vocab_size, ", student ", student.string(),
                      " has ", sc.vocab_size),
                  "teacher and student sharing one tokenizer and vocabulary");
  const fs::path ttok = teacher / "tokenizer.json", stok = student / "tokenizer.json";
  if (fs::is_regular_file(ttok) && fs::is_regular_file(stok) && read_text_file(ttok) != read_text_file(stok))
    fail_expected("distill",
                  str("the tokenizer.json files of ", teacher.string(), " and ", student.string(), " differ"),
                  "teacher and student sharing one tokenizer");
}

}  // namespace

int distill(int argc, char** argv) {
  cxxopts::Options options("distill",
                           "Distill a teacher into a student: forward KL(p_teacher || p_student) on logits at a\n"
                           "temperature, the teacher forward-only, the loss computed in chunks of tokens.");
  add_distillation_options(options);
  const TrainingDefaults defaults;
  add_training_options(options, defaults);
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;
  TrainOptions o = parse_training_options(r, defaults);
  // Every flag that needs no model is checked here, before any checkpoint loads (the objective
  // would refuse them only after both models and the teacher's validation pass).
  const float temperature = r["temperature"].as<float>(), hard_label_weight = r["hard-label-weight"].as<float>();
  if (!(temperature > 0 && std::isfinite(temperature)))
    fail_expected("--temperature", str(temperature), "a finite value > 0 (1 is the recipe's)");
  if (!(hard_label_weight >= 0 && hard_label_weight <= 1))
    fail_expected("--hard-label-weight", str(hard_label_weight), "a value in [0, 1] (0 = pure distillation)");
  const std::int64_t chunk_rows = in_range<std::int64_t>(r, "loss-chunk-rows", 0, std::int64_t{1} << 40);
  const float intermediate_weight = r["intermediate-loss-weight"].as<float>();
  const std::string intermediate_layers = r["intermediate-layers"].as<std::string>();
  if (!(intermediate_weight >= 0 && std::isfinite(intermediate_weight)))
    fail_expected("--intermediate-loss-weight", str(intermediate_weight), "a finite value >= 0 (0 turns the loss off)");
  if (intermediate_weight == 0 && !intermediate_layers.empty())
    fail_expected("--intermediate-layers", intermediate_layers, "--intermediate-loss-weight > 0 alongside it");
  // SFT shards (minitron tokenize --chat): the KL on response tokens only, as Model-Optimizer's
  // --sft distillation.
  o.masked_targets = TokenShard::open(o.train_shards[0]).kind() == ShardKind::Sft;
  if (o.masked_targets && intermediate_weight > 0)
    fail_expected("--intermediate-loss-weight", "given with SFT shards",
                  "0 with SFT shards: the hidden-state loss covers every token, not only the responses");
  const fs::path teacher_dir = checkpoint_dir(r, "teacher"), student_dir = checkpoint_dir(r, "student");
  const ModelConfig teacher_config = load_model_config(teacher_dir), student_config = load_model_config(student_dir);
  check_same_vocabulary(teacher_dir, teacher_config, student_dir, student_config);
  for (const ModelConfig* c : {&teacher_config, &student_config})
    check_sequence_length("--sequence-length", o.sequence_length, *c);
  o.input_models = {teacher_dir, student_dir};
  o.companion_files = companion_files(student_dir);
  if (o.companion_files.empty()) o.companion_files = companion_files(teacher_dir);
  set_document_boundaries(o, student_config, str("the student ", student_dir.string()));
  std::vector<LayerPair> layer_pairs;
  if (intermediate_weight > 0)  // checked before any weights are loaded
    layer_pairs =
        parse_layer_mapping(intermediate_layers, student_config.num_hidden_layers, teacher_config.num_hidden_layers);
  check_training_output(o);

  TrainingRun run = open_training_run(r, [&](Backend& backend, std::int64_t world_size) {
    TrainingShape shape = training_shape(student_config, o, world_size);
    shape.teacher = teacher_config;
    shape.loss_chunk_rows = chunk_rows;
    shape.intermediate_pairs = static_cast<std::int64_t>(layer_pairs.size());
    check_training_memory(shape, backend, str("--device ", backend.name()));
  });
  Backend* backend = run.backend.get();
  const std::int64_t B = o.batch_size, T = o.sequence_length;
  LlamaModel teacher(teacher_config, *backend, B, T, ModelMode::Inference);
  load_parameters(teacher_dir, teacher);
  // The teacher only infers.
  LlamaModel student(student_config, *backend, B, T, ModelMode::Training, o.recompute, gradient_sharding(o, run));
  load_parameters(student_dir, student);
  std::printf("distilling %s (%lld parameters) into %s (%lld parameters) on %s, temperature %g, hard-label weight %g\n",
              teacher_dir.c_str(), static_cast<long long>(teacher.table().total_numel()), student_dir.c_str(),
              static_cast<long long>(student.table().total_numel()), backend->name().c_str(), temperature,
              hard_label_weight);
  print_activation_recompute(student);

  // The teacher's validation loss once, as the bar the student is measured against (rank 0
  // alone validates; the others wait for it at the first gradient sum).
  double teacher_validation = std::numeric_limits<double>::quiet_NaN();
  if (run.lead() && !o.validation_shards.empty()) {
    EvalLoader loader(o.validation_shards, B, T,
                      o.eval_windows > 0 ? std::optional<std::int64_t>(o.eval_windows) : std::nullopt,
                      teacher_config.vocab_size);
    LossWorkspace eval_workspace(*backend, teacher_config.vocab_size, B * T);
    teacher_validation = evaluate_loss(teacher, loader, eval_workspace).loss;
    std::printf("teacher validation loss %.4f\n", teacher_validation);
  }

  LossWorkspace workspace(*backend, student_config.vocab_size, B * T, chunk_rows, /*distillation=*/true);
  std::unique_ptr<HiddenStateDistillation> hidden_states;
  if (intermediate_weight > 0) {
    hidden_states =
        std::make_unique<HiddenStateDistillation>(*backend, student_config, teacher_config, layer_pairs, B * T, o.seed);
    std::printf("intermediate-state loss: weight %g, layers (student:teacher) %s%s\n", intermediate_weight,
                format_layer_mapping(layer_pairs).c_str(),
                hidden_states->has_map()
                    ? str(", learned map ", student_config.hidden_size, " -> ", teacher_config.hidden_size).c_str()
                    : "");
  }
  if (o.masked_targets) std::printf("SFT shards: the KL counts the response tokens only\n");
  TeacherDistillationObjective objective(teacher, workspace, temperature, hard_label_weight, hidden_states.get(),
                                         intermediate_weight, o.masked_targets);
  const TrainSummary summary = run_training(student, objective, o, *run.communicator);
  if (!run.lead()) return 0;  // rank 0 writes the run's records
  const double share = summary.seconds > 0 ? objective.teacher_seconds() / summary.seconds : 0.0;
  std::printf("teacher forward: %.1f%% of training time (%.1f s)\n", 100.0 * share, objective.teacher_seconds());
  MetricsLog(o.output / "metrics.jsonl", /*append=*/true)
      .write(
          {{"event", "distillation"},
           {"teacher_validation_loss", teacher_validation},
           {"student_validation_loss", summary.validation_loss},
           {"teacher_share", share},
           {"teacher_seconds", objective.teacher_seconds()},
           {"temperature", temperature},
           {"hard_label_weight", hard_label_weight},
           {"intermediate_loss_weight", intermediate_weight},
           {"intermediate_layers", format_layer_mapping(layer_pairs)},
           {"last_intermediate_loss", hidden_states ? nlohmann::json(objective.last_intermediate()) : nlohmann::json()},
           {"last_intermediate_alpha", hidden_states ? nlohmann::json(objective.last_alpha()) : nlohmann::json()}});
  print_training_summary(summary, o);
  return 0;
}

}  // namespace minitron::cli
