// A whole training step of a tiny Llama (forward, chunked cross-entropy, backward, AdamW) on the
// emulated CUDA engine (bf16 activations, fp32 gradients and master weights) against the fp32
// CPU engine, from the same bf16-representable weights; then the eval loss after the step.
// The model code is the one shared by both engines (model/llama.cpp): only the backend differs.
// Also: the parameter-state memory check a GPU run makes before it loads anything.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "core/bf16.h"
#include "kernels/make_backend.h"
#include "model/llama.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/model/inference_test_util.h"
#include "tests/model/packed_model_test_util.h"
#include "tests/model/recompute_test_util.h"
#include "tests/train/chunked_distillation_test_util.h"
#include "train/losses.h"
#include "train/memory_plan.h"
#include "train/optimizer.h"
#include "train/trainer.h"
#include "util/error.h"

namespace minitron::test {
namespace {

ModelConfig tiny_config(bool tied) {
  ModelConfig c;
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;  // groups of 2 query heads
  c.head_dim = 16;
  c.rope_theta = 10000.0;
  c.rope_scaling.type = RopeScaling::Type::Llama3;
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = tied;
  c.max_position_embeddings = 64;
  return c;
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(b[i]) * b[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-300));
}

std::vector<float> part(const std::vector<float>& all, const ParamInfo& info) {
  return {all.begin() + info.offset, all.begin() + info.offset + info.numel};
}

class CudaTrainingStep : public ::testing::TestWithParam<bool> {};

TEST_P(CudaTrainingStep, MatchesCpuEngine) {
  const ModelConfig config = tiny_config(GetParam());
  const std::int64_t B = 2, T = 9, N = B * T;
  auto cpu = make_backend("cpu");
  auto gpu = make_cuda_backend();
  LlamaModel cpu_model(config, *cpu, B, T, ModelMode::Training);
  LlamaModel gpu_model(config, *gpu, B, T, ModelMode::Training);
  std::vector<float> init(static_cast<std::size_t>(cpu_model.table().total_numel()));
  // std 0.2: attention far from uniform, so every path carries gradient.
  initialize_parameters(config, cpu_model.table(), init, /*seed=*/11, /*std=*/0.2);
  for (float& w : init) w = round_to_bf16(w);  // both engines start from the same values
  cpu_model.set_parameters(init);
  gpu_model.set_parameters(init);

  std::vector<std::int32_t> inputs(N), targets(N);
  for (std::int64_t i = 0; i < N; ++i) {
    inputs[i] = static_cast<std::int32_t>((i * 37 + 5) % config.vocab_size);
    targets[i] = static_cast<std::int32_t>((i * 53 + 2) % config.vocab_size);
  }
  targets[4] = -1;                                                         // an ignored position
  LossWorkspace cpu_ws(*cpu, config.vocab_size, N, /*rows_per_chunk=*/5);  // several chunks
  LossWorkspace gpu_ws(*gpu, config.vocab_size, N, 5);
  OptimizerConfig oc;
  oc.learning_rate =
      1e-3;  // a typical fine-tuning rate: one step changes the loss by a few percent
  oc.warmup_steps = 0;
  oc.total_steps = 10;
  AdamW cpu_opt(cpu_model, oc), gpu_opt(gpu_model, oc);

  auto train_step = [&](LlamaModel& model, LossWorkspace& ws, AdamW& opt, std::vector<float>& grads,
                        double& grad_norm) {
    model.zero_gradients();
    model.forward(inputs, B, T);
    const double loss = cross_entropy_loss(model, targets, ws, 1.0f);
    model.backward();
    grads.resize(init.size());
    model.backend().download(grads.data(), model.gradients());
    grad_norm = opt.step(0).grad_norm;
    return loss;
  };
  std::vector<float> cpu_grads, gpu_grads;
  double cpu_norm = 0, gpu_norm = 0;
  const double cpu_loss = train_step(cpu_model, cpu_ws, cpu_opt, cpu_grads, cpu_norm);
  const double gpu_loss = train_step(gpu_model, gpu_ws, gpu_opt, gpu_grads, gpu_norm);

  // The loss (~4.6 nats) through two layers of bf16 activations: each stored activation is off
  // by up to 2^-9 of itself, ~20 roundings deep, so logits move by ~1e-2 of their spread and
  // the loss by well under 1e-2 relative.
  EXPECT_NEAR(gpu_loss, cpu_loss, 1e-2 * cpu_loss);
  // Gradients pass through the same bf16 activations and bf16 activation gradients (~40
  // roundings from the loss back to the embedding): a few percent normwise per tensor.
  for (const ParamInfo& info : cpu_model.table().entries()) {
    if (GetParam() && info.name == "lm_head.weight") continue;  // tied: no separate tensor
    const double err = relative_error(part(gpu_grads, info), part(cpu_grads, info));
    EXPECT_LT(err, 5e-2) << info.name;
  }
  EXPECT_NEAR(gpu_norm, cpu_norm, 2e-2 * cpu_norm);

  // The update itself: the CUDA engine's fp32 master weights against the CPU engine's fp32
  // parameters. Adam's first step moves each weight by about lr * sign(g), so the updates agree
  // except where |g| is below the gradient error (<= 5e-2 of the rms, bound above) and the sign
  // can flip: for roughly Gaussian gradients that is ~0.8 * 5e-2 of the elements, half of them
  // flipping, each contributing (2 lr)^2 against lr^2 per element: normwise ~2 sqrt(0.02) = 0.28.
  std::vector<float> cpu_after(init.size());
  cpu_model.get_parameters(cpu_after);
  const std::vector<float> gpu_master = gpu_opt.gather_weights();
  ASSERT_EQ(gpu_master.size(), init.size());
  std::vector<float> cpu_update(init.size()), gpu_update(init.size());
  for (std::size_t i = 0; i < init.size(); ++i) {
    cpu_update[i] = cpu_after[i] - init[i];
    gpu_update[i] = gpu_master[i] - init[i];
  }
  const double update_error = relative_error(gpu_update, cpu_update);
  EXPECT_LT(update_error, 0.3);

  // Both engines now evaluate the same bf16-rounded weights (the CUDA engine's parameters are
  // its master rounded to bf16, and an update of lr = 1e-3 is about one bf16 ulp of a 0.2
  // weight, so comparing with unrounded fp32 weights would measure that rounding, not the
  // engine): the eval loss then agrees within the bf16 forward margin above.
  std::vector<float> cpu_rounded = cpu_after;
  for (float& w : cpu_rounded) w = round_to_bf16(w);
  cpu_model.set_parameters(cpu_rounded);
  cpu_model.forward(inputs, B, T);
  gpu_model.forward(inputs, B, T);
  const double cpu_eval = cross_entropy_loss(cpu_model, targets, cpu_ws);
  const double gpu_eval = cross_entropy_loss(gpu_model, targets, gpu_ws);
  EXPECT_LT(cpu_eval, cpu_loss);
  EXPECT_LT(gpu_eval, gpu_loss);
  EXPECT_NEAR(gpu_eval, cpu_eval, 1e-2 * cpu_eval);
  std::printf(
      "loss cpu %.6f gpu %.6f, eval after step cpu %.6f gpu %.6f, grad norm %.5f / %.5f, "
      "update error %.4f\n",
      cpu_loss, gpu_loss, cpu_eval, gpu_eval, cpu_norm, gpu_norm, update_error);
}

INSTANTIATE_TEST_SUITE_P(Head, CudaTrainingStep, ::testing::Values(false, true),
                         [](const auto& info) {
                           return std::string(info.param ? "tied" : "untied");
                         });

// Activation recomputation on the CUDA engine (bf16 activations, fp32 statistics): gradients
// bit-identical to keeping every activation, also at a width whose rows start off a 16-byte
// pack boundary (hidden 36: the norm kernels then split rows into head, packs and tail, and the
// recomputed norm must split them as forward's fused residual norm did).
TEST(CudaActivationRecompute, GradientsBitIdentical) {
  auto gpu = make_cuda_backend();
  for (const std::int64_t hidden : {64, 36}) {
    SCOPED_TRACE(hidden);
    ModelConfig config = tiny_config(false);
    config.hidden_size = hidden;
    expect_recompute_bit_identical(*gpu, config);
  }
  // bf16 activations (2 bytes), fp32 statistics (4): Selective recomputes 2 D + F activations
  // and 2 statistics per token.
  const ModelConfig c = tiny_config(false);
  const std::int64_t N = 2 * 9;
  const ActivationArenaBytes bytes =
      LlamaModel(c, *gpu, 2, 9, ModelMode::Training, ActivationRecompute::Selective)
          .activation_arena_bytes();
  EXPECT_EQ(bytes.workspace, N * ((2 * c.hidden_size + c.intermediate_size) * 2 + 2 * 4));
}

// The Inference forward on the CUDA engine (bf16 activations, fp32 statistics, tensor-core GEMMs
// and attention): the same bits as the Training forward, at a width whose bf16 rows are not a
// multiple of 256 bytes (hidden 36) and at one that is (64).
TEST(CudaInferenceForward, MatchesTrainingForward) {
  auto gpu = make_cuda_backend();
  for (const std::int64_t hidden : {64, 36}) {
    SCOPED_TRACE(hidden);
    ModelConfig config = tiny_config(false);
    config.hidden_size = hidden;
    expect_inference_matches_training(*gpu, config);
  }
}

// Distillation on the CUDA engine (bf16 logits): a teacher of 2 layers, a narrower student of 1.
ModelConfig distillation_student() {
  ModelConfig c = tiny_config(false);
  c.hidden_size = 48;
  c.intermediate_size = 64;
  c.num_hidden_layers = 1;
  return c;
}

// The head's gradient and the loss of the chunked KL and mixed loss against the full logits in
// double (tests/train/chunked_distillation_test_util.h). The dlogits are bf16: the KL's and the
// CE's each rounded (2^-9 relative), their sum rounded again (2^-9 of at most both terms'
// magnitudes), summed in fp32 by the GEMM over the same bf16 hidden state the reference reads:
// 2^-8 of the terms' magnitudes at most, 2^-7 allowed.
TEST(CudaDistillation, HeadGradientCoversEveryRow) {
  auto gpu = make_cuda_backend();
  testing::expect_head_gradient_covers_every_row(*gpu, tiny_config(false), distillation_student(),
                                                 1.0 / 128);
}

// The mixed loss's cross-entropy on the student's logits formed again by the same cuBLASLt plan
// in the teacher's chunk buffer: the same bits as on a copy of them.
TEST(CudaDistillation, MixedLossMatchesTheCopyFormulation) {
  auto gpu = make_cuda_backend();
  testing::expect_mixed_loss_matches_copy_formulation(*gpu, tiny_config(false),
                                                      distillation_student());
}

// Packed documents through the whole model on the CUDA engine (bf16 activations, tensor-core
// attention): the packed batch against each document alone (tests/model/packed_model_test_util.h),
// and recomputation with positions bit-identical to keeping every activation. Both runs round
// the same values to bf16 with tiles falling elsewhere (P to 2^-8 against other running maxima,
// every stored activation to 2^-9), so an element can differ by a few such roundings carried
// through the two layers and the head: 4 x 2^-8 of the largest logit, 8 x 2^-8 of the largest
// gradient (gradients pass through twice as many rounded products).
TEST(CudaPackedDocuments, MatchEachDocumentAloneAndRecompute) {
  auto gpu = make_cuda_backend();
  expect_packed_model_matches_documents_alone(*gpu, 4.0 / 256, 8.0 / 256);
  expect_recompute_bit_identical(*gpu, tiny_config(false), /*packed=*/true);
}

// The memory plan against the device's memory: the emulated runtime's cudaMemGetInfo reports
// 80 GiB (emu/cuda_runtime.cpp); train/memory_plan.h's parts are checked by hand in
// tests/train/test_memory_plan.cpp and against measured allocations in test_cuda_memory_plan.cpp.
TEST(CudaTrainingMemory, RefusesARunBeyondTheDevice) {
  Device device;
  Backend& gpu = device.backend();
  auto cpu = make_backend("cpu");
  // bf16 weight 2 + fp32 gradient 4 + two fp32 moments 8 + fp32 master 4; fp32 on the CPU: 4 + 4
  // + 8. Data-parallel ranks each hold 1/world of the 12 bytes of AdamW state (ZeRO stage 1).
  EXPECT_EQ(AdamW::state_bytes_per_parameter(gpu), 18);
  EXPECT_EQ(AdamW::state_bytes_per_parameter(*cpu), 16);
  EXPECT_EQ(AdamW::state_bytes_per_parameter(gpu, 8), 7.5);
  // Llama-3.1-8B at 8192 tokens on one rank: 8030261248 x 18 bytes = 134.6 GiB of parameter
  // state alone (2P = 15.0 GiB of weights, 4P = 29.9 of gradients, 12P = 89.7 of AdamW state);
  // refused, naming the parts and the device; no recompute mode alone helps, more ranks do.
  TrainingShape shape;
  shape.model = load_model_config(std::filesystem::path(MINITRON_SOURCE_DIR) /
                                  "recipes/configs/Meta-Llama-3.1-8B");
  shape.batch_size = 1;
  shape.sequence_length = 8192;
  try {
    check_training_memory(shape, gpu, "--device cuda");
    ADD_FAILURE() << "an 8B training run passed on an 80 GiB device";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("weights 15.0 GiB, gradients 29.9 GiB, optimizer share 89.7 GiB"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("the device has 80.0 GiB"), std::string::npos) << message;
    // 3 ranks at full recomputation with ZeRO-2 (their default): 2 + (4 + 12)/3 = 7.3 bytes x P
    // = 54.8 GiB of state plus two 3.9 GiB bucket slots; 2 ranks' 10 bytes x P = 74.8 GiB is too
    // much.
    EXPECT_NE(
        message.find(
            "3 ranks (data-parallel, ZeRO-2: optimizer state and gradients sharded over them) with "
            "--recompute full"),
        std::string::npos)
        << message;
  }
  // A tiny model fits; the CPU engine states no limit, so nothing is refused there.
  TrainingShape tiny;
  tiny.model = tiny_config(false);
  tiny.batch_size = 2;
  tiny.sequence_length = 8;
  EXPECT_NO_THROW(check_training_memory(tiny, gpu, "--device cuda"));
  EXPECT_NO_THROW(check_training_memory(shape, *cpu, "--device cpu"));
}

}  // namespace
}  // namespace minitron::test
