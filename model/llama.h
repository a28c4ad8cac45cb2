// The Llama / Mistral decoder, written once over a Backend.
//
// Read it top to bottom like llama2.c's run.c: forward() runs embedding -> layers -> final
// norm and leaves the final hidden state; the losses in train/ turn that hidden state into
// logits chunk by chunk (logits() / head_backward()), so tokens x vocab logits never exist
// in full; backward() then runs the layers in reverse. Every tensor lives in arenas sized
// once from (max_batch, max_sequence, config): nothing is allocated in the step loop.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "model/activation_recompute.h"
#include "model/config.h"
#include "model/gradient_buckets.h"
#include "model/parameter_gather.h"
#include "model/parameters.h"

namespace minitron {

// Named places in the network where an observer may read activations (importance scoring).
enum class ActivationSite {
  LayerInput,           // residual stream entering layer l, [N, hidden]
  AttentionNormOutput,  // output of input_layernorm, [N, hidden]
  OProjInput,           // concatenated head outputs, [N, heads * head_dim]
  MlpNormOutput,        // output of post_attention_layernorm, [N, hidden]
  GateProjOutput,       // gate_proj output before SiLU (the paper's "first linear"), [N, ffn]
  DownProjInput,        // silu(gate) * up, [N, ffn]
  LayerOutput,          // residual stream leaving layer l, [N, hidden]
};
const char* activation_site_name(ActivationSite site);

// Observers are called during forward(); `act` is valid only during the call.
class ActivationObserver {
 public:
  virtual ~ActivationObserver() = default;
  virtual bool wants(ActivationSite site) const = 0;
  virtual void observe(ActivationSite site, std::int64_t layer, Tensor act, std::int64_t batch, std::int64_t sequence,
                       std::int64_t channels) = 0;
};

// Keys and values of every layer for incremental decoding (generation): `sequences` independent
// sequences (batched generation gives each prompt one), each of up to max_tokens tokens and with
// its own length.
class KvCache {
 public:
  KvCache(const ModelConfig& config, Backend& backend, std::int64_t max_tokens, std::int64_t sequences = 1);
  std::int64_t length(std::int64_t sequence = 0) const { return lengths_[checked(sequence)]; }
  std::int64_t capacity() const { return max_tokens_; }  // tokens per sequence
  std::int64_t sequences() const { return static_cast<std::int64_t>(lengths_.size()); }
  void clear() { lengths_.assign(lengths_.size(), 0); }
  void clear(std::int64_t sequence) { lengths_[checked(sequence)] = 0; }
  // Keeps the first `length` tokens of a sequence (a shared prefix of the next prompt) and forgets
  // the rest, which the next forward overwrites.
  void truncate(std::int64_t length, std::int64_t sequence = 0);
  // Takes every sequence's cached tokens from `from` (as many sequences, of as many layers, each
  // fitting this cache): a conversation outgrowing its cache keeps what it ran.
  void copy_from(Backend& backend, const KvCache& from);

 private:
  friend class LlamaModel;
  std::size_t checked(std::int64_t sequence) const;
  std::int64_t max_tokens_;
  std::vector<std::int64_t> lengths_;
  std::vector<BackendBuffer> keys_, values_;  // per layer [sequences * max_tokens, kv_heads * head_dim]
};

struct ForwardOptions {
  ActivationObserver* observer = nullptr;
  // When set (Inference mode), row b of the batch continues cached sequence cache_sequences[b]
  // (empty: batch 1 continuing sequence 0): its tokens sit at positions cache->length(s) onwards
  // and attend to every token cached for that sequence, and only those; the sequence grows.
  // Rows share every matrix product and attend to their own sequences one by one, so a row
  // computes what it computes alone wherever the engine's products are row-independent.
  KvCache* cache = nullptr;
  std::span<const std::int32_t> cache_sequences;  // distinct sequences of the cache, one per row
  // When set, layers with skip_layers[l] == true are the identity (depth-importance ranking).
  const std::vector<bool>* skip_layers = nullptr;
  // Packed documents (Hugging Face's position_ids, TRL's padding-free packing): one position per
  // token [batch * sequence], 0 at each document's first token and +1 per token after it; each
  // row starts a document. RoPE rotates by these positions and attention never crosses a
  // document boundary (query t sees keys t - positions[t] .. t), so every document is computed
  // as if it ran alone. Empty: one document per row (positions 0 .. sequence - 1). Not with a cache.
  std::span<const std::int32_t> positions;
};

enum class ModelMode { Inference, Training };

// Bytes of a model's activation arenas (allocated once, at construction). The final norm's
// output and the backward scratch come on top, the same in every mode.
struct ActivationArenaBytes {
  std::int64_t saved = 0;  // kept from forward to backward: every layer's input, and what the mode keeps of each layer
  std::int64_t workspace = 0;  // one layer's worth of the rest, rewritten by each layer
};

// Every allocation a model makes at construction, in bytes, by what it holds; the memory plan
// (train/memory_plan.h) adds these up without building a model. LlamaModel::memory computes
// them from the same slot shapes allocate_arenas() allocates by.
struct ModelMemory {
  std::int64_t weights = 0;              // the parameters (activation dtype)
  std::int64_t gradients = 0;            // their gradients (gradient dtype; Training mode)
  std::int64_t saved_activations = 0;    // kept from forward to backward (ActivationArenaBytes::saved)
  std::int64_t recompute_workspace = 0;  // one layer's worth of the rest (ActivationArenaBytes::workspace)
  std::int64_t backward_buffers =
      0;  // activation gradients (Training), the final norm's output, tokens and positions, RoPE
  std::int64_t total() const {
    return weights + gradients + saved_activations + recompute_workspace + backward_buffers;
  }
};

class LlamaModel {
 public:
  // What a model of this shape allocates on an engine storing activations as `activation` and
  // parameter gradients as `gradient` (norm statistics are fp32, fp64 beside fp64 activations).
  static ModelMemory memory(const ModelConfig& config, DType activation, DType gradient, std::int64_t max_batch,
                            std::int64_t max_sequence, ModelMode mode,
                            ActivationRecompute recompute = ActivationRecompute::None);

