// Streamed loading and resume on the fp32 CPU engine (tests/model/streamed_loading_test_util.h).
#include <gtest/gtest.h>

#include "kernels/cpu/cpu_backend.h"
#include "tests/model/streamed_loading_test_util.h"

namespace minitron {
namespace {

TEST(StreamedLoading, ShardedBf16CheckpointEqualsTheHostLoad) {
  CpuBackend<float> cpu;
  testing::expect_streamed_equals_host_load(cpu, SafetensorsDType::BF16);
}

TEST(StreamedLoading, ShardedF32CheckpointEqualsTheHostLoad) {
  CpuBackend<float> cpu;
  testing::expect_streamed_equals_host_load(cpu, SafetensorsDType::F32);
}

TEST(StreamedLoading, HoldsNoWholeModelCopyOnTheHost) {
  CpuBackend<float> cpu;
  testing::expect_streamed_load_holds_no_whole_copy(cpu);
}

TEST(StreamedLoading, TruncatedShardIsRefusedBeforeAnythingLoads) {
  CpuBackend<float> cpu;
  testing::expect_truncated_shard_refused_and_nothing_loaded(cpu);
}

TEST(StreamedLoading, TrainingStateStreamsOnlyTheRanksPart) {
  CpuBackend<float> cpu;
  testing::expect_training_state_part_streamed(cpu, DType::F32);
}

}  // namespace
}  // namespace minitron
