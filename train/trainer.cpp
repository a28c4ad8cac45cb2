#include "train/trainer.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iomanip>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <regex>
#include <span>
#include <vector>

#include "data/dataloader.h"
#include "model/checkpoint.h"
#include "model/training_state.h"
#include "train/evaluate.h"
#include "util/checked_json.h"
#include "util/error.h"
#include "util/files.h"
#include "util/numbers.h"

namespace minitron {

namespace fs = std::filesystem;

double CrossEntropyObjective::step(LlamaModel& model, std::span<const std::int32_t> inputs,
                                   std::span<const std::int32_t> targets, std::span<const std::int32_t> positions,
                                   std::int64_t batch, std::int64_t sequence, float grad_weight) {
  ForwardOptions forward_options;
  forward_options.positions = positions;
  model.forward(inputs, batch, sequence, forward_options);
  return cross_entropy_loss(model, targets, workspace_, grad_weight);
}

// A run's resumable checkpoint directories are named "checkpoint-<step>" (group 1: the step).
static const std::regex& checkpoint_name_pattern() {
  static const std::regex pattern("checkpoint-([0-9]+)");
  return pattern;
}

// The checkpoint-<step> directories under output, newest (highest step) first.
std::vector<std::pair<std::int64_t, fs::path>> checkpoints_newest_first(const fs::path& output) {
  std::vector<std::pair<std::int64_t, fs::path>> found;
  if (!fs::is_directory(output)) return found;
  for (const auto& entry : fs::directory_iterator(output)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && std::regex_match(name, m, checkpoint_name_pattern()))
      found.emplace_back(parse_integer(entry.path().string(), m[1].str(), 0, std::numeric_limits<std::int64_t>::max()),
                         entry.path());
  }
  std::sort(found.begin(), found.end(), std::greater<>());
  return found;
}

int zero_stage_for(int requested, std::int64_t world_size) {
  if (requested == 1 || requested == 2) return requested;
  MINITRON_ASSERT(requested == 0, "ZeRO stage ", requested);
  return world_size > 1 ? 2 : 1;
}

fs::path latest_checkpoint(const fs::path& output) {
  for (const auto& [step, path] : checkpoints_newest_first(output))
    if (has_training_state(path)) return path;
  return {};
}

void check_training_output(const TrainOptions& options) {
  check_checkpoint_output(options.output / "model", options.input_models,
                          str((options.output / "model").string(), " (under --output)"));
  if (fs::is_directory(options.output))
    for (const auto& entry : fs::directory_iterator(options.output))
      if (entry.is_directory() && std::regex_match(entry.path().filename().string(), checkpoint_name_pattern()))
        check_checkpoint_output(entry.path(), options.input_models, str(entry.path().string(), " (under --output)"));
}

