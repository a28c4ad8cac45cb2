#include "prune/search.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "model/llama.h"
#include "model/parameters.h"
#include "train/distill.h"
#include "train/losses.h"
#include "train/memory_plan.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/numbers.h"

namespace minitron {

std::int64_t parse_parameter_count(const std::string& text, const std::string& flag) {
  const std::string expected = "a count such as 4.5B, 350M, 20K or 123456";
  if (text.empty()) fail_expected(flag, "empty", expected);
  double scale = 1;
  std::string number = text;
  switch (text.back()) {
    case 'K':
    case 'k': scale = 1e3; break;
    case 'M':
    case 'm': scale = 1e6; break;
    case 'B':
    case 'b':
    case 'G':
    case 'g': scale = 1e9; break;
    case 'T':
    case 't': scale = 1e12; break;
    default: break;
  }
  if (scale != 1) number.pop_back();
  char* end = nullptr;
  const double value = std::strtod(number.c_str(), &end);
  if (number.empty() || end != number.c_str() + number.size() || !(value > 0))
    fail_expected(flag, str("'", text, "'"), expected);
  // Checked before rounding: llround of a value beyond int64 is undefined. A quadrillion is far
  // above any model and far below where the conversion could overflow.
  constexpr double kMaxCount = 1e15;
  if (!(value * scale >= 1 && value * scale <= kMaxCount))
    fail_expected(flag, str("'", text, "' is out of range"), "a count from 1 to 1000T (1e15)");
  return static_cast<std::int64_t>(std::llround(value * scale));
}

std::int64_t parameter_count(const ModelConfig& c) { return ParameterTable(c).total_numel(); }

nlohmann::json architecture_to_json(const Architecture& a) {
  return {{"hidden_size", a.hidden_size},
          {"intermediate_size", a.intermediate_size},
          {"num_attention_heads", a.num_attention_heads},
          {"num_key_value_heads", a.num_key_value_heads},
          {"num_hidden_layers", a.num_layers},
          {"parameters", a.parameters}};
}

std::string architecture_string(const Architecture& a) {
  return str("hidden ", a.hidden_size, ", ffn ", a.intermediate_size, ", heads ", a.num_attention_heads, "/",
             a.num_key_value_heads, ", layers ", a.num_layers);
}

PruneTargets targets_of(const Architecture& a, LayerCriterion criterion) {
  PruneTargets t;
  t.hidden_size = a.hidden_size;
  t.intermediate_size = a.intermediate_size;
  t.num_attention_heads = a.num_attention_heads;
  t.num_key_value_heads = a.num_key_value_heads;
  t.num_layers = a.num_layers;
  t.layer_criterion = criterion;
  return t;
}

namespace {

// Values step, 2*step, ... up to current (always included), not below floor.
std::vector<std::int64_t> axis(std::int64_t current, std::int64_t step, std::int64_t floor) {
  std::vector<std::int64_t> out;
  for (std::int64_t v = step; v < current; v += step)
    if (v >= floor) out.push_back(v);
  out.push_back(current);
  return out;
}

// About 1/16 of the size, rounded down to a multiple of `multiple`, at least `multiple`.
std::int64_t default_step(std::int64_t size, std::int64_t multiple) {
  return std::max<std::int64_t>(multiple, size / 16 / multiple * multiple);
}

}  // namespace

std::vector<Architecture> enumerate_architectures(const ModelConfig& config, std::int64_t target, double tolerance,
                                                  const SearchGrid& grid) {
  const std::int64_t D = config.hidden_size, F = config.intermediate_size, L = config.num_hidden_layers;
  const std::int64_t Hkv = config.num_key_value_heads, group = config.query_heads_per_group();
  const std::int64_t hidden_step =
      grid.hidden_step > 0 ? grid.hidden_step : (D >= 2048 ? 256 : default_step(D, kHiddenSizeMultiple));
  const std::int64_t ffn_step =
      grid.intermediate_step > 0 ? grid.intermediate_step : (F >= 4096 ? 512 : default_step(F, 8));
  if (hidden_step % kHiddenSizeMultiple != 0)
    fail_expected("hidden step", str(hidden_step), str("a multiple of ", kHiddenSizeMultiple));
  const auto floor_of = [](std::int64_t size, double fraction) {
    return static_cast<std::int64_t>(std::ceil(static_cast<double>(size) * fraction));
  };
  std::vector<Architecture> out;
  ModelConfig c = config;
  for (std::int64_t d : axis(D, hidden_step, floor_of(D, grid.min_width_fraction)))
    for (std::int64_t f : axis(F, ffn_step, floor_of(F, grid.min_width_fraction)))
      for (std::int64_t per_group = 1; per_group <= group; ++per_group) {
        c.hidden_size = d;
        c.intermediate_size = f;
        c.num_attention_heads = per_group * Hkv;
        c.num_key_value_heads = Hkv;
        // Every layer has the same tensors, so the table's total is linear in the depth: two
        // small tables (1 and 2 layers) give it for every depth without a full table each.
        c.num_hidden_layers = 1;
        const std::int64_t one_layer = parameter_count(c);
        c.num_hidden_layers = 2;
        const std::int64_t per_layer = parameter_count(c) - one_layer;
        for (std::int64_t l = std::max<std::int64_t>(1, floor_of(L, grid.min_depth_fraction)); l <= L; ++l) {
          const std::int64_t n = one_layer + (l - 1) * per_layer;
          if (std::abs(static_cast<double>(n) - static_cast<double>(target)) > tolerance * static_cast<double>(target))
            continue;
          out.push_back({d, f, per_group * Hkv, Hkv, l, n});
        }
      }
  std::stable_sort(out.begin(), out.end(), [&](const Architecture& a, const Architecture& b) {
    return std::llabs(a.parameters - target) < std::llabs(b.parameters - target);
  });
  return out;
}

std::vector<Architecture> spread_subset(const std::vector<Architecture>& all, std::size_t n) {
  if (all.size() <= n || n == 0) return n == 0 ? std::vector<Architecture>{} : all;
  if (n == 1) return {all.front()};
  std::vector<Architecture> out;
  for (std::size_t i = 0; i < n; ++i) out.push_back(all[i * (all.size() - 1) / (n - 1)]);
  return out;
}

double zero_shot_loss(const ModelConfig& config, std::span<const float> params, Backend& backend,
                      const HeldOutWindows& windows, std::int64_t batch_size) {
  const std::int64_t b = std::min(batch_size, windows.count);
  LlamaModel model(config, backend, b, windows.sequence_length, ModelMode::Inference);
  model.set_parameters(params);
  LossWorkspace workspace(backend, config.vocab_size, b * windows.sequence_length);
  return removal_loss(model, windows, {}, workspace);
}

namespace {

namespace fs = std::filesystem;

// The architectures within the budget whose dropped block the scores can choose. Depths without
// the block-removal scores the criterion needs are left out, with a note, rather than failing
// the whole search.
std::vector<Architecture> fitting_architectures(const ModelConfig& config, const ImportanceScores& scores,
                                                const ArchitectureSearchOptions& options) {
  std::vector<Architecture> fitting = enumerate_architectures(config, options.target_parameters, options.tolerance);
  std::vector<std::int64_t> missing_depths;
  std::string missing_why;  // the first refusal, which names the importance flags that would help
  std::erase_if(fitting, [&](const Architecture& a) {
    if (a.num_layers == config.num_hidden_layers) return false;
    try {
      least_important_block(scores, config.num_hidden_layers, config.num_hidden_layers - a.num_layers,
                            options.layer_criterion);
      return false;
    } catch (const Error& e) {
      if (missing_why.empty()) missing_why = e.what();
      if (std::find(missing_depths.begin(), missing_depths.end(), a.num_layers) == missing_depths.end())
        missing_depths.push_back(a.num_layers);
      return true;
    }
  });
  if (!missing_depths.empty()) {
    std::sort(missing_depths.begin(), missing_depths.end());
    std::string list;
    for (std::int64_t l : missing_depths) list += str(list.empty() ? "" : ", ", l);
    std::printf("note: skipping depths %s (the scores cannot rank their blocks by %s; first reason: %s)\n",
                list.c_str(), layer_criterion_name(options.layer_criterion), missing_why.c_str());
  }
  if (fitting.empty())
    fail_expected("--target-params",
                  str("no architecture on the search grid has ", human_count(options.target_parameters), " +- ",
                      options.tolerance * 100, "% parameters"),
                  "a budget between about half and all of the model, or a larger --tolerance");
  return fitting;
}

// The candidates' scratch directory: removed on scope exit, success or failure.
struct WorkDirectory {
  fs::path path;
  ~WorkDirectory() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

// Distills each candidate briefly from the teacher (forward KL, tau = 1, no hard labels)
// and records its validation loss afterwards, as the paper's lightweight search does.
void distill_candidates(const LoadedCheckpoint& teacher_checkpoint, const ImportanceScores& scores, Backend& backend,
                        const HeldOutWindows& validation, const ArchitectureSearchOptions& options,
                        std::span<RankedArchitecture> candidates) {
  const ModelConfig& config = teacher_checkpoint.config;
  const std::int64_t B = options.batch_size, T = validation.sequence_length, steps = options.distillation_steps;
  // Refused before the teacher loads: each candidate trains beside it.
  for (const RankedArchitecture& c : candidates) {
    if (!backend.memory_bytes()) break;  // the CPU states no limit: nothing to plan
    TrainingShape shape;
    shape.model = plan_pruning(config, scores, targets_of(c.architecture, options.layer_criterion)).config;
    shape.teacher = config;
    shape.batch_size = B;
    shape.sequence_length = T;
    shape.validation = !options.validation_shards.empty();
    check_training_memory(shape, backend, str("--device ", backend.name()));
  }
  LlamaModel teacher(config, backend, B, T, ModelMode::Inference);
  teacher.set_parameters(teacher_checkpoint.params);
  // The runs are only needed for their losses (which go into search.json).
  const WorkDirectory work{options.work_directory};
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    RankedArchitecture& c = candidates[i];
    const PrunePlan plan = plan_pruning(config, scores, targets_of(c.architecture, options.layer_criterion));
    LlamaModel student(plan.config, backend, B, T, ModelMode::Training);
    student.set_parameters(slice_parameters(config, teacher_checkpoint.table, teacher_checkpoint.params, plan));
    LossWorkspace workspace(backend, config.vocab_size, B * T, 0, /*distillation=*/true);
    TeacherDistillationObjective objective(teacher, workspace, /*temperature=*/1.0f, /*hard_label_weight=*/0.0f);
    TrainOptions o;
    o.batch_size = B;
    o.sequence_length = T;
    o.steps = steps;
    o.train_shards = options.train_shards;
    o.validation_shards = options.validation_shards;
    o.eval_windows = validation.count;
    o.log_interval = std::max<std::int64_t>(1, steps / 4);
    o.output = work.path / str("candidate-", i);
    o.input_models = {options.teacher_directory};
    o.optimizer.learning_rate = options.learning_rate;
    o.optimizer.min_learning_rate = options.learning_rate / 10;
    o.optimizer.warmup_steps = std::min<std::int64_t>(40, steps / 10);
    std::printf("distilling candidate %zu (%s) for %lld steps\n", i, architecture_string(c.architecture).c_str(),
                static_cast<long long>(steps));
    c.distilled_loss = run_training(student, objective, o).validation_loss;
  }
}

}  // namespace

ArchitectureSearchResult search_architectures(const LoadedCheckpoint& teacher, const ImportanceScores& scores,
                                              Backend& backend, const HeldOutWindows& validation,
                                              const ArchitectureSearchOptions& options) {
  const ModelConfig& config = teacher.config;
  const std::int64_t teacher_parameters = parameter_count(config);
  if (options.target_parameters >= teacher_parameters)
    fail_expected(
        "--target-params",
        str(human_count(options.target_parameters), " is not below the teacher's ", human_count(teacher_parameters)),
        "a budget smaller than the model");
  ArchitectureSearchResult result;
  const std::vector<Architecture> fitting = fitting_architectures(config, scores, options);
  result.fitting_architectures = fitting.size();
  const std::vector<Architecture> candidates = spread_subset(fitting, static_cast<std::size_t>(options.max_candidates));
  std::printf("%zu architectures within %.0f%% of %s; ranking %zu by zero-shot validation loss\n", fitting.size(),
              options.tolerance * 100, human_count(options.target_parameters).c_str(), candidates.size());
  for (const Architecture& a : candidates) {
    const PrunePlan plan = plan_pruning(config, scores, targets_of(a, options.layer_criterion));
    const std::vector<float> params = slice_parameters(config, teacher.table, teacher.params, plan);
    result.ranked.push_back({a, zero_shot_loss(plan.config, params, backend, validation, options.batch_size), {}});
    std::printf("  %-48s %8s params  zero-shot loss %.4f\n", architecture_string(a).c_str(),
                human_count(a.parameters).c_str(), result.ranked.back().zero_shot_loss);
  }
  std::stable_sort(
      result.ranked.begin(), result.ranked.end(),
      [](const RankedArchitecture& a, const RankedArchitecture& b) { return a.zero_shot_loss < b.zero_shot_loss; });
  if (options.distillation_steps > 0) {
    const std::span distilled(result.ranked.data(),
                              std::min(static_cast<std::size_t>(options.distilled_candidates), result.ranked.size()));
    distill_candidates(teacher, scores, backend, validation, options, distilled);
    std::stable_sort(distilled.begin(), distilled.end(), [](const RankedArchitecture& a, const RankedArchitecture& b) {
      return *a.distilled_loss < *b.distilled_loss;
    });
  }
  return result;
}

nlohmann::json search_to_json(const ArchitectureSearchResult& result, const ArchitectureSearchOptions& options,
                              const HeldOutWindows& validation) {
  nlohmann::json ranked = nlohmann::json::array();
  for (const RankedArchitecture& c : result.ranked) {
    nlohmann::json j = architecture_to_json(c.architecture);
    j["zero_shot_loss"] = c.zero_shot_loss;
    if (c.distilled_loss) j["distilled_loss"] = *c.distilled_loss;
    ranked.push_back(j);
  }
  return {{"target_params", options.target_parameters},
          {"tolerance", options.tolerance},
          {"fitting_architectures", result.fitting_architectures},
          {"search_steps", options.distillation_steps},
          {"validation_windows", validation.count},
          {"sequence_length", validation.sequence_length},
          {"ranked", ranked}};
}

}  // namespace minitron
