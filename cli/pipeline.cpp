// minitron pipeline: the whole Minitron recipe from one JSON file (recipes/*.json).
#include <cstdio>

#include "cli/commands.h"
#include "cli/options.h"
#include "pipeline/pipeline.h"
#include "pipeline/recipe.h"

namespace minitron::cli {

int pipeline(int argc, char** argv) {
  cxxopts::Options options(
      "pipeline",
      "Run the recipe: teacher correction -> importance -> prune -> distill (and the from-scratch\n"
      "baseline) -> evaluate -> report. Each step writes into its own directory of --run-dir;\n"
      "a finished step (its done.json) is skipped when the pipeline is run again.");
  // clang-format off
  options.add_options()
      ("config", "the recipe (JSON; see recipes/README.md)", cxxopts::value<std::string>())
      ("run-dir", "where every step writes (default: runs/<recipe name>)", cxxopts::value<std::string>());
  // clang-format on
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;
  const Recipe recipe = load_recipe(required<std::string>(r, "config"));
  const std::filesystem::path run_dir =
      r.count("run-dir") ? std::filesystem::path(r["run-dir"].as<std::string>())
                         : std::filesystem::path("runs") / (recipe.name.empty() ? "pipeline" : recipe.name);
  PipelineCommands commands;
  commands.correct = correct;
  commands.importance = importance;
  commands.prune = prune;
  commands.distill = distill;
  commands.train = train;
  const auto steps = run_pipeline(recipe, run_dir, commands);
  std::printf("\nsteps:");
  for (const PipelineStepStatus& s : steps) std::printf(" %s%s", s.name.c_str(), s.skipped ? " (skipped)" : "");
  std::printf("\n");
  return 0;
}

}  // namespace minitron::cli
