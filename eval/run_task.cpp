#include "eval/run_task.h"

#include <algorithm>
#include <memory>

#include "eval/answer_extraction.h"
#include "eval/generate.h"
#include "util/error.h"
#include "util/progress.h"

namespace minitron {

namespace {

std::int64_t rank_of(const TaskRunOptions& o) { return o.communicator ? o.communicator->rank() : 0; }
std::int64_t world_of(const TaskRunOptions& o) { return o.communicator ? o.communicator->world_size() : 1; }

// generation_kwargs.until of gsm8k.yaml / gsm8k-cot.yaml; HFLM.generate_until adds the decoded EOS.
std::vector<std::string> stop_sequences(TaskKind kind, const Tokenizer& tokenizer) {
  std::vector<std::string> until = {kind == TaskKind::Gsm8kCot ? "Q:" : "Question:", "</s>", "<|im_end|>"};
  if (const auto eos = tokenizer.eos_id()) {
    const std::int32_t id = *eos;
    const std::string text = tokenizer.decode(std::span<const std::int32_t>(&id, 1), false);
    if (!text.empty() && std::find(until.begin(), until.end(), text) == until.end()) until.push_back(text);
  }
  return until;
}

// The documents to score, their few-shot examples (drawn once, in document order, as the
// harness's one RNG per task does) and the requests of each. Prompts are rebuilt on demand
// rather than stored: 5-shot MMLU holds ~100 MB of prompt text.
class TaskRequests {
 public:
  TaskRequests(TaskKind kind, const std::vector<TaskDoc>& docs, const std::vector<TaskDoc>* fewshot_pool,
               const Tokenizer& tokenizer, std::int64_t max_length, const TaskRunOptions& options)
      : kind_(kind), docs_(docs), tokenizer_(tokenizer), max_length_(max_length), options_(options) {
    count_ = options.limit > 0 ? std::min<std::int64_t>(options.limit, static_cast<std::int64_t>(docs.size()))
                               : static_cast<std::int64_t>(docs.size());
    const std::vector<TaskDoc>* builtin = builtin_fewshot_pool(kind);
    const std::vector<TaskDoc>& pool = builtin ? *builtin : fewshot_pool ? *fewshot_pool : docs;
    FewshotSampler sampler(kind, pool, !builtin && !fewshot_pool, options.shots);
    for (std::int64_t i = 0; i < count_; ++i) examples_.push_back(sampler.next(docs[static_cast<std::size_t>(i)]));
  }
  std::int64_t count() const { return count_; }
  bool mine(std::int64_t i) const { return i % world_of(options_) == rank_of(options_); }
  std::int64_t my_count() const {
    std::int64_t n = 0;
    for (std::int64_t i = 0; i < count_; ++i) n += mine(i) ? 1 : 0;
    return n;
  }

  std::vector<ScoringWindow> windows(std::int64_t i, Question& question) const {
    const auto d = static_cast<std::size_t>(i);
    question = build_prompted_question(kind_, docs_[d], examples_[d], options_.shots, options_.format);
    std::vector<ScoringWindow> out;
    for (const ChoiceRequest& r : question.requests)
      out.push_back(scoring_window(encode_request(tokenizer_, r, options_.encode), max_length_));
    return out;
  }

  // HFLM.generate_until: the context encoded (special tokens as --add-bos says), left-truncated
  // to max_length - max_gen_toks.
  std::vector<std::int32_t> prompt_tokens(std::int64_t i) const {
    const auto d = static_cast<std::size_t>(i);
    std::vector<std::int32_t> ids =
        tokenizer_.encode(build_generation_prompt(kind_, docs_[d], examples_[d], options_.shots, options_.format),
                          options_.encode.add_special_tokens);
    const std::int64_t keep = max_length_ - options_.max_gen_toks;
    if (static_cast<std::int64_t>(ids.size()) > keep) ids.erase(ids.begin(), ids.end() - keep);
    if (ids.empty())
      fail_expected(task_kind_name(kind_), str("document ", i + 1, "'s prompt encodes to no tokens"),
                    "a prompt of at least one token");
    return ids;
  }

  TaskShape shape() const {
    TaskShape s;
    for (std::int64_t i = 0; i < count_; ++i) {
      Question q;
      for (const ScoringWindow& w : windows(i, q))
        s.max_sequence = std::max<std::int64_t>(s.max_sequence, static_cast<std::int64_t>(w.inputs.size()));
      s.max_batch = std::max<std::int64_t>(s.max_batch, static_cast<std::int64_t>(q.requests.size()));
    }
    return s;
  }

