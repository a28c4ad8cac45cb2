// minitron importance: calibration forward passes that score MLP neurons, attention heads,
// hidden channels and layers (DESIGN.md, "Method facts"), written to a scores JSON file.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>

#include "cli/commands.h"
#include "cli/model_setup.h"
#include "cli/options.h"
#include "data/dataloader.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "eval/run_task.h"
#include "kernels/make_backend.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "prune/importance.h"
#include "prune/layer_ranking.h"
#include "prune/scores.h"
#include "prune/slicing.h"
#include "train/losses.h"
#include "util/numbers.h"
#include "util/progress.h"

namespace minitron::cli {

namespace {

// Checked against the model's depth here, before any forward pass (rank_layers_by_removal
// would refuse a k >= L only after the whole calibration).
std::vector<std::int64_t> parse_block_sizes(const std::string& text, std::int64_t layers) {
  std::vector<std::int64_t> sizes;
  if (text.empty()) {
    if (layers / 2 >= 1) sizes.push_back(layers / 2);  // the recipe halves the depth
    return sizes;
  }
  if (layers < 2)
    fail_expected("--block-size", str(text, " on a model with ", layers, " layer"),
                  "no --block-size: removing the only layer leaves no model (its single-layer loss is still measured)");
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    start = end + 1;
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos)
      fail_expected("--block-size", str("'", text, "'"), "block sizes such as 16 or 4,8,16");
    sizes.push_back(parse_integer("--block-size", item, 1, layers - 1));  // k = L would leave no model
  }
  return sizes;
}

}  // namespace

