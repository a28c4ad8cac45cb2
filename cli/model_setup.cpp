#include "cli/model_setup.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>

#include "cli/options.h"
#include "data/shards.h"
#include "kernels/make_backend.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "model/parameters.h"
#include "train/losses.h"
#include "util/checked_json.h"
#include "util/error.h"

namespace minitron::cli {

namespace fs = std::filesystem;

ModelSource model_source_from_flags(const cxxopts::ParseResult& r) {
  const bool has_model = r.count("model") > 0, has_config = r.count("config") > 0;
  if (has_model == has_config)
    fail_expected("--model / --config", has_model ? "both given" : "neither given",
                  "exactly one: a checkpoint directory or a config.json for random init");
  ModelSource source;
  if (has_model) {
    source.checkpoint_dir = r["model"].as<std::string>();
    if (!fs::is_directory(source.checkpoint_dir))
      fail_expected(str("--model ", source.checkpoint_dir.string()), "not a directory",
                    "an HF checkpoint directory with config.json and safetensors");
    source.config = load_model_config(source.checkpoint_dir);
    source.companion_files = companion_files(source.checkpoint_dir);
    source.description = source.checkpoint_dir.string();
  } else {
    fs::path config = r["config"].as<std::string>();
    source.config = load_model_config(config);
    source.description = str("a random init of ", config.string());
  }
  if (r.count("tokenizer")) {
    fs::path tokenizer = r["tokenizer"].as<std::string>();
    if (fs::is_directory(tokenizer)) tokenizer /= "tokenizer.json";
    if (!fs::is_regular_file(tokenizer))
      fail_expected(str("--tokenizer ", tokenizer.string()), "no such file", "a tokenizer.json");
    std::erase_if(source.companion_files, [](const fs::path& p) { return p.filename() == "tokenizer.json"; });
    source.companion_files.push_back(tokenizer);
  }
  return source;
}

void set_initial_parameters(const ModelSource& source, std::uint64_t seed, LlamaModel& model) {
  if (!source.checkpoint_dir.empty()) {
    load_parameters(source.checkpoint_dir, model);
    return;
  }
  std::vector<float> params(static_cast<std::size_t>(model.table().total_numel()));
  const std::optional<JsonField> range = JsonField(source.config.source, "config.json").optional("initializer_range");
  initialize_parameters(source.config, model.table(), params, seed, range ? range->as_float() : 0.02);
  model.set_parameters(params);
}

// The flags shared by train, correct and distill (Hugging Face TrainingArguments names).
void add_training_options(cxxopts::Options& options, const TrainingDefaults& defaults) {
  // clang-format off
  options.add_options("data")
      ("data", "training token shards: a file, a glob or a comma list", cxxopts::value<std::string>())
      ("validation-data", "validation token shards", cxxopts::value<std::string>())
      ("output", "output directory (model/, checkpoint-N/, metrics.jsonl)", cxxopts::value<std::string>());
  options.add_options("training")
      ("device", "cpu or cuda (default: cuda when a GPU is present)", cxxopts::value<std::string>()->default_value(""))
      ("batch-size", "sequences per micro-batch", cxxopts::value<std::int64_t>()->default_value("8"))
      ("sequence-length", "tokens per sequence", cxxopts::value<std::int64_t>()->default_value("256"))
      ("steps", "optimizer steps", cxxopts::value<std::int64_t>()->default_value(std::to_string(defaults.steps)))
      ("learning-rate", "peak learning rate", cxxopts::value<double>()->default_value(defaults.learning_rate))
      ("min-learning-rate",
       "learning rate at the end of the cosine " +
           (defaults.min_learning_rate_help.empty()
                ? str("(default: ", defaults.min_learning_rate, ", or --learning-rate when that is lower)")
                : defaults.min_learning_rate_help),
       cxxopts::value<double>())
      ("warmup-steps", "linear warm-up steps", cxxopts::value<std::int64_t>()->default_value("40"))
      ("weight-decay", "decoupled weight decay (matrices; never norms)", cxxopts::value<double>()->default_value("0.1"))
      ("no-embedding-weight-decay", "exclude the embedding table and LM head from weight decay")
      ("grad-clip", "global gradient-norm clip (0 = off)", cxxopts::value<double>()->default_value("1.0"))
      ("grad-accumulation", "micro-batches per optimizer step on each rank", cxxopts::value<std::int64_t>()->default_value("1"))
      ("global-batch-size",
       "sequences per optimizer step over all ranks, instead of --grad-accumulation: each rank accumulates "
       "N / (--batch-size x ranks) micro-batches, so the step is the same on 1 or 8 GPUs",
       cxxopts::value<std::int64_t>())
      ("adam-beta1", "AdamW beta1", cxxopts::value<double>()->default_value("0.9"))
      ("adam-beta2", "AdamW beta2", cxxopts::value<double>()->default_value("0.95"))
      ("adam-epsilon", "AdamW epsilon", cxxopts::value<double>()->default_value("1e-8"))
      ("seed", "seed of the data order (and of random init)", cxxopts::value<std::uint64_t>()->default_value("1337"))
      ("eval-interval", "validate every N steps (0 = only at the end)", cxxopts::value<std::int64_t>()->default_value("0"))
      ("eval-windows", "validation windows per evaluation (0 = all)", cxxopts::value<std::int64_t>()->default_value("0"))
      ("save-interval", "write a resumable checkpoint every N steps (0 = none)", cxxopts::value<std::int64_t>()->default_value("0"))
      ("save-total-limit", "keep only the newest N checkpoint-* directories, removing older ones once a new one is complete (0 = all)",
       cxxopts::value<std::int64_t>()->default_value("0"))
      ("recompute",
       "activations kept for backward: none (all), selective (GEMM and attention outputs; norms and SwiGLU are "
       "recomputed) or full (each layer's input; the layer reruns in backward). Same gradients, less memory",
       cxxopts::value<std::string>()->default_value("none"))
      ("zero-stage",
       "ZeRO stage of a data-parallel run: 1 (optimizer state sharded over the ranks) or 2 (gradients too, "
       "reduce-scattered in buckets during backward; the same results). Default: 2 with several ranks, 1 alone",
       cxxopts::value<std::int64_t>())
      ("document-boundaries",
       "none (each window is one sequence), eos (a document ends at each of the model's EOS tokens) or bos (a "
       "document starts at each BOS token, as llm.c's and minitron tokenize's shards mark them): packed documents, "
       "attention stays inside each and positions restart at its start",
       cxxopts::value<std::string>()->default_value("none"))
      ("log-interval", "print and log every N steps", cxxopts::value<std::int64_t>()->default_value("1"))
      ("save-dtype", "bfloat16 or float32", cxxopts::value<std::string>()->default_value("bfloat16"))
      ("resume", "continue from the newest checkpoint in --output");
  // clang-format on
}

ActivationRecompute recompute_from_flags(const cxxopts::ParseResult& r) {
  const std::string recompute = r["recompute"].as<std::string>();
  const std::optional<ActivationRecompute> mode = parse_activation_recompute(recompute);
  if (!mode) fail_expected("--recompute", str("'", recompute, "'"), "none, selective or full");
  return *mode;
}

int zero_stage_from_flags(const cxxopts::ParseResult& r) {
  if (!r.count("zero-stage")) return 0;
  const std::int64_t stage = r["zero-stage"].as<std::int64_t>();
  if (stage != 1 && stage != 2)
    fail_expected("--zero-stage", str(stage),
                  "1 (optimizer state sharded) or 2 (gradients too); stage 3 (weights sharded) is not implemented");
  return static_cast<int>(stage);
}

namespace {

// Each rank's micro-batches per optimizer step: --grad-accumulation, or --global-batch-size N
// (Megatron-LM's: sequences per step over all ranks) as N / (batch_size x world_size), so a
// recipe's global batch holds whatever the number of GPUs.
std::int64_t grad_accumulation_from_flags(const cxxopts::ParseResult& r, std::int64_t batch_size,
                                          std::int64_t world_size) {
  if (!r.count("global-batch-size")) return in_range<std::int64_t>(r, "grad-accumulation", 1, 1 << 20);
  if (r.count("grad-accumulation"))
    fail_expected("--global-batch-size and --grad-accumulation", "both given",
                  "one: the global batch over all ranks, or each rank's micro-batches per step");
  const std::int64_t global = in_range<std::int64_t>(r, "global-batch-size", 1, std::int64_t{1} << 40);
  const std::int64_t per_step = batch_size * world_size;  // sequences one micro-batch of every rank covers
  if (global % per_step != 0 || global / per_step > (1 << 20))
    fail_expected(
        str("--global-batch-size ", global),
        str("not a whole number of micro-batches of --batch-size ", batch_size, " on ", world_size, " rank(s)"),
        str("a multiple of ", batch_size, " x ", world_size, " = ", per_step, ", at most ", per_step << 20));
  return global / per_step;
}

}  // namespace

TrainOptions parse_training_options(const cxxopts::ParseResult& r, const TrainingDefaults& defaults) {
  TrainOptions o;
  o.train_shards = resolve_shards(required<std::string>(r, "data"));
  if (r.count("validation-data")) o.validation_shards = resolve_shards(r["validation-data"].as<std::string>());
  o.output = required<std::string>(r, "output");
  o.batch_size = in_range<std::int64_t>(r, "batch-size", 1, 1 << 20);
  o.sequence_length = in_range<std::int64_t>(r, "sequence-length", 1, 1 << 20);
  o.steps = in_range<std::int64_t>(r, "steps", 1, std::int64_t{1} << 40);
  o.grad_accumulation = grad_accumulation_from_flags(r, o.batch_size, launched_world_size());
  o.eval_interval = in_range<std::int64_t>(r, "eval-interval", 0, std::int64_t{1} << 40);
  o.eval_windows = in_range<std::int64_t>(r, "eval-windows", 0, std::int64_t{1} << 40);
  o.save_interval = in_range<std::int64_t>(r, "save-interval", 0, std::int64_t{1} << 40);
  o.save_total_limit = in_range<std::int64_t>(r, "save-total-limit", 0, std::int64_t{1} << 40);
  o.recompute = recompute_from_flags(r);
  o.zero_stage = zero_stage_from_flags(r);
  const std::string boundaries = r["document-boundaries"].as<std::string>();
  const std::optional<DocumentBoundaries> cut = parse_document_boundaries(boundaries);
  if (!cut) fail_expected("--document-boundaries", str("'", boundaries, "'"), "none, eos or bos");
  o.document_boundaries = *cut;
  o.log_interval = in_range<std::int64_t>(r, "log-interval", 1, std::int64_t{1} << 40);
  o.seed = r["seed"].as<std::uint64_t>();
  o.save_dtype = parse_save_dtype(r["save-dtype"].as<std::string>());
  o.resume = r.count("resume") > 0;
  OptimizerConfig& opt = o.optimizer;
  opt.learning_rate = in_range<double>(r, "learning-rate", 0.0, 10.0);
  opt.min_learning_rate = r.count("min-learning-rate")
                              ? in_range<double>(r, "min-learning-rate", 0.0, opt.learning_rate)
                              : std::min(defaults.min_learning_rate, opt.learning_rate);
  opt.warmup_steps = in_range<std::int64_t>(r, "warmup-steps", 0, std::int64_t{1} << 40);
  opt.weight_decay = in_range<double>(r, "weight-decay", 0.0, 10.0);
  opt.decay_embeddings = r.count("no-embedding-weight-decay") == 0;
  opt.grad_clip = in_range<double>(r, "grad-clip", 0.0, 1e9);
  opt.beta1 = in_range<double>(r, "adam-beta1", 0.0, 0.999999);
  opt.beta2 = in_range<double>(r, "adam-beta2", 0.0, 0.999999999);
  opt.epsilon = in_range<double>(r, "adam-epsilon", 0.0, 1.0);
  return o;
}

void set_document_boundaries(TrainOptions& options, const ModelConfig& trained, const std::string& model_name) {
  if (options.document_boundaries == DocumentBoundaries::None) return;
  const bool eos = options.document_boundaries == DocumentBoundaries::Eos;
  const std::vector<std::int64_t>& ids = eos ? trained.eos_token_ids : trained.bos_token_ids;
  const char* field = eos ? "eos_token_id" : "bos_token_id";
  if (ids.empty())
    fail_expected(str("--document-boundaries ", document_boundaries_name(options.document_boundaries)),
                  str(model_name, " has no ", field, " in its config.json"),
                  str("a model whose config names the ", field, " that marks its documents"));
  options.boundary_token_ids = ids;
}

void print_activation_recompute(const LlamaModel& model) {
  if (model.recompute() == ActivationRecompute::None) return;
  const ActivationArenaBytes bytes = model.activation_arena_bytes();
  std::printf("activation recomputation %s: %.1f MiB of activations kept for backward, %.1f MiB recomputed per layer\n",
              activation_recompute_name(model.recompute()), static_cast<double>(bytes.saved) / (1 << 20),
              static_cast<double>(bytes.workspace) / (1 << 20));
}

void print_training_summary(const TrainSummary& s, const TrainOptions& o) {
  std::printf("done: %lld steps in %.1f s (%.0f tok/s), last train loss %.4f", static_cast<long long>(s.steps),
              s.seconds, s.tokens_per_second, s.last_train_loss);
  if (s.validation_loss == s.validation_loss) std::printf(", validation loss %.4f", s.validation_loss);
  std::printf("\nmodel saved to %s\n", (o.output / "model").c_str());
}

void silence_stdout() {
  std::fflush(stdout);
  // stdout stays a valid stream whatever happens; if /dev/null cannot be opened this rank
  // just prints too.
  if (const int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC); null >= 0) {
    ::dup2(null, STDOUT_FILENO);
    ::close(null);
  }
}

