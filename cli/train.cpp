// minitron train and minitron sft: cross-entropy training of a model from an HF checkpoint or from
// random init of a config, on token shards (train) or on SFT shards with their loss mask (sft).
#include "cli/commands.h"
#include "cli/model_setup.h"
#include "cli/options.h"
#include "train/trainer.h"

namespace minitron::cli {

namespace {

// The two commands differ only in their shards' kind (the trainer refuses the other's) and in how
// the loss is averaged: sft's over the unmasked targets of the whole step.
int train_command(int argc, char** argv, const char* name, const char* description, bool masked_targets,
                  const char* banner) {
  cxxopts::Options options(name, description);
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
  o.masked_targets = masked_targets;
  ModelSource source = model_source_from_flags(r);
  o.companion_files = source.companion_files;
  if (!source.checkpoint_dir.empty()) o.input_models.push_back(source.checkpoint_dir);
  train_with_cross_entropy(r, source, o, str(banner, " ", source.description));
  return 0;
}

}  // namespace

int train(int argc, char** argv) {
  return train_command(argc, argv, "train", "Train a Llama/Mistral model on token shards (cross-entropy).", false,
                       "training");
}

int sft(int argc, char** argv) {
  return train_command(argc, argv, "sft",
                       "Fine-tune a Llama/Mistral model on SFT shards (minitron tokenize --chat): cross-entropy on "
                       "the\nassistant tokens (the shards' loss mask), averaged over the unmasked tokens of each "
                       "whole step\n(every micro-batch of every data-parallel rank). Flags as for train.",
                       true, "fine-tuning");
}

}  // namespace minitron::cli
