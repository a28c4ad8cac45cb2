#include "model/parameters.h"

#include <gtest/gtest.h>

#include "tests/model/model_configs.h"
#include "util/error.h"

namespace minitron {
namespace {

using nlohmann::json;
namespace tc = test_configs;

ModelConfig parse(const char* text) { return parse_model_config(json::parse(text)); }

TEST(ParameterTable, OrderShapesKindsOffsets) {
  ModelConfig c = parse(tc::kMistralNemo12B);
  ParameterTable t(c);
  const auto& e = t.entries();
  ASSERT_EQ(e.size(), 1u + 40u * 9u + 2u);
  EXPECT_EQ(e[0].name, "model.embed_tokens.weight");
  EXPECT_EQ(e[0].shape, (std::vector<std::int64_t>{131072, 5120}));
  EXPECT_EQ(e[0].kind, ParamKind::Embedding);
  EXPECT_EQ(e[0].offset, 0);
  const char* layer_names[] = {"input_layernorm.weight",  "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                               "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
                               "mlp.gate_proj.weight",    "mlp.up_proj.weight",      "mlp.down_proj.weight"};
  // [out, in] shapes with q_dim 4096 != hidden 5120, so a swapped convention would show.
  const std::vector<std::vector<std::int64_t>> layer_shapes = {{5120},        {4096, 5120},  {1024, 5120},
                                                               {1024, 5120},  {5120, 4096},  {5120},
                                                               {14336, 5120}, {14336, 5120}, {5120, 14336}};
  const ParamKind layer_kinds[] = {ParamKind::Norm,      ParamKind::Attention, ParamKind::Attention,
                                   ParamKind::Attention, ParamKind::Attention, ParamKind::Norm,
                                   ParamKind::Mlp,       ParamKind::Mlp,       ParamKind::Mlp};
  std::int64_t expected_offset = 131072LL * 5120;
  for (int layer = 0; layer < 40; ++layer) {
    for (int k = 0; k < 9; ++k) {
      const ParamInfo& p = e[1 + layer * 9 + k];
      EXPECT_EQ(p.name, "model.layers." + std::to_string(layer) + "." + layer_names[k]);
      EXPECT_EQ(p.shape, layer_shapes[k]);
      EXPECT_EQ(p.kind, layer_kinds[k]);
      EXPECT_EQ(p.layer, layer);
      EXPECT_EQ(p.offset, expected_offset);
      std::int64_t numel = 1;
      for (auto d : layer_shapes[k]) numel *= d;
      EXPECT_EQ(p.numel, numel);
      expected_offset += numel;
    }
    const LayerOffsets& l = t.layer(layer);
    EXPECT_EQ(l.input_layernorm, e[1 + layer * 9 + 0].offset);
    EXPECT_EQ(l.q_proj, e[1 + layer * 9 + 1].offset);
    EXPECT_EQ(l.k_proj, e[1 + layer * 9 + 2].offset);
    EXPECT_EQ(l.v_proj, e[1 + layer * 9 + 3].offset);
    EXPECT_EQ(l.o_proj, e[1 + layer * 9 + 4].offset);
    EXPECT_EQ(l.post_attention_layernorm, e[1 + layer * 9 + 5].offset);
    EXPECT_EQ(l.gate_proj, e[1 + layer * 9 + 6].offset);
    EXPECT_EQ(l.up_proj, e[1 + layer * 9 + 7].offset);
    EXPECT_EQ(l.down_proj, e[1 + layer * 9 + 8].offset);
  }
  EXPECT_EQ(e[361].name, "model.norm.weight");
  EXPECT_EQ(e[361].kind, ParamKind::Norm);
  EXPECT_EQ(e[361].offset, expected_offset);
  EXPECT_EQ(t.final_norm(), expected_offset);
  EXPECT_EQ(e[362].name, "lm_head.weight");
  EXPECT_EQ(e[362].kind, ParamKind::Head);
  EXPECT_EQ(e[362].shape, (std::vector<std::int64_t>{131072, 5120}));
  EXPECT_EQ(t.lm_head(), expected_offset + 5120);
  EXPECT_EQ(t.total_numel(), expected_offset + 5120 + 131072LL * 5120);
  EXPECT_EQ(t.num_layers(), 40);
  EXPECT_EQ(t.num_layers(), 40);
  EXPECT_EQ(&t.at("model.layers.7.mlp.up_proj.weight"), &e[1 + 7 * 9 + 7]);
  EXPECT_EQ(t.find("model.layers.40.mlp.up_proj.weight"), nullptr);
  EXPECT_THROW(t.at("lm_head.bias"), Error);
  EXPECT_STREQ(param_kind_name(ParamKind::Mlp), "mlp");
}

TEST(ParameterTable, TiedHeadSharesTheEmbedding) {
  ParameterTable t(parse(tc::kLlama32_1B));
  EXPECT_EQ(t.find("lm_head.weight"), nullptr);
  EXPECT_EQ(t.lm_head(), t.embed_tokens());
  EXPECT_EQ(t.entries().back().name, "model.norm.weight");
}

// Published parameter counts (model cards / HF "num_parameters"), not derived from the code.
TEST(CountModel, PublishedTotals) {
  EXPECT_EQ(count_model(parse(tc::kLlama31_8B), 4096).total_params, 8'030'261'248);
  EXPECT_EQ(count_model(parse(tc::kMistralNemo12B), 4096).total_params, 12'247'782'400);
  EXPECT_EQ(count_model(parse(tc::kLlama2_7B), 4096).total_params, 6'738'415'616);
  EXPECT_EQ(count_model(parse(tc::kMistral7B_v03), 4096).total_params, 7'248'023'552);
  EXPECT_EQ(count_model(parse(tc::kLlama32_1B), 4096).total_params, 1'235'814'400);  // tied: counted once
}

TEST(CountModel, NonEmbeddingAndFlops) {
  // Llama-3.1-8B by hand: embedding = head = 128256 * 4096 = 525,336,576.
  ModelConfig c = parse(tc::kLlama31_8B);
  ModelCounts n = count_model(c, 8192);
  EXPECT_EQ(n.non_embedding_params, 8'030'261'248 - 2 * 525'336'576);
  // Matmul weights: per layer q,o 4096^2, k,v 1024*4096, gate/up/down 3*14336*4096 = 218,103,808;
  // 32 layers + head 525,336,576 = 7,504,658,432. Attention: 4 * 32 * 4096 * 8192.
  const double matmul = 32.0 * 218'103'808 + 525'336'576;
  const double expected = 2 * matmul + 4.0 * 32 * 4096 * 8192;
  EXPECT_EQ(n.forward_flops_per_token, expected);  // integers below 2^53: exact in double
  EXPECT_EQ(n.training_flops_per_token, 3 * expected);

  // Tied: the head is a matmul even though its weights are the embedding's.
  ModelConfig tied = parse(tc::kLlama32_1B);
  ModelCounts t = count_model(tied, 1);
  EXPECT_EQ(t.non_embedding_params, 1'235'814'400 - 262'668'288);
  const double tied_matmul = 16.0 * (2 * 2048.0 * 2048 + 2 * 512.0 * 2048 + 3 * 8192.0 * 2048) + 128256.0 * 2048;
  EXPECT_EQ(t.forward_flops_per_token, 2 * tied_matmul + 4.0 * 16 * 2048 * 1);
}

}  // namespace
}  // namespace minitron