TrainingRun open_training_run(const cxxopts::ParseResult& r,
                              const std::function<void(Backend&, std::int64_t world_size)>& before_join) {
  TrainingRun run;
  run.environment = distributed_environment();
  const DistributedEnvironment& env = run.environment;
  // One log per run: the other ranks would print the same lines, rank 0's being the ones that
  // count (losses averaged over ranks). Errors still reach stderr from every rank.
  if (!run.lead()) silence_stdout();
  std::string device = choose_device(r["device"].as<std::string>());
  if (env.world_size > 1) device = device_for_local_rank(device, env.local_rank);
  run.backend = make_backend(device);
  if (before_join) before_join(*run.backend, env.world_size);
  run.communicator = make_communicator(*run.backend, env);
  if (env.world_size > 1)
    std::printf("data-parallel training: %lld processes (rank 0 at %s:%d), --batch-size %s per process\n",
                static_cast<long long>(env.world_size), env.master_address.c_str(), env.master_port,
                std::to_string(r["batch-size"].as<std::int64_t>()).c_str());
  return run;
}

GradientSharding gradient_sharding(TrainOptions& o, const TrainingRun& run) {
  o.zero_stage = zero_stage_for(o.zero_stage, run.communicator->world_size());
  GradientSharding sharding;
  sharding.stage = o.zero_stage;
  sharding.communicator = run.communicator.get();
  if (o.zero_stage == 2 && run.lead())
    std::printf("ZeRO stage 2: gradients sharded over %lld ranks, reduce-scattered in buckets during backward\n",
                static_cast<long long>(run.communicator->world_size()));
  return sharding;
}

