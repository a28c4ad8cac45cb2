// minitron sft: supervised fine-tuning on SFT shards (minitron tokenize --chat), the loss the
// mean cross-entropy over the step's unmasked targets.
#include "cli/commands.h"
#include "cli/model_setup.h"
#include "cli/options.h"
#include "train/trainer.h"

namespace minitron::cli {

int sft(int argc, char** argv) {
  cxxopts::Options options("sft",
                           "Fine-tune a Llama/Mistral model on SFT shards (minitron tokenize --chat): cross-entropy on "
                           "the\nassistant tokens (the shards' loss mask), averaged over the unmasked tokens of each "
                           "whole step\n(every micro-batch of every data-parallel rank). Flags as for train.");
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
  o.masked_targets = true;
  ModelSource source = model_source_from_flags(r);
  o.companion_files = source.companion_files;
  if (!source.checkpoint_dir.empty()) o.input_models.push_back(source.checkpoint_dir);
  train_with_cross_entropy(r, source, o, str("fine-tuning ", source.description));
  return 0;
}

}  // namespace minitron::cli
