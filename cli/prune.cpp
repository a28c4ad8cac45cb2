// minitron prune: width and depth pruning of an HF checkpoint by importance scores, to explicit
// sizes or to a parameter budget (the paper's lightweight architecture search).
#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_setup.h"
#include "cli/options.h"
#include "data/dataloader.h"
#include "data/shards.h"
#include "kernels/make_backend.h"
#include "model/checkpoint.h"
#include "prune/layer_ranking.h"
#include "prune/scores.h"
#include "prune/search.h"
#include "prune/slicing.h"
#include "util/files.h"
#include "util/numbers.h"

namespace minitron::cli {

namespace {

namespace fs = std::filesystem;

std::string sizes_string(const ModelConfig& c) {
  return str("hidden ", c.hidden_size, ", ffn ", c.intermediate_size, ", heads ", c.num_attention_heads, "/",
             c.num_key_value_heads, ", layers ", c.num_hidden_layers);
}

// What was kept, for auditing the pruned checkpoint (HF loaders ignore the file).
nlohmann::json plan_to_json(const PrunePlan& plan, const std::string& model_dir, const std::string& scores_path,
                            const PruneTargets& targets) {
  nlohmann::json j = {{"source_model", model_dir},      {"scores", scores_path},           {"kept_layers", plan.layers},
                      {"hidden_channels", plan.hidden}, {"query_heads", plan.query_heads}, {"kv_heads", plan.kv_heads}};
  if (plan.dropped_block) j["dropped_layers"] = {plan.dropped_block->first, plan.dropped_block->second};
  if (plan.dropped_block && !targets.drop_layers) j["layer_criterion"] = layer_criterion_name(targets.layer_criterion);
  j["ffn_neurons"] = plan.ffn;
  return j;
}

}  // namespace

int prune(int argc, char** argv) {
  cxxopts::Options options("prune",
                           "Prune a model's width (hidden size, FFN, heads) and depth (a contiguous block of layers) "
                           "by importance scores, to explicit sizes or to a parameter budget.");
  // clang-format off
  options.add_options("model")
      ("model", "HF checkpoint directory (the teacher)", cxxopts::value<std::string>())
      ("scores", "scores file written by 'minitron importance'", cxxopts::value<std::string>())
      ("output", "directory for the pruned HF checkpoint", cxxopts::value<std::string>())
      ("save-dtype", "bfloat16 or float32", cxxopts::value<std::string>()->default_value("bfloat16"))
      ("random-scores", "prune by uniform random scores from this seed instead (a baseline)",
       cxxopts::value<std::uint64_t>());
  options.add_options("targets")
      ("hidden-size", "hidden (embedding) channels to keep", cxxopts::value<std::int64_t>())
      ("intermediate-size", "MLP neurons to keep per layer", cxxopts::value<std::int64_t>())
      ("num-attention-heads", "query heads to keep (the same number in every KV group)", cxxopts::value<std::int64_t>())
      ("num-key-value-heads", "KV groups to keep (default: all)", cxxopts::value<std::int64_t>())
      ("num-layers", "layers to keep: drops the contiguous block that hurts least", cxxopts::value<std::int64_t>())
      ("drop-layers", "drop this zero-based inclusive block instead, e.g. 15-30", cxxopts::value<std::string>())
      ("layer-criterion",
       "how --num-layers ranks blocks: loss (lowest held-out loss without the block), block-importance (lowest "
       "sum of Block Importance) or task (highest task accuracy without the block; ties: lower loss, then the "
       "earlier block; needs scores from 'importance --task NAME --task-file FILE')",
       cxxopts::value<std::string>()->default_value("loss"));
  options.add_options("search")
      ("target-params", "parameter budget, e.g. 4.5B: search architectures within --tolerance of it",
       cxxopts::value<std::string>())
      ("tolerance", "relative tolerance of the budget", cxxopts::value<double>()->default_value("0.05"))
      ("max-candidates", "architectures to rank by zero-shot loss (spread over those that fit)",
       cxxopts::value<std::int64_t>()->default_value("8"))
      ("search-steps", "distill the best candidates this many steps each and rank by validation loss (0 = off)",
       cxxopts::value<std::int64_t>()->default_value("0"))
      ("search-candidates", "candidates distilled when --search-steps is given",
       cxxopts::value<std::int64_t>()->default_value("3"))
      ("learning-rate", "peak learning rate of the search's distillation", cxxopts::value<double>()->default_value("1e-4"));
  options.add_options("evaluation")
      ("data", "token shards: zero-shot loss of the result (and distillation data for --search-steps)",
       cxxopts::value<std::string>())
      ("validation-data", "shards for the losses (default: --data)", cxxopts::value<std::string>())
      ("eval-windows", "validation windows", cxxopts::value<std::int64_t>()->default_value("16"))
      ("sequence-length", "tokens per window", cxxopts::value<std::int64_t>()->default_value("256"))
      ("batch-size", "windows per forward pass", cxxopts::value<std::int64_t>()->default_value("4"))
      ("device", "cpu or cuda (default: cuda when a GPU is present)", cxxopts::value<std::string>()->default_value(""));
  // clang-format on
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;
  const std::string model_dir = required<std::string>(r, "model");
  const fs::path output = required<std::string>(r, "output");
  // Before any work: the output may replace an earlier checkpoint, never other files or the input.
  check_checkpoint_output(output, std::array{fs::path(model_dir)}, str("--output ", output.string()));
  SaveOptions save;
  save.dtype = parse_save_dtype(r["save-dtype"].as<std::string>());
  const bool random = r.count("random-scores") > 0;
  if (!random && !r.count("scores"))
    fail("--scores: missing (a scores file from 'minitron importance', or --random-scores SEED for a baseline)");
  const std::string scores_path =
      random ? str("random:", r["random-scores"].as<std::uint64_t>()) : r["scores"].as<std::string>();
  const std::int64_t T = in_range<std::int64_t>(r, "sequence-length", 1, 1 << 20);
  const std::int64_t B = in_range<std::int64_t>(r, "batch-size", 1, 1 << 20);
  const std::int64_t W = in_range<std::int64_t>(r, "eval-windows", 1, std::int64_t{1} << 40);

  PruneTargets targets;
  auto optional_size = [&](const char* flag, std::optional<std::int64_t>& into) {
    if (r.count(flag)) into = r[flag].as<std::int64_t>();
  };
  optional_size("hidden-size", targets.hidden_size);
  optional_size("intermediate-size", targets.intermediate_size);
  optional_size("num-attention-heads", targets.num_attention_heads);
  optional_size("num-key-value-heads", targets.num_key_value_heads);
  optional_size("num-layers", targets.num_layers);
  if (r.count("drop-layers")) targets.drop_layers = parse_layer_range(r["drop-layers"].as<std::string>());
  targets.layer_criterion = parse_layer_criterion(r["layer-criterion"].as<std::string>());
  const bool search = r.count("target-params") > 0;
  const bool explicit_targets = targets.hidden_size || targets.intermediate_size || targets.num_attention_heads ||
                                targets.num_key_value_heads || targets.num_layers || targets.drop_layers;
  if (search && explicit_targets)
    fail_expected("--target-params", "given together with explicit sizes",
                  "either a parameter budget or explicit sizes");
  if (!search && !explicit_targets)
    fail(
        "prune: no target given (expected --hidden-size, --intermediate-size, --num-attention-heads, "
        "--num-key-value-heads, --num-layers, --drop-layers or --target-params)");

  LoadedCheckpoint checkpoint = load_checkpoint(model_dir);
  const ModelConfig& config = checkpoint.config;
  ImportanceScores scores;
  if (random) {
    scores = random_scores(config, r["random-scores"].as<std::uint64_t>());
  } else {
    scores = load_scores(scores_path);
    check_scores_match(scores, config, scores_path);
  }
  const std::int64_t teacher_params = parameter_count(config);
  std::printf("teacher %s: %s parameters (%s)\n", model_dir.c_str(), human_count(teacher_params).c_str(),
              sizes_string(config).c_str());

  // Validation windows for zero-shot losses (and the search).
  std::unique_ptr<Backend> backend;
  HeldOutWindows validation;
  std::vector<fs::path> train_shards, validation_shards;
  if (r.count("data")) {
    train_shards = resolve_shards(r["data"].as<std::string>());
    validation_shards =
        r.count("validation-data") ? resolve_shards(r["validation-data"].as<std::string>()) : train_shards;
    check_sequence_length("--sequence-length", T, config);
    TokenWindows windows(validation_shards, T, config.vocab_size);
    validation = read_windows(windows, 0, std::min(W, windows.count()), "--eval-windows");
    if (validation.count == 0) fail_expected("--data", "no complete window", str("at least ", T + 1, " tokens"));
    backend = make_backend(choose_device(r["device"].as<std::string>()));
  }

  if (!search) {
    const PrunePlan plan = plan_pruning(config, scores, targets);
    std::vector<float> params = slice_parameters(config, checkpoint.table, checkpoint.params, plan);
    save.copy_files = companion_files(model_dir);
    save.extra_files = {{"pruning.json", plan_to_json(plan, model_dir, scores_path, targets).dump(1)}};
    save_checkpoint(output, plan.config, ParameterTable(plan.config), params, save);
    std::printf("pruned: %s parameters (%s)", human_count(parameter_count(plan.config)).c_str(),
                sizes_string(plan.config).c_str());
    if (plan.dropped_block) {
      const auto [first, last] = *plan.dropped_block;
      std::printf(", dropped layers %lld-%lld", static_cast<long long>(first), static_cast<long long>(last));
      if (!targets.drop_layers) {
        std::printf(" (by %s", layer_criterion_name(targets.layer_criterion));
        if (targets.layer_criterion == LayerCriterion::Task)  // least_important_block checked the scores exist
          std::printf(": %s accuracy without them %.4f", scores.layers.task.c_str(),
                      scores.layers.block_removal_task_score.at(last - first + 1)[static_cast<std::size_t>(first)]);
        std::printf(")");
      }
    }
    std::printf("\n");
    if (backend) {
      std::printf("zero-shot validation loss: teacher %.4f, pruned %.4f (%lld windows of %lld)\n",
                  zero_shot_loss(config, checkpoint.params, *backend, validation, B),
                  zero_shot_loss(plan.config, params, *backend, validation, B),
                  static_cast<long long>(validation.count), static_cast<long long>(T));
    }
    std::printf("parameters %lld\nsaved to %s\n", static_cast<long long>(parameter_count(plan.config)), output.c_str());
    return 0;
  }

  // ---- architecture search within a parameter budget ----
  if (!backend) fail("--target-params: needs --data (candidates are ranked by their validation loss after pruning)");
  ArchitectureSearchOptions search_options;
  search_options.target_parameters = parse_parameter_count(r["target-params"].as<std::string>());
  search_options.tolerance = in_range<double>(r, "tolerance", 0.0, 1.0);
  search_options.max_candidates = in_range<std::int64_t>(r, "max-candidates", 1, 1 << 20);
  search_options.distillation_steps = in_range<std::int64_t>(r, "search-steps", 0, std::int64_t{1} << 40);
  search_options.distilled_candidates = in_range<std::int64_t>(r, "search-candidates", 1, 1 << 20);
  if (search_options.distillation_steps > 0)
    search_options.learning_rate = in_range<double>(r, "learning-rate", 0.0, 10.0);
  search_options.layer_criterion = targets.layer_criterion;
  search_options.batch_size = B;
  search_options.train_shards = train_shards;
  search_options.validation_shards = validation_shards;
  search_options.teacher_directory = model_dir;
  // The candidates' short runs live in a hidden sibling of the output.
  search_options.work_directory = process_sibling(output, "search");
  const ArchitectureSearchResult result =
      search_architectures(checkpoint, scores, *backend, validation, search_options);

  const RankedArchitecture& best = result.ranked.front();
  const PruneTargets best_targets = targets_of(best.architecture, targets.layer_criterion);
  const PrunePlan plan = plan_pruning(config, scores, best_targets);
  std::vector<float> params = slice_parameters(config, checkpoint.table, checkpoint.params, plan);
  save.copy_files = companion_files(model_dir);
  save.extra_files = {{"pruning.json", plan_to_json(plan, model_dir, scores_path, best_targets).dump(1)},
                      {"search.json", search_to_json(result, search_options, validation).dump(1)}};
  save_checkpoint(output, plan.config, ParameterTable(plan.config), params, save);
  std::printf(
      "best: %s, %s parameters (zero-shot loss %.4f%s)\nparameters %lld\nsaved to %s (ranking in search.json)\n",
      architecture_string(best.architecture).c_str(), human_count(best.architecture.parameters).c_str(),
      best.zero_shot_loss, best.distilled_loss ? str(", distilled ", *best.distilled_loss).c_str() : "",
      static_cast<long long>(best.architecture.parameters), output.c_str());
  return 0;
}

}  // namespace minitron::cli