TrainingShape training_shape(const ModelConfig& config, const TrainOptions& o, std::int64_t world_size) {
  TrainingShape shape;
  shape.model = config;
  shape.batch_size = o.batch_size;
  shape.sequence_length = o.sequence_length;
  shape.recompute = o.recompute;
  shape.zero_stage = zero_stage_for(o.zero_stage, world_size);
  shape.world_size = world_size;
  shape.validation = !o.validation_shards.empty();
  return shape;
}

TrainingShape training_shape_from_flags(const cxxopts::ParseResult& r, const ModelConfig& config,
                                        std::int64_t world_size) {
  TrainOptions o;
  o.batch_size = in_range<std::int64_t>(r, "batch-size", 1, 1 << 20);
  o.sequence_length = in_range<std::int64_t>(r, "sequence-length", 1, 1 << 20);
  o.recompute = recompute_from_flags(r);
  o.zero_stage = zero_stage_from_flags(r);
  if (r.count("validation-data")) o.validation_shards = {r["validation-data"].as<std::string>()};
  return training_shape(config, o, world_size);
}

void check_sequence_length(const char* flag, std::int64_t tokens, const ModelConfig& config) {
  if (tokens > config.max_position_embeddings)
    fail_expected(flag, std::to_string(tokens),
                  str("at most max_position_embeddings = ", config.max_position_embeddings));
}

