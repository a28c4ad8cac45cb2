// Activation-based importance (Minitron, as modelopt implements it): an observer attached to
// the model's forward pass reduces each calibration batch's activations to one number per
// sample and channel, accumulates them over samples, and turns the result into scores for MLP
// neurons, attention heads and hidden (embedding) channels, plus Block Importance per layer.
//
// Per calibration batch and site: a[b, c] = reduction over the sequence of x[b, t, c]
// (default mean |x|); over samples (default L2) score[c] = sqrt(sum_b a[b, c]^2). Heads: the
// L2 norm of their head_dim channel scores at o_proj's input. Hidden channels: the sum over
// every layer's input_layernorm and post_attention_layernorm outputs of their channel scores.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/backend.h"
#include "model/config.h"
#include "model/llama.h"

namespace minitron {

// How per-sample values a[b, c] are accumulated over calibration samples.
enum class BatchAggregation { L2, Mean, Variance };
// Which activation scores MLP neurons: down_proj's input (silu(gate) * up, the default) or
// gate_proj's output before the activation (the paper's "first linear" variant).
enum class MlpSite { PostActivation, PreActivation };

struct Aggregation {
  BatchAggregation batch = BatchAggregation::L2;
  SequenceReduction sequence = SequenceReduction::Mean;
};

// "batch=l2,sequence=mean" (either part may be omitted; values: mean, l2, variance).
Aggregation parse_aggregation(const std::string& text);
std::string aggregation_string(const Aggregation& aggregation);
const char* batch_aggregation_name(BatchAggregation a);
const char* sequence_reduction_name(SequenceReduction r);
MlpSite parse_mlp_site(const std::string& text);  // "post-activation" | "pre-activation"
const char* mlp_site_name(MlpSite site);

// Per-channel scores of one (site, layer): the batch aggregation of the accumulated values.
// sum and sum_of_squares are over samples of a[b, c]; count is the number of samples.
double aggregate_channel(BatchAggregation batch, double sum, double sum_of_squares, double count);

struct ImportanceOptions {
  Aggregation aggregation;
  MlpSite mlp_site = MlpSite::PostActivation;
  bool block_importance = true;  // also observe layer inputs/outputs for 1 - mean cos
};

// Width scores and Block Importance as arrays indexed by original layer and channel.
struct WidthScores {
  std::vector<std::vector<double>> mlp;            // [layers][intermediate_size]
  std::vector<std::vector<double>> head_channels;  // [layers][heads * head_dim]
  std::vector<std::vector<double>> heads;          // [layers][heads]
  std::vector<double> hidden;                      // [hidden_size]
  std::vector<double> block_importance;            // [layers], empty when not observed
                                                   // (copied into LayerScores for the file)
};

class ImportanceObserver : public ActivationObserver {
 public:
  // Scratch space on the backend is sized for batches up to max_batch x max_sequence.
  ImportanceObserver(const ModelConfig& config, Backend& backend, std::int64_t max_batch, std::int64_t max_sequence,
                     const ImportanceOptions& options);

  bool wants(ActivationSite site) const override;
  void observe(ActivationSite site, std::int64_t layer, Tensor act, std::int64_t batch, std::int64_t sequence,
               std::int64_t channels) override;

  std::int64_t samples() const;  // calibration sequences seen
  WidthScores scores() const;

 private:
  struct Accumulator {
    std::vector<double> sum, sum_of_squares;
    std::int64_t count = 0;  // samples accumulated
  };
  // Accumulators by (site slot, layer); slots: attention norm, o_proj input, mlp norm, mlp site.
  Accumulator& accumulator(int slot, std::int64_t layer);
  std::vector<double> channel_scores(int slot, std::int64_t layer) const;

  ModelConfig config_;
  Backend& backend_;
  ImportanceOptions options_;
  std::int64_t max_rows_;
  BackendBuffer reduced_, cosines_, saved_input_;
  std::vector<float> host_;
  std::vector<Accumulator> accumulators_;
  std::vector<double> cosine_sum_;
  std::vector<std::int64_t> cosine_rows_;
};

}  // namespace minitron
