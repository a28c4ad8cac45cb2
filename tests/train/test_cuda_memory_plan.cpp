// The memory plan (train/memory_plan.h) against what the emulated CUDA engine really allocates:
// the emulator counts every byte cudaMalloc hands a host thread (emu::thread_device_memory), and
// each rank of a run is one thread, so a rank's high-water mark over a whole run (construction,
// training steps, validation, the final checkpoint's gather) is measured directly. The issue asks
// for the predicted peak within 5% of the measured one; on the emulator the plan is byte-exact,
// and the test asserts that, so that any part left out of the plan (or any allocation added to
// the engine without it) fails here, however small.
#include <gtest/gtest.h>

#include <thread>

#include "data/shards.h"
#include "dist/make_nccl_communicator.h"
#include "emu/emulator.h"
#include "kernels/cuda/cuda_backend.h"
#include "model/llama.h"
#include "tests/dist/tcp_test_util.h"
#include "tests/prune/prune_test_util.h"
#include "tests/train/data_parallel_test_util.h"
#include "train/distill.h"
#include "train/hidden_state_loss.h"
#include "train/losses.h"
#include "train/memory_plan.h"
#include "train/trainer.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;

// A model whose parts are each visible in the total: a 512-token vocabulary makes the logits
// chunk about a tenth of the model-dependent bytes; head_dim 16 is one the CUDA attention takes.
ModelConfig student_config() {
  ModelConfig c = testing::tiny_config();
  c.vocab_size = 512;
  c.head_dim = 16;
  c.num_hidden_layers = 2;
  return c;
}

ModelConfig teacher_config() {
  ModelConfig c = student_config();
  c.hidden_size = 48;
  c.intermediate_size = 64;
  c.num_hidden_layers = 3;
  return c;
}

struct PlannedRun {
  TrainingShape shape;
  float hard_label_weight = 0;
  float intermediate_weight = 0;
};

// One rank's whole run on its own thread; returns the most device memory it held at once.
std::int64_t measure_rank(const PlannedRun& run, const TrainOptions& base, std::int64_t rank, int port) {
  const emu::DeviceMemoryUse before = emu::thread_device_memory();
  emu::reset_thread_device_memory_peak();  // a thread id may be reused: count from here
  {
    const TrainingShape& s = run.shape;
    cuda::CudaBackend backend(0);
    // The communicator first: a ZeRO-2 model keeps its part of the gradient by it.
    std::unique_ptr<TcpGroup> bootstrap;
    std::unique_ptr<Communicator> communicator = std::make_unique<SingleProcessCommunicator>();
    if (s.world_size > 1) {
      bootstrap = std::make_unique<TcpGroup>(testing::local_environment(rank, s.world_size, port));
      communicator = make_nccl_communicator(backend, *bootstrap);
    }
    GradientSharding sharding;
    sharding.stage = s.zero_stage;
    sharding.communicator = communicator.get();
    LlamaModel model(s.model, backend, s.batch_size, s.sequence_length, ModelMode::Training, s.recompute, sharding);
    model.set_parameters(testing::tiny_parameters(s.model, 3));
    TrainOptions o = base;
    o.batch_size = s.batch_size;
    o.sequence_length = s.sequence_length;
    o.recompute = s.recompute;
    o.zero_stage = s.zero_stage;
    std::unique_ptr<LlamaModel> teacher;
    std::unique_ptr<HiddenStateDistillation> hidden_states;
    std::unique_ptr<Objective> objective;
    const std::int64_t N = s.batch_size * s.sequence_length;
    LossWorkspace workspace(backend, s.model.vocab_size, N, s.loss_chunk_rows, s.teacher.has_value());
    if (s.teacher) {
      teacher =
          std::make_unique<LlamaModel>(*s.teacher, backend, s.batch_size, s.sequence_length, ModelMode::Inference);
      teacher->set_parameters(testing::tiny_parameters(*s.teacher, 5));
      if (run.intermediate_weight > 0)
        hidden_states = std::make_unique<HiddenStateDistillation>(
            backend, s.model, *s.teacher,
            default_layer_mapping(s.model.num_hidden_layers, s.teacher->num_hidden_layers), N, 11);
      objective = std::make_unique<TeacherDistillationObjective>(*teacher, workspace, 1.0f, run.hard_label_weight,
                                                                 hidden_states.get(), run.intermediate_weight);
    } else {
      objective = std::make_unique<CrossEntropyObjective>(workspace);
    }
    run_training(model, *objective, o, *communicator);
  }
  const emu::DeviceMemoryUse after = emu::thread_device_memory();
  EXPECT_EQ(after.current, before.current) << "rank " << rank << " left device memory allocated";
  return static_cast<std::int64_t>(after.peak - before.current);
}

