// The memory plan's arithmetic by hand for Llama-3.1-8B (DESIGN.md's memory facts: bf16 weight
// 2 B, fp32 gradient 4 B, 12 B of AdamW state sharded over the ranks), the model's static sizes
// against a real model's arenas, and the order in which the cheapest fitting change is sought.
// Measured allocations: tests/train/test_cuda_memory_plan.cpp (emulated CUDA engine).
#include <gtest/gtest.h>

#include <filesystem>

#include "kernels/make_backend.h"
#include "model/llama.h"
#include "tests/prune/prune_test_util.h"
#include "train/memory_plan.h"

namespace minitron {
namespace {

ModelConfig llama_3_1_8b() {
  return load_model_config(std::filesystem::path(MINITRON_SOURCE_DIR) / "recipes/configs/Meta-Llama-3.1-8B");
}

TEST(MemoryPlan, Llama31_8BPartsByHand) {
  TrainingShape shape;
  shape.model = llama_3_1_8b();
  shape.batch_size = 1;
  shape.sequence_length = 8192;
  shape.world_size = 8;
  shape.validation = true;
  // P = 2 x 128256 x 4096 (embedding, head) + 32 x (2 x 4096 x 4096 (q, o) + 2 x 4096 x 1024
  // (k, v) + 3 x 4096 x 14336 (MLP) + 2 x 4096 (norms)) + 4096 = 8030261248; 8 equal parts of
  // 8030261248 / 8 = 1003782656 (a multiple of 64).
  const std::int64_t P = 8030261248, part = 1003782656, N = 8192;
  const MemoryPlan last = plan_training_memory(shape, 7);
  EXPECT_EQ(last.bytes("weights"), 2 * P);
  EXPECT_EQ(last.bytes("gradients"), 4 * P);
  EXPECT_EQ(last.bytes("optimizer share"), 12 * part);
  // 33 residual streams of 4096 bf16, and per layer 3 x 4096 (two norm outputs, the residual
  // after attention) + 2 x 4096 (q, attention output) + 2 x 1024 (k, v) + 3 x 14336 (gate, up,
  // SwiGLU) bf16 values and 2 + 32 fp32 statistics (two 1/rms, one log-sum-exp per head).
  EXPECT_EQ(last.bytes("saved activations"),
            33 * N * 4096 * 2 + 32 * N * ((3 * 4096 + 2 * 4096 + 2 * 1024 + 3 * 14336) * 2 + 34 * 4));
  EXPECT_EQ(last.bytes("recompute workspace"), 0);
  // 2^28 / 128256 = 2093 rows, cut to 16 whole 128-row tiles: 2048 rows of bf16 logits, and
  // fp32 losses and int32 targets for all 8192 rows. Rank 7 does not validate.
  EXPECT_EQ(last.bytes("logits chunk"), 2048 * 128256 * 2 + N * 4 + N * 4);
  EXPECT_EQ(last.bytes("teacher"), 0);
  // 64 doubles of NCCL staging and the 2^24-float checkpoint window.
  EXPECT_EQ(last.bytes("communication"), 64 * 8 + (std::int64_t{1} << 24) * 4);
  EXPECT_EQ(last.bytes("cuBLASLt workspace"), 32 << 20);
  // Rank 0 validates: a second logits workspace.
  EXPECT_EQ(plan_training_memory(shape, 0).bytes("logits chunk"), 2 * last.bytes("logits chunk"));
  // On the host: a streamed load's chunk of 2^22 fp32 values and its bf16 rounding (24 MiB,
  // whatever the model's size), and the whole fp32 weights and both moments rank 0 gathers at a
  // resumable checkpoint.
  ASSERT_EQ(last.host_parts.size(), 2u);
  EXPECT_EQ(last.host_parts[0].name, "load staging");
  EXPECT_EQ(last.host_parts[0].bytes, (std::int64_t{1} << 22) * (4 + 2));
  EXPECT_EQ(last.host_parts[1].bytes, 3 * 4 * P);

  // Selective recomputation keeps neither norm output (2 x 4096 bf16 + 2 fp32 per token and
  // layer) nor the SwiGLU product (14336 bf16): those live in one layer's workspace instead.
  shape.recompute = ActivationRecompute::Selective;
  const MemoryPlan selective = plan_training_memory(shape, 7);
  EXPECT_EQ(last.bytes("saved activations") - selective.bytes("saved activations"),
            32 * N * ((2 * 4096 + 14336) * 2 + 2 * 4));
  EXPECT_EQ(selective.bytes("recompute workspace"), N * ((2 * 4096 + 14336) * 2 + 2 * 4));
  // Full keeps each layer's input only (the residual stream).
  shape.recompute = ActivationRecompute::Full;
  EXPECT_EQ(plan_training_memory(shape, 7).bytes("saved activations"), 33 * N * 4096 * 2);
}

// Distillation of Llama-3.1-8B into the width-pruned 4.5B student (hidden 3072, MLP 9216, heads
// and layers kept), 8 ranks, 8192 tokens: the teacher holds its bf16 weights, no gradient or
// optimizer state, and one layer's activations; the logits chunk is the student's and the
// teacher's, with or without hard labels.
TEST(MemoryPlan, Distillation8BInto4BPartsByHand) {
  TrainingShape shape;
  shape.teacher = llama_3_1_8b();
  shape.model = *shape.teacher;
  shape.model.hidden_size = 3072;
  shape.model.intermediate_size = 9216;
  shape.batch_size = 1;
  shape.sequence_length = 8192;
  shape.world_size = 8;
  const std::int64_t P = 8030261248, N = 8192;
  const MemoryPlan plan = plan_training_memory(shape, 7);
  // Two residual streams, the final norm's output (bf16) and 1/rms (fp32); RoPE's 64 fp32
  // inverse frequencies, int32 tokens and positions. One layer: the attention half 4096 (norm) +
  // 2 x 4096 (q, head outputs) + 2 x 1024 (k, v) = 14336 bf16 values per token, the MLP half
  // 2 x 14336 (the fused gate|up) + 14336 (the norm's 4096, then SwiGLU's product over it) =
  // 43008, one region of the larger; 1 + 32 fp32 statistics (1/rms, one log-sum-exp per head).
  // Every view is a whole number of 256-byte blocks at 8192 tokens.
  EXPECT_EQ(plan.bytes("teacher"), 2 * P + N * (3 * 4096 * 2 + 4) + 64 * 4 + 2 * N * 4 + N * 43008 * 2 + N * 33 * 4);
  // 2048 rows of bf16 logits each for the student and the teacher; fp32 losses of two terms (KL
  // and cross-entropy) and int32 targets for all 8192 rows.
  const std::int64_t logits = 2 * 2048 * 128256 * 2 + 2 * N * 4 + N * 4;
  EXPECT_EQ(plan.bytes("logits chunk"), logits);
  // The teacher's buffers are under 6% of its weights (0.84 GiB beside 14.96; a layer's slots
  // each in a buffer of their own made them 1.19 GiB, 8%).
  EXPECT_LT(plan.bytes("teacher") - 2 * P, 2 * P * 6 / 100);
}

// The figures: the width recipe's correction (8 ranks, 8192 tokens) needs about 100 GB
// per GPU without recomputation and does not fit 80 GiB; with full recomputation it does.
TEST(MemoryPlan, TheCheapestFittingChangeComesInOrder) {
  TrainingShape shape;
  shape.model = llama_3_1_8b();
  shape.batch_size = 1;
  shape.sequence_length = 8192;
  shape.world_size = 8;
  const std::int64_t gpu = std::int64_t{80} << 30;
  const MemoryPlan none = plan_training_memory(shape);
  EXPECT_GT(none.peak(), std::int64_t{95'000'000'000});
  EXPECT_LT(none.peak(), std::int64_t{105'000'000'000});
  EXPECT_FALSE(fits(none, gpu));
  // ZeRO-2 first: the gradient becomes rank 7's part, 4 x 1003782656 bytes instead of 4 x P (32
  // GB less), plus the bucket arena: the largest two buckets in a row of backward's order, the
  // head (128256 x 4096) and the final norm (4096) with layer 31 (every layer is a bucket of its
  // own: 4096 x (4096 + 2 x 1024 + 4096 + 3 x 14336) + 2 x 4096 = 218112000): about 75 GB, which fits.
  EXPECT_EQ(fitting_change(shape, gpu), "--zero-stage 2");
  shape.zero_stage = 2;
  const MemoryPlan zero2 = plan_training_memory(shape);
  EXPECT_EQ(zero2.bytes("gradients"), 4 * std::int64_t{1003782656});
  EXPECT_EQ(zero2.bytes("communication"),
            64 * 8 + (std::int64_t{1} << 24) * 4 + (std::int64_t{128256} * 4096 + 4096 + 218112000) * 4);
  EXPECT_EQ(none.peak() - zero2.peak(), none.bytes("gradients") + none.bytes("communication") -
                                            zero2.bytes("gradients") - zero2.bytes("communication"));
  EXPECT_TRUE(fits(zero2, gpu));
  // With ZeRO-1 kept, selective (about 88 GB) is not enough; full is.
  shape.zero_stage = 1;
  TrainingShape zero1 = shape;
  zero1.recompute = ActivationRecompute::Selective;
  EXPECT_FALSE(fits(plan_training_memory(zero1), gpu));
  zero1.recompute = ActivationRecompute::Full;
  EXPECT_TRUE(fits(plan_training_memory(zero1), gpu));
  // On one rank no recompute mode helps (134.6 GiB of parameter state): the fewest ranks that
  // fit at full recomputation, with ZeRO-2 (the default on several). 2 ranks: 2 + (4 + 12) / 2
  // = 10 bytes x P = 74.8 GiB of state plus 3.9 GiB of slots and about 6 GiB of activations and
  // buffers is over 78 GiB; 3: 7.3 bytes x P = 54.8 GiB fits.
  shape.recompute = ActivationRecompute::Full;
  shape.world_size = 1;
  EXPECT_EQ(fitting_change(shape, gpu),
            "3 ranks (data-parallel, ZeRO-2: optimizer state and gradients sharded over them)");
  // A model whose state fits but whose activations do not: the longest sequence that fits.
  TrainingShape tiny;
  tiny.model = testing::tiny_config();
  tiny.model.max_position_embeddings = 1 << 20;
  tiny.batch_size = 64;
  tiny.sequence_length = 1 << 20;
  tiny.recompute = ActivationRecompute::Full;
  const std::string change = fitting_change(tiny, gpu);
  ASSERT_EQ(change.rfind("--sequence-length ", 0), 0u) << change;
  const std::int64_t longest = std::stoll(change.substr(18));
  tiny.sequence_length = longest;
  EXPECT_TRUE(fits(plan_training_memory(tiny), gpu));
  tiny.sequence_length = longest + 1;
  EXPECT_FALSE(fits(plan_training_memory(tiny), gpu));
}

// LlamaModel::memory (what the plan adds up) against the arenas a model really allocates, on
// the CPU engine (fp32 activations and gradients), in every recompute mode.
TEST(MemoryPlan, ModelMemoryMatchesTheArenas) {
  const ModelConfig config = testing::tiny_config();
  auto cpu = make_backend("cpu");
  for (ActivationRecompute mode :
       {ActivationRecompute::None, ActivationRecompute::Selective, ActivationRecompute::Full}) {
    LlamaModel model(config, *cpu, 3, 16, ModelMode::Training, mode);
    const ModelMemory memory =
        LlamaModel::memory(config, cpu->activation_dtype(), cpu->gradient_dtype(), 3, 16, ModelMode::Training, mode);
    const ActivationArenaBytes arenas = model.activation_arena_bytes();
    EXPECT_EQ(memory.saved_activations, arenas.saved) << activation_recompute_name(mode);
    EXPECT_EQ(memory.recompute_workspace, arenas.workspace) << activation_recompute_name(mode);
    EXPECT_EQ(memory.weights, model.parameters().bytes());
    EXPECT_EQ(memory.gradients, model.gradients().bytes());
  }
  // Inference (a distillation's teacher): weights only, one layer's region; 15 rows, so that the
  // region's views start on rounded offsets.
  LlamaModel teacher(config, *cpu, 3, 5, ModelMode::Inference);
  const ModelMemory memory =
      LlamaModel::memory(config, cpu->activation_dtype(), cpu->gradient_dtype(), 3, 5, ModelMode::Inference);
  const ActivationArenaBytes arenas = teacher.activation_arena_bytes();
  EXPECT_EQ(memory.saved_activations, arenas.saved);
  EXPECT_EQ(memory.recompute_workspace, arenas.workspace);
  EXPECT_EQ(memory.weights, teacher.parameters().bytes());
  EXPECT_EQ(memory.gradients, 0);
  EXPECT_TRUE(teacher.gradients().empty());
  // ZeRO-2's part and slots (model/gradient_buckets.h) against a model built for it.
  SingleProcessCommunicator single;
  LlamaModel sharded(config, *cpu, 3, 16, ModelMode::Training, ActivationRecompute::None, {2, &single, 10000});
  const GradientBuckets::DeviceBytes bytes =
      GradientBuckets::device_bytes(sharded.table(), cpu->gradient_dtype(), 2, 10000, 1, 0);
  EXPECT_EQ(bytes.gradients, sharded.gradients().bytes());
  EXPECT_EQ(bytes.slots, (11424 + 19584) * 4);  // the largest two buckets in a row (test_zero_stage2.cpp)
}

}  // namespace
}  // namespace minitron
