// minitron plan: the device memory a training run needs per GPU, part by part, before it runs.
//
//   minitron plan train|correct|distill [that command's flags] --gpus N --gpu-memory 80GiB [--json]
//   minitron plan --recipe FILE [--teacher DIR] --gpus N --gpu-memory 80GiB [--json]
//
// Models are read as config.json only (a checkpoint directory, or a directory holding just an
// HF config.json), so a run can be planned before any weights are downloaded. The numbers are
// the CUDA engine's (train/memory_plan.h): the same plan train, correct and distill check before
// they allocate.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/distill_options.h"
#include "cli/model_setup.h"
#include "cli/options.h"
#include "pipeline/recipe.h"
#include "prune/scores.h"
#include "prune/slicing.h"
#include "train/hidden_state_loss.h"
#include "train/memory_plan.h"

namespace minitron::cli {

namespace fs = std::filesystem;

namespace {

struct PlannedStep {
  std::string name;
  TrainingShape shape;
  MemoryPlan plan;
};

// "80GiB", "80 GB", "81920MiB", "0.5TiB": bytes, refused naming --gpu-memory unless it is a
// positive number with one of those units, above the memory the plan keeps free and at most
// 1 TiB (no GPU holds more).
std::int64_t parse_gpu_memory(const std::string& text) {
  struct Unit {
    const char* name;
    double bytes;
  };
  const Unit units[] = {
      {"TiB", 1099511627776.0}, {"GiB", 1073741824.0}, {"MiB", 1048576.0}, {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}};
  const char* expected = "a size such as 80GiB, 80GB or 81920MiB (units TiB, GiB, MiB, TB, GB, MB)";
  for (const Unit& unit : units) {
    const std::string suffix = unit.name;
    if (text.size() <= suffix.size() || text.compare(text.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    std::string number = text.substr(0, text.size() - suffix.size());
    while (!number.empty() && number.back() == ' ') number.pop_back();
    std::size_t used = 0;
    double value = 0;
    try {
      value = std::stod(number, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (number.empty() || used != number.size() || !std::isfinite(value))
      fail_expected("--gpu-memory", str("'", text, "' is not a number of bytes"), expected);
    const double bytes = value * unit.bytes;
    if (!(bytes > static_cast<double>(kDeviceReserveBytes)) || bytes > 1099511627776.0)
      fail_expected("--gpu-memory", str("'", text, "' is out of range"),
                    str("more than the ", format_gib(kDeviceReserveBytes),
                        " kept free for the CUDA context and NCCL, and at most 1 TiB"));
    return static_cast<std::int64_t>(bytes);
  }
  fail_expected("--gpu-memory", str("'", text, "' has no unit"), expected);
}

// A recipe student's architecture: the teacher's config with the targets the recipe names,
// checked as prune checks them. A parameter budget is a search whose winner is not known before
// it runs.
ModelConfig student_config(const ModelConfig& teacher, const RecipeStudent& s) {
  if (!s.target_params.empty())
    fail_expected(str("student '", s.name, "'"), "target_params picks the architecture by a search",
                  "explicit sizes to plan (the searched architecture is known only after the search)");
  PruneTargets targets;
  targets.hidden_size = s.hidden_size;
  targets.intermediate_size = s.intermediate_size;
  targets.num_attention_heads = s.num_attention_heads;
  targets.num_key_value_heads = s.num_key_value_heads;
  targets.num_layers = s.num_layers;
  if (!s.drop_layers.empty()) targets.drop_layers = parse_layer_range(s.drop_layers);
  // Scores pick which channels stay, not how many: any scores give the planned sizes.
  return plan_pruning(teacher, random_scores(teacher, 1), targets).config;
}

ActivationRecompute recipe_recompute(const std::string& name) {
  // load_recipe has refused any other name.
  return parse_activation_recompute(name).value_or(ActivationRecompute::None);
}

// The training steps of a recipe, in the order `minitron pipeline` runs them. Importance and
// pruning run the teacher forward only and are not planned.
std::vector<PlannedStep> recipe_steps(const fs::path& path, const std::string& teacher_override, std::int64_t gpus,
                                      int zero_stage) {
  const Recipe recipe = load_recipe(path);
  const fs::path teacher_dir = teacher_override.empty() ? recipe.teacher : fs::path(teacher_override);
  if (!fs::exists(teacher_dir))
    fail_expected(str(teacher_override.empty() ? "recipe teacher " : "--teacher ", teacher_dir.string()),
                  "no such file or directory",
                  "a checkpoint directory or a directory with the teacher's config.json (--teacher DIR overrides the "
                  "recipe's)");
  const ModelConfig teacher = load_model_config(teacher_dir);
  const bool validation = !recipe.validation_data.empty();
  auto shape_of = [&](const ModelConfig& config, const RecipeTraining& t) {
    TrainingShape s;
    s.model = config;
    s.batch_size = t.batch_size > 0 ? t.batch_size : recipe.batch_size;
    s.sequence_length = recipe.sequence_length;
    s.recompute = recipe_recompute(t.recompute);
    s.zero_stage = zero_stage_for(zero_stage != 0 ? zero_stage : static_cast<int>(t.zero_stage), gpus);
    s.world_size = gpus;
    s.validation = validation;
    return s;
  };
  std::vector<PlannedStep> steps;
  if (recipe.correction.enabled) steps.push_back({"correct", shape_of(teacher, recipe.correction), {}});
  for (const RecipeStudent& student : recipe.students) {
    const ModelConfig config = student_config(teacher, student);
    TrainingShape distill = shape_of(config, recipe.distillation);
    distill.teacher = teacher;
    if (recipe.distillation.intermediate_loss_weight > 0)
      distill.intermediate_pairs =
          static_cast<std::int64_t>(parse_layer_mapping(recipe.distillation.intermediate_layers,
                                                        config.num_hidden_layers, teacher.num_hidden_layers)
                                        .size());
    steps.push_back({"distill-" + student.name, distill, {}});
    if (recipe.baseline) steps.push_back({"baseline-" + student.name, shape_of(config, recipe.distillation), {}});
  }
  return steps;
}

fs::path config_dir(const cxxopts::ParseResult& r, const std::string& flag) {
  const fs::path dir = required<std::string>(r, flag);
  if (!fs::is_directory(dir))
    fail_expected(str("--", flag, " ", dir.string()), "not a directory",
                  "a checkpoint directory or one with config.json");
  return dir;
}

void print_table(const std::vector<PlannedStep>& steps, std::int64_t gpus, std::int64_t device_bytes) {
  std::printf("memory per GPU on the CUDA engine: %lld GPU(s) of %s\n\n", static_cast<long long>(gpus),
              format_gib(device_bytes).c_str());
  std::printf("%-24s", "");
  for (const PlannedStep& s : steps) std::printf(" %18s", s.name.c_str());
  std::printf("\n%-24s", "recompute");
  for (const PlannedStep& s : steps) std::printf(" %18s", activation_recompute_name(s.shape.recompute));
  std::printf("\n%-24s", "zero stage");
  for (const PlannedStep& s : steps) std::printf(" %18d", s.shape.zero_stage);
  std::printf("\n%-24s", "batch x sequence");
  for (const PlannedStep& s : steps)
    std::printf(" %18s", str(s.shape.batch_size, " x ", s.shape.sequence_length).c_str());
  std::printf("\n");
  for (std::size_t i = 0; i < memory_part_names().size(); ++i) {
    std::printf("%-24s", memory_part_names()[i].c_str());
    for (const PlannedStep& s : steps) std::printf(" %18s", format_gib(s.plan.parts[i].bytes).c_str());
    std::printf("\n");
  }
  std::printf("%-24s", "peak");
  for (const PlannedStep& s : steps) std::printf(" %18s", format_gib(s.plan.peak()).c_str());
  std::printf("\n%-24s", "+ reserve");
  for (const PlannedStep& s : steps) std::printf(" %18s", format_gib(s.plan.peak() + kDeviceReserveBytes).c_str());
  std::printf("\n%-24s", "fits");
  for (const PlannedStep& s : steps) std::printf(" %18s", fits(s.plan, device_bytes) ? "yes" : "NO");
  std::printf("\n");
  for (std::size_t i = 0; i < host_memory_part_names().size(); ++i) {
    std::printf("%-24s", str("host: ", host_memory_part_names()[i]).c_str());
    for (const PlannedStep& s : steps) std::printf(" %18s", format_size(s.plan.host_parts[i].bytes).c_str());
    std::printf("\n");
  }
  for (const PlannedStep& s : steps) {
    if (fits(s.plan, device_bytes)) continue;
    const std::string change = fitting_change(s.shape, device_bytes);
    std::printf("%s does not fit: %s\n", s.name.c_str(),
                change.empty() ? "no recompute mode, rank count or sequence length makes it fit"
                               : str("the cheapest change that fits is ", change).c_str());
  }
  std::printf("(reserve: %s kept free for the CUDA context, NCCL's buffers and allocation rounding)\n",
              format_gib(kDeviceReserveBytes).c_str());
}

}  // namespace

int plan(int argc, char** argv) {
  // `plan train|correct|distill ...` takes that command's flags; `plan --recipe FILE` a recipe.
  std::string command;
  if (argc >= 2 && argv[1][0] != '-') {
    command = argv[1];
    if (command != "train" && command != "correct" && command != "distill")
      fail_expected("minitron plan", str("'", command, "'"), "train, correct or distill, or --recipe FILE");
    --argc;
    ++argv;
  }
  cxxopts::Options options(command.empty() ? "plan" : "plan " + command,
                           "The device memory a training run needs per GPU on the CUDA engine, part by part, for the\n"
                           "command line of train, correct or distill, or for every training step of a recipe.");
  if (command.empty()) options.custom_help("[train|correct|distill] [OPTION...] | --recipe FILE [OPTION...]");
  // clang-format off
  options.add_options("plan")
      ("recipe", "plan every training step of this recipe (instead of train/correct/distill flags)", cxxopts::value<std::string>())
      ("gpus", "data-parallel GPUs (ranks)", cxxopts::value<std::int64_t>()->default_value("1"))
      ("gpu-memory", "memory of each GPU, e.g. 80GiB, 80GB or 81920MiB", cxxopts::value<std::string>()->default_value("80GiB"))
      ("json", "print the plan as JSON");
  // clang-format on
  if (command == "distill") {
    add_distillation_options(options);
  } else if (!command.empty()) {
    // clang-format off
    options.add_options("model")
        ("model", "HF checkpoint directory (only its config.json is read)", cxxopts::value<std::string>())
        ("config", "config.json of a random init", cxxopts::value<std::string>())
        ("tokenizer", "accepted as train takes it; not read", cxxopts::value<std::string>())
        ("original-learning-rate", "accepted as correct takes it; not read", cxxopts::value<double>()->default_value("1e-4"));
    // clang-format on
  } else {
    // clang-format off
    options.add_options("recipe")
        ("teacher", "the teacher's checkpoint or config.json directory, instead of the recipe's", cxxopts::value<std::string>())
        ("zero-stage", "ZeRO stage of every step, instead of the recipe's: 1 or 2", cxxopts::value<std::int64_t>());
    // clang-format on
  }
  if (!command.empty()) add_training_options(options, TrainingDefaults{});
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;

  const std::int64_t gpus = in_range<std::int64_t>(r, "gpus", 1, 4096);
  const std::int64_t device_bytes = parse_gpu_memory(r["gpu-memory"].as<std::string>());
  const int zero_stage = zero_stage_from_flags(r);  // 0: the recipe's, or the default

  std::vector<PlannedStep> steps;
  if (command.empty()) {
    if (!r.count("recipe"))
      fail_expected("minitron plan", "no run given", "train, correct or distill and its flags, or --recipe FILE");
    steps = recipe_steps(r["recipe"].as<std::string>(), r.count("teacher") ? r["teacher"].as<std::string>() : "", gpus,
                         zero_stage);
  } else if (command == "distill") {
    const ModelConfig teacher = load_model_config(config_dir(r, "teacher"));
    const ModelConfig student = load_model_config(config_dir(r, "student"));
    if (teacher.vocab_size != student.vocab_size)
      fail_expected("plan distill", str("teacher vocab_size ", teacher.vocab_size, ", student ", student.vocab_size),
                    "teacher and student sharing one vocabulary");
    TrainingShape shape = training_shape_from_flags(r, student, gpus);
    shape.teacher = teacher;
    shape.loss_chunk_rows = in_range<std::int64_t>(r, "loss-chunk-rows", 0, std::int64_t{1} << 40);
    if (r["intermediate-loss-weight"].as<float>() > 0)
      shape.intermediate_pairs =
          static_cast<std::int64_t>(parse_layer_mapping(r["intermediate-layers"].as<std::string>(),
                                                        student.num_hidden_layers, teacher.num_hidden_layers)
                                        .size());
    steps.push_back({"distill", shape, {}});
  } else {
    const ModelSource source = model_source_from_flags(r);
    steps.push_back({command, training_shape_from_flags(r, source.config, gpus), {}});
  }
  for (PlannedStep& s : steps) s.plan = plan_training_memory(s.shape);

  if (r.count("json")) {
    nlohmann::ordered_json out = {{"engine", "cuda"}, {"gpus", gpus}, {"gpu_memory", device_bytes}};
    out["steps"] = nlohmann::ordered_json::array();
    for (const PlannedStep& s : steps) {
      nlohmann::ordered_json step = {{"step", s.name}};
      step.update(memory_plan_json(s.shape, s.plan, device_bytes));
      out["steps"].push_back(step);
    }
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    print_table(steps, gpus, device_bytes);
  }
  return 0;
}

}  // namespace minitron::cli
