#include "model/parameters.h"

#include "util/error.h"

namespace minitron {

const char* param_kind_name(ParamKind kind) {
  switch (kind) {
    case ParamKind::Embedding: return "embedding";
    case ParamKind::Norm: return "norm";
    case ParamKind::Attention: return "attention";
    case ParamKind::Mlp: return "mlp";
    case ParamKind::Head: return "head";
  }
  return "?";
}

ParameterTable::ParameterTable(const ModelConfig& c) {
  MINITRON_ASSERT(c.hidden_size > 0 && c.vocab_size > 0 && c.num_hidden_layers > 0 && c.head_dim > 0,
                  "parameter table of an unvalidated config");
  // Appends a tensor at the end of the buffer and returns its offset.
  auto add = [&](std::string name, std::vector<std::int64_t> shape, ParamKind kind, std::int64_t layer) {
    std::int64_t numel = 1;
    for (std::int64_t d : shape) numel *= d;
    ParamInfo info{std::move(name), std::move(shape), kind, layer, total_, numel};
    index_.emplace(info.name, entries_.size());
    entries_.push_back(std::move(info));
    total_ += numel;
    return entries_.back().offset;
  };
  const std::int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), ffn = c.intermediate_size;

  // The order of HF's named_parameters(), so a table walk reads checkpoints front to back.
  embed_tokens_ = add("model.embed_tokens.weight", {c.vocab_size, h}, ParamKind::Embedding, -1);
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = str("model.layers.", i, ".");
    LayerOffsets l{};
    l.input_layernorm = add(p + "input_layernorm.weight", {h}, ParamKind::Norm, i);
    l.q_proj = add(p + "self_attn.q_proj.weight", {q, h}, ParamKind::Attention, i);
    l.k_proj = add(p + "self_attn.k_proj.weight", {kv, h}, ParamKind::Attention, i);
    l.v_proj = add(p + "self_attn.v_proj.weight", {kv, h}, ParamKind::Attention, i);
    l.o_proj = add(p + "self_attn.o_proj.weight", {h, q}, ParamKind::Attention, i);
    l.post_attention_layernorm = add(p + "post_attention_layernorm.weight", {h}, ParamKind::Norm, i);
    l.gate_proj = add(p + "mlp.gate_proj.weight", {ffn, h}, ParamKind::Mlp, i);
    l.up_proj = add(p + "mlp.up_proj.weight", {ffn, h}, ParamKind::Mlp, i);
    l.down_proj = add(p + "mlp.down_proj.weight", {h, ffn}, ParamKind::Mlp, i);
    layers_.push_back(l);
  }
  final_norm_ = add("model.norm.weight", {h}, ParamKind::Norm, -1);
  lm_head_ = c.tie_word_embeddings ? embed_tokens_ : add("lm_head.weight", {c.vocab_size, h}, ParamKind::Head, -1);
}

const ParamInfo* ParameterTable::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

const ParamInfo& ParameterTable::at(const std::string& name) const {
  const ParamInfo* info = find(name);
  if (!info)
    fail_expected(str("parameter '", name, "'"), "not in this model's parameter table",
                  "an HF tensor name such as model.layers.0.self_attn.q_proj.weight");
  return *info;
}

ModelCounts count_model(const ModelConfig& config, std::int64_t sequence_length) {
  ParameterTable table(config);
  ModelCounts counts;
  counts.total_params = table.total_numel();
  const std::int64_t embedding = config.vocab_size * config.hidden_size;
  counts.non_embedding_params = counts.total_params - embedding - (config.tie_word_embeddings ? 0 : embedding);

  // Every matrix multiplies each token once; a tied head is still a separate matmul.
  double matmul_weights = 0;
  for (const ParamInfo& p : table.entries())
    if (p.matrix() && p.kind != ParamKind::Embedding) matmul_weights += static_cast<double>(p.numel);
  if (config.tie_word_embeddings) matmul_weights += static_cast<double>(embedding);
  // PaLM's convention: QK^T and the value mix each cost 2 * q_dim * T per token and layer,
  // counted over the full sequence (not halved for the causal mask).
  const double attention = 4.0 * static_cast<double>(config.num_hidden_layers) * static_cast<double>(config.q_dim()) *
                           static_cast<double>(sequence_length);
  counts.forward_flops_per_token = 2.0 * matmul_weights + attention;
  counts.training_flops_per_token = 3.0 * counts.forward_flops_per_token;
  return counts;
}

}  // namespace minitron
