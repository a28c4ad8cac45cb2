// Streamed loading and resume on the emulated CUDA engine (bf16 parameters, fp32 master weights
// and moments), through CudaBackend's upload as on a GPU (tests/model/streamed_loading_test_util.h).
#include <gtest/gtest.h>

#include "kernels/cuda/cuda_backend.h"
#include "tests/model/streamed_loading_test_util.h"

namespace minitron {
namespace {

TEST(CudaStreamedLoading, ShardedBf16CheckpointEqualsTheHostLoad) {
  cuda::CudaBackend backend(0);
  testing::expect_streamed_equals_host_load(backend, SafetensorsDType::BF16);
}

TEST(CudaStreamedLoading, ShardedF32CheckpointEqualsTheHostLoad) {
  cuda::CudaBackend backend(0);
  testing::expect_streamed_equals_host_load(backend, SafetensorsDType::F32);
}

TEST(CudaStreamedLoading, HoldsNoWholeModelCopyOnTheHost) {
  cuda::CudaBackend backend(0);
  testing::expect_streamed_load_holds_no_whole_copy(backend);
}

TEST(CudaStreamedLoading, TruncatedShardIsRefusedBeforeAnythingLoads) {
  cuda::CudaBackend backend(0);
  testing::expect_truncated_shard_refused_and_nothing_loaded(backend);
}

TEST(CudaStreamedLoading, TrainingStateStreamsOnlyTheRanksPart) {
  cuda::CudaBackend backend(0);
  testing::expect_training_state_part_streamed(backend, DType::BF16);
}

}  // namespace
}  // namespace minitron
