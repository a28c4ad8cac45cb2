// RoPE's counted traffic (emu/traffic.h). The rope kernel over the q and k heads of a fused q|k|v
// buffer: x is read and written once, inv_freq is staged in shared memory once per block and each
// row's position read once, so the bytes moved stay within 1.15x of the distinct bytes
// (bench/results/roofline.md's bound for a memory-bound launch; the old kernel, which re-read
// the fp32 inv_freq pack and the position for every head, moved 1.50x). And RoPE inside
// attention, the model's calls: what it saves against the separate passes.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "emu/traffic.h"
#include "kernels/attention.cuh"
#include "kernels/rope.cuh"

namespace minitron {
namespace {

template <typename T>
T* device_copy(const std::vector<T>& host) {
  void* device = nullptr;
  EXPECT_EQ(cudaMalloc(&device, host.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return static_cast<T*>(device);
}

TEST(RopeTraffic, MovesWithin115PercentOfItsDistinctBytes) {
  // Llama-3 8B's heads over 64 rows: 32 q heads and 8 k heads of 128 in rows of q|k|v.
  const std::int64_t B = 2, T = 32, hd = 128, Hq = 32, Hkv = 8;
  const std::int64_t stride = (Hq + 2 * Hkv) * hd, rows = B * T;
  cuda::bf16* x = device_copy(std::vector<cuda::bf16>(static_cast<std::size_t>(rows * stride), cuda::bf16{}));
  float* inv_freq = device_copy(std::vector<float>(hd / 2, 0.01f));
  std::vector<std::int32_t> places(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) places[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(r % T);
  std::int32_t* positions = device_copy(places);
  for (const bool packed : {false, true}) {
    emu::TrafficRecording recording;
    cuda::rope_forward(x, inv_freq, B, T, Hq + Hkv, hd, 0, nullptr, packed ? positions : nullptr, stride);
    cuda::rope_backward(x, inv_freq, B, T, Hq + Hkv, hd, 0, nullptr, packed ? positions : nullptr, stride);
    const std::vector<emu::LaunchTraffic> launches = recording.take();
    ASSERT_EQ(launches.size(), 2u);  // one launch each way over q and k together
    for (const emu::LaunchTraffic& launch : launches) {
      EXPECT_NE(launch.kernel.find("rope_kernel"), std::string::npos) << launch.kernel;
      const double moved = static_cast<double>(launch.bytes_read + launch.bytes_written);
      const double ideal = static_cast<double>(launch.distinct_bytes_read + launch.distinct_bytes_written);
      // x's q and k columns, read and written: the ideal is at least that (v is never touched).
      EXPECT_GE(ideal, 2.0 * static_cast<double>(rows * (Hq + Hkv) * hd * sizeof(cuda::bf16)));
      EXPECT_LE(moved / ideal, 1.15) << launch.kernel << (packed ? " with positions" : "");
    }
  }
  cudaFree(x);
  cudaFree(inv_freq);
  cudaFree(positions);
}

std::uint64_t bytes_moved(const std::vector<emu::LaunchTraffic>& launches) {
  std::uint64_t bytes = 0;
  for (const emu::LaunchTraffic& launch : launches) bytes += launch.bytes_read + launch.bytes_written;
  return bytes;
}

// Inside attention, RoPE moves k's bytes twice (the pass over K alone: read and written) and q's
// once (the forward writes each rotated Q tile back; its read is attention's own), and nothing in
// the backward (dQ and dK are rotated back in the rows that stage their stores). The separate
// passes moved q's and k's four times (read and written, forward and backward), so a layer's
// forward and backward move 3 q + 2 k bytes less (70% of RoPE's at Llama-3 8B's 32/8 heads).
TEST(RopeTraffic, InsideAttentionSavesThreeQAndTwoKBytesALayer) {
  const std::int64_t B = 1, T = 64, hd = 128, Hq = 32, Hkv = 8;
  const std::int64_t N = B * T, qw = Hq * hd, kvw = Hkv * hd, stride = qw + 2 * kvw;
  using cuda::bf16;
  bf16* qkv = device_copy(std::vector<bf16>(static_cast<std::size_t>(N * stride), bf16{}));
  bf16* grads = device_copy(std::vector<bf16>(static_cast<std::size_t>(N * stride), bf16{}));
  bf16* out = device_copy(std::vector<bf16>(static_cast<std::size_t>(N * qw), bf16{}));
  bf16* dout = device_copy(std::vector<bf16>(static_cast<std::size_t>(N * qw), bf16{}));
  float* lse = device_copy(std::vector<float>(static_cast<std::size_t>(B * Hq * T), 0.0f));
  float* workspace = device_copy(std::vector<float>(static_cast<std::size_t>(B * Hq * T), 0.0f));
  float* inv_freq = device_copy(std::vector<float>(hd / 2, 0.01f));
  const AttentionStrides strides{stride, stride, stride, qw, qw, stride, stride, stride};
  bf16 *q = qkv, *k = qkv + qw, *v = qkv + qw + kvw, *dq = grads, *dk = grads + qw, *dv = grads + qw + kvw;

  std::uint64_t separate = 0, inside = 0;
  {
    emu::TrafficRecording recording;
    cuda::rope_forward(q, inv_freq, B, T, Hq + Hkv, hd, 0, nullptr, nullptr, stride);
    cuda::attention_forward(out, lse, q, k, v, B, T, T, Hq, Hkv, hd, nullptr, nullptr, strides);
    cuda::attention_backward(dq, dk, dv, dout, out, lse, q, k, v, B, T, Hq, Hkv, hd, workspace, nullptr, nullptr,
                             strides);
    cuda::rope_backward(dq, inv_freq, B, T, Hq + Hkv, hd, 0, nullptr, nullptr, stride);
    separate = bytes_moved(recording.take());
  }
  {
    emu::TrafficRecording recording;
    cuda::attention_forward(out, lse, q, k, v, B, T, T, Hq, Hkv, hd, nullptr, nullptr, strides, inv_freq);
    cuda::attention_backward(dq, dk, dv, dout, out, lse, q, k, v, B, T, Hq, Hkv, hd, workspace, nullptr, nullptr,
                             strides, inv_freq);
    const std::vector<emu::LaunchTraffic> launches = recording.take();
    int rope_launches = 0;
    for (const emu::LaunchTraffic& launch : launches) {
      if (launch.kernel.find("rope_kernel") == std::string::npos) continue;
      ++rope_launches;  // the pass over K alone: k's bytes read and written, within 1.15x
      EXPECT_LE(static_cast<double>(launch.bytes_read + launch.bytes_written), 1.15 * 2.0 * N * kvw * 2);
    }
    EXPECT_EQ(rope_launches, 1);
    inside = bytes_moved(launches);
  }
  const double q_bytes = static_cast<double>(N * qw * 2), k_bytes = static_cast<double>(N * kvw * 2);
  const double saved = static_cast<double>(separate) - static_cast<double>(inside);
  // Within 10% of 3 q + 2 k: the fused rotations read each frequency once per thread or lane (a
  // few percent of q's bytes), the separate passes stage theirs once per block.
  EXPECT_NEAR(saved, 3 * q_bytes + 2 * k_bytes, 0.10 * (3 * q_bytes + 2 * k_bytes))
      << "separate " << separate << " bytes, inside attention " << inside;
  for (void* p : {static_cast<void*>(qkv), static_cast<void*>(grads), static_cast<void*>(out), static_cast<void*>(dout),
                  static_cast<void*>(lse), static_cast<void*>(workspace), static_cast<void*>(inv_freq)})
    cudaFree(p);
}

}  // namespace
}  // namespace minitron
