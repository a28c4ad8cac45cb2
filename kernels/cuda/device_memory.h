// The sizes of the CUDA engine's device allocations that are not the model's tensors: the
// cuBLASLt workspace, the loss chunk, the kernels' growable scratch and NCCL's staging. Plain
// C++ (no CUDA header), so that the memory plan (train/memory_plan.h) computes them from the
// same definitions the engine allocates by, on machines without CUDA too.
#pragma once

#include <cstddef>
#include <cstdint>

namespace minitron::cuda {

// cuBLASLt's recommended workspace for Hopper-class GPUs (one per CudaContext); smaller ones
// use less of it.
inline constexpr std::int64_t kCublasWorkspaceBytes = std::int64_t{32} << 20;

// Logits per loss chunk (CudaBackend::loss_chunk_logits): 2^28 bf16 values (512 MiB per
// buffer) are about 2048 rows at vocab 128k, so the fp32 [vocab, hidden] head gradient is read
// and written once per 2048 tokens, not per 130.
inline constexpr std::int64_t kLossChunkLogits = std::int64_t{1} << 28;

// sum_of_squares reduces chunks of this many values to one partial each.
inline constexpr std::int64_t kSquaresChunk = std::int64_t{1} << 14;
// RMSNorm backward sums the weight gradient over chunks of this many rows.
inline constexpr int kRmsnormRowsPerChunk = 64;
// NcclCommunicator's device buffer for all_reduce_sum of host doubles: a few losses and counts
// per step, so it is allocated once.
inline constexpr std::int64_t kNcclStagingDoubles = 64;

// Scratch of sum_of_squares over n values: one double per chunk and the result.
inline std::int64_t sum_of_squares_workspace_doubles(std::int64_t n) {
  return (n + kSquaresChunk - 1) / kSquaresChunk + 1;
}

// Float scratch RMSNorm's backward needs for its weight-gradient partial sums.
inline std::int64_t rmsnorm_backward_workspace_floats(std::int64_t N, std::int64_t D) {
  return (N + kRmsnormRowsPerChunk - 1) / kRmsnormRowsPerChunk * D;
}

// Float scratch of the attention backward (D = rowsum(dO * O)): B * Hq * T floats.
inline std::int64_t attention_backward_workspace_floats(std::int64_t B, std::int64_t T,
                                                        std::int64_t Hq) {
  return B * Hq * T;
}

// Integer scratch of the embedding backward (kernels/embedding.cuh): the token counts and
// offsets, a radix pass's digit counts and offsets (256 per block of 256 positions) and four
// lists of N (the sorted positions, two key buffers, a second position buffer).
inline std::int64_t embedding_workspace_ints(std::int64_t N, std::int64_t vocab) {
  const std::int64_t digits = 256 * ((N + 255) / 256);
  return 2 * vocab + 1 + 2 * digits + 1 + 4 * N;
}

}  // namespace minitron::cuda