  // recompute other than None needs Training mode (Inference keeps one layer's activations).
  // `sharding`: where a Training-mode model keeps its parameter gradients (model/gradient_buckets.h:
  // ZeRO stage 1, the whole vector; stage 2, this rank's part and the buckets' slots).
  LlamaModel(const ModelConfig& config, Backend& backend, std::int64_t max_batch, std::int64_t max_sequence,
             ModelMode mode, ActivationRecompute recompute = ActivationRecompute::None,
             const GradientSharding& sharding = {});
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  const ParameterTable& table() const { return table_; }
  Backend& backend() const { return backend_; }
  ModelMode mode() const { return mode_; }
  ActivationRecompute recompute() const { return recompute_; }
  ActivationArenaBytes activation_arena_bytes() const;
  // The workspace buffers that backward() refills by recomputation (none in None mode): what
  // forward left there is never read, which a test checks by poisoning them before backward().
  std::vector<Tensor> recomputed_activations() const;
  std::int64_t max_batch() const { return max_batch_; }
  std::int64_t max_sequence() const { return max_sequence_; }

  // All parameters in table order, as fp32 on the host.
  void set_parameters(std::span<const float> host);
  void get_parameters(std::span<float> host) const;
  // The whole vector, every bucket of a started parameter gather waited for first.
  Tensor parameters() const;
  // ZeRO stage 1: the whole gradient vector; stage 2: this rank's part of it (GradientBuckets).
  // Empty in Inference mode.
  Tensor gradients() const { return gradient_buckets_ ? gradient_buckets_->gradients() : Tensor{}; }
  GradientBuckets& gradient_buckets() const;  // Training mode
  Tensor parameter(const ParamInfo& info) const { return parameters().slice(info.offset, info.numel); }
  // After a sharded optimizer step (this rank's part of the parameters updated): every rank's
  // parts to every rank, as communicator.all_gather(parameters(), bounds) does. A Training-mode
  // model built with GradientSharding::overlap_parameter_gather starts it bucket by bucket and
  // the next forward waits for each bucket just before its first use (model/parameter_gather.h).
  void gather_parameters(Communicator& communicator, std::span<const std::int64_t> bounds);
  // Ops queued after this call see the whole gathered vector, and the model no longer refers to
  // the gather's communicator (which may then go away).
  void finish_parameter_gather() {
    if (parameter_gather_) parameter_gather_->wait_all();
  }
  // Starts a new optimizer step's gradient: the next backward overwrites what the buffers hold
  // (the first weight-gradient GEMM of each parameter writes with beta = 0; no memset).
  void zero_gradients();

  // Runs the decoder on tokens [batch * sequence] and leaves the final normalised hidden
  // state (rows = batch * sequence) for logits()/head_backward().
  void forward(std::span<const std::int32_t> tokens, std::int64_t batch, std::int64_t sequence,
               const ForwardOptions& options = {});
  std::int64_t rows() const { return batch_ * sequence_; }

  // out [rows, vocab] (activation dtype) = logits of rows [row0, row0 + rows) of the last forward.
  void logits(Tensor out, std::int64_t row0, std::int64_t rows) const;
  // Given dloss/dlogits for those rows (overwritten logits buffer), accumulates the hidden
  // state's gradient and the LM head's weight gradient. Training mode only.
  void head_backward(Tensor dlogits, std::int64_t row0, std::int64_t rows);
  // Backpropagates the accumulated hidden-state gradient through the final norm, the layers
  // and the embedding, accumulating into gradients(). Call after head_backward() covered every row.
  void backward();
  // Adds grad [rows, hidden] (activation dtype) to dloss/d(output of layer `layer`) in the next
  // backward(): how a loss on intermediate hidden states (distillation of hidden states) reaches
  // the residual stream. grad must stay valid until that backward(), which consumes it; a new
  // forward() drops gradients that were never consumed. Training mode, after forward().
  void add_layer_output_gradient(std::int64_t layer, Tensor grad);

