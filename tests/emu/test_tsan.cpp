// Built only under MINITRON_EMU_SANITIZER=thread: ThreadSanitizer, fed the emulator's barrier
// model, reports a forgotten __syncthreads with its source lines and stays silent on the same
// kernel with the barrier.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/async_copy.cuh"
#include "kernels/launch.cuh"

// Any report ends this process, so the correct kernel below passing means "no report".
extern "C" const char* __tsan_default_options() { return "halt_on_error=1"; }

namespace minitron {
namespace {

// Shared memory reused across rounds: without the second barrier a fast thread overwrites the
// buffer while a slow one still reads the previous round.
template <bool SecondBarrier>
__global__ void reuse_kernel(const float* input, float* output, int rounds) {
  __shared__ float buffer[64];
  for (int round = 0; round < rounds; ++round) {
    buffer[threadIdx.x] = input[round * 64 + static_cast<int>(threadIdx.x)];  // racy write
    __syncthreads();
    output[(blockIdx.x * rounds + round) * 64 + threadIdx.x] = buffer[63 - threadIdx.x];  // racy read
    if (SecondBarrier) __syncthreads();
  }
}

void run(bool second_barrier) {
  const int rounds = 3;
  std::vector<float> input(64 * rounds), output(2 * 64 * rounds);
  for (int i = 0; i < 64 * rounds; ++i) input[i] = static_cast<float>(i);
  if (second_barrier)
    cuda::launch(reuse_kernel<true>, dim3(2), dim3(64), 0, nullptr, input.data(), output.data(), rounds);
  else
    cuda::launch(reuse_kernel<false>, dim3(2), dim3(64), 0, nullptr, input.data(), output.data(), rounds);
  for (int block = 0; block < 2; ++block)
    for (int r = 0; r < rounds; ++r)
      for (int t = 0; t < 64; ++t) EXPECT_EQ(output[(block * rounds + r) * 64 + t], input[r * 64 + 63 - t]);
}

TEST(EmulatorThreadSanitizer, CorrectKernelGivesNoReport) { run(true); }

TEST(EmulatorThreadSanitizerDeathTest, MissingBarrierIsReportedWithSourceLines) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run(false), "ThreadSanitizer: data race.*test_tsan.cpp:2[0-9]");
}

// cp.async: the data lands as the issuing thread's write at its wait, so a thread reading another
// thread's copied row needs a __syncthreads after the waits (the 4 words of row 63 - i).
template <bool Barrier>
__global__ void async_copy_kernel(const unsigned* input, unsigned* output) {
  __shared__ __align__(16) unsigned rows[64 * 4];
  const int i = static_cast<int>(threadIdx.x);
  cuda::cp_async16(rows + 4 * i, input + 4 * i);
  cuda::cp_async_wait_all();
  if (Barrier) __syncthreads();
  for (int e = 0; e < 4; ++e) output[4 * i + e] = rows[4 * (63 - i) + e];  // the racy read
}

void run_async(bool barrier) {
  std::vector<unsigned> input(64 * 4), output(64 * 4);
  for (int i = 0; i < 64 * 4; ++i) input[i] = static_cast<unsigned>(i) * 3u + 1u;
  if (barrier)
    cuda::launch(async_copy_kernel<true>, dim3(1), dim3(64), 0, nullptr, input.data(), output.data());
  else
    cuda::launch(async_copy_kernel<false>, dim3(1), dim3(64), 0, nullptr, input.data(), output.data());
  for (int i = 0; i < 64; ++i)
    for (int e = 0; e < 4; ++e) EXPECT_EQ(output[4 * i + e], input[4 * (63 - i) + e]);
}

TEST(EmulatorThreadSanitizer, AsyncCopyWithBarrierAfterTheWaitGivesNoReport) { run_async(true); }

TEST(EmulatorThreadSanitizerDeathTest, AsyncCopyReadWithoutBarrierAfterTheWaitIsReported) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_async(false), "ThreadSanitizer: data race.*test_tsan.cpp:5[0-9].*perform_async_copy");
}

}  // namespace
}  // namespace minitron
