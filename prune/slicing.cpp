#include "prune/slicing.h"

#include <algorithm>
#include <limits>
#include <map>
#include <numeric>

#include "util/error.h"
#include "util/numbers.h"

namespace minitron {

namespace {

using Index = std::vector<std::int64_t>;

Index all_of(std::int64_t n) {
  Index out(static_cast<std::size_t>(n));
  std::iota(out.begin(), out.end(), 0);
  return out;
}

// Channels of the given heads, head h being channels h*head_dim .. h*head_dim + head_dim - 1.
Index head_channels(const Index& heads, std::int64_t head_dim) {
  Index out;
  for (std::int64_t h : heads)
    for (std::int64_t i = 0; i < head_dim; ++i) out.push_back(h * head_dim + i);
  return out;
}

std::int64_t check_size(const char* flag, std::optional<std::int64_t> target, std::int64_t current, const char* field) {
  if (!target) return current;
  if (*target < 1) fail_expected(flag, str(*target), str("a positive size (at most ", field, " = ", current, ")"));
  if (*target > current)
    fail_expected(flag, str(*target, " is above the model's ", field, " = ", current),
                  str("at most ", current, " (pruning only shrinks a model)"));
  return *target;
}

const std::vector<double>& need(const std::vector<double>& scores, const char* what, const char* flag) {
  if (scores.empty())
    fail_expected(flag, str("the scores file has no ", what, " scores"), "scores written by 'minitron importance'");
  return scores;
}

// Which tensor of a layer (or of the model) a table entry is, found through the table's offsets.
enum class Role { Embedding, Norm, Q, K, V, O, Gate, Up, Down, Head };

Role role_of(const ParameterTable& table, const ParamInfo& info) {
  if (info.layer < 0) {
    if (info.offset == table.embed_tokens()) return Role::Embedding;
    if (info.offset == table.final_norm()) return Role::Norm;
    if (info.offset == table.lm_head()) return Role::Head;
  } else {
    const LayerOffsets& w = table.layer(info.layer);
    if (info.offset == w.input_layernorm || info.offset == w.post_attention_layernorm) return Role::Norm;
    if (info.offset == w.q_proj) return Role::Q;
    if (info.offset == w.k_proj) return Role::K;
    if (info.offset == w.v_proj) return Role::V;
    if (info.offset == w.o_proj) return Role::O;
    if (info.offset == w.gate_proj) return Role::Gate;
    if (info.offset == w.up_proj) return Role::Up;
    if (info.offset == w.down_proj) return Role::Down;
  }
  fail(str("internal error: parameter ", info.name, " has no pruning rule"));
}

// Losses with each block of k removed (k = 1: the single-layer losses); nullptr when not measured.
const std::vector<double>* removal_losses(const ImportanceScores& scores, std::int64_t k) {
  if (auto it = scores.layers.block_removal_loss.find(k); it != scores.layers.block_removal_loss.end())
    return &it->second;
  if (k == 1 && !scores.layers.single_removal_loss.empty()) return &scores.layers.single_removal_loss;
  return nullptr;
}

// "2, 8" or "none": the block sizes a scores map holds, for error messages.
std::string block_sizes_of(const std::map<std::int64_t, std::vector<double>>& by_size) {
  std::string have;
  for (const auto& entry : by_size) have += str(have.empty() ? "" : ", ", entry.first);
  return have.empty() ? "none" : have;
}

}  // namespace

LayerCriterion parse_layer_criterion(const std::string& text) {
  if (text == "loss") return LayerCriterion::Loss;
  if (text == "block-importance") return LayerCriterion::BlockImportance;
  if (text == "task") return LayerCriterion::Task;
  fail_expected("--layer-criterion", str("'", text, "'"), "loss, block-importance or task");
}

const char* layer_criterion_name(LayerCriterion criterion) {
  switch (criterion) {
    case LayerCriterion::Loss: return "loss";
    case LayerCriterion::BlockImportance: return "block-importance";
    case LayerCriterion::Task: return "task";
  }
  return "?";
}

namespace {
constexpr std::int64_t kMaxLayerIndex = (std::int64_t{1} << 20) - 1;  // far above any real model's depth
}  // namespace

std::pair<std::int64_t, std::int64_t> parse_layer_range(const std::string& text) {
  const std::string expected = "a zero-based inclusive range such as 15-30, or one layer such as 7";
  auto number = [&](const std::string& s) -> std::int64_t {
    if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
      fail_expected("--drop-layers", str("'", text, "'"), expected);
    // Checked against the model's layers when the plan is made; this bound only stops overflow.
    return parse_integer("--drop-layers", s, 0, kMaxLayerIndex);
  };
  const std::size_t dash = text.find('-');
  if (dash == std::string::npos) {
    const std::int64_t l = number(text);
    return {l, l};
  }
  const std::int64_t a = number(text.substr(0, dash)), b = number(text.substr(dash + 1));
  if (a > b) fail_expected("--drop-layers", str("'", text, "' ends before it starts"), expected);
  return {a, b};
}

Index top_k_in_order(std::span<const double> scores, std::int64_t k) {
  MINITRON_ASSERT(k >= 0 && k <= static_cast<std::int64_t>(scores.size()));
  Index order = all_of(static_cast<std::int64_t>(scores.size()));
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    return scores[static_cast<std::size_t>(a)] > scores[static_cast<std::size_t>(b)];
  });
  order.resize(static_cast<std::size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

std::int64_t least_important_block(const ImportanceScores& scores, std::int64_t L, std::int64_t k,
                                   LayerCriterion criterion) {
  MINITRON_ASSERT(k >= 1 && k < L);
  const auto blocks = static_cast<std::size_t>(L - k + 1);
  const std::vector<double>* losses = removal_losses(scores, k);
  if (criterion == LayerCriterion::Task) {
    auto it = scores.layers.block_removal_task_score.find(k);
    if (it == scores.layers.block_removal_task_score.end())
      fail_expected("--layer-criterion task",
                    str("dropping ", k, " layers needs task accuracies for blocks of ", k,
                        ", the scores file has them for k = ", block_sizes_of(scores.layers.block_removal_task_score)),
                    str("scores from 'minitron importance --task NAME --task-file FILE --block-size ", k,
                        "', or --layer-criterion loss"));
    const std::vector<double>& accuracy = it->second;
    if (accuracy.size() != blocks)
      fail_expected("--layer-criterion task",
                    str("the scores file's task_score for block size ", k, " has ", accuracy.size(), " values"),
                    str(blocks, " (one per block of ", k, " in ", L, " layers)"));
    // Highest accuracy; among equal accuracies the lower removal loss (when measured), then
    // the earliest block: strict comparisons keep the first of full ties.
    const bool by_loss = losses && losses->size() == blocks;
    std::size_t best = 0;
    for (std::size_t s = 1; s < blocks; ++s)
      if (accuracy[s] > accuracy[best] || (accuracy[s] == accuracy[best] && by_loss && (*losses)[s] < (*losses)[best]))
        best = s;
    return static_cast<std::int64_t>(best);
  }
  std::vector<double> cost;
  if (criterion == LayerCriterion::Loss) {
    if (!losses)
      fail_expected("--num-layers",
                    str("dropping ", k, " layers needs block-removal losses for k = ", k,
                        ", the scores file has them for k = ", block_sizes_of(scores.layers.block_removal_loss)),
                    str("scores from 'minitron importance --block-size ", k,
                        "', or --layer-criterion block-importance, or --drop-layers A-B"));
    cost = *losses;
  } else {
    const std::vector<double>& bi = scores.layers.block_importance;
    if (bi.empty())
      fail_expected("--layer-criterion block-importance", "the scores file has no block_importance",
                    "scores from 'minitron importance' (which measures it by default)");
    for (std::int64_t s = 0; s + k <= L; ++s) cost.push_back(std::accumulate(bi.begin() + s, bi.begin() + s + k, 0.0));
  }
  MINITRON_ASSERT(cost.size() == blocks);
  return std::min_element(cost.begin(), cost.end()) - cost.begin();
}

PrunePlan plan_pruning(const ModelConfig& config, const ImportanceScores& scores, const PruneTargets& t) {
  const std::int64_t L = config.num_hidden_layers, D = config.hidden_size, F = config.intermediate_size;
  const std::int64_t Hq = config.num_attention_heads, Hkv = config.num_key_value_heads;
  const std::int64_t group = Hq / Hkv;

  // ---- targets ----
  const std::int64_t D2 = check_size("--hidden-size", t.hidden_size, D, "hidden_size");
  if (D2 != D && D2 % kHiddenSizeMultiple != 0)
    fail_expected("--hidden-size", str(D2, " is not a multiple of ", kHiddenSizeMultiple),
                  str("a multiple of ", kHiddenSizeMultiple,
                      " (the kernels read activations in 16-byte vectors of 8 bf16 values)"));
  const std::int64_t F2 = check_size("--intermediate-size", t.intermediate_size, F, "intermediate_size");
  const std::int64_t Hkv2 = check_size("--num-key-value-heads", t.num_key_value_heads, Hkv, "num_key_value_heads");
  const std::int64_t Hq2 =
      check_size("--num-attention-heads", t.num_attention_heads ? t.num_attention_heads : std::optional(Hkv2 * group),
                 Hq, "num_attention_heads");
  if (Hq2 % Hkv2 != 0)
    fail_expected("--num-attention-heads", str(Hq2, " query heads cannot be split evenly across ", Hkv2, " KV groups"),
                  str("a multiple of the number of KV heads (", Hkv2, ")"));
  if (Hq2 / Hkv2 > group)
    fail_expected("--num-attention-heads",
                  str(Hq2, " query heads over ", Hkv2, " KV groups is ", Hq2 / Hkv2,
                      " per group, but each group has only ", group),
                  str("at most ", Hkv2 * group, " query heads with ", Hkv2, " KV heads"));

  PrunePlan plan;
  if (t.num_layers && t.drop_layers)
    fail_expected("--num-layers / --drop-layers", "both given", "one of them (a layer count or an explicit block)");
  if (t.num_layers) {
    const std::int64_t n = *t.num_layers;
    if (n < 1) fail_expected("--num-layers", str(n), str("from 1 to ", L, " (dropping every layer leaves no model)"));
    if (n > L)
      fail_expected("--num-layers", str(n, " is above the model's num_hidden_layers = ", L), str("at most ", L));
    if (n < L) {
      const std::int64_t k = L - n, s = least_important_block(scores, L, k, t.layer_criterion);
      plan.dropped_block = std::pair(s, s + k - 1);
    }
  }
  if (t.drop_layers) {
    const auto [a, b] = *t.drop_layers;
    if (a < 0 || b >= L)
      fail_expected("--drop-layers", str(a, "-", b, " is outside the model's layers"), str("layers within 0-", L - 1));
    if (b - a + 1 >= L)
      fail_expected("--drop-layers", str(a, "-", b, " drops every layer"),
                    str("at most ", L - 1, " of ", L, " layers"));
    plan.dropped_block = std::pair(a, b);
  }
  for (std::int64_t l = 0; l < L; ++l)
    if (!plan.dropped_block || l < plan.dropped_block->first || l > plan.dropped_block->second)
      plan.layers.push_back(l);

  // ---- what to keep ----
  plan.hidden = D2 == D ? all_of(D) : top_k_in_order(need(scores.width.hidden, "hidden-channel", "--hidden-size"), D2);
  for (std::int64_t l : plan.layers) {
    const auto li = static_cast<std::size_t>(l);
    if (F2 == F) {
      plan.ffn.push_back(all_of(F));
    } else {
      if (scores.width.mlp.size() != static_cast<std::size_t>(L))
        fail_expected("--intermediate-size", "the scores file has no MLP scores",
                      "scores written by 'minitron importance'");
      plan.ffn.push_back(top_k_in_order(scores.width.mlp[li], F2));
    }
    if (Hq2 == Hq && Hkv2 == Hkv) {
      plan.query_heads.push_back(all_of(Hq));
      plan.kv_heads.push_back(all_of(Hkv));
      continue;
    }
    if (scores.width.heads.size() != static_cast<std::size_t>(L))
      fail_expected("--num-attention-heads", "the scores file has no head scores",
                    "scores written by 'minitron importance'");
    const std::vector<double>& h = scores.width.heads[li];
    // Query head q belongs to KV group q / group (the attention kernel's GQA mapping).
    Index groups = all_of(Hkv);
    if (Hkv2 < Hkv) {
      std::vector<double> group_scores(static_cast<std::size_t>(Hkv), 0.0);
      for (std::int64_t q = 0; q < Hq; ++q)
        group_scores[static_cast<std::size_t>(q / group)] += h[static_cast<std::size_t>(q)];
      groups = top_k_in_order(group_scores, Hkv2);
    }
    Index kept;
    for (std::int64_t g : groups) {
      std::span<const double> in_group(h.data() + g * group, static_cast<std::size_t>(group));
      for (std::int64_t q : top_k_in_order(in_group, Hq2 / Hkv2)) kept.push_back(g * group + q);
    }
    plan.query_heads.push_back(kept);
    plan.kv_heads.push_back(groups);
  }

  plan.config = config;
  plan.config.hidden_size = D2;
  plan.config.intermediate_size = F2;
  plan.config.num_attention_heads = Hq2;
  plan.config.num_key_value_heads = Hkv2;
  plan.config.num_hidden_layers = static_cast<std::int64_t>(plan.layers.size());
  plan.config.head_dim = config.head_dim;  // unchanged; config.json always states it
  return plan;
}

std::vector<float> slice_parameters(const ModelConfig& config, const ParameterTable& table,
                                    std::span<const float> params, const PrunePlan& plan) {
  MINITRON_ASSERT(static_cast<std::int64_t>(params.size()) == table.total_numel());
  const ModelConfig& pc = plan.config;
  const ParameterTable target(pc);
  std::vector<float> out(static_cast<std::size_t>(target.total_numel()));
  const Index vocab = all_of(config.vocab_size);
  for (const ParamInfo& info : target.entries()) {
    // The same tensor of the original model: layer i of the pruned model is plan.layers[i].
    std::string source_name = info.name;
    Index no_rows;
    const Index* rows = &no_rows;
    const Index* cols = nullptr;
    Index q_channels, kv_channels;
    if (info.layer >= 0) {
      const std::string prefix = str("model.layers.", info.layer, ".");
      MINITRON_ASSERT(info.name.rfind(prefix, 0) == 0);
      source_name =
          str("model.layers.", plan.layers[static_cast<std::size_t>(info.layer)], ".", info.name.substr(prefix.size()));
      q_channels = head_channels(plan.query_heads[static_cast<std::size_t>(info.layer)], config.head_dim);
      kv_channels = head_channels(plan.kv_heads[static_cast<std::size_t>(info.layer)], config.head_dim);
    }
    const Index* ffn = info.layer >= 0 ? &plan.ffn[static_cast<std::size_t>(info.layer)] : nullptr;
    switch (role_of(target, info)) {
      case Role::Embedding:
      case Role::Head: rows = &vocab, cols = &plan.hidden; break;
      case Role::Norm: rows = &plan.hidden; break;
      case Role::Q: rows = &q_channels, cols = &plan.hidden; break;
      case Role::K:
      case Role::V: rows = &kv_channels, cols = &plan.hidden; break;
      case Role::O: rows = &plan.hidden, cols = &q_channels; break;
      case Role::Gate:
      case Role::Up: rows = ffn, cols = &plan.hidden; break;
      case Role::Down: rows = &plan.hidden, cols = ffn; break;
    }
    const ParamInfo& src = table.at(source_name);
    const float* from = params.data() + src.offset;
    float* to = out.data() + info.offset;
    if (!cols) {  // a norm weight
      MINITRON_ASSERT(static_cast<std::int64_t>(rows->size()) == info.numel);
      for (std::size_t i = 0; i < rows->size(); ++i) to[i] = from[(*rows)[i]];
      continue;
    }
    MINITRON_ASSERT(info.matrix() && src.matrix() && static_cast<std::int64_t>(rows->size()) == info.shape[0] &&
                        static_cast<std::int64_t>(cols->size()) == info.shape[1],
                    info.name);
    const std::int64_t in = src.shape[1], out_cols = info.shape[1];
    for (std::size_t r = 0; r < rows->size(); ++r) {
      const float* src_row = from + (*rows)[r] * in;
      float* dst_row = to + static_cast<std::int64_t>(r) * out_cols;
      for (std::size_t c = 0; c < cols->size(); ++c) dst_row[c] = src_row[(*cols)[c]];
    }
  }
  return out;
}

}  // namespace minitron