// Every rank's measured peak against the plan of that rank.
void check_run(const PlannedRun& run, const std::string& name) {
  testing::TempDir dir;
  write_shard(dir / "train.bin", testing::tiny_tokens(2000, run.shape.model.vocab_size, 4));
  TrainOptions o = testing::data_parallel_options(dir / "train.bin");
  o.steps = 2;
  o.validation_shards = {dir / "train.bin"};
  o.eval_windows = 1;
  o.output = dir / "out";
  TrainingShape shape = run.shape;
  shape.validation = true;
  const std::int64_t world = shape.world_size;
  std::vector<std::int64_t> measured(static_cast<std::size_t>(world));
  const int port = world > 1 ? testing::free_tcp_port() : 0;
  const auto errors = testing::run_ranks(
      world, [&](std::int64_t rank) { measured[static_cast<std::size_t>(rank)] = measure_rank(run, o, rank, port); });
  ASSERT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world))) << name;
  std::int64_t highest = 0;
  for (std::int64_t rank = 0; rank < world; ++rank) {
    const MemoryPlan plan = plan_training_memory(shape, rank);
    const std::int64_t got = measured[static_cast<std::size_t>(rank)];
    highest = std::max(highest, got);
    std::string parts;
    for (const MemoryPart& p : plan.parts) parts += str(" ", p.name, "=", p.bytes);
    // The bound: within 5% of the measured high-water mark.
    EXPECT_LE(std::abs(plan.peak() - got), got / 20) << name << " rank " << rank << ":" << parts;
    // Byte-exact on the emulator (it counts requested bytes, as the plan does).
    EXPECT_EQ(plan.peak(), got) << name << " rank " << rank << ":" << parts;
  }
  EXPECT_EQ(plan_training_memory(shape).peak(), highest) << name << ": the plan of the fullest rank";
}

class CudaMemoryPlan : public ::testing::TestWithParam<std::tuple<ActivationRecompute, std::int64_t>> {};

TEST_P(CudaMemoryPlan, CrossEntropyPeakIsTheMeasuredOne) {
  const auto [recompute, world] = GetParam();
  PlannedRun run;
  run.shape.model = student_config();
  run.shape.batch_size = 2;
  run.shape.sequence_length = 32;
  run.shape.recompute = recompute;
  run.shape.world_size = world;
  check_run(run, str("cross-entropy, ", activation_recompute_name(recompute), ", ", world, " ranks"));
}

INSTANTIATE_TEST_SUITE_P(EveryModeAndRankCount, CudaMemoryPlan,
                         ::testing::Combine(::testing::Values(ActivationRecompute::None, ActivationRecompute::Selective,
                                                              ActivationRecompute::Full),
                                            ::testing::Values(1, 2, 3)),
                         [](const auto& info) {
                           return str(activation_recompute_name(std::get<0>(info.param)), "_", std::get<1>(info.param),
                                      "_ranks");
                         });

// ZeRO-2: this rank's part of the gradient and the bucket slots instead of the whole gradient.
class CudaMemoryPlanZeroStage2 : public ::testing::TestWithParam<std::int64_t> {};

TEST_P(CudaMemoryPlanZeroStage2, CrossEntropyPeakIsTheMeasuredOne) {
  const std::int64_t world = GetParam();
  PlannedRun run;
  run.shape.model = student_config();
  run.shape.batch_size = 2;
  run.shape.sequence_length = 32;
  run.shape.zero_stage = 2;
  run.shape.world_size = world;
  check_run(run, str("cross-entropy, ZeRO-2, ", world, " ranks"));
}

INSTANTIATE_TEST_SUITE_P(EveryRankCount, CudaMemoryPlanZeroStage2, ::testing::Values(1, 2, 3),
                         [](const auto& info) { return str(info.param, "_ranks"); });

// Distillation on 1, 2 and 3 ranks: the teacher's bf16 weights and one layer's region (here the
// attention half is the larger: 8 heads of 16 against an MLP of 64), the teacher's logits chunk,
// with the mixed loss nothing more (its cross-entropy reuses the teacher's chunk), and the
// intermediate-state loss's buffers (a learned map: the widths differ), in 16-row loss chunks.
TEST(CudaMemoryPlanDistillation, PeakIsTheMeasuredOne) {
  for (std::int64_t world : {1, 2, 3}) {
    for (bool extras : {false, true}) {
      PlannedRun run;
      run.shape.model = student_config();
      run.shape.teacher = teacher_config();
      run.shape.batch_size = 2;
      run.shape.sequence_length = 32;
      run.shape.recompute = ActivationRecompute::Selective;
      run.shape.world_size = world;
      run.shape.zero_stage = extras ? 2 : 1;  // ZeRO-2 with the teacher too
      run.shape.loss_chunk_rows = 16;
      if (extras) {
        run.hard_label_weight = 0.5f;
        run.intermediate_weight = 1.0f;
        run.shape.intermediate_pairs = static_cast<std::int64_t>(
            default_layer_mapping(run.shape.model.num_hidden_layers, run.shape.teacher->num_hidden_layers).size());
      }
      check_run(run, str("distillation", extras ? " (hard labels, intermediate states)" : "", ", ", world, " ranks"));
    }
  }
}

}  // namespace
}  // namespace minitron
