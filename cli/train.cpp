// minitron train: train a model from an HF checkpoint or from random init of a config.
#include <cstdio>

#include "cli/commands.h"
#include "cli/model_setup.h"
#include "cli/options.h"
#include "data/shards.h"
#include "train/trainer.h"

namespace minitron::cli {

int train(int argc, char** argv) {
  cxxopts::Options options("train", "Train a Llama/Mistral model on token shards (cross-entropy).");
  options.add_options("model")
      ("model", "HF checkpoint directory to start from", cxxopts::value<std::string>())
      ("config", "config.json to start from random init instead", cxxopts::value<std::string>())
      ("tokenizer", "tokenizer.json to copy beside saved models (default: the model's)", cxxopts::value<std::string>());
  add_training_options(options, TrainingDefaults{});
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;
  TrainOptions o = parse_training_options(r);
  ModelSource source = model_source_from_flags(r);
  o.companion_files = source.companion_files;
  if (o.sequence_length > source.config.max_position_embeddings)
    fail_expected("--sequence-length", std::to_string(o.sequence_length),
                  str("at most max_position_embeddings = ", source.config.max_position_embeddings));

  auto backend = make_backend(choose_device(r["device"].as<std::string>()));
  LlamaModel model(source.config, *backend, o.batch_size, o.sequence_length, ModelMode::Training);
  model.set_parameters(initial_parameters(source, o.seed));
  std::printf("training %s on %s: %lld parameters, %zu training shard(s)\n", source.description.c_str(),
              backend->name().c_str(), static_cast<long long>(model.table().total_numel()), o.train_shards.size());
  LossWorkspace workspace(*backend, source.config.vocab_size, o.batch_size * o.sequence_length);
  CrossEntropyObjective objective(workspace);
  print_training_summary(run_training(model, objective, o), o);
  return 0;
}

}  // namespace minitron::cli