  TaskRunResult score(LlamaModel& model, LossWorkspace& workspace, const ForwardOptions& forward) const {
    // Every rank knows every question's shape; it fills its own documents' log-likelihoods and
    // the sum over ranks (each slot written by one rank, zeros elsewhere) gathers them exactly.
    std::vector<std::size_t> offset(static_cast<std::size_t>(count_) + 1, 0);
    for (std::int64_t i = 0; i < count_; ++i)
      offset[static_cast<std::size_t>(i) + 1] = offset[static_cast<std::size_t>(i)] + docs_[i].choices.size();
    std::vector<double> lls(offset.back(), 0.0);
    std::unique_ptr<Progress> progress;
    if (options_.show_progress) progress = std::make_unique<Progress>(task_kind_name(kind_), my_count(), "docs");
    for (std::int64_t i = 0; i < count_; ++i) {
      if (!mine(i)) continue;
      Question q;
      const std::vector<ScoringWindow> ws = windows(i, q);
      for (const ScoringWindow& w : ws)
        if (static_cast<std::int64_t>(w.inputs.size()) > model.max_sequence() ||
            static_cast<std::int64_t>(ws.size()) > model.max_batch())
          fail_expected("task scoring",
                        str("document ", i + 1, " needs ", ws.size(), " rows of ", w.inputs.size(), " tokens"),
                        str("a model built for at least that (", model.max_batch(), " x ", model.max_sequence(), ")"));
      const std::vector<double> scored = score_batch(model, workspace, ws, forward);
      std::copy(scored.begin(), scored.end(), lls.begin() + static_cast<std::ptrdiff_t>(offset[i]));
      if (progress) progress->advance();
    }
    if (progress) progress->finish();
    if (world_of(options_) > 1) options_.communicator->all_reduce_sum(lls);
    TaskRunResult result;
    for (std::int64_t i = 0; i < count_; ++i) {
      const TaskDoc& doc = docs_[static_cast<std::size_t>(i)];
      QuestionResult r;
      r.loglikelihoods.assign(lls.begin() + static_cast<std::ptrdiff_t>(offset[i]),
                              lls.begin() + static_cast<std::ptrdiff_t>(offset[i + 1]));
      for (const std::string& c : doc.choices) r.choice_lengths.push_back(utf8_length(c));
      r.gold = doc.gold;
      r.subject = doc.subject;
      r.true_count = doc.true_count;
      result.questions.push_back(std::move(r));
    }
    result.rows = task_metrics(kind_, result.questions);
    return result;
  }

  // This rank's documents, in document order.
  std::vector<std::int64_t> my_documents() const {
    std::vector<std::int64_t> out;
    for (std::int64_t i = 0; i < count_; ++i)
      if (mine(i)) out.push_back(i);
    return out;
  }

  TaskRunResult generate(LlamaModel& model, KvCache& cache, std::span<const std::int64_t> documents,
                         std::span<const std::vector<std::int32_t>> prompts) const {
    const std::vector<std::string> until = stop_sequences(kind_, tokenizer_);
    const std::size_t filters = generation_filter_names(kind_).size();
    const std::size_t stride = filters + 1;  // per document: each filter's score, then "at the limit"
    std::vector<double> packed(static_cast<std::size_t>(count_) * stride, 0.0);
    std::unique_ptr<Progress> progress;
    if (options_.show_progress)
      progress = std::make_unique<Progress>(task_kind_name(kind_), static_cast<std::int64_t>(documents.size()), "docs");
    SamplingOptions sampling;
    sampling.max_new_tokens = options_.max_gen_toks;
    sampling.stop_tokens = options_.stop_tokens;
    // The harness's stopping criterion decodes the new tokens with special tokens kept.
    sampling.stop_when = [&](std::span<const std::int32_t> generated) {
      const std::string text = tokenizer_.decode(generated, false);
      for (const std::string& term : until)
        if (text.find(term) != std::string::npos) return true;
      return false;
    };
    auto scored = [&](std::size_t k, const Generation& generation) {
      const std::int64_t i = documents[k];
      // tok_decode(cont_toks) (special tokens skipped), then s.split(term)[0] for every term.
      std::string text = tokenizer_.decode(generation.tokens, true);
      for (const std::string& term : until)
        if (const std::size_t at = text.find(term); at != std::string::npos) text.resize(at);
      const std::vector<double> scores = score_generation(kind_, text, docs_[static_cast<std::size_t>(i)].target);
      std::copy(scores.begin(), scores.end(), packed.begin() + static_cast<std::ptrdiff_t>(i * stride));
      packed[static_cast<std::size_t>(i) * stride + filters] = generation.end == GenerationEnd::Length ? 1.0 : 0.0;
      if (progress) progress->advance();
    };
    minitron::generate_batch(model, cache, prompts, sampling, scored);
    if (progress) progress->finish();
    if (world_of(options_) > 1) options_.communicator->all_reduce_sum(packed);
    TaskRunResult result;
    for (std::int64_t i = 0; i < count_; ++i) {
      const auto* begin = packed.data() + i * static_cast<std::int64_t>(stride);
      result.generation_scores.emplace_back(begin, begin + filters);
      result.generations_at_limit += begin[filters] > 0.5 ? 1 : 0;
    }
    result.rows = generation_metrics(kind_, result.generation_scores);
    return result;
  }