int importance(int argc, char** argv) {
  cxxopts::Options options("importance",
                           "Score MLP neurons, attention heads, hidden channels and layers of a model with "
                           "calibration forward passes (activation-based importance, as in Minitron).");
  // clang-format off
  options.add_options()
      ("model", "HF checkpoint directory", cxxopts::value<std::string>())
      ("data", "calibration token shards: a file, a glob or a comma list", cxxopts::value<std::string>())
      ("output", "scores file to write (JSON)", cxxopts::value<std::string>())
      ("device", "cpu or cuda (default: cuda when a GPU is present)", cxxopts::value<std::string>()->default_value(""))
      ("samples", "calibration sequences (windows 0..N-1 of --data)", cxxopts::value<std::int64_t>()->default_value("1024"))
      ("sequence-length", "tokens per calibration sequence", cxxopts::value<std::int64_t>()->default_value("4096"))
      ("batch-size", "sequences per forward pass", cxxopts::value<std::int64_t>()->default_value("4"))
      ("aggregation", "how activations are reduced: batch=<mean|l2|variance>,sequence=<mean|l2|variance>",
       cxxopts::value<std::string>()->default_value("batch=l2,sequence=mean"))
      ("mlp-site", "post-activation (down_proj input) or pre-activation (gate_proj output, the paper's variant)",
       cxxopts::value<std::string>()->default_value("post-activation"))
      ("layer-windows", "held-out windows for the layer-removal losses (0 = skip them)",
       cxxopts::value<std::int64_t>()->default_value("64"))
      ("layer-data", "held-out shards for layer ranking (default: --data windows after the calibration ones)",
       cxxopts::value<std::string>())
      ("block-size", "sizes k of the contiguous blocks removed, e.g. 8 or 4,8,16 (default: half the layers)",
       cxxopts::value<std::string>()->default_value(""))
      ("no-block-importance", "do not measure Block Importance (1 - mean cos of layer input and output)")
      ("task", "rank blocks also by this evaluation task's accuracy with each removed: hellaswag, winogrande, mmlu, "
               "arc_easy, arc_challenge or multiple_choice", cxxopts::value<std::string>())
      ("task-file", "the task's documents (JSONL, Hugging Face field layout)", cxxopts::value<std::string>())
      ("shots", "few-shot examples per question (drawn as lm-evaluation-harness does)",
       cxxopts::value<std::int64_t>()->default_value("0"))
      ("fewshot-file", "JSONL the few-shot examples come from (default: the task file itself)", cxxopts::value<std::string>())
      ("limit", "score only the first N task documents (0 = all)", cxxopts::value<std::int64_t>()->default_value("0"))
      ("max-length", "left-truncate task requests to N tokens (0 = max_position_embeddings), as eval's --max-length",
       cxxopts::value<std::int64_t>()->default_value("0"))
      ("tokenizer", "tokenizer.json for the task (default: the model directory's)", cxxopts::value<std::string>())
      ("add-bos", "encode the task with the tokenizer's special tokens (BOS), as eval's --add-bos; the harness's "
                  "default for causal models is off");
  // clang-format on
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;
  const std::string model_dir = required<std::string>(r, "model");
  const std::string data_spec = required<std::string>(r, "data");
  const std::string output = required<std::string>(r, "output");
  const std::int64_t S = in_range<std::int64_t>(r, "samples", 1, std::int64_t{1} << 40);
  const std::int64_t T = in_range<std::int64_t>(r, "sequence-length", 1, 1 << 20);
  const std::int64_t B = in_range<std::int64_t>(r, "batch-size", 1, 1 << 20);
  const std::int64_t W = in_range<std::int64_t>(r, "layer-windows", 0, std::int64_t{1} << 40);
  ImportanceOptions io;
  io.aggregation = parse_aggregation(r["aggregation"].as<std::string>());
  io.mlp_site = parse_mlp_site(r["mlp-site"].as<std::string>());
  io.block_importance = r.count("no-block-importance") == 0;
  const bool with_task = r.count("task") > 0;
  if (with_task != (r.count("task-file") > 0))
    fail_expected(with_task ? "--task-file" : "--task", "missing", "--task NAME and --task-file FILE together");
  if (with_task && W == 0)
    fail_expected("--layer-windows", "0 with --task", "held-out windows: the task is scored beside the removal losses");

  // Flags checked against the config before the weights load.
  const std::vector<std::int64_t> block_sizes =
      parse_block_sizes(r["block-size"].as<std::string>(), load_model_config(model_dir).num_hidden_layers);
  const ModelConfig config = load_model_config(model_dir);
  check_sequence_length("--sequence-length", T, config);
  const auto shards = resolve_shards(data_spec);
  TokenWindows windows(shards, T, config.vocab_size);
  if (S > windows.count())
    fail_expected(
        "--samples",
        str(S, " calibration sequences, but the shards hold ", windows.count(), " windows of ", T + 1, " tokens"),
        str("at most ", windows.count(), ", or more data, or a shorter --sequence-length"));
  // The task, its tokenizer and the model shape its questions need: read before the long
  // calibration so errors come first.
  const TaskKind task_kind = with_task ? parse_task_kind(r["task"].as<std::string>()) : TaskKind::MultipleChoice;
  std::vector<TaskDoc> task_docs, fewshot_docs;
  std::optional<Tokenizer> tokenizer;
  TaskRunOptions task_run;
  TaskShape task_model;
  if (with_task) {
    task_docs = load_task_file(task_kind, r["task-file"].as<std::string>());
    if (r.count("fewshot-file")) fewshot_docs = load_task_file(task_kind, r["fewshot-file"].as<std::string>());
    task_run.shots = in_range<std::int64_t>(r, "shots", 0, 1000);
    task_run.limit = in_range<std::int64_t>(r, "limit", 0, std::int64_t{1} << 40);
    task_run.max_length = in_range<std::int64_t>(r, "max-length", 0, std::int64_t{1} << 24);
    check_sequence_length("--max-length", task_run.max_length, config);
    tokenizer = Tokenizer::load(r.count("tokenizer") ? r["tokenizer"].as<std::string>() : model_dir);
    if (tokenizer->vocab_size() > config.vocab_size)
      fail_expected("--tokenizer", str("vocabulary of ", tokenizer->vocab_size(), " ids"),
                    str("at most the model's vocab_size ", config.vocab_size));
    task_run.encode.prefix_token = prefix_token_id(*tokenizer);
    task_run.encode.add_special_tokens = r.count("add-bos") > 0;
    task_model = task_shape(task_kind, task_docs, r.count("fewshot-file") ? &fewshot_docs : nullptr, *tokenizer, config,
                            task_run);
  }
  // Held-out windows for layer ranking: read before the long calibration so errors come first.
  HeldOutWindows held_out;
  std::string held_out_description;
  if (W > 0) {
    if (r.count("layer-data")) {
      TokenWindows other(resolve_shards(r["layer-data"].as<std::string>()), T, config.vocab_size);
      held_out = read_windows(other, 0, W, "--layer-windows");
      held_out_description = str(r["layer-data"].as<std::string>(), " windows 0..", W - 1);
    } else {
      held_out = read_windows(windows, S, W, "--layer-windows (held out after the --samples calibration windows)");
      held_out_description = str(data_spec, " windows ", S, "..", S + W - 1);
    }
  }

  auto backend = make_backend(choose_device(r["device"].as<std::string>()));
  const std::int64_t max_batch = std::min(B, std::max(S, W));
  // One model serves calibration, removal losses and the task: as large as the largest of them.
  LlamaModel model(config, *backend, std::max(max_batch, task_model.max_batch), std::max(T, task_model.max_sequence),
                   ModelMode::Inference);
  load_parameters(model_dir, model);  // streamed: no host copy of the whole model
  std::printf("importance of %s on %s: %lld samples x %lld tokens, %s, mlp site %s\n", model_dir.c_str(),
              backend->name().c_str(), static_cast<long long>(S), static_cast<long long>(T),
              aggregation_string(io.aggregation).c_str(), mlp_site_name(io.mlp_site));
  std::fflush(stdout);  // before the progress bars on stderr

  ImportanceObserver observer(config, *backend, max_batch, T, io);
  {
    std::vector<std::int32_t> inputs(static_cast<std::size_t>(max_batch * T)), targets(inputs.size());
    Progress progress("calibration", (S + max_batch - 1) / max_batch, "batch");
    ForwardOptions forward;
    forward.observer = &observer;
    for (std::int64_t first = 0; first < S; first += max_batch) {
      const std::int64_t b = std::min(max_batch, S - first);
      for (std::int64_t i = 0; i < b; ++i) windows.copy(first + i, inputs.data() + i * T, targets.data() + i * T);
      model.forward(std::span(inputs).first(static_cast<std::size_t>(b * T)), b, T, forward);
      progress.advance();
    }
    progress.finish();
  }

  ImportanceScores scores = empty_scores(config);
  scores.width = observer.scores();
  if (W > 0) {
    LossWorkspace workspace(*backend, config.vocab_size, model.max_batch() * model.max_sequence());
    LayerRankingOptions lo;
    lo.block_sizes = block_sizes;
    lo.show_progress = true;
    if (with_task) {
      lo.task_name = task_kind_name(task_kind);
      lo.task_metric = [&](LlamaModel& m, const std::vector<bool>& skip) {
        ForwardOptions forward;
        if (!skip.empty()) forward.skip_layers = &skip;
        return task_accuracy(task_kind,
                             run_task_on_model(task_kind, task_docs, r.count("fewshot-file") ? &fewshot_docs : nullptr,
                                               *tokenizer, m, workspace, task_run, forward));
      };
    }
    scores.layers = rank_layers_by_removal(model, held_out, workspace, lo);
    if (lo.task_metric) scores.layers.baseline_task_score = lo.task_metric(model, {});
  }
  scores.layers.block_importance = scores.width.block_importance;
  scores.provenance = {{"model", model_dir},
                       {"data", data_spec},
                       {"shards", windows.describe()},
                       {"samples", observer.samples()},
                       {"sequence_length", T},
                       {"batch_size", max_batch},
                       {"device", backend->name()},
                       {"aggregation",
                        {{"batch", batch_aggregation_name(io.aggregation.batch)},
                         {"sequence", sequence_reduction_name(io.aggregation.sequence)}}},
                       {"mlp_site", mlp_site_name(io.mlp_site)},
                       {"hidden_sites", "input_layernorm and post_attention_layernorm outputs, summed over layers"},
                       {"head_site", "o_proj input; head score = L2 norm of its channel scores"}};
  if (W > 0) scores.provenance["layer_ranking_data"] = held_out_description;
  if (with_task)
    scores.provenance["layer_ranking_task"] = {
        {"task", task_kind_name(task_kind)},
        {"task_file", r["task-file"].as<std::string>()},
        {"fewshot_file", r.count("fewshot-file") ? r["fewshot-file"].as<std::string>() : ""},
        {"shots", task_run.shots},
        {"limit", task_run.limit},
        {"max_length", task_run.max_length},
        {"add_bos", task_run.encode.add_special_tokens},
        {"metric", task_kind == TaskKind::Mmlu ? "acc (mmlu: mean over all questions)" : "acc"}};
  save_scores(output, scores);

  // A short human summary: each layer's removal cost and the cheapest blocks to drop.
  const LayerScores& ls = scores.layers;
  if (ls.baseline_loss)
    std::printf("held-out loss %.4f with every layer (%lld windows)\n", *ls.baseline_loss,
                static_cast<long long>(ls.windows));
  if (ls.baseline_task_score)
    std::printf("%s accuracy %.4f with every layer\n", ls.task.c_str(), *ls.baseline_task_score);
  for (std::int64_t l = 0; l < config.num_hidden_layers; ++l) {
    std::printf("layer %3lld:", static_cast<long long>(l));
    if (!ls.single_removal_loss.empty())
      std::printf(" loss without it %.4f", ls.single_removal_loss[static_cast<std::size_t>(l)]);
    if (!ls.block_importance.empty())
      std::printf("  block importance %.4f", ls.block_importance[static_cast<std::size_t>(l)]);
    if (auto it = ls.block_removal_task_score.find(1); it != ls.block_removal_task_score.end())
      std::printf("  %s accuracy without it %.4f", ls.task.c_str(), it->second[static_cast<std::size_t>(l)]);
    std::printf("\n");
  }
  // Blocks of k >= L layers are never ranked (a 1-layer model's k = 1 entry is its single removal).
  for (const auto& [k, losses] : ls.block_removal_loss) {
    if (k >= config.num_hidden_layers) continue;
    const std::int64_t s = least_important_block(scores, config.num_hidden_layers, k, LayerCriterion::Loss);
    std::printf("cheapest block of %lld layers by loss: %lld-%lld (loss %.4f)\n", static_cast<long long>(k),
                static_cast<long long>(s), static_cast<long long>(s + k - 1), losses[static_cast<std::size_t>(s)]);
  }
  for (const auto& [k, accuracies] : ls.block_removal_task_score) {
    if (k >= config.num_hidden_layers) continue;
    const auto best =
        least_important_block(scores, config.num_hidden_layers, k, LayerCriterion::Task);  // prune's choice
    std::printf("block of %lld layers keeping %s accuracy best: %lld-%lld (accuracy %.4f)\n", static_cast<long long>(k),
                ls.task.c_str(), static_cast<long long>(best), static_cast<long long>(best + k - 1),
                accuracies[static_cast<std::size_t>(best)]);
  }
  std::printf("scores written to %s\n", output.c_str());
  return 0;
}

}  // namespace minitron::cli
