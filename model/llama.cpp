#include "model/llama.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "model/document_positions.h"
#include "util/error.h"
#include "util/random.h"

namespace minitron {

const char* activation_site_name(ActivationSite site) {
  switch (site) {
    case ActivationSite::LayerInput: return "layer_input";
    case ActivationSite::AttentionNormOutput: return "input_layernorm";
    case ActivationSite::OProjInput: return "o_proj_input";
    case ActivationSite::MlpNormOutput: return "post_attention_layernorm";
    case ActivationSite::GateProjOutput: return "gate_proj_output";
    case ActivationSite::DownProjInput: return "down_proj_input";
    case ActivationSite::LayerOutput: return "layer_output";
  }
  return "?";
}

namespace {

// The activations one decoder layer writes in forward, in that order. The projections are
// fused: one GEMM writes q|k|v, one gate|up, over the weights that lie one after the other in
// the parameter buffer (q_proj, k_proj, v_proj; gate_proj, up_proj), and RoPE, attention and
// SwiGLU read (and their backwards write) the parts in place as strided views.
enum ActivationSlot : int {
  kAttentionNormed,  // input_layernorm output
  kAttentionRstd,    // its 1/rms
  kQkv,              // q_proj | k_proj | v_proj output [N, q_dim + 2 kv_dim], q and k after RoPE
  kAttention,        // concatenated head outputs
  kLse,              // attention's log-sum-exp
  kMid,              // residual stream after attention
  kMlpNormed,        // post_attention_layernorm output
  kMlpRstd,          // its 1/rms
  kGateUp,           // gate_proj | up_proj output [N, 2 intermediate]
  kMlp,              // silu(gate) * up
  kActivationSlots
};

struct SlotShape {
  std::int64_t per_token;        // values per token (row)
  bool statistic;                // fp32 (fp64 on the double engine) whatever the activation dtype
  bool recomputed_by_selective;  // cheap to rebuild: a norm or the SwiGLU product
};

// RoPE rotates q and k in place, so keeping the rotated GEMM outputs costs nothing extra and
// Selective has no RoPE output to drop. The attention output and its log-sum-exp are kept:
// rebuilding them means rerunning attention, as expensive as a GEMM.
std::array<SlotShape, kActivationSlots> slot_shapes(const ModelConfig& c) {
  const std::int64_t D = c.hidden_size, F = c.intermediate_size, QD = c.q_dim(), KVD = c.kv_dim();
  return {{{D, false, true},
           {1, true, true},
           {QD + 2 * KVD, false, false},
           {QD, false, false},
           {c.num_attention_heads, true, false},
           {D, false, false},
           {D, false, true},
           {1, true, true},
           {2 * F, false, false},
           {F, false, true}}};
}

// Whether a layer's own buffer holds this activation from forward to backward; otherwise it
// lives in the workspace that every layer overwrites (and backward recomputes it there).
bool kept_for_backward(const SlotShape& shape, ModelMode mode, ActivationRecompute recompute) {
  if (mode == ModelMode::Inference) return false;
  switch (recompute) {
    case ActivationRecompute::None: return true;
    case ActivationRecompute::Selective: return !shape.recomputed_by_selective;
    case ActivationRecompute::Full: return false;
  }
  return true;
}

// Inference keeps nothing beyond the layer that runs, and less than a layer's slots: its two
// halves take one region of storage values in turn. The attention half holds its norm's output,
// q|k|v and the head outputs; the MLP half, once those are dead, gate|up and its norm's output,
// with the SwiGLU product written over the norm's output (dead once the gate|up GEMM read it;
// the product cannot go over the strided gate, whose rows interleave with up's). The residual after
// attention goes straight into the layer's output stream (no `mid`), and the 1/rms of both norms
// and attention's log-sum-exp share one statistics region. Each view starts on a 256-byte
// boundary, as a buffer of its own would (cudaMalloc's alignment), so the kernels take the same
// paths as on separate buffers. Offsets in elements, for max_rows rows.
struct InferenceLayout {
  std::int64_t normed = 0, qkv = 0, attention = 0;  // attention half
  std::int64_t gate_up = 0, mlp_normed = 0;         // MLP half (the SwiGLU product at mlp_normed)
  std::int64_t activations = 0;                     // the region's size
  std::int64_t rstd = 0, lse = 0, statistics = 0;   // the statistics region
};

InferenceLayout inference_layout(const ModelConfig& c, std::int64_t max_rows, DType activation, DType statistic) {
  auto place = [](std::int64_t& end, std::int64_t numel, DType dtype) {
    const auto align = static_cast<std::int64_t>(256 / dtype_size(dtype));
    const std::int64_t offset = (end + align - 1) / align * align;
    end = offset + numel;
    return offset;
  };
  const std::int64_t N = max_rows;
  InferenceLayout l;
  std::int64_t attention_end = 0, mlp_end = 0;
  l.normed = place(attention_end, N * c.hidden_size, activation);
  l.qkv = place(attention_end, N * (c.q_dim() + 2 * c.kv_dim()), activation);
  l.attention = place(attention_end, N * c.q_dim(), activation);
  l.gate_up = place(mlp_end, N * 2 * c.intermediate_size, activation);
  l.mlp_normed = place(mlp_end, N * std::max(c.hidden_size, c.intermediate_size), activation);
  l.activations = std::max(attention_end, mlp_end);
  l.rstd = place(l.statistics, N, statistic);
  l.lse = place(l.statistics, N * c.num_attention_heads, statistic);
  return l;
}

}  // namespace

// One layer's activation buffers, sized for max_batch * max_sequence rows; a slot the owner
// does not hold stays empty.
struct LlamaModel::LayerActivations {
  std::array<BackendBuffer, kActivationSlots> slots;
};

// q, k, v are strided views of qkv (row stride q_dim + 2 kv_dim), gate and up of gate_up (row
// stride 2 intermediate): each spans strided_numel(rows, its width, the stride) elements.
struct LlamaModel::LayerTensors {
  Tensor attention_normed, attention_rstd, qkv, q, k, v, attention, lse, mid, mlp_normed, mlp_rstd, gate_up, gate, up,
      mlp;
};

KvCache::KvCache(const ModelConfig& config, Backend& backend, std::int64_t max_tokens, std::int64_t sequences)
    : max_tokens_(max_tokens) {
  if (max_tokens < 1 || sequences < 1)
    fail_expected("KV cache", str(sequences, " sequences of ", max_tokens, " tokens"), "both >= 1");
  lengths_.assign(static_cast<std::size_t>(sequences), 0);
  for (std::int64_t l = 0; l < config.num_hidden_layers; ++l) {
    keys_.emplace_back(backend, sequences * max_tokens * config.kv_dim(), backend.activation_dtype());
    values_.emplace_back(backend, sequences * max_tokens * config.kv_dim(), backend.activation_dtype());
  }
}

void KvCache::truncate(std::int64_t length, std::int64_t sequence) {
  std::int64_t& cached = lengths_[checked(sequence)];
  MINITRON_ASSERT(length >= 0 && length <= cached, "KV cache: keeping ", length, " of ", cached, " tokens");
  cached = length;
}

void KvCache::copy_from(Backend& backend, const KvCache& from) {
  MINITRON_ASSERT(from.sequences() == sequences() && from.keys_.size() == keys_.size(), "KV cache: copying ",
                  from.sequences(), " sequences of ", from.keys_.size(), " layers into ", sequences(), " of ",
                  keys_.size());
  if (keys_.empty()) return;
  const std::int64_t row = keys_[0].tensor().numel / (sequences() * max_tokens_);  // kv_heads * head_dim
  for (std::size_t s = 0; s < lengths_.size(); ++s) {
    const std::int64_t n = from.lengths_[s];
    MINITRON_ASSERT(n <= max_tokens_, "KV cache: ", n, " cached tokens into room for ", max_tokens_);
    lengths_[s] = n;
    if (n == 0) continue;
    const std::int64_t to = static_cast<std::int64_t>(s) * max_tokens_ * row;
    const std::int64_t at = static_cast<std::int64_t>(s) * from.max_tokens_ * row;
    for (std::size_t l = 0; l < keys_.size(); ++l) {
      backend.copy(keys_[l].tensor().slice(to, n * row), from.keys_[l].tensor().slice(at, n * row));
      backend.copy(values_[l].tensor().slice(to, n * row), from.values_[l].tensor().slice(at, n * row));
    }
  }
}

std::size_t KvCache::checked(std::int64_t sequence) const {
  MINITRON_ASSERT(sequence >= 0 && sequence < sequences(), "KV cache sequence ", sequence, " of ", sequences());
  return static_cast<std::size_t>(sequence);
}

LlamaModel::LlamaModel(const ModelConfig& config, Backend& backend, std::int64_t max_batch, std::int64_t max_sequence,
                       ModelMode mode, ActivationRecompute recompute, const GradientSharding& sharding)
    : config_(config),
      table_(config),
      backend_(backend),
      mode_(mode),
      recompute_(recompute),
      max_batch_(max_batch),
      max_sequence_(max_sequence),
      sharding_(sharding) {
  if (max_batch < 1 || max_sequence < 1)
    fail_expected("model", str("batch ", max_batch, " x sequence ", max_sequence), "both >= 1");
  MINITRON_ASSERT(mode == ModelMode::Training || recompute == ActivationRecompute::None, "activation recomputation (",
                  activation_recompute_name(recompute), ") needs a Training-mode model");
  // The fused projections read each layer's q|k|v and gate|up weights as one matrix.
  const std::int64_t D = config.hidden_size, QD = config.q_dim(), KVD = config.kv_dim();
  for (std::int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const LayerOffsets& w = table_.layer(l);
    MINITRON_ASSERT(w.k_proj == w.q_proj + QD * D && w.v_proj == w.k_proj + KVD * D &&
                        w.up_proj == w.gate_proj + config.intermediate_size * D,
                    "layer ", l, ": the fused projections' weights are not adjacent in the parameter table");
  }
  allocate_arenas();
}

LlamaModel::~LlamaModel() = default;

ModelMemory LlamaModel::memory(const ModelConfig& config, DType activation, DType gradient, std::int64_t max_batch,
                               std::int64_t max_sequence, ModelMode mode, ActivationRecompute recompute) {
  const auto act = static_cast<std::int64_t>(dtype_size(activation));
  const auto stat = static_cast<std::int64_t>(dtype_size(activation == DType::F64 ? DType::F64 : DType::F32));
  const std::int64_t N = max_batch * max_sequence, D = config.hidden_size, F = config.intermediate_size;
  const std::int64_t QD = config.q_dim(), KVD = config.kv_dim(), L = config.num_hidden_layers;
  const std::int64_t P = ParameterTable(config).total_numel();
  const bool training = mode == ModelMode::Training;
  ModelMemory m;
  m.weights = P * act;
  if (training) m.gradients = P * static_cast<std::int64_t>(dtype_size(gradient));
  m.saved_activations = (training ? L + 1 : 2) * N * D * act;  // the residual stream (allocate_arenas)
  if (training) {
    for (const SlotShape& shape : slot_shapes(config)) {
      const std::int64_t bytes = N * shape.per_token * (shape.statistic ? stat : act);
      if (kept_for_backward(shape, mode, recompute))
        m.saved_activations += L * bytes;
      else
        m.recompute_workspace += bytes;
    }
  } else {
    const InferenceLayout layout =
        inference_layout(config, N, activation, activation == DType::F64 ? DType::F64 : DType::F32);
    m.recompute_workspace = layout.activations * act + layout.statistics * stat;
  }
  // RoPE's inverse frequencies (fp32), the tokens and their positions in packed documents (int32),
  // the final norm's output and 1/rms.
  m.backward_buffers = (config.head_dim / 2) * 4 + 2 * N * 4 + N * D * act + N * stat;
  // d_residual, d_hidden, d_normed, d_qkv, d_attention, d_gate_up, d_mlp.
  if (training) m.backward_buffers += N * (3 * D + 2 * QD + 2 * KVD + 3 * F) * act;
  return m;
}

void LlamaModel::allocate_arenas() {
  const DType act = backend_.activation_dtype();
  // Norm statistics and log-sum-exp are fp32, except on the double engine of gradient checks.
  const DType stat = act == DType::F64 ? DType::F64 : DType::F32;
  const std::int64_t N = max_batch_ * max_sequence_;
  const std::int64_t D = config_.hidden_size, F = config_.intermediate_size;
  const std::int64_t QD = config_.q_dim(), KVD = config_.kv_dim();
  const std::int64_t L = config_.num_hidden_layers;
  Backend& b = backend_;

  params_ = BackendBuffer(b, table_.total_numel(), act);
  std::vector<float> inv_freq = rope_inverse_frequencies(config_);
  inv_freq_ = BackendBuffer(b, static_cast<std::int64_t>(inv_freq.size()), DType::F32);
  b.upload(inv_freq_, inv_freq.data());
  tokens_ = BackendBuffer(b, N, DType::I32);
  positions_ = BackendBuffer(b, N, DType::I32);

  const bool training = mode_ == ModelMode::Training;
  // Inference keeps nothing per layer (one layer's workspace) and two residual buffers.
  for (std::int64_t i = 0; i < (training ? L + 1 : 2); ++i) residual_.emplace_back(b, N * D, act);
  const std::array<SlotShape, kActivationSlots> shapes = slot_shapes(config_);
  auto allocate = [&](LayerActivations& a, bool kept) {
    for (int s = 0; s < kActivationSlots; ++s)
      if (kept_for_backward(shapes[s], mode_, recompute_) == kept)
        a.slots[s] = BackendBuffer(b, N * shapes[s].per_token, shapes[s].statistic ? stat : act);
  };
  for (std::int64_t l = 0; l < (training ? L : 0); ++l) {
    layers_.push_back(std::make_unique<LayerActivations>());
    allocate(*layers_.back(), true);
  }
  workspace_ = std::make_unique<LayerActivations>();
  if (training) {
    allocate(*workspace_, false);
  } else {
    const InferenceLayout layout = inference_layout(config_, N, act, stat);
    inference_activations_ = BackendBuffer(b, layout.activations, act);
    inference_statistics_ = BackendBuffer(b, layout.statistics, stat);
  }
  final_hidden_ = BackendBuffer(b, N * D, act);
  final_rstd_ = BackendBuffer(b, N, stat);

  if (training) {
    gradient_buckets_ = std::make_unique<GradientBuckets>(b, table_, sharding_);
    if (sharding_.overlap_parameter_gather)
      parameter_gather_ = std::make_unique<ParameterGather>(table_, sharding_.bucket_elements);
    d_residual_ = BackendBuffer(b, N * D, act);
    d_hidden_ = BackendBuffer(b, N * D, act);
    d_normed_ = BackendBuffer(b, N * D, act);
    d_qkv_ = BackendBuffer(b, N * (QD + 2 * KVD), act);
    d_attention_ = BackendBuffer(b, N * QD, act);
    d_gate_up_ = BackendBuffer(b, N * 2 * F, act);
    d_mlp_ = BackendBuffer(b, N * F, act);
  }
}

void LlamaModel::set_parameters(std::span<const float> host) {
  if (static_cast<std::int64_t>(host.size()) != table_.total_numel())
    fail_expected("parameters", str(host.size(), " values"), str(table_.total_numel()));
  backend_.upload(params_, host.data());
}

void LlamaModel::get_parameters(std::span<float> host) const {
  MINITRON_ASSERT(static_cast<std::int64_t>(host.size()) == table_.total_numel());
  backend_.download(host.data(), parameters());
}

Tensor LlamaModel::parameters() const {
  if (parameter_gather_) parameter_gather_->wait_all();
  return params_;
}

void LlamaModel::gather_parameters(Communicator& communicator, std::span<const std::int64_t> bounds) {
  if (parameter_gather_)
    parameter_gather_->start(communicator, params_, bounds);
  else
    communicator.all_gather(params_, bounds);
}

GradientBuckets& LlamaModel::gradient_buckets() const {
  MINITRON_ASSERT(mode_ == ModelMode::Training, "gradients need a Training-mode model");
  return *gradient_buckets_;
}

void LlamaModel::zero_gradients() { gradient_buckets().begin_step(); }

void LlamaModel::weight_gradient(std::int64_t offset, Tensor a, Tensor b, std::int64_t M, std::int64_t N,
                                 std::int64_t K) {
  const GradientBuckets::Destination dw = g(offset, M * N);
  backend_.matmul(dw.tensor, a, b, M, N, K, true, false, 1.0f, dw.accumulate ? 1.0f : 0.0f);
}

void LlamaModel::fused_weight_gradient(std::int64_t offset, std::span<const std::int64_t> rows, Tensor a, Tensor b,
                                       std::int64_t N, std::int64_t K) {
  const GradientBuckets::Destination dw =
      gradient_buckets_->destination_of_run(offset, static_cast<std::int64_t>(rows.size()));
  std::int64_t M = 0;
  for (const std::int64_t r : rows) M += r;
  backend_.matmul_concatenated(dw.tensor, a, b, M, N, K, true, false, 1.0f, dw.accumulate ? 1.0f : 0.0f,
                               ConcatenatedDim::M, rows);
}

void LlamaModel::complete_layer_gradients(std::int64_t l) {
  const LayerOffsets& w = table_.layer(l);
  GradientBuckets& buckets = *gradient_buckets_;
  for (std::int64_t offset : {w.input_layernorm, w.q_proj, w.k_proj, w.v_proj, w.o_proj, w.post_attention_layernorm,
                              w.gate_proj, w.up_proj, w.down_proj})
    buckets.complete(offset);
}

LlamaModel::LayerTensors LlamaModel::layer_tensors(std::int64_t l) const {
  const std::array<SlotShape, kActivationSlots> shapes = slot_shapes(config_);
  const ModelConfig& c = config_;
  const std::int64_t N = rows(), QD = c.q_dim(), KVD = c.kv_dim(), F = c.intermediate_size;
  // The strided parts of the fused outputs.
  auto parts = [&](LayerTensors& t) {
    const std::int64_t qkv = QD + 2 * KVD;
    t.q = t.qkv.slice(0, strided_numel(N, QD, qkv));
    t.k = t.qkv.slice(QD, strided_numel(N, KVD, qkv));
    t.v = t.qkv.slice(QD + KVD, strided_numel(N, KVD, qkv));
    t.gate = t.gate_up.slice(0, strided_numel(N, F, 2 * F));
    t.up = t.gate_up.slice(F, strided_numel(N, F, 2 * F));
    return t;
  };
  LayerTensors t;
  if (mode_ == ModelMode::Inference) {
    const InferenceLayout layout = inference_layout(c, max_batch_ * max_sequence_, backend_.activation_dtype(),
                                                    inference_statistics_.tensor().dtype);
    const Tensor act = inference_activations_.tensor(), stat = inference_statistics_.tensor();
    const Tensor rstd = stat.slice(layout.rstd, N);
    t.attention_normed = act.slice(layout.normed, N * c.hidden_size);
    t.attention_rstd = rstd;
    t.qkv = act.slice(layout.qkv, N * (QD + 2 * KVD));
    t.attention = act.slice(layout.attention, N * QD);
    t.lse = stat.slice(layout.lse, N * c.num_attention_heads);
    // mid: the layer's output stream (left empty)
    t.mlp_normed = act.slice(layout.mlp_normed, N * c.hidden_size);
    t.mlp_rstd = rstd;
    t.gate_up = act.slice(layout.gate_up, N * 2 * F);
    t.mlp = act.slice(layout.mlp_normed, N * F);
    return parts(t);
  }
  auto view = [&](ActivationSlot s) {
    const LayerActivations& owner =
        kept_for_backward(shapes[s], mode_, recompute_) ? *layers_[static_cast<std::size_t>(l)] : *workspace_;
    return owner.slots[s].tensor().slice(0, N * shapes[s].per_token);
  };
  t.attention_normed = view(kAttentionNormed);
  t.attention_rstd = view(kAttentionRstd);
  t.qkv = view(kQkv);
  t.attention = view(kAttention);
  t.lse = view(kLse);
  t.mid = view(kMid);
  t.mlp_normed = view(kMlpNormed);
  t.mlp_rstd = view(kMlpRstd);
  t.gate_up = view(kGateUp);
  t.mlp = view(kMlp);
  return parts(t);
}

ActivationArenaBytes LlamaModel::activation_arena_bytes() const {
  ActivationArenaBytes bytes;
  auto sum = [](const LayerActivations& a) {
    std::int64_t total = 0;
    for (const BackendBuffer& buffer : a.slots) total += static_cast<std::int64_t>(buffer.tensor().bytes());
    return total;
  };
  for (const BackendBuffer& r : residual_) bytes.saved += static_cast<std::int64_t>(r.tensor().bytes());
  for (const auto& layer : layers_) bytes.saved += sum(*layer);
  bytes.workspace = sum(*workspace_) + static_cast<std::int64_t>(inference_activations_.tensor().bytes()) +
                    static_cast<std::int64_t>(inference_statistics_.tensor().bytes());
  return bytes;
}

std::vector<Tensor> LlamaModel::recomputed_activations() const {
  std::vector<Tensor> out;
  if (mode_ != ModelMode::Training) return out;
  for (const BackendBuffer& buffer : workspace_->slots)
    if (!buffer.tensor().empty()) out.push_back(buffer.tensor());
  return out;
}

Tensor LlamaModel::final_hidden() const { return final_hidden_.tensor().slice(0, rows() * config_.hidden_size); }

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

Tensor LlamaModel::document_positions() const { return packed_ ? positions_.tensor().slice(0, rows()) : Tensor{}; }

void LlamaModel::forward(std::span<const std::int32_t> tokens, std::int64_t batch, std::int64_t sequence,
                         const ForwardOptions& options) {
  if (batch < 1 || batch > max_batch_ || sequence < 1 || sequence > max_sequence_)
    fail_expected("forward", str("batch ", batch, " x sequence ", sequence),
                  str("at most ", max_batch_, " x ", max_sequence_, " (the sizes the model was built for)"));
  MINITRON_ASSERT(static_cast<std::int64_t>(tokens.size()) == batch * sequence);
  for (std::int32_t t : tokens)
    if (t < 0 || t >= config_.vocab_size)
      fail_expected("input tokens", str("token id ", t), str("ids in [0, ", config_.vocab_size, ")"));
  if (options.skip_layers)
    MINITRON_ASSERT(static_cast<std::int64_t>(options.skip_layers->size()) == config_.num_hidden_layers);
  if (!options.positions.empty()) {
    if (options.cache) fail_expected("forward", "packed-document positions with a KV cache", "one or the other");
    check_document_positions(options.positions, batch, sequence);
  }
  if (options.cache) {
    const KvCache& cache = *options.cache;
    MINITRON_ASSERT(mode_ == ModelMode::Inference, "a KV cache serves Inference mode");
    if (options.cache_sequences.empty()) {
      MINITRON_ASSERT(batch == 1, "a KV cache without cache_sequences serves batch 1, not ", batch);
      cache_rows_.assign(1, 0);
    } else {
      MINITRON_ASSERT(static_cast<std::int64_t>(options.cache_sequences.size()) == batch,
                      "cache_sequences: ", options.cache_sequences.size(), " for a batch of ", batch);
      cache_rows_.assign(options.cache_sequences.begin(), options.cache_sequences.end());
    }
    std::vector<bool> taken(static_cast<std::size_t>(cache.sequences()), false);
    for (const std::int32_t s : cache_rows_) {
      if (s < 0 || s >= cache.sequences() || taken[static_cast<std::size_t>(s)])
        fail_expected("forward", str("KV cache sequence ", s, " for a row"),
                      str("distinct sequences in [0, ", cache.sequences(), ")"));
      taken[static_cast<std::size_t>(s)] = true;
      if (cache.length(s) + sequence > cache.capacity())
        fail_expected("generation", str(cache.length(s) + sequence, " tokens"),
                      str("at most ", cache.capacity(), " (the KV cache size)"));
    }
  } else {
    MINITRON_ASSERT(options.cache_sequences.empty(), "cache_sequences without a cache");
  }

  batch_ = batch;
  sequence_ = sequence;
  layer_output_gradients_.clear();
  const std::int64_t N = batch * sequence, D = config_.hidden_size;
  Backend& b = backend_;
  Tensor token_ids = tokens_.tensor().slice(0, N);
  b.upload_i32(token_ids, tokens.data());
  packed_ = !options.positions.empty();
  if (packed_) b.upload_i32(positions_.tensor().slice(0, N), options.positions.data());
  if (options.cache) {  // each token's place in its cached sequence, for RoPE (cached_attention)
    std::vector<std::int32_t> place(static_cast<std::size_t>(N));
    for (std::int64_t r = 0; r < batch; ++r)
      for (std::int64_t t = 0; t < sequence; ++t)
        place[static_cast<std::size_t>(r * sequence + t)] =
            static_cast<std::int32_t>(options.cache->length(cache_rows_[static_cast<std::size_t>(r)]) + t);
    b.upload_i32(positions_.tensor().slice(0, N), place.data());
  }

  // Training keeps every layer's input (residual_[l]); Inference ping-pongs between two.
  auto residual = [&](std::int64_t l) {
    std::int64_t slot = mode_ == ModelMode::Training ? l : l % 2;
    return residual_[static_cast<std::size_t>(slot)].tensor().slice(0, N * D);
  };
  // After a sharded optimizer step each bucket of parameters arrives while the layers before it
  // compute: the compute stream waits for a bucket just before it reads it (parameter_gather.h).
  ParameterGather* gather = parameter_gather_.get();
  if (gather) gather->wait(table_.embed_tokens(), table_.embed_tokens() + config_.vocab_size * D);
  b.embedding_forward(residual(0), token_ids, p(table_.embed_tokens(), config_.vocab_size * D), N, D);

  for (std::int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    Tensor x_in = residual(l), x_out = residual(l + 1);
    if (options.skip_layers && (*options.skip_layers)[static_cast<std::size_t>(l)]) {
      b.copy(x_out, x_in);
      continue;
    }
    if (gather) gather->wait_layer(l);
    layer_forward(l, layer_tensors(l), x_in, x_out, options.observer, options.cache);
  }
  if (options.cache)
    for (const std::int32_t s : cache_rows_) options.cache->lengths_[static_cast<std::size_t>(s)] += sequence;

  if (gather) gather->wait(table_.final_norm(), table_.final_norm() + D);
  b.rmsnorm_forward(final_hidden(), final_rstd_.tensor().slice(0, N), residual(config_.num_hidden_layers),
                    p(table_.final_norm(), D), N, D, static_cast<float>(config_.rms_norm_eps));
  // The rest (the LM head, which logits() reads next): backward, and its recomputation of
  // activations, are then queued after every wait.
  if (gather) gather->wait_all();
  // Skipped layers have no saved activations, so such a forward cannot be differentiated.
  ready_for_backward_ = mode_ == ModelMode::Training && !options.skip_layers;
  if (ready_for_backward_) b.zero(d_hidden_.tensor().slice(0, N * D));
}

// With an empty x_out (recomputation for backward) it stops after the SwiGLU product: backward
// reads nothing that the down projection writes.
void LlamaModel::layer_forward(std::int64_t l, const LayerTensors& a, Tensor x_in, Tensor x_out,
                               ActivationObserver* observer, KvCache* cache) {
  const ModelConfig& c = config_;
  const LayerOffsets& w = table_.layer(l);
  const std::int64_t B = batch_, T = sequence_, N = B * T;
  const std::int64_t D = c.hidden_size, F = c.intermediate_size, hd = c.head_dim;
  const std::int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const std::int64_t QD = c.q_dim(), KVD = c.kv_dim();
  const float eps = static_cast<float>(c.rms_norm_eps);
  Backend& b = backend_;
  auto observe = [&](ActivationSite site, Tensor act, std::int64_t channels) {
    if (observer && observer->wants(site)) observer->observe(site, l, act, B, T, channels);
  };

  // Inference writes the residual after attention straight into the layer's output.
  const bool inference = mode_ == ModelMode::Inference;
  const Tensor normed = a.attention_normed, att = a.attention;
  const Tensor mid = inference ? x_out : a.mid;
  const Tensor mlp_normed = a.mlp_normed, mlp = a.mlp;
  const std::int64_t QKV = QD + 2 * KVD;  // the fused q|k|v row
  const std::array<std::int64_t, 3> qkv_parts{QD, KVD, KVD};
  const std::array<std::int64_t, 2> gate_up_parts{F, F};

  observe(ActivationSite::LayerInput, x_in, D);

  // Attention block: x + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))), n = norm(x),
  // the three projections one GEMM over the adjacent weights.
  b.rmsnorm_forward(normed, a.attention_rstd, x_in, p(w.input_layernorm, D), N, D, eps);
  observe(ActivationSite::AttentionNormOutput, normed, D);
  b.matmul_concatenated(a.qkv, normed, p(w.q_proj, QKV * D), N, QKV, D, false, true, 1.0f, 0.0f, ConcatenatedDim::N,
                        qkv_parts);
  if (cache) {
    cached_attention(l, a, *cache);
  } else {
    // RoPE inside attention: q and k are rotated in place there (the backward reads them so).
    b.attention_forward(att, a.lse, a.q, a.k, a.v, B, T, T, Hq, Hkv, hd, document_positions(), {QKV, QKV, QKV, 0},
                        inv_freq_);
  }
  observe(ActivationSite::OProjInput, att, QD);
  // mid = x + o_proj(att), and the MLP block's norm of it, in one pass (o_proj's output goes
  // into mid, then the add is in place).
  b.matmul(mid, att, p(w.o_proj, D * QD), N, D, QD, false, true);

  // MLP block: mid + down_proj(silu(gate_proj(n)) * up_proj(n)), n = norm(mid).
  b.residual_rmsnorm_forward(mid, mlp_normed, a.mlp_rstd, x_in, mid, p(w.post_attention_layernorm, D), N, D, eps);
  observe(ActivationSite::MlpNormOutput, mlp_normed, D);
  b.matmul_concatenated(a.gate_up, mlp_normed, p(w.gate_proj, 2 * F * D), N, 2 * F, D, false, true, 1.0f, 0.0f,
                        ConcatenatedDim::N, gate_up_parts);
  if (observer && observer->wants(ActivationSite::GateProjOutput)) {
    // Observers read dense [N, F] activations: the gate columns, copied into the SwiGLU
    // product's buffer, which the product overwrites next.
    b.copy_rows(mlp, a.gate, N, F, F, 2 * F);
    observe(ActivationSite::GateProjOutput, mlp, F);
  }
  b.swiglu_forward(mlp, a.gate, a.up, N * F, F, 2 * F);
  observe(ActivationSite::DownProjInput, mlp, F);
  if (x_out.empty()) return;
  if (!inference) b.copy(x_out, mid);
  b.matmul(x_out, mlp, p(w.down_proj, D * F), N, D, F, false, true, 1.0f, 1.0f);

  observe(ActivationSite::LayerOutput, x_out, D);
}

// Each row's keys and values join its own cached sequence, and its queries attend to that
// sequence alone: one attention call per row, the very call a batch of one makes, so batched
// generation never pads and a finished sequence costs nothing. The per-row calls are cheap
// beside the matrix products the rows share (one token per row while decoding).
void LlamaModel::cached_attention(std::int64_t l, const LayerTensors& a, KvCache& cache) {
  const ModelConfig& c = config_;
  const std::int64_t B = batch_, T = sequence_, hd = c.head_dim;
  const std::int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const std::int64_t QD = c.q_dim(), KVD = c.kv_dim(), QKV = QD + 2 * KVD;
  Backend& b = backend_;
  const Tensor places = positions_.tensor().slice(0, B * T);  // forward() wrote each token's place
  b.rope_forward(a.qkv.slice(0, strided_numel(B * T, QD + KVD, QKV)), inv_freq_, B, T, Hq + Hkv, hd, 0, places, QKV);
  const Tensor all_keys = cache.keys_[static_cast<std::size_t>(l)].tensor();
  const Tensor all_values = cache.values_[static_cast<std::size_t>(l)].tensor();
  for (std::int64_t r = 0; r < B; ++r) {
    const std::int32_t s = cache_rows_[static_cast<std::size_t>(r)];
    const std::int64_t past = cache.lengths_[static_cast<std::size_t>(s)];  // tokens before these ones
    const Tensor keys = all_keys.slice(s * cache.max_tokens_ * KVD, (past + T) * KVD);
    const Tensor values = all_values.slice(s * cache.max_tokens_ * KVD, (past + T) * KVD);
    // This row's T rows of the fused q|k|v: its keys and values go into the cache densely.
    const Tensor row = a.qkv.slice(r * T * QKV, strided_numel(T, QKV, QKV));
    b.copy_rows(keys.slice(past * KVD, T * KVD), row.slice(QD, strided_numel(T, KVD, QKV)), T, KVD, KVD, QKV);
    b.copy_rows(values.slice(past * KVD, T * KVD), row.slice(QD + KVD, strided_numel(T, KVD, QKV)), T, KVD, KVD, QKV);
    b.attention_forward(a.attention.slice(r * T * QD, T * QD), a.lse.slice(r * Hq * T, Hq * T),
                        row.slice(0, strided_numel(T, QD, QKV)), keys, values, 1, T, past + T, Hq, Hkv, hd, {},
                        {QKV, 0, 0, 0});
  }
}

// ---------------------------------------------------------------------------------------
// LM head
// ---------------------------------------------------------------------------------------

void LlamaModel::logits(Tensor out, std::int64_t row0, std::int64_t rows) const {
  const std::int64_t D = config_.hidden_size, V = config_.vocab_size;
  MINITRON_ASSERT(row0 >= 0 && rows >= 1 && row0 + rows <= this->rows());
  backend_.matmul(out.slice(0, rows * V), final_hidden_.tensor().slice(row0 * D, rows * D), p(table_.lm_head(), V * D),
                  rows, V, D, false, true);
}

void LlamaModel::head_backward(Tensor dlogits, std::int64_t row0, std::int64_t rows) {
  MINITRON_ASSERT(ready_for_backward_, "head_backward needs a Training-mode forward without skipped layers");
  const std::int64_t D = config_.hidden_size, V = config_.vocab_size;
  Tensor dl = dlogits.slice(0, rows * V);
  // d_hidden[rows] = dlogits @ W ; dW += dlogits^T @ hidden[rows]
  backend_.matmul(d_hidden_.tensor().slice(row0 * D, rows * D), dl, p(table_.lm_head(), V * D), rows, D, V, false,
                  false);
  weight_gradient(table_.lm_head(), dl, final_hidden_.tensor().slice(row0 * D, rows * D), V, D, rows);
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

void LlamaModel::add_layer_output_gradient(std::int64_t layer, Tensor grad) {
  MINITRON_ASSERT(ready_for_backward_,
                  "add_layer_output_gradient needs a Training-mode forward without skipped layers");
  MINITRON_ASSERT(layer >= 0 && layer < config_.num_hidden_layers, "layer ", layer, " of ", config_.num_hidden_layers);
  MINITRON_ASSERT(grad.dtype == backend_.activation_dtype() && grad.numel >= rows() * config_.hidden_size,
                  "layer output gradient: ", grad.numel, " ", dtype_name(grad.dtype), " elements for ", rows(), " x ",
                  config_.hidden_size, " rows of ", dtype_name(backend_.activation_dtype()));
  layer_output_gradients_.emplace_back(layer, grad);
}

void LlamaModel::backward() {
  MINITRON_ASSERT(ready_for_backward_, "backward needs a Training-mode forward without skipped layers");
  const std::int64_t N = rows(), D = config_.hidden_size, L = config_.num_hidden_layers;
  Backend& b = backend_;
  Tensor dx = d_residual_.tensor().slice(0, N * D);

  // Final norm: its input is the last layer's output; rmsnorm_backward accumulates into dx.
  GradientBuckets& buckets = *gradient_buckets_;
  // head_backward covered every row: the LM head's gradient is whole (a tied head's waits for
  // the embedding's, at the end). A loss that never reached the logits (on hidden states only)
  // gave it none: zero, not whatever the buffer held.
  g_accumulated(table_.lm_head(), config_.vocab_size * D);
  if (table_.lm_head() != table_.embed_tokens()) buckets.complete(table_.lm_head());
  b.zero(dx);
  b.rmsnorm_backward(dx, g_accumulated(table_.final_norm(), D), d_hidden_.tensor().slice(0, N * D),
                     residual_[static_cast<std::size_t>(L)].tensor().slice(0, N * D), p(table_.final_norm(), D),
                     final_rstd_.tensor().slice(0, N), N, D);
  buckets.complete(table_.final_norm());
  for (std::int64_t l = L - 1; l >= 0; --l) {
    // dx is dloss/d(output of layer l) here: losses on that hidden state add their part.
    for (const auto& [layer, grad] : layer_output_gradients_)
      if (layer == l) b.add_inplace(dx, grad.slice(0, N * D));
    const LayerTensors a = layer_tensors(l);
    const Tensor x_in = residual_[static_cast<std::size_t>(l)].tensor().slice(0, N * D);
    recompute_layer(l, a, x_in);
    layer_backward(l, a, x_in);
    complete_layer_gradients(l);
  }
  layer_output_gradients_.clear();
  b.embedding_backward(g_accumulated(table_.embed_tokens(), config_.vocab_size * D), dx, tokens_.tensor().slice(0, N),
                       N, D);
  buckets.complete(table_.embed_tokens());
  buckets.end_micro_batch();
  ready_for_backward_ = false;
}

// Rebuilds in the workspace what forward wrote for layer l but the mode did not keep, with the
// ops and inputs forward used: the same values, bit for bit.
void LlamaModel::recompute_layer(std::int64_t l, const LayerTensors& a, Tensor x_in) {
  const LayerOffsets& w = table_.layer(l);
  const std::int64_t N = rows(), D = config_.hidden_size, F = config_.intermediate_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  Backend& b = backend_;
  switch (recompute_) {
    case ActivationRecompute::None: return;
    case ActivationRecompute::Full: layer_forward(l, a, x_in, Tensor{}, nullptr, nullptr); return;
    case ActivationRecompute::Selective:
      b.rmsnorm_forward(a.attention_normed, a.attention_rstd, x_in, p(w.input_layernorm, D), N, D, eps);
      // Forward normed `mid` inside residual_rmsnorm_forward, whose norm reads the stored
      // (rounded) stream exactly as rmsnorm_forward does (kernels/residual_rmsnorm.h).
      b.rmsnorm_forward(a.mlp_normed, a.mlp_rstd, a.mid, p(w.post_attention_layernorm, D), N, D, eps);
      b.swiglu_forward(a.mlp, a.gate, a.up, N * F, F, 2 * F);
      return;
  }
}

// On entry d_residual_ holds dloss/d(x_out); on exit dloss/d(x_in). The residual connections
// are why rmsnorm_backward accumulates into its input gradient.
void LlamaModel::layer_backward(std::int64_t l, const LayerTensors& a, Tensor x_in) {
  const ModelConfig& c = config_;
  const LayerOffsets& w = table_.layer(l);
  const std::int64_t B = batch_, T = sequence_, N = B * T;
  const std::int64_t D = c.hidden_size, F = c.intermediate_size, hd = c.head_dim;
  const std::int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const std::int64_t QD = c.q_dim(), KVD = c.kv_dim();
  Backend& b = backend_;

  Tensor dx = d_residual_.tensor().slice(0, N * D);
  Tensor dnormed = d_normed_.tensor().slice(0, N * D);
  const std::int64_t QKV = QD + 2 * KVD;
  const std::array<std::int64_t, 3> qkv_parts{QD, KVD, KVD};
  const std::array<std::int64_t, 2> gate_up_parts{F, F};
  // The fused gradients, written in place by attention's and SwiGLU's backwards through their
  // strided parts, then each one GEMM for the input gradient and one for the weights'.
  const Tensor dqkv = d_qkv_.tensor().slice(0, N * QKV), dgate_up = d_gate_up_.tensor().slice(0, N * 2 * F);
  const Tensor dgate = dgate_up.slice(0, strided_numel(N, F, 2 * F)),
               dup = dgate_up.slice(F, strided_numel(N, F, 2 * F));
  const Tensor dq = dqkv.slice(0, strided_numel(N, QD, QKV)), dk = dqkv.slice(QD, strided_numel(N, KVD, QKV));
  const Tensor dv = dqkv.slice(QD + KVD, strided_numel(N, KVD, QKV));
  Tensor dmlp = d_mlp_.tensor().slice(0, N * F), datt = d_attention_.tensor().slice(0, N * QD);
  const Tensor normed = a.attention_normed, mlp_normed = a.mlp_normed, mlp = a.mlp, att = a.attention;

  // MLP block. y = mid + mlp @ Wd^T.
  b.matmul(dmlp, dx, p(w.down_proj, D * F), N, F, D, false, false);
  weight_gradient(w.down_proj, dx, mlp, D, F, N);
  b.swiglu_backward(dgate, dup, dmlp, a.gate, a.up, N * F, F, 2 * F);
  b.matmul_concatenated(dnormed, dgate_up, p(w.gate_proj, 2 * F * D), N, D, 2 * F, false, false, 1.0f, 0.0f,
                        ConcatenatedDim::K, gate_up_parts);
  fused_weight_gradient(w.gate_proj, gate_up_parts, dgate_up, mlp_normed, D, N);
  b.rmsnorm_backward(dx, g_accumulated(w.post_attention_layernorm, D), dnormed, a.mid, p(w.post_attention_layernorm, D),
                     a.mlp_rstd, N, D);

  // Attention block. mid = x + att @ Wo^T.
  b.matmul(datt, dx, p(w.o_proj, D * QD), N, QD, D, false, false);
  weight_gradient(w.o_proj, dx, att, D, QD, N);
  // RoPE's backward inside attention's: dq and dk of the unrotated q and k.
  b.attention_backward(dq, dk, dv, datt, att, a.lse, a.q, a.k, a.v, B, T, Hq, Hkv, hd, document_positions(),
                       {QKV, QKV, QKV, 0, 0, QKV, QKV, QKV}, inv_freq_);
  b.matmul_concatenated(dnormed, dqkv, p(w.q_proj, QKV * D), N, D, QKV, false, false, 1.0f, 0.0f, ConcatenatedDim::K,
                        qkv_parts);
  fused_weight_gradient(w.q_proj, qkv_parts, dqkv, normed, D, N);
  b.rmsnorm_backward(dx, g_accumulated(w.input_layernorm, D), dnormed, x_in, p(w.input_layernorm, D), a.attention_rstd,
                     N, D);
}

// ---------------------------------------------------------------------------------------
// Initialisation
// ---------------------------------------------------------------------------------------

void initialize_parameters(const ModelConfig& config, const ParameterTable& table, std::span<float> params,
                           std::uint64_t seed, double std) {
  (void)config;
  MINITRON_ASSERT(static_cast<std::int64_t>(params.size()) == table.total_numel());
  SplitMix64 rng(seed);
  for (const ParamInfo& info : table.entries()) {
    float* w = params.data() + info.offset;
    if (info.kind == ParamKind::Norm) {
      for (std::int64_t i = 0; i < info.numel; ++i) w[i] = 1.0f;
      continue;
    }
    for (std::int64_t i = 0; i < info.numel; i += 2) {
      const NormalPair z = normal_pair(rng, std);
      w[i] = static_cast<float>(z.first);
      if (i + 1 < info.numel) w[i + 1] = static_cast<float>(z.second);
    }
  }
}

}  // namespace minitron