namespace {

// A resumable checkpoint: the HF checkpoint, the training state beside it
// (model/training_state.h) and the objective's own. A collective: every rank's part of the
// optimizer state goes to rank 0, which alone writes.
void save_training_checkpoint(const fs::path& dir, LlamaModel& model, const AdamW& optimizer, const TrainLoader& loader,
                              std::int64_t step, const TrainOptions& options, const Objective& objective,
                              Communicator& communicator) {
  const std::vector<float> params = optimizer.gather_weights();  // the exact fp32 weights the update works on
  std::vector<float> m, v;
  optimizer.gather_moments(m, v);
  if (communicator.rank() != 0) return;
  write_directory_atomically(
      dir,
      [&](const fs::path& tmp) {
        SaveOptions save;
        save.dtype = options.save_dtype;
        save.copy_files = options.companion_files;
        save_checkpoint(tmp, model.config(), model.table(), params, save);
        TrainingProgress progress;
        progress.step = step;
        progress.optimizer_steps = optimizer.steps_taken();
        progress.loader = loader.state();
        progress.batch_size = options.batch_size;
        progress.sequence_length = options.sequence_length;
        progress.grad_accumulation = options.grad_accumulation;
        progress.world_size = communicator.world_size();
        write_training_state(tmp, progress, params, m, v);
        objective.save_state(tmp);
      },
      is_checkpoint_entry);
}

// Returns the step to continue from.
std::int64_t restore_training_checkpoint(const fs::path& dir, LlamaModel& model, AdamW& optimizer, TrainLoader& loader,
                                         const TrainOptions& options, Objective& objective, std::int64_t world_size) {
  const TrainingProgress saved = read_training_progress(dir);
  struct Shape {
    const char* name;
    std::int64_t saved, now;
  };
  for (const Shape& shape : {Shape{"batch_size", saved.batch_size, options.batch_size},
                             Shape{"sequence_length", saved.sequence_length, options.sequence_length},
                             Shape{"grad_accumulation", saved.grad_accumulation, options.grad_accumulation}})
    if (shape.saved != shape.now)
      fail_expected(str("--resume from ", dir.string()),
                    str(shape.name, " is ", shape.now, " now but was ", shape.saved),
                    "the same training flags as the interrupted run");
  // Checked before the loader's own check, which says the same in its terms: each rank's
  // windows, and so every later step, depend on the number of ranks.
  if (saved.world_size != world_size)
    fail_expected(str("--resume from ", dir.string()),
                  str("this run has ", world_size, " process(es) (WORLD_SIZE) but the checkpoint was written by ",
                      saved.world_size),
                  str("WORLD_SIZE=", saved.world_size, " as in the interrupted run (the data order depends on it)"));
  const AdamW::StateTensors state = optimizer.state_tensors();
  HostStaging staging;
  load_training_tensors(dir, model.backend(),
                        {model.parameters(), optimizer.part_begin(), state.m, state.v, state.master}, staging);
  optimizer.set_steps_taken(saved.optimizer_steps);
  // Under its key again, so that a refusal names the file and the field (loader.epoch).
  const nlohmann::json loader_state = {{"loader", saved.loader}};
  loader.restore(JsonField(loader_state, saved.file).at("loader"));
  objective.restore_state(dir);
  return saved.step;
}

// What a killed run can leave under --output, named by util/files.h's process_sibling:
// ".<checkpoint-N|model>.tmp-<pid>" (a save in progress), ".<name>.old-<pid>" (the copy a
// replacing save moved aside) and ".checkpoint-N.removing-<pid>" (one --save-total-limit was
// deleting). Groups: 1 the directory's name, 2 the tag.
const std::regex& interrupted_save_pattern() {
  static const std::regex pattern(R"(\.(checkpoint-[0-9]+|model)\.(tmp|old|removing)-[0-9]+)");
  return pattern;
}

// Run before anything reads or writes the output directory, so a run starts from complete
// checkpoints only. A moved-aside copy whose directory is gone (killed between a replacing
// save's two renames) is the last complete version of it: it is put back, not removed.
void clean_interrupted_saves(const fs::path& output) {
  if (!fs::is_directory(output)) return;
  std::vector<fs::path> leftovers;
  for (const auto& entry : fs::directory_iterator(output))
    if (entry.is_directory() && std::regex_match(entry.path().filename().string(), interrupted_save_pattern()))
      leftovers.push_back(entry.path());
  for (const fs::path& leftover : leftovers) {
    std::smatch m;
    const std::string name = leftover.filename().string();
    std::regex_match(name, m, interrupted_save_pattern());
    const fs::path original = output / m[1].str();
    if (m[2] == "old" && !fs::exists(original)) {
      fs::rename(leftover, original);
      std::printf("restored %s from %s, left by an interrupted save\n", original.c_str(), leftover.c_str());
    } else {
      fs::remove_all(leftover);
      std::printf("removed %s, left by an interrupted run\n", leftover.c_str());
    }
  }
}

// Keeps `written` and the newest limit - 1 other checkpoint-<step> directories by step (the
// order resume picks them in), once `written` is complete. Each removal renames first, so a
// kill midway leaves a hidden leftover for clean_interrupted_saves, never a half-removed
// directory under a checkpoint's name.
void remove_old_checkpoints(const fs::path& output, const fs::path& written, std::int64_t limit) {
  if (limit <= 0) return;
  std::vector<std::pair<std::int64_t, fs::path>> others = checkpoints_newest_first(output);
  std::erase_if(others, [&](const auto& checkpoint) { return checkpoint.second.filename() == written.filename(); });
  for (std::size_t i = static_cast<std::size_t>(limit - 1); i < others.size(); ++i) {
    const fs::path doomed = process_sibling(others[i].second, "removing");
    fs::rename(others[i].second, doomed);
    fs::remove_all(doomed);
  }
}

// The step of a checkpoint-<step> directory; -1 for none (an empty path).
std::int64_t checkpoint_step(const fs::path& checkpoint) {
  if (checkpoint.empty()) return -1;
  std::smatch m;
  const std::string name = checkpoint.filename().string();
  MINITRON_ASSERT(std::regex_match(name, m, checkpoint_name_pattern()), name);
  return parse_integer(checkpoint.string(), m[1].str(), 0, std::int64_t{1} << 53);
}

// Every rank's values, rank r's k values at [r*k, r*k + k): each rank fills its own slots of a
// zero vector and the slots are summed over ranks (exact: one non-zero term per slot).
std::vector<double> gather_over_ranks(Communicator& communicator, std::span<const double> values) {
  const std::size_t k = values.size();
  std::vector<double> slots(static_cast<std::size_t>(communicator.world_size()) * k, 0.0);
  std::copy(values.begin(), values.end(),
            slots.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(communicator.rank()) * k));
  communicator.all_reduce_sum(slots);
  return slots;
}

