// A recipe: the whole Minitron method as one JSON file (recipes/*.json), read by
// `minitron pipeline`. Paths inside are relative to the working directory. Every key is
// documented in recipes/README.md; unknown keys are refused so a typo never goes unnoticed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace minitron {

// One training run's settings (correction, distillation, the from-scratch baseline).
struct RecipeTraining {
  std::int64_t steps = 100;
  std::int64_t batch_size = 0;  // 0: the recipe's batch_size
  std::int64_t grad_accumulation = 1;
  std::int64_t global_batch_size = 0;  // sequences per step over all ranks (--global-batch-size); 0: not given
  double learning_rate = 1e-4;         // correction: derived from original_learning_rate
  double min_learning_rate = 1e-5;
  double original_learning_rate = 1e-4;  // correction only: peak = 1/5 of this
  std::int64_t warmup_steps = 40;
  double weight_decay = 0.1;
  std::int64_t eval_interval = 0;         // 0: a tenth of the steps
  double temperature = 1.0;               // distillation only
  double hard_label_weight = 0.0;         // distillation only
  double intermediate_loss_weight = 0.0;  // distillation only: hidden-state cosine loss, 0 = off
  std::string intermediate_layers;        // distillation only: "s:t,..." ("" = the default mapping)
  bool enabled = true;                    // correction: false skips it (the teacher is used as is)
  std::string recompute = "none";         // --recompute: none, selective or full (the baseline takes distillation's)
  std::int64_t zero_stage = 0;            // --zero-stage: 1 or 2; 0 = the default (2 with several ranks)
};

// One pruned architecture: explicit targets (any subset) or a parameter budget.
struct RecipeStudent {
  std::string name;
  std::optional<std::int64_t> hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, num_layers;
  std::string drop_layers;      // "15-30": an explicit block instead of --num-layers' ranking
  std::string target_params;    // "4.5B": search (prune's --target-params)
  std::string layer_criterion;  // prune's --layer-criterion: "loss", "block-importance", "task" ("": loss)
};

struct RecipeTask {
  std::string task, task_file;
  std::int64_t shots = 0, limit = 0;
  std::string fewshot_file;  // the pool few-shot examples come from ("": the task file itself)
};

// evaluation.suite: a paper's table of lm-evaluation-harness tasks run on every model (eval --suite).
struct RecipeSuite {
  std::string name;                 // "minitron-base"
  std::string task_dir;             // the exported task files (eval/README.md)
  std::int64_t limit = 0;           // documents per task (0 = all)
  std::int64_t max_gen_toks = 256;  // gsm8k's generation length limit
};

struct Recipe {
  std::string name;
  std::filesystem::path teacher;
  std::string device;  // "" : cuda when present, else cpu
  std::int64_t batch_size = 8, sequence_length = 256;
  std::string train_data, validation_data, calibration_data;  // shard specs; calibration defaults to train
  std::int64_t seed = 1337;
  RecipeTraining correction, distillation;
  std::optional<double> baseline_learning_rate;  // default: the distillation's
  std::int64_t importance_samples = 1024, importance_layer_windows = 64, importance_batch_size = 0;
  std::int64_t importance_sequence_length = 0;  // 0: sequence_length
  std::optional<RecipeTask> importance_task;    // importance --task: blocks also ranked by its accuracy
  std::vector<RecipeStudent> students;
  bool baseline = false;
  std::int64_t eval_windows = 0;  // 0: every validation window
  std::vector<RecipeTask> tasks;
  std::optional<RecipeSuite> suite;
  std::string save_dtype = "bfloat16";
};

// Throws Error naming the file, the key and what was expected.
Recipe load_recipe(const std::filesystem::path& path);

}  // namespace minitron
