// minitron: one binary, one subcommand per step of the Minitron recipe.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "cli/commands.h"
#include "dist/environment.h"
#include "util/error.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
  bool data_parallel = false;  // runs as one rank of a torchrun/srun launch (dist/environment.h)
};

constexpr Command kCommands[] = {
    {"info", minitron::cli::info, "show a model's architecture, parameter counts and FLOPs"},
    {"train", minitron::cli::train, "train a model (from a checkpoint or a config) on token shards", true},
    {"sft", minitron::cli::sft, "fine-tune on chat data (SFT shards): the loss on the assistant's tokens", true},
    {"eval", minitron::cli::eval,
     "perplexity on token shards, or lm-evaluation-harness tasks and suites (data-parallel for tasks)", true},
    {"generate", minitron::cli::generate, "continue a prompt with a model (greedy or sampled, KV cache)"},
    {"tokenizer", minitron::cli::tokenizer, "encode, decode, or train a tokenizer.json"},
    {"tokenize", minitron::cli::tokenize,
     "turn text or JSONL into llm.c token shards, or chat JSONL (--chat) into SFT shards"},
    {"importance", minitron::cli::importance, "score neurons, heads, channels and layers on calibration data"},
    {"prune", minitron::cli::prune, "prune width and depth by importance scores into a new checkpoint"},
    {"correct", minitron::cli::correct,
     "teacher correction: fine-tune the teacher on the distillation data (train preset)", true},
    {"distill", minitron::cli::distill, "distill a teacher into a student (forward KL on logits)", true},
    {"plan", minitron::cli::plan,
     "the device memory a training run or a recipe's steps need per GPU, part by part (CUDA engine)"},
    {"pipeline", minitron::cli::pipeline,
     "the whole recipe from a JSON config: correct, score, prune, distill, evaluate, report"},
};

void print_usage(std::FILE* out) {
  std::fputs("usage: minitron <command> [--help] [flags]\n\ncommands:\n", out);
  for (const Command& c : kCommands) std::fprintf(out, "  %-12s %s\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "help")) {
    print_usage(stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const Command& c : kCommands) {
    if (std::strcmp(argv[1], c.name) != 0) continue;
    try {
      if (const std::int64_t processes = minitron::launched_world_size(); processes > 1 && !c.data_parallel)
        minitron::fail_expected(
            minitron::str("minitron ", c.name),
            minitron::str("launched as ", processes, " processes (WORLD_SIZE or SLURM_STEP_NUM_TASKS)"),
            "one process: train, sft, correct, distill and eval (--task, --suite) are the data-parallel commands");
      return c.run(argc - 1, argv + 1);
    } catch (const minitron::Error& e) {
      std::fprintf(stderr, "minitron: error: %s\n", e.what());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "minitron: error: %s\n", e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "minitron: error: unknown command '%s' (expected one of:", argv[1]);
  for (const Command& c : kCommands) std::fprintf(stderr, " %s", c.name);
  std::fputs(")\n", stderr);
  return 2;
}
