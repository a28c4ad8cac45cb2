// minitron train: train a model from an HF checkpoint or from random init of a config.
#include "cli/commands.h"
#include "cli/model_setup.h"
#include "cli/options.h"
#include "train/trainer.h"

namespace minitron::cli {

int train(int argc, char** argv) {
  cxxopts::Options options("train", "Train a Llama/Mistral model on token shards (cross-entropy).");
  // clang-format off
  options.add_options("model")
      ("model", "HF checkpoint directory to start from", cxxopts::value<std::string>())
      ("config", "config.json to start from random init instead", cxxopts::value<std::string>())
      ("tokenizer", "tokenizer.json to copy beside saved models (default: the model's)", cxxopts::value<std::string>());
  // clang-format on
  const TrainingDefaults defaults;
  add_training_options(options, defaults);
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;
  TrainOptions o = parse_training_options(r, defaults);
  ModelSource source = model_source_from_flags(r);
  o.companion_files = source.companion_files;
  if (!source.checkpoint_dir.empty()) o.input_models.push_back(source.checkpoint_dir);
  train_with_cross_entropy(r, source, o, str("training ", source.description));
  return 0;
}

}  // namespace minitron::cli
