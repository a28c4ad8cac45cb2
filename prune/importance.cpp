#include "prune/importance.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "util/error.h"

namespace minitron {

namespace {

// Accumulator slots, one per scored site.
constexpr int kAttentionNorm = 0, kOProjInput = 1, kMlpNorm = 2, kMlpSite = 3, kSlots = 4;

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

const char* batch_aggregation_name(BatchAggregation a) {
  switch (a) {
    case BatchAggregation::L2: return "l2";
    case BatchAggregation::Mean: return "mean";
    case BatchAggregation::Variance: return "variance";
  }
  return "?";
}

const char* sequence_reduction_name(SequenceReduction r) {
  switch (r) {
    case SequenceReduction::Mean: return "mean";
    case SequenceReduction::L2: return "l2";
    case SequenceReduction::Variance: return "variance";
  }
  return "?";
}

Aggregation parse_aggregation(const std::string& text) {
  Aggregation a;
  const char* expected = "batch=<mean|l2|variance>,sequence=<mean|l2|variance>, e.g. batch=l2,sequence=mean";
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = lower(text.substr(start, end - start));
    start = end + 1;
    if (item.empty()) continue;
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos) fail_expected("--aggregation", str("'", item, "' has no '='"), expected);
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    if (value != "mean" && value != "l2" && value != "variance")
      fail_expected("--aggregation", str("unknown reduction '", value, "'"), expected);
    if (key == "batch")
      a.batch = value == "mean" ? BatchAggregation::Mean
                : value == "l2" ? BatchAggregation::L2
                                : BatchAggregation::Variance;
    else if (key == "sequence")
      a.sequence = value == "mean" ? SequenceReduction::Mean
                   : value == "l2" ? SequenceReduction::L2
                                   : SequenceReduction::Variance;
    else
      fail_expected("--aggregation", str("unknown axis '", key, "'"), expected);
  }
  return a;
}

std::string aggregation_string(const Aggregation& a) {
  return str("batch=", batch_aggregation_name(a.batch), ",sequence=", sequence_reduction_name(a.sequence));
}

MlpSite parse_mlp_site(const std::string& text) {
  const std::string t = lower(text);
  if (t == "post-activation") return MlpSite::PostActivation;
  if (t == "pre-activation") return MlpSite::PreActivation;
  fail_expected("--mlp-site", str("'", text, "'"),
                "post-activation (down_proj's input, the default) or pre-activation (gate_proj's output)");
}

const char* mlp_site_name(MlpSite site) {
  return site == MlpSite::PostActivation ? "post-activation" : "pre-activation";
}

double aggregate_channel(BatchAggregation batch, double sum, double sum_of_squares, double count) {
  switch (batch) {
    case BatchAggregation::L2: return std::sqrt(sum_of_squares);
    case BatchAggregation::Mean: return count > 0 ? sum / count : 0.0;
    case BatchAggregation::Variance: {
      if (count <= 0) return 0.0;
      const double mean = sum / count;
      // Population variance; the difference can round below zero when all samples agree.
      return std::max(0.0, sum_of_squares / count - mean * mean);
    }
  }
  return 0.0;
}

ImportanceObserver::ImportanceObserver(const ModelConfig& config, Backend& backend, std::int64_t max_batch,
                                       std::int64_t max_sequence, const ImportanceOptions& options)
    : config_(config), backend_(backend), options_(options), max_rows_(max_batch * max_sequence) {
  const std::int64_t widest = std::max({config.hidden_size, config.q_dim(), config.intermediate_size});
  reduced_ = BackendBuffer(backend, max_batch * widest, DType::F32);
  host_.resize(static_cast<std::size_t>(std::max(max_batch * widest, options.block_importance ? max_rows_ : 0)));
  if (options.block_importance) {
    cosines_ = BackendBuffer(backend, max_rows_, DType::F32);
    saved_input_ = BackendBuffer(backend, max_rows_ * config.hidden_size, backend.activation_dtype());
    cosine_sum_.assign(static_cast<std::size_t>(config.num_hidden_layers), 0.0);
    cosine_rows_.assign(static_cast<std::size_t>(config.num_hidden_layers), 0);
  }
  accumulators_.resize(static_cast<std::size_t>(kSlots * config.num_hidden_layers));
}

bool ImportanceObserver::wants(ActivationSite site) const {
  switch (site) {
    case ActivationSite::AttentionNormOutput:
    case ActivationSite::OProjInput:
    case ActivationSite::MlpNormOutput: return true;
    case ActivationSite::DownProjInput: return options_.mlp_site == MlpSite::PostActivation;
    case ActivationSite::GateProjOutput: return options_.mlp_site == MlpSite::PreActivation;
    case ActivationSite::LayerInput:
    case ActivationSite::LayerOutput: return options_.block_importance;
  }
  return false;
}