// The replicas stay identical only if they start so. A node-local copy of the model that
// differs would mix gradients of different models without an error; a different --steps or
// batch shape would leave some ranks waiting forever in a collective the others never call.
void check_ranks_agree(Communicator& communicator, LlamaModel& model, const Objective& objective,
                       const TrainOptions& options, std::int64_t start) {
  struct Agreed {
    const char* what;
    double value;
  };
  const OptimizerConfig& o = options.optimizer;
  const Agreed agreed[] = {
      {"the weights' sum of squares", model.backend().sum_of_squares(model.parameters())},
      {"--steps", static_cast<double>(options.steps)},
      {"--batch-size", static_cast<double>(options.batch_size)},
      {"--sequence-length", static_cast<double>(options.sequence_length)},
      {"--grad-accumulation", static_cast<double>(options.grad_accumulation)},
      // With masked targets each step sums its target count over the ranks: one more collective.
      {"SFT shards (a loss mask)", options.masked_targets ? 1.0 : 0.0},
      {"--document-boundaries", static_cast<double>(options.document_boundaries)},
      {"the step it starts from", static_cast<double>(start)},
      // Checkpoints are collectives (the sharded optimizer state is gathered), and so is each
      // step's sum of the loss and its logged terms: ranks must agree on when and how many.
      {"--save-interval", static_cast<double>(options.save_interval)},
      {"the number of logged loss terms", static_cast<double>(objective.step_metrics().size())},
      // ZeRO-2 sums gradient buckets during backward, ZeRO-1 the whole vector after it.
      {"--zero-stage", static_cast<double>(model.gradient_buckets().stage())},
      // Each rank updates its own part of the weights: with other hyperparameters the parts
      // would follow different optimizers.
      {"--learning-rate", o.learning_rate},
      {"--min-learning-rate", o.min_learning_rate},
      {"--warmup-steps", static_cast<double>(o.warmup_steps)},
      {"--weight-decay", o.weight_decay},
      {"--grad-clip", o.grad_clip},
      {"--adam-beta1", o.beta1},
      {"--adam-beta2", o.beta2},
      {"--adam-epsilon", o.epsilon},
  };
  constexpr std::size_t k = std::size(agreed);
  std::array<double, k> mine;
  for (std::size_t i = 0; i < k; ++i) mine[i] = agreed[i].value;
  const std::vector<double> all = gather_over_ranks(communicator, mine);
  for (std::size_t r = 1; r < all.size() / k; ++r)
    for (std::size_t i = 0; i < k; ++i)
      if (all[r * k + i] != all[i])
        fail_expected(str("data-parallel rank ", r),
                      str(agreed[i].what, " is ", std::setprecision(17), all[r * k + i], " but rank 0's is ", all[i]),
                      "every rank started with the same command line and the same model files");
}

std::string format_eta(double seconds) {
  if (!(seconds >= 0)) return "--";
  auto s = static_cast<long>(seconds + 0.5);
  return s >= 3600 ? str(s / 3600, "h", (s / 60) % 60, "m") : str(s / 60, "m", s % 60, "s");
}

}  // namespace

TrainSummary run_training(LlamaModel& model, Objective& objective, const TrainOptions& options) {
  SingleProcessCommunicator single;
  return run_training(model, objective, options, single);
}

