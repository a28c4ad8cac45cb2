// minitron correct: teacher correction, a preset of `train`. The teacher is fine-tuned briefly
// with cross-entropy on the data distillation will use, so that its distribution matches that
// data (Minitron-4B / MN-Minitron-8B: the pre-training data is not available to the pruner).
// The preset: start from --model, learning rate = 1/5 of the original peak (--original-learning-rate),
// minimum 1/10 of that, linear warm-up then cosine; every other flag as in `train`.
#include "cli/commands.h"
#include "cli/model_setup.h"
#include "cli/options.h"
#include "train/trainer.h"

namespace minitron::cli {

int correct(int argc, char** argv) {
  cxxopts::Options options("correct",
                           "Teacher correction: fine-tune the teacher on the distillation data (cross-entropy) at 1/5\n"
                           "of the original peak learning rate, with warm-up and cosine decay (a preset of 'train').");
  // clang-format off
  options.add_options("model")
      ("model", "the teacher's HF checkpoint directory", cxxopts::value<std::string>())
      ("tokenizer", "tokenizer.json to copy beside saved models (default: the model's)", cxxopts::value<std::string>())
      ("original-learning-rate", "the peak learning rate of the original recipe; correction uses 1/5 of it",
       cxxopts::value<double>()->default_value("1e-4"));
  // clang-format on
  TrainingDefaults defaults;
  defaults.steps = 100;
  defaults.min_learning_rate_help = "(default: 1/10 of the peak learning rate)";
  add_training_options(options, defaults);
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;
  if (!r.count("model")) fail_expected("--model", "missing", "the teacher's checkpoint directory");
  TrainOptions o = parse_training_options(r, defaults);
  const double original = in_range<double>(r, "original-learning-rate", 0.0, 10.0);
  // Explicit --learning-rate / --min-learning-rate override the preset.
  if (!r.count("learning-rate")) o.optimizer.learning_rate = original / 5.0;
  if (!r.count("min-learning-rate")) o.optimizer.min_learning_rate = o.optimizer.learning_rate / 10.0;
  if (o.optimizer.min_learning_rate > o.optimizer.learning_rate)
    fail_expected("--min-learning-rate", str(o.optimizer.min_learning_rate),
                  str("at most the learning rate ", o.optimizer.learning_rate));
  ModelSource source = model_source_from_flags(r);
  o.companion_files = source.companion_files;
  if (!source.checkpoint_dir.empty()) o.input_models.push_back(source.checkpoint_dir);
  train_with_cross_entropy(
      r, source, o,
      str("correcting teacher ", source.description, " (peak learning rate ", o.optimizer.learning_rate, ", 1/5 of ",
          original, "; min ", o.optimizer.min_learning_rate, "; ", o.optimizer.warmup_steps,
          " warm-up steps, cosine)"));
  return 0;
}

}  // namespace minitron::cli
