// kernels/packed.cuh's 16-byte stores on the emulator: store128 writes exactly its 16 bytes of
// global memory and store128_shared its 16 bytes of shared memory (dynamic or a __shared__
// variable); a store into the other state space (a fault on a GPU: st.global to a shared address,
// st.shared to a global one) or to a misaligned address aborts, naming the kernel.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/launch.cuh"
#include "kernels/packed.cuh"

namespace minitron {
namespace {

using cuda::load128;
using cuda::Packed128;
using cuda::store128;
using cuda::store128_shared;

constexpr int kThreads = 32;
constexpr int kWords = 4 * kThreads;  // one 16-byte pack of 4 words per thread

std::vector<std::uint32_t> source_words(int n) {
  std::vector<std::uint32_t> words(n);
  for (int i = 0; i < n; ++i) words[i] = 0x9E3779B9u * static_cast<std::uint32_t>(i + 1);
  return words;
}

// src -> dynamic shared tile (reversed pack order) -> __shared__ tile -> dst (a pack further on,
// so that dst's first and last pack stay untouched).
__global__ void round_trip_kernel(std::uint32_t* dst, const std::uint32_t* src) {
  MINITRON_DYNAMIC_SHARED(std::uint32_t, tile);
  __shared__ Packed128<std::uint32_t> fixed[kThreads];  // alignas(16) by its type
  const int tid = static_cast<int>(threadIdx.x);
  const int other = kThreads - 1 - tid;
  store128_shared(tile + 4 * other, load128(src + 4 * tid));
  __syncthreads();
  store128_shared(fixed[tid].payload, load128(tile + 4 * tid));
  __syncthreads();
  store128(dst + 4 + 4 * tid, load128(fixed[tid].payload));
}

TEST(EmulatorPackedStore, StoresMoveExactlySixteenBytesInTheirSpace) {
  const std::vector<std::uint32_t> src = source_words(kWords);
  constexpr std::uint32_t kUntouched = 0x5A5A5A5Au;
  // 16-byte aligned, one pack of margin on each side.
  std::vector<Packed128<std::uint32_t>> out(kThreads + 2);
  auto* dst = reinterpret_cast<std::uint32_t*>(out.data());
  for (int i = 0; i < 4 * (kThreads + 2); ++i) dst[i] = kUntouched;
  cuda::launch(round_trip_kernel, dim3(1), dim3(kThreads), kWords * sizeof(std::uint32_t), nullptr, dst, src.data());
  for (int e = 0; e < 4; ++e) {
    EXPECT_EQ(dst[e], kUntouched) << e;
    EXPECT_EQ(dst[4 * (kThreads + 1) + e], kUntouched) << e;
  }
  // Thread t's pack of dst is pack t of the __shared__ tile = pack t of the dynamic tile, which
  // thread kThreads - 1 - t filled from its own pack of src.
  for (int t = 0; t < kThreads; ++t)
    for (int e = 0; e < 4; ++e) EXPECT_EQ(dst[4 + 4 * t + e], src[4 * (kThreads - 1 - t) + e]) << t << " " << e;
}

__global__ void global_store_to_dynamic_shared_kernel(const std::uint32_t* src) {
  MINITRON_DYNAMIC_SHARED(std::uint32_t, tile);
  store128(tile, load128(src));
}
__global__ void global_store_to_static_shared_kernel(const std::uint32_t* src, std::uint32_t* out) {
  __shared__ Packed128<std::uint32_t> fixed;
  store128(fixed.payload, load128(src));
  out[0] = fixed.payload[0];
}
__global__ void shared_store_to_global_kernel(std::uint32_t* dst, const std::uint32_t* src) {
  store128_shared(dst, load128(src));
}
__global__ void misaligned_store_kernel(std::uint32_t* dst, const std::uint32_t* src) {
  store128(dst + 1, load128(src));
}

class EmulatorPackedStoreDeathTest : public testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
  std::vector<Packed128<std::uint32_t>> src{4}, dst{4};
  const std::uint32_t* source() const { return reinterpret_cast<const std::uint32_t*>(src.data()); }
  std::uint32_t* destination() { return reinterpret_cast<std::uint32_t*>(dst.data()); }
};

TEST_F(EmulatorPackedStoreDeathTest, GlobalStoreToSharedMemoryAborts) {
  EXPECT_DEATH(cuda::launch(global_store_to_dynamic_shared_kernel, dim3(1), dim3(1), 64, nullptr, source()),
               "global_store_to_dynamic_shared_kernel.*store128: 16-byte store to .*, shared memory "
               "\\(st.global faults here");
  EXPECT_DEATH(
      cuda::launch(global_store_to_static_shared_kernel, dim3(1), dim3(1), 0, nullptr, source(), destination()),
      "global_store_to_static_shared_kernel.*store128: 16-byte store to .*, shared memory");
}

TEST_F(EmulatorPackedStoreDeathTest, SharedStoreOutsideSharedMemoryAborts) {
  EXPECT_DEATH(cuda::launch(shared_store_to_global_kernel, dim3(1), dim3(1), 0, nullptr, destination(), source()),
               "shared_store_to_global_kernel.*store128_shared: 16-byte store to .*, not shared memory "
               "\\(st.shared faults here");
}

TEST_F(EmulatorPackedStoreDeathTest, MisalignedStoreAborts) {
  EXPECT_DEATH(cuda::launch(misaligned_store_kernel, dim3(1), dim3(1), 0, nullptr, destination(), source()),
               "misaligned 16-byte store");
}

}  // namespace
}  // namespace minitron
