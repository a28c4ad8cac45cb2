// The recipe as one command: teacher correction -> importance -> prune -> distill (and the
// from-scratch baseline) -> evaluate -> report, each step in its own directory of the run
// directory, finished steps marked by a done.json written last and never redone.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "pipeline/recipe.h"

namespace minitron {

// The steps run the subcommands in-process (the cli area owns them; this library only knows
// their signature), so every step is exactly what a user could run by hand.
using CommandFunction = int (*)(int argc, char** argv);
struct PipelineCommands {
  CommandFunction correct = nullptr, importance = nullptr, prune = nullptr, distill = nullptr, train = nullptr;
};

struct PipelineStepStatus {
  std::string name;
  bool skipped = false;  // found finished by an earlier run
  double seconds = 0;
};

// Runs every unfinished step and writes report.md, report.json and loss_curves.svg into
// run_dir. Returns the steps in order with whether each was skipped.
std::vector<PipelineStepStatus> run_pipeline(const Recipe& recipe, const std::filesystem::path& run_dir,
                                             const PipelineCommands& commands);

}  // namespace minitron
