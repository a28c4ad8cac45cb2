// The roofline's counters (emu/traffic.h) on kernels whose traffic is known by hand: global loads
// and stores are counted per launch from the instrumented code (this file is compiled as a
// counted build), shared memory, the stack and host memory are not, a kernel that reads its
// input twice shows twice the bytes of one that reads it once, cp.async reads, mma.sync flops and
// ldmatrix instructions are counted, and nothing is counted outside a recording.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "emu/traffic.h"
#include "kernels/async_copy.cuh"
#include "kernels/launch.cuh"
#include "kernels/mma.cuh"

namespace minitron {
namespace {

constexpr int kRows = 6, kCols = 100, kThreads = 32;

__global__ void copy_kernel(const float* in, float* out, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = in[i];
}

// Each row divided by its sum, the naive way: the row is read once for the sum and again for
// the division (the bug the roofline must catch).
__global__ void normalize_two_pass_kernel(const float* in, float* out, int cols) {
  __shared__ float partial[kThreads];
  const float* row = in + blockIdx.x * cols;
  float sum = 0.0f;
  for (int j = static_cast<int>(threadIdx.x); j < cols; j += kThreads) sum += row[j];
  partial[threadIdx.x] = sum;
  __syncthreads();
  float total = 0.0f;
  for (int t = 0; t < kThreads; ++t) total += partial[t];
  for (int j = static_cast<int>(threadIdx.x); j < cols; j += kThreads) out[blockIdx.x * cols + j] = row[j] / total;
}

// The same result with the row kept in shared memory: one read of the input.
__global__ void normalize_one_pass_kernel(const float* in, float* out, int cols) {
  MINITRON_DYNAMIC_SHARED(float, cached);
  __shared__ float partial[kThreads];
  const float* row = in + blockIdx.x * cols;
  float sum = 0.0f;
  for (int j = static_cast<int>(threadIdx.x); j < cols; j += kThreads) {
    cached[j] = row[j];
    sum += cached[j];
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  float total = 0.0f;
  for (int t = 0; t < kThreads; ++t) total += partial[t];
  for (int j = static_cast<int>(threadIdx.x); j < cols; j += kThreads) out[blockIdx.x * cols + j] = cached[j] / total;
}

// One warp: 16 bytes per lane by cp.async into shared memory, one mma.sync, its 4 floats per lane out.
__global__ void async_copy_and_mma_kernel(const std::uint32_t* in, float* out) {
  MINITRON_DYNAMIC_SHARED(std::uint32_t, tile);
  const int lane = static_cast<int>(threadIdx.x);
  cuda::cp_async16(tile + 4 * lane, in + 4 * lane);
  cuda::cp_async_commit();
  cuda::cp_async_wait<0>();
  __syncthreads();
  mma::FragmentA a;
  mma::ldmatrix_x4(a.reg, tile + 4 * (lane % 16));  // rows of the tile as the A fragment
  mma::FragmentB b{{tile[4 * lane], tile[4 * lane + 1]}};
  mma::Accumulator d{{0.0f, 0.0f, 0.0f, 0.0f}};
  mma::mma_m16n8k16_bf16(d, a, b, d);
  for (int r = 0; r < 4; ++r) out[4 * lane + r] = d.value[r];
}

template <typename T>
T* device_copy(const std::vector<T>& host) {
  void* device = nullptr;
  EXPECT_EQ(cudaMalloc(&device, host.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return static_cast<T*>(device);
}

TEST(EmulatorTraffic, ThisBuildIsInstrumented) { EXPECT_TRUE(emu::traffic_instrumented()); }

TEST(EmulatorTraffic, CountsEachGlobalLoadAndStoreOfALaunch) {
  const int n = 1000;
  float* in = device_copy(std::vector<float>(n, 1.0f));
  float* out = device_copy(std::vector<float>(n, 0.0f));
  emu::TrafficRecording recording;
  cuda::launch(copy_kernel, dim3((n + 127) / 128), dim3(128), 0, nullptr, in, out, n);
  const std::vector<emu::LaunchTraffic> launches = recording.take();
  ASSERT_EQ(launches.size(), 1u);
  EXPECT_NE(launches[0].kernel.find("copy_kernel"), std::string::npos) << launches[0].kernel;
  EXPECT_EQ(launches[0].blocks, 8u);
  EXPECT_EQ(launches[0].bytes_read, 4000u);  // 1000 floats, once each
  EXPECT_EQ(launches[0].bytes_written, 4000u);
  EXPECT_EQ(launches[0].distinct_bytes_read, 4000u);  // 125 whole sectors
  EXPECT_EQ(launches[0].distinct_bytes_written, 4000u);
  EXPECT_EQ(launches[0].flops, 0u);
  EXPECT_EQ(launches[0].ldmatrix, 0u);
  EXPECT_FALSE(launches[0].library_call);
  cudaFree(in);
  cudaFree(out);
}

TEST(EmulatorTraffic, AKernelReadingItsInputTwiceShowsTwiceTheBytes) {
  float* in = device_copy(std::vector<float>(kRows * kCols, 2.0f));
  float* out = device_copy(std::vector<float>(kRows * kCols, 0.0f));
  const std::uint64_t input_bytes = kRows * kCols * sizeof(float);  // 2400
  emu::TrafficRecording recording;
  cuda::launch(normalize_one_pass_kernel, dim3(kRows), dim3(kThreads), kCols * sizeof(float), nullptr, in, out, kCols);
  cuda::launch(normalize_two_pass_kernel, dim3(kRows), dim3(kThreads), 0, nullptr, in, out, kCols);
  const std::vector<emu::LaunchTraffic> launches = recording.take();
  ASSERT_EQ(launches.size(), 2u);
  // Shared memory (the cached row, the partial sums) is not global traffic.
  EXPECT_EQ(launches[0].bytes_read, input_bytes);
  EXPECT_EQ(launches[0].bytes_written, input_bytes);
  EXPECT_EQ(launches[1].bytes_read, 2 * input_bytes);
  EXPECT_EQ(launches[1].bytes_written, input_bytes);
  // The ideal (distinct sectors) is the same for both: 2400 bytes are 75 whole 32-byte sectors.
  for (const emu::LaunchTraffic& launch : launches) {
    EXPECT_EQ(launch.distinct_bytes_read, input_bytes);
    EXPECT_EQ(launch.distinct_bytes_written, input_bytes);
  }
  cudaFree(in);
  cudaFree(out);
}

TEST(EmulatorTraffic, CountsAsyncCopiesAndTensorCoreWork) {
  std::uint32_t* in = device_copy(std::vector<std::uint32_t>(4 * 32, 0x3f803f80u));  // bf16 pairs of 1.0
  float* out = device_copy(std::vector<float>(4 * 32, 0.0f));
  emu::TrafficRecording recording;
  cuda::launch(async_copy_and_mma_kernel, dim3(1), dim3(32), 4 * 32 * sizeof(std::uint32_t), nullptr, in, out);
  const std::vector<emu::LaunchTraffic> launches = recording.take();
  ASSERT_EQ(launches.size(), 1u);
  EXPECT_EQ(launches[0].bytes_read, 32u * 16u);       // one 16-byte cp.async per lane
  EXPECT_EQ(launches[0].bytes_written, 32u * 16u);    // 4 floats per lane
  EXPECT_EQ(launches[0].flops, 2u * 16u * 8u * 16u);  // one m16n8k16 for the warp
  EXPECT_EQ(launches[0].ldmatrix, 1u);                // one ldmatrix.x4 for the warp
  cudaFree(in);
  cudaFree(out);
}

TEST(EmulatorTraffic, HostMemoryAndLaunchesOutsideARecordingAreNotCounted) {
  const int n = 64;
  std::vector<float> host_in(n, 1.0f), host_out(n, 0.0f);
  float* out = device_copy(std::vector<float>(n, 0.0f));
  cuda::launch(copy_kernel, dim3(1), dim3(n), 0, nullptr, host_in.data(), out, n);  // before the recording
  emu::TrafficRecording recording;
  cuda::launch(copy_kernel, dim3(1), dim3(n), 0, nullptr, host_in.data(), out, n);
  cuda::launch(copy_kernel, dim3(1), dim3(n), 0, nullptr, out, host_out.data(), n);
  const std::vector<emu::LaunchTraffic> launches = recording.take();
  ASSERT_EQ(launches.size(), 2u);
  EXPECT_EQ(launches[0].bytes_read, 0u);  // host memory, not cudaMalloc'd
  EXPECT_EQ(launches[0].distinct_bytes_read, 0u);
  EXPECT_EQ(launches[0].bytes_written, 256u);
  EXPECT_EQ(launches[1].bytes_read, 256u);
  EXPECT_EQ(launches[1].bytes_written, 0u);
  EXPECT_TRUE(recording.take().empty());
  cudaFree(out);
}

}  // namespace
}  // namespace minitron