 private:
  TaskKind kind_;
  const std::vector<TaskDoc>& docs_;
  const Tokenizer& tokenizer_;
  std::int64_t max_length_;
  TaskRunOptions options_;
  std::int64_t count_ = 0;
  std::vector<std::vector<const TaskDoc*>> examples_;
};

std::int64_t resolved_max_length(const TaskRunOptions& options, const ModelConfig& config) {
  return options.max_length > 0 ? options.max_length : config.max_position_embeddings;
}

}  // namespace

TaskShape task_shape(TaskKind kind, const std::vector<TaskDoc>& docs, const std::vector<TaskDoc>* fewshot_pool,
                     const Tokenizer& tokenizer, const ModelConfig& config, const TaskRunOptions& options) {
  MINITRON_ASSERT(!task_is_generative(kind), "task_shape: ", task_kind_name(kind), " is generative");
  return TaskRequests(kind, docs, fewshot_pool, tokenizer, resolved_max_length(options, config), options).shape();
}

TaskRunResult run_task(TaskKind kind, const std::vector<TaskDoc>& docs, const std::vector<TaskDoc>* fewshot_pool,
                       const Tokenizer& tokenizer, const ModelConfig& config, std::span<const float> params,
                       Backend& backend, const TaskRunOptions& options) {
  const std::int64_t max_length = resolved_max_length(options, config);
  if (task_is_generative(kind) && options.max_gen_toks >= max_length)
    fail_expected("--max-gen-toks", std::to_string(options.max_gen_toks),
                  str("fewer than the model's maximum length ", max_length, " (the prompt keeps the rest)"));
  const TaskRequests requests(kind, docs, fewshot_pool, tokenizer, max_length, options);
  if (requests.count() == 0) return {};
  if (task_is_generative(kind)) {
    if (options.batch_size < 1) fail_expected("--batch-size", std::to_string(options.batch_size), "at least 1");
    const std::vector<std::int64_t> documents = requests.my_documents();
    std::vector<std::vector<std::int32_t>> prompts;
    std::int64_t longest = 1;
    for (const std::int64_t i : documents) {
      prompts.push_back(requests.prompt_tokens(i));
      longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(prompts.back().size()));
    }
    // A rank without documents still joins the ranks' sum, on the smallest model.
    const std::int64_t batch = std::max<std::int64_t>(
        1, std::min<std::int64_t>(options.batch_size, static_cast<std::int64_t>(prompts.size())));
    LlamaModel model(config, backend, batch, longest, ModelMode::Inference);
    model.set_parameters(params);
    KvCache cache(config, backend, longest + options.max_gen_toks, batch);
    TaskRunResult result = requests.generate(model, cache, documents, prompts);
    result.max_batch = batch;
    result.max_sequence = longest + options.max_gen_toks;
    return result;
  }
  const TaskShape shape = requests.shape();
  LlamaModel model(config, backend, shape.max_batch, shape.max_sequence, ModelMode::Inference);
  model.set_parameters(params);
  LossWorkspace workspace(backend, config.vocab_size, shape.max_batch * shape.max_sequence);
  TaskRunResult result = requests.score(model, workspace, {});
  result.max_batch = shape.max_batch;
  result.max_sequence = shape.max_sequence;
  return result;
}

TaskRunResult run_task_on_model(TaskKind kind, const std::vector<TaskDoc>& docs,
                                const std::vector<TaskDoc>* fewshot_pool, const Tokenizer& tokenizer, LlamaModel& model,
                                LossWorkspace& workspace, const TaskRunOptions& options,
                                const ForwardOptions& forward) {
  if (task_is_generative(kind))
    fail_expected("--task", str(task_kind_name(kind), " generates text"),
                  "a multiple-choice task for scoring with layers removed");
  TaskRunResult result =
      TaskRequests(kind, docs, fewshot_pool, tokenizer, resolved_max_length(options, model.config()), options)
          .score(model, workspace, forward);
  result.max_batch = model.max_batch();
  result.max_sequence = model.max_sequence();
  return result;
}

double task_accuracy(TaskKind kind, const TaskRunResult& result) {
  const std::string name = task_kind_name(kind);
  const std::string metric = task_is_generative(kind) ? "exact_match" : "acc";
  const std::string filter = task_is_generative(kind) ? "strict-match" : "none";
  for (const MetricRow& row : result.rows)
    if (row.task == name && row.metric == metric && row.filter == filter) return row.value;
  fail(str("task_accuracy: no ", name, " ", metric, " row"));
}

}  // namespace minitron
