// RoPE's counted traffic (emu/traffic.h) over the q and k heads of a fused q|k|v buffer, the
// model's one RoPE launch per layer: x is read and written once, inv_freq is staged in shared
// memory once per block and each row's position read once, so the bytes moved stay within 1.15x
// of the distinct bytes (bench/results/roofline.md's bound for a memory-bound launch; the old
// kernel, which re-read the fp32 inv_freq pack and the position for every head, moved 1.50x).
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "emu/traffic.h"
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

}  // namespace
}  // namespace minitron
