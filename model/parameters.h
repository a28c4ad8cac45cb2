// The parameter table: one list, derived from the config, that names every tensor of the
// model (HF names), its shape, its kind and its place in one contiguous buffer. Checkpoint
// I/O, the optimizer (weight decay), pruning and sharding all read it; nothing else keeps a
// list of parameter names or offsets.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/config.h"

namespace minitron {

enum class ParamKind { Embedding, Norm, Attention, Mlp, Head };
const char* param_kind_name(ParamKind kind);

struct ParamInfo {
  std::string name;                 // HF name, e.g. "model.layers.3.self_attn.q_proj.weight"
  std::vector<std::int64_t> shape;  // HF (PyTorch) shape: [out_features, in_features] for linears
  ParamKind kind;
  std::int64_t layer = -1;  // -1 for tensors outside the decoder layers
  std::int64_t offset = 0;  // element offset in the contiguous parameter buffer
  std::int64_t numel = 0;
  bool matrix() const { return shape.size() == 2; }
};

// Element offsets of one decoder layer's tensors in the parameter buffer.
struct LayerOffsets {
  std::int64_t input_layernorm, q_proj, k_proj, v_proj, o_proj;
  std::int64_t post_attention_layernorm, gate_proj, up_proj, down_proj;
};

class ParameterTable {
 public:
  explicit ParameterTable(const ModelConfig& config);

  const std::vector<ParamInfo>& entries() const { return entries_; }
  std::int64_t total_numel() const { return total_; }
  const ParamInfo& at(const std::string& name) const;  // throws Error for unknown names
  const ParamInfo* find(const std::string& name) const;

  std::int64_t embed_tokens() const { return embed_tokens_; }
  std::int64_t final_norm() const { return final_norm_; }
  // The LM head's offset: the embedding's when tie_word_embeddings is true.
  std::int64_t lm_head() const { return lm_head_; }
  const LayerOffsets& layer(std::int64_t i) const { return layers_.at(static_cast<std::size_t>(i)); }
  std::int64_t num_layers() const { return static_cast<std::int64_t>(layers_.size()); }

 private:
  std::vector<ParamInfo> entries_;
  std::unordered_map<std::string, std::size_t> index_;
  std::vector<LayerOffsets> layers_;
  std::int64_t embed_tokens_ = 0, final_norm_ = 0, lm_head_ = 0, total_ = 0;
};

// Parameter counts as people quote them: total (tied head counted once) and non-embedding
// (total minus the embedding table and the head), and forward FLOPs per token at a given
// sequence length (2 per multiply-add in the matmuls, plus attention's scores and mix).
struct ModelCounts {
  std::int64_t total_params = 0;
  std::int64_t non_embedding_params = 0;
  double forward_flops_per_token = 0;
  double training_flops_per_token = 0;  // 3x forward (backward costs twice the forward)
};
ModelCounts count_model(const ModelConfig& config, std::int64_t sequence_length);

}  // namespace minitron