ImportanceObserver::Accumulator& ImportanceObserver::accumulator(int slot, std::int64_t layer) {
  return accumulators_[static_cast<std::size_t>(slot * config_.num_hidden_layers + layer)];
}

void ImportanceObserver::observe(ActivationSite site, std::int64_t layer, Tensor act, std::int64_t B, std::int64_t T,
                                 std::int64_t C) {
  MINITRON_ASSERT(layer >= 0 && layer < config_.num_hidden_layers && B * T <= max_rows_);
  const std::int64_t N = B * T;
  if (site == ActivationSite::LayerInput) {
    // The input is only valid during this call; keep it for the cosine at the layer's output.
    backend_.copy(saved_input_.tensor().slice(0, N * C), act);
    return;
  }
  if (site == ActivationSite::LayerOutput) {
    Tensor cos = cosines_.tensor().slice(0, N);
    backend_.row_cosine(cos, saved_input_.tensor().slice(0, N * C), act, N, C);
    backend_.download(host_.data(), cos);
    double sum = 0;
    for (std::int64_t r = 0; r < N; ++r) sum += host_[static_cast<std::size_t>(r)];
    cosine_sum_[static_cast<std::size_t>(layer)] += sum;
    cosine_rows_[static_cast<std::size_t>(layer)] += N;
    return;
  }
  const int slot = site == ActivationSite::AttentionNormOutput ? kAttentionNorm
                   : site == ActivationSite::OProjInput        ? kOProjInput
                   : site == ActivationSite::MlpNormOutput     ? kMlpNorm
                                                               : kMlpSite;
  Tensor reduced = reduced_.tensor().slice(0, B * C);
  backend_.reduce_over_sequence(reduced, act, B, T, C, options_.aggregation.sequence);
  backend_.download(host_.data(), reduced);
  Accumulator& acc = accumulator(slot, layer);
  if (acc.sum.empty()) {
    acc.sum.assign(static_cast<std::size_t>(C), 0.0);
    acc.sum_of_squares.assign(static_cast<std::size_t>(C), 0.0);
  }
  MINITRON_ASSERT(static_cast<std::int64_t>(acc.sum.size()) == C, "channel count changed between batches");
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t c = 0; c < C; ++c) {
      const double a = host_[static_cast<std::size_t>(b * C + c)];
      acc.sum[static_cast<std::size_t>(c)] += a;
      acc.sum_of_squares[static_cast<std::size_t>(c)] += a * a;
    }
  acc.count += B;
}

std::int64_t ImportanceObserver::samples() const {
  return accumulators_.empty() ? 0 : accumulators_[0].count;  // layer 0's attention norm sees every sample
}

std::vector<double> ImportanceObserver::channel_scores(int slot, std::int64_t layer) const {
  const Accumulator& acc = accumulators_[static_cast<std::size_t>(slot * config_.num_hidden_layers + layer)];
  if (acc.count == 0) fail("importance: no calibration batch was observed (run forward passes first)");
  std::vector<double> out(acc.sum.size());
  for (std::size_t c = 0; c < out.size(); ++c)
    out[c] = aggregate_channel(options_.aggregation.batch, acc.sum[c], acc.sum_of_squares[c],
                               static_cast<double>(acc.count));
  return out;
}

WidthScores ImportanceObserver::scores() const {
  const std::int64_t L = config_.num_hidden_layers, hd = config_.head_dim;
  WidthScores s;
  s.hidden.assign(static_cast<std::size_t>(config_.hidden_size), 0.0);
  for (std::int64_t l = 0; l < L; ++l) {
    s.mlp.push_back(channel_scores(kMlpSite, l));
    s.head_channels.push_back(channel_scores(kOProjInput, l));
    const std::vector<double>& ch = s.head_channels.back();
    std::vector<double> heads(static_cast<std::size_t>(config_.num_attention_heads), 0.0);
    for (std::size_t h = 0; h < heads.size(); ++h) {
      double sq = 0;
      for (std::int64_t i = 0; i < hd; ++i)
        sq += ch[h * static_cast<std::size_t>(hd) + static_cast<std::size_t>(i)] *
              ch[h * static_cast<std::size_t>(hd) + static_cast<std::size_t>(i)];
      heads[h] = std::sqrt(sq);
    }
    s.heads.push_back(std::move(heads));
    for (int slot : {kAttentionNorm, kMlpNorm}) {
      std::vector<double> norm = channel_scores(slot, l);
      for (std::size_t c = 0; c < norm.size(); ++c) s.hidden[c] += norm[c];
    }
  }
  if (options_.block_importance) {
    for (std::int64_t l = 0; l < L; ++l) {
      const auto i = static_cast<std::size_t>(l);
      s.block_importance.push_back(cosine_rows_[i] > 0 ? 1.0 - cosine_sum_[i] / static_cast<double>(cosine_rows_[i])
                                                       : 0.0);
    }
  }
  return s;
}

}  // namespace minitron