TrainSummary run_training(LlamaModel& model, Objective& objective, const TrainOptions& options,
                          Communicator& communicator) {
  const std::int64_t B = options.batch_size, T = options.sequence_length;
  const std::int64_t world = communicator.world_size();
  const bool lead = communicator.rank() == 0;  // prints, validates, writes
  if (options.steps < 1) fail_expected("--steps", str(options.steps), "at least 1");
  if (options.grad_accumulation < 1) fail_expected("--grad-accumulation", str(options.grad_accumulation), "at least 1");
  if (options.save_total_limit < 0)
    fail_expected("--save-total-limit", str(options.save_total_limit), "at least 0 (0 keeps every checkpoint)");
  if (T > model.config().max_position_embeddings)
    fail_expected("--sequence-length", str(T),
                  str("at most max_position_embeddings = ", model.config().max_position_embeddings));
  if (options.masked_targets && options.document_boundaries != DocumentBoundaries::None)
    fail_expected(str("--document-boundaries ", document_boundaries_name(options.document_boundaries)),
                  "given with SFT shards", "none: SFT shards record their own document starts");
  const bool packed = options.masked_targets || options.document_boundaries != DocumentBoundaries::None;
  if (options.document_boundaries != DocumentBoundaries::None && options.boundary_token_ids.empty())
    fail_expected(str("--document-boundaries ", document_boundaries_name(options.document_boundaries)),
                  "no token ids to cut documents at", "the model's eos_token_id or bos_token_id");

  TrainLoaderOptions loader_options;
  loader_options.batch_size = B;
  loader_options.sequence_length = T;
  loader_options.seed = options.seed;
  loader_options.rank = communicator.rank();
  loader_options.world_size = world;
  loader_options.vocab_size = model.config().vocab_size;
  TrainLoader loader(options.train_shards, loader_options);
  const ShardKind kind = loader.windows().kind();
  if (options.masked_targets != (kind == ShardKind::Sft))
    fail_expected(options.train_shards[0].string(),
                  kind == ShardKind::Sft ? "it is an SFT shard (tokens with a loss mask, from minitron tokenize --chat)"
                                         : "it is a token shard without a loss mask (from minitron tokenize)",
                  kind == ShardKind::Sft ? "token shards; train SFT shards with minitron sft or distill"
                                         : "SFT shards from minitron tokenize --chat");
  std::unique_ptr<EvalLoader> validation;
  std::unique_ptr<LossWorkspace> eval_workspace;
  if (lead && !options.validation_shards.empty()) {
    std::optional<std::int64_t> max_windows;
    if (options.eval_windows > 0) max_windows = options.eval_windows;
    validation = std::make_unique<EvalLoader>(options.validation_shards, B, T, max_windows, model.config().vocab_size);
    eval_workspace = std::make_unique<LossWorkspace>(model.backend(), model.config().vocab_size, B * T);
  }

  if (options.zero_stage != 0 && options.zero_stage != model.gradient_buckets().stage())
    fail_expected("--zero-stage", str(options.zero_stage),
                  str(model.gradient_buckets().stage(), ", the stage the model was built for"));
  OptimizerConfig optimizer_config = options.optimizer;
  optimizer_config.total_steps = options.steps;
  AdamW optimizer(model, optimizer_config, communicator);

  check_training_output(options);  // again: the caller's check may be minutes old
  if (lead) {
    fs::create_directories(options.output);
    clean_interrupted_saves(options.output);
  }
  // No rank looks for a checkpoint while rank 0 may still be putting one back.
  if (world > 1) communicator.barrier();
  std::int64_t start = 0;
  if (options.resume) {
    const fs::path checkpoint = latest_checkpoint(options.output);
    // Every rank must continue from the same step: with --output on storage that only some
    // ranks see (or see late), they would train different models without noticing.
    const double step = static_cast<double>(checkpoint_step(checkpoint));
    const std::vector<double> found = gather_over_ranks(communicator, std::span(&step, 1));
    if (std::adjacent_find(found.begin(), found.end(), std::not_equal_to<>()) != found.end()) {
      std::string finds;
      for (std::size_t r = 0; r < found.size(); ++r)
        finds += str(r > 0 ? ", " : "", "rank ", r, ": ",
                     found[r] < 0 ? std::string("none") : str("checkpoint-", static_cast<std::int64_t>(found[r])));
      fail_expected(str("--resume from ", options.output.string()),
                    str("the ranks found different newest checkpoints (", finds, ")"),
                    "--output on a file system that every rank sees");
    }
    if (!checkpoint.empty()) {
      start = restore_training_checkpoint(checkpoint, model, optimizer, loader, options, objective, world);
      if (lead) std::printf("resuming from %s at step %lld\n", checkpoint.c_str(), static_cast<long long>(start));
    } else if (lead) {
      std::printf("no checkpoint in %s: starting from step 0\n", options.output.c_str());
    }
  }
  if (world > 1) check_ranks_agree(communicator, model, objective, options, start);
  MetricsLog metrics;  // rank 0's; a closed log writes nothing on the other ranks
  if (lead) metrics = MetricsLog(options.output / "metrics.jsonl", /*append=*/start > 0);

  auto validate = [&](std::int64_t step, TrainSummary& summary) {
    if (!validation) return;
    EvalResult r = evaluate_loss(model, *validation, *eval_workspace, false, options.document_boundaries,
                                 options.boundary_token_ids);
    summary.validation_loss = r.loss;
    std::printf("step %lld | validation loss %.4f | perplexity %.2f | %lld tokens\n", static_cast<long long>(step),
                r.loss, r.perplexity, static_cast<long long>(r.tokens));
    metrics.write({{"step", step},
                   {"validation_loss", r.loss},
                   {"validation_perplexity", r.perplexity},
                   {"validation_tokens", r.tokens}});
  };

  // With masked_targets a step's micro-batches are all read first, to count their targets.
  const std::int64_t held = options.masked_targets ? options.grad_accumulation : 1;
  std::vector<std::int32_t> inputs(static_cast<std::size_t>(held * B * T)), targets(inputs.size());
  // Positions within each document: SFT shards record their documents, token shards are cut by
  // --document-boundaries.
  std::vector<std::int32_t> positions(packed ? inputs.size() : 0);
  // With masked_targets: each micro-batch's counted targets, then its share of the step's.
  std::vector<double> micro_shares(static_cast<std::size_t>(held));
  TrainSummary summary;
  const auto t0 = std::chrono::steady_clock::now();
  auto window_start = t0;
  std::int64_t window_tokens = 0;
  // Each rank's micro-batches carry 1 / (grad_accumulation x world) of the step's gradient, so
  // the sum over ranks is the mean over every micro-batch of the global batch.
  const std::int64_t global_micro_batches = options.grad_accumulation * world;
  const float micro_weight = 1.0f / static_cast<float>(global_micro_batches);
  std::vector<std::string> term_names;  // the same on every step (Objective::step_metrics)
  for (const auto& term : objective.step_metrics()) term_names.push_back(term.first);
  for (std::int64_t step = start; step < options.steps; ++step) {
    model.zero_gradients();
    // [0] the loss, then the objective's named terms: each the mean over every micro-batch of
    // every rank once summed over ranks.
    std::vector<double> logged(1 + term_names.size(), 0.0);
    if (options.masked_targets) {
      for (std::int64_t micro = 0; micro < held; ++micro) {
        const std::span<std::int32_t> micro_targets = std::span(targets).subspan(micro * B * T, B * T);
        loader.next(std::span(inputs).subspan(micro * B * T, B * T), micro_targets,
                    std::span(positions).subspan(micro * B * T, B * T));
        micro_shares[micro] = static_cast<double>(
            std::count_if(micro_targets.begin(), micro_targets.end(), [](std::int32_t t) { return t >= 0; }));
      }
      std::vector<double> step_count = {std::accumulate(micro_shares.begin(), micro_shares.end(), 0.0)};
      communicator.all_reduce_sum(step_count);
      for (double& share : micro_shares) share = step_count[0] > 0 ? share / step_count[0] : 0.0;
    }
    for (std::int64_t micro = 0; micro < options.grad_accumulation; ++micro) {
      float weight = micro_weight;
      std::span<const std::int32_t> micro_inputs = inputs, micro_targets = targets, micro_positions = positions;
      if (options.masked_targets) {
        weight = static_cast<float>(micro_shares[micro]);
        micro_inputs = micro_inputs.subspan(micro * B * T, B * T);
        micro_targets = micro_targets.subspan(micro * B * T, B * T);
        micro_positions = micro_positions.subspan(micro * B * T, B * T);
      } else {
        loader.next(inputs, targets);
        if (packed)
          document_positions_from_tokens(options.document_boundaries, options.boundary_token_ids, inputs, T, positions);
      }
      logged[0] += objective.step(model, micro_inputs, micro_targets, micro_positions, B, T, weight) * weight;
      const auto terms = objective.step_metrics();
      for (std::size_t i = 0; i < term_names.size(); ++i) logged[1 + i] += terms[i].second * weight;
      model.backward();
    }
    objective.all_reduce_gradients(communicator);
    communicator.all_reduce_sum(logged);
    OptimizerStepStats stats = optimizer.step(step);  // ZeRO-1 sums the gradients over ranks here
    objective.optimizer_step(step, optimizer.config());
    window_tokens += B * T * global_micro_batches;
    summary.last_train_loss = logged[0];
    summary.steps = step + 1;
    if (!std::isfinite(logged[0])) fail(str("training diverged at step ", step + 1, ": loss is ", logged[0]));

    if (lead && ((step + 1) % options.log_interval == 0 || step + 1 == options.steps)) {
      auto now = std::chrono::steady_clock::now();
      double window = std::chrono::duration<double>(now - window_start).count();
      double rate = window > 0 ? static_cast<double>(window_tokens) / window : 0.0;
      double elapsed = std::chrono::duration<double>(now - t0).count();
      double eta = elapsed / static_cast<double>(step + 1 - start) * static_cast<double>(options.steps - step - 1);
      nlohmann::json record = {{"step", step + 1},
                               {"loss", logged[0]},
                               {"objective", objective.name()},
                               {"learning_rate", stats.learning_rate},
                               {"grad_norm", stats.grad_norm},
                               {"tokens_per_second", rate},
                               {"elapsed_seconds", elapsed},
                               {"epoch", loader.epoch()}};
      std::string terms;
      for (std::size_t i = 0; i < term_names.size(); ++i) {
        char number[32];
        std::snprintf(number, sizeof number, "%.4f", logged[1 + i]);
        terms += str(" | ", term_names[i], " ", number);
        record[term_names[i]] = logged[1 + i];
      }
      std::printf("step %lld/%lld | %s %.4f%s | lr %.3e | grad norm %.3f | %.0f tok/s | ETA %s\n",
                  static_cast<long long>(step + 1), static_cast<long long>(options.steps), objective.name(), logged[0],
                  terms.c_str(), stats.learning_rate, stats.grad_norm, rate, format_eta(eta).c_str());
      std::fflush(stdout);
      metrics.write(record);
      window_start = now;
      window_tokens = 0;
    }
    if (options.eval_interval > 0 && (step + 1) % options.eval_interval == 0 && step + 1 < options.steps)
      validate(step + 1, summary);
    if (options.save_interval > 0 && (step + 1) % options.save_interval == 0 && step + 1 < options.steps) {
      const fs::path checkpoint = options.output / str("checkpoint-", step + 1);
      save_training_checkpoint(checkpoint, model, optimizer, loader, step + 1, options, objective, communicator);
      if (lead) remove_old_checkpoints(options.output, checkpoint, options.save_total_limit);
    }
  }
  validate(options.steps, summary);
  // The last step's parameter gather, waited for while its communicator is sure to exist.
  model.finish_parameter_gather();

  // The final model, in HF format, for the next step of the recipe.
  const std::vector<float> params = optimizer.gather_weights();
  if (lead) {
    SaveOptions save;
    save.dtype = options.save_dtype;
    save.copy_files = options.companion_files;
    save_checkpoint(options.output / "model", model.config(), model.table(), params, save);
  }

  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  summary.tokens_per_second =
      summary.seconds > 0
          ? static_cast<double>((options.steps - start) * B * T * global_micro_batches) / summary.seconds
          : 0;
  metrics.write({{"event", "done"},
                 {"steps", options.steps},
                 {"last_train_loss", summary.last_train_loss},
                 {"validation_loss", summary.validation_loss},
                 {"tokens_per_second", summary.tokens_per_second}});
  // No rank leaves (closing its connections, which the others would report as its failure)
  // while rank 0 still writes the model.
  communicator.barrier();
  return summary;
}

}  // namespace minitron
