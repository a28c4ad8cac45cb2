// How much of each layer's forward activations training keeps for backward, and the names the
// flags and recipes use. Header-only, so that the recipe reader (and its fuzz target) can check a
// mode's name without linking the model.
#pragma once

#include <optional>
#include <string_view>

namespace minitron {

// Hugging Face's gradient checkpointing, Megatron's recompute granularity: LlamaModel::backward()
// rebuilds what forward did not keep with the ops and inputs forward used, in the same order, so
// gradients are bit-identical to None's.
enum class ActivationRecompute {
  None,       // keep every activation backward reads
  Selective,  // keep the GEMM and attention outputs; recompute the norms and the SwiGLU product
  Full,       // keep each layer's input only; rerun the layer's forward before its backward
};

inline const char* activation_recompute_name(ActivationRecompute recompute) {
  switch (recompute) {
    case ActivationRecompute::None: return "none";
    case ActivationRecompute::Selective: return "selective";
    case ActivationRecompute::Full: return "full";
  }
  return "?";
}

inline std::optional<ActivationRecompute> parse_activation_recompute(std::string_view name) {
  for (ActivationRecompute r : {ActivationRecompute::None, ActivationRecompute::Selective, ActivationRecompute::Full})
    if (name == activation_recompute_name(r)) return r;
  return std::nullopt;
}

}  // namespace minitron