void train_with_cross_entropy(const cxxopts::ParseResult& r, const ModelSource& source, TrainOptions o,
                              const std::string& banner) {
  check_sequence_length("--sequence-length", o.sequence_length, source.config);
  set_document_boundaries(o, source.config, source.description);
  check_training_output(o);  // before the weights load, not after
  TrainingRun run = open_training_run(r, [&](Backend& backend, std::int64_t world_size) {
    check_training_memory(training_shape(source.config, o, world_size), backend, str("--device ", backend.name()));
  });
  Backend* backend = run.backend.get();
  LlamaModel model(source.config, *backend, o.batch_size, o.sequence_length, ModelMode::Training, o.recompute,
                   gradient_sharding(o, run));
  set_initial_parameters(source, o.seed, model);
  std::printf("%s on %s: %lld parameters, %zu training shard(s)\n", banner.c_str(), backend->name().c_str(),
              static_cast<long long>(model.table().total_numel()), o.train_shards.size());
  print_activation_recompute(model);
  LossWorkspace workspace(*backend, source.config.vocab_size, o.batch_size * o.sequence_length);
  CrossEntropyObjective objective(workspace);
  const TrainSummary summary = run_training(model, objective, o, *run.communicator);
  if (run.lead()) print_training_summary(summary, o);
}

}  // namespace minitron::cli