  // The final hidden state of the last forward (debugging, distillation of hidden states).
  Tensor final_hidden() const;

 private:
  struct LayerActivations;  // buffers, one per activation a layer writes (llama.cpp)
  struct LayerTensors;      // views of the activations of layer l, kept or in the workspace
  void allocate_arenas();
  LayerTensors layer_tensors(std::int64_t l) const;
  Tensor p(std::int64_t offset, std::int64_t numel) const { return params_.tensor().slice(offset, numel); }
  // The gradient of the parameter at `offset` for this micro-batch, and the GEMM beta that writes
  // it (0 on its first write, 1 after): GradientBuckets::destination.
  GradientBuckets::Destination g(std::int64_t offset, std::int64_t numel) const {
    return gradient_buckets_->destination(offset, numel);
  }
  // For ops that only accumulate (norm and embedding weight gradients): zeroed on a first write.
  Tensor g_accumulated(std::int64_t offset, std::int64_t numel) const {
    return gradient_buckets_->destination(offset, numel, /*zero_first=*/true).tensor;
  }
  // dW (+)= a^T b for the weight at `offset` [M, N], as a weight-gradient GEMM over K rows.
  void weight_gradient(std::int64_t offset, Tensor a, Tensor b, std::int64_t M, std::int64_t N, std::int64_t K);
  // The same for a fused projection: the adjacent weights from `offset` of rows[i] rows each
  // (a is [K, sum(rows)]), one GEMM into their gradients together.
  void fused_weight_gradient(std::int64_t offset, std::span<const std::int64_t> rows, Tensor a, Tensor b,
                             std::int64_t N, std::int64_t K);
  void complete_layer_gradients(std::int64_t l);
  void layer_forward(std::int64_t l, const LayerTensors& a, Tensor x_in, Tensor x_out, ActivationObserver* observer,
                     KvCache* cache);
  void cached_attention(std::int64_t l, const LayerTensors& a, KvCache& cache);
  void recompute_layer(std::int64_t l, const LayerTensors& a, Tensor x_in);
  Tensor document_positions() const;  // the last forward's positions, or empty
  void layer_backward(std::int64_t l, const LayerTensors& a, Tensor x_in);

  ModelConfig config_;
  ParameterTable table_;
  Backend& backend_;
  ModelMode mode_;
  ActivationRecompute recompute_;
  std::int64_t max_batch_, max_sequence_;
  std::int64_t batch_ = 0, sequence_ = 0;
  bool ready_for_backward_ = false;
  std::vector<std::pair<std::int64_t, Tensor>> layer_output_gradients_;  // add_layer_output_gradient()

  BackendBuffer params_, inv_freq_, tokens_;
  GradientSharding sharding_;
  std::unique_ptr<GradientBuckets> gradient_buckets_;  // Training mode
  std::unique_ptr<ParameterGather> parameter_gather_;  // Training mode with overlap_parameter_gather
  BackendBuffer positions_;                            // the last forward's packed-document positions (I32 [N])
  bool packed_ = false;                                // whether the last forward had positions (backward reuses them)
  std::vector<std::int32_t> cache_rows_;  // with a cache: the sequence each row of the last forward continues
  // residual_[l] is the input of layer l; residual_[L] the output of the last layer.
  std::vector<BackendBuffer> residual_;
  std::vector<std::unique_ptr<LayerActivations>> layers_;  // kept for backward, per layer (Training)
  std::unique_ptr<LayerActivations> workspace_;            // the rest, shared by the layers (Training)
  // Inference: one layer's activations, its two halves in turn, and its statistics (llama.cpp).
  BackendBuffer inference_activations_, inference_statistics_;
  BackendBuffer final_hidden_, final_rstd_;
  // Backward scratch (Training mode only).
  // d_qkv_ and d_gate_up_ hold the fused projections' output gradients (as the activations).
  BackendBuffer d_residual_, d_hidden_, d_normed_, d_qkv_, d_attention_, d_gate_up_, d_mlp_;
};

// Seeded random initialisation as transformers' LlamaPreTrainedModel does it: every matrix
// (embedding and head included) ~ N(0, std), norm weights 1. Deterministic on every platform.
void initialize_parameters(const ModelConfig& config, const ParameterTable& table, std::span<float> params,
                           std::uint64_t seed, double std = 0.02);

}  // namespace minitron
