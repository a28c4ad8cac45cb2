// cp.async through kernels/async_copy.cuh on the emulator: data arrives at the wait that retires
// its commit group (not before: the destination holds 0xFF poison until then), wait_group N
// leaves exactly the newest N groups pending, uncommitted copies are not waited for, zero-fill,
// and the bugs the instruction invites (misaligned or non-shared addresses, exiting with copies
// pending) abort with a message.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/async_copy.cuh"
#include "kernels/launch.cuh"

namespace minitron {
namespace {

using cuda::cp_async16;
using cuda::cp_async_commit;
using cuda::cp_async_wait;
using cuda::cp_async_wait_all;

constexpr unsigned kPoison = 0xFFFFFFFFu;  // the emulator's 0xFF bytes as a 32-bit word
constexpr int kThreads = 64;

std::vector<unsigned> source_words(int n, unsigned salt) {
  std::vector<unsigned> words(n);
  for (int i = 0; i < n; ++i) words[i] = salt * 1000003u + static_cast<unsigned>(i) * 7u + 1u;
  return words;
}

// Each thread copies 4 words; `before` is what it reads of its own destination before waiting,
// `after` another thread's words once every thread waited and the block met at a barrier.
__global__ void copy_then_read_kernel(const unsigned* src, unsigned* before, unsigned* after) {
  MINITRON_DYNAMIC_SHARED(unsigned, tile);
  const int tid = static_cast<int>(threadIdx.x);
  cp_async16(tile + 4 * tid, src + 4 * tid);
  cp_async_commit();
  for (int e = 0; e < 4; ++e) before[4 * tid + e] = tile[4 * tid + e];
  cp_async_wait<0>();
  __syncthreads();
  const int other = kThreads - 1 - tid;
  for (int e = 0; e < 4; ++e) after[4 * tid + e] = tile[4 * other + e];
}

TEST(EmulatorAsyncCopy, DataArrivesAtTheWaitAndPoisonBefore) {
  const std::vector<unsigned> src = source_words(4 * kThreads, 1);
  std::vector<unsigned> before(4 * kThreads), after(4 * kThreads);
  for (bool reverse : {false, true}) {
    emu::Options options = emu::options();
    options.reverse_order = reverse;
    emu::ScopedOptions scoped(options);
    cuda::launch(copy_then_read_kernel, dim3(1), dim3(kThreads), 4 * kThreads * sizeof(unsigned), nullptr, src.data(),
                 before.data(), after.data());
    for (int tid = 0; tid < kThreads; ++tid) {
      for (int e = 0; e < 4; ++e) {
        EXPECT_EQ(before[4 * tid + e], kPoison) << tid;
        EXPECT_EQ(after[4 * tid + e], src[4 * (kThreads - 1 - tid) + e]) << tid;
      }
    }
  }
}

// Two groups (a, then b); wait_group 1 completes a only, wait_group 0 then b.
__global__ void two_groups_kernel(const unsigned* src_a, const unsigned* src_b, unsigned* seen) {
  __shared__ __align__(16) unsigned a[4 * kThreads];  // a __shared__ variable as destination
  MINITRON_DYNAMIC_SHARED(unsigned, b);
  const int tid = static_cast<int>(threadIdx.x);
  cp_async16(a + 4 * tid, src_a + 4 * tid);
  cp_async_commit();
  cp_async16(b + 4 * tid, src_b + 4 * tid);
  cp_async_commit();
  cp_async_wait<1>();
  for (int e = 0; e < 4; ++e) {
    seen[(0 * kThreads + tid) * 4 + e] = a[4 * tid + e];
    seen[(1 * kThreads + tid) * 4 + e] = b[4 * tid + e];
  }
  cp_async_wait<0>();
  for (int e = 0; e < 4; ++e) seen[(2 * kThreads + tid) * 4 + e] = b[4 * tid + e];
}

TEST(EmulatorAsyncCopy, WaitGroupOneLeavesExactlyTheNewestGroupPending) {
  const std::vector<unsigned> src_a = source_words(4 * kThreads, 2), src_b = source_words(4 * kThreads, 3);
  std::vector<unsigned> seen(3 * 4 * kThreads);
  cuda::launch(two_groups_kernel, dim3(1), dim3(kThreads), 4 * kThreads * sizeof(unsigned), nullptr, src_a.data(),
               src_b.data(), seen.data());
  for (int i = 0; i < 4 * kThreads; ++i) {
    EXPECT_EQ(seen[i], src_a[i]) << i;                     // the older group is complete
    EXPECT_EQ(seen[4 * kThreads + i], kPoison) << i;       // the newest is still pending
    EXPECT_EQ(seen[2 * 4 * kThreads + i], src_b[i]) << i;  // until wait_group 0
  }
}

// A copy issued after the last commit belongs to no group: wait_group 0 leaves it pending (PTX
// ISA), wait_all (commit + wait_group 0) completes it. Odd threads zero-fill instead of copying.
__global__ void uncommitted_and_zero_fill_kernel(const unsigned* src, unsigned* seen) {
  MINITRON_DYNAMIC_SHARED(unsigned, tile);
  const int tid = static_cast<int>(threadIdx.x);
  cp_async16(tile + 4 * tid, src + 4 * tid, /*fill_zero=*/tid % 2 == 1);
  cp_async_wait<0>();
  for (int e = 0; e < 4; ++e) seen[4 * tid + e] = tile[4 * tid + e];
  cp_async_wait_all();
  for (int e = 0; e < 4; ++e) seen[4 * (kThreads + tid) + e] = tile[4 * tid + e];
}

TEST(EmulatorAsyncCopy, UncommittedCopiesAreNotWaitedForAndZeroFillWritesZeros) {
  const std::vector<unsigned> src = source_words(4 * kThreads, 4);
  std::vector<unsigned> seen(2 * 4 * kThreads);
  cuda::launch(uncommitted_and_zero_fill_kernel, dim3(1), dim3(kThreads), 4 * kThreads * sizeof(unsigned), nullptr,
               src.data(), seen.data());
  for (int tid = 0; tid < kThreads; ++tid) {
    for (int e = 0; e < 4; ++e) {
      EXPECT_EQ(seen[4 * tid + e], kPoison) << tid;
      EXPECT_EQ(seen[4 * (kThreads + tid) + e], tid % 2 == 1 ? 0u : src[4 * tid + e]) << tid;
    }
  }
}

// The double-buffered pipeline of a tile loop: prefetch tile n + 1, then wait for all but that
// newest group and meet at a barrier before reading tile n. `Pending` is the wait's count: 1 is
// right; 2 reads tile n before it arrived (the bug this emulation must expose).
template <int Pending>
__global__ void pipeline_kernel(const unsigned* src, int tiles, unsigned* sums) {
  MINITRON_DYNAMIC_SHARED(unsigned, buffers);  // [2][4 * kThreads]
  const int tid = static_cast<int>(threadIdx.x);
  cp_async16(buffers + 4 * tid, src + 4 * tid);
  cp_async_commit();
  unsigned sum = 0;
  for (int n = 0; n < tiles; ++n) {
    if (n + 1 < tiles)
      cp_async16(buffers + ((n + 1) % 2) * 4 * kThreads + 4 * tid, src + (n + 1) * 4 * kThreads + 4 * tid);
    cp_async_commit();  // possibly empty: the group count stays one per tile
    cp_async_wait<Pending>();
    __syncthreads();
    const unsigned* tile = buffers + (n % 2) * 4 * kThreads;
    for (int e = 0; e < 4; ++e) sum += tile[4 * (kThreads - 1 - tid) + e];
    __syncthreads();  // tile n is read before the next prefetch overwrites its buffer
  }
  cp_async_wait<0>();
  sums[tid] = sum;
}

TEST(EmulatorAsyncCopy, DoubleBufferedPipelineNeedsTheRightWaitCount) {
  const int tiles = 5;
  const std::vector<unsigned> src = source_words(tiles * 4 * kThreads, 5);
  std::vector<unsigned> expected(kThreads, 0), sums(kThreads);
  for (int n = 0; n < tiles; ++n)
    for (int tid = 0; tid < kThreads; ++tid)
      for (int e = 0; e < 4; ++e) expected[tid] += src[n * 4 * kThreads + 4 * (kThreads - 1 - tid) + e];
  const std::size_t shared = 2 * 4 * kThreads * sizeof(unsigned);
  cuda::launch(pipeline_kernel<1>, dim3(1), dim3(kThreads), shared, nullptr, src.data(), tiles, sums.data());
  EXPECT_EQ(sums, expected);
  cuda::launch(pipeline_kernel<2>, dim3(1), dim3(kThreads), shared, nullptr, src.data(), tiles, sums.data());
  int wrong = 0;
  for (int tid = 0; tid < kThreads; ++tid) wrong += sums[tid] != expected[tid];
  EXPECT_EQ(wrong, kThreads);  // every thread read poison in at least one tile
}

// ---- what aborts ----
__global__ void misaligned_destination_kernel(const unsigned* src) {
  MINITRON_DYNAMIC_SHARED(unsigned char, tile);
  cp_async16(tile + 8, src);
  cp_async_wait_all();
}
__global__ void misaligned_source_kernel(const unsigned* src) {
  MINITRON_DYNAMIC_SHARED(unsigned, tile);
  cp_async16(tile, src + 1);
  cp_async_wait_all();
}
__global__ void global_destination_kernel(unsigned* dst, const unsigned* src) {
  cp_async16(dst, src);
  cp_async_wait_all();
}
__global__ void local_destination_kernel(const unsigned* src, unsigned* out) {
  alignas(16) unsigned local[4];
  cp_async16(local, src);
  cp_async_wait_all();
  out[threadIdx.x] = local[0];
}
__global__ void exit_pending_kernel(const unsigned* src, bool commit) {
  MINITRON_DYNAMIC_SHARED(unsigned, tile);
  cp_async16(tile + 4 * threadIdx.x, src + 4 * threadIdx.x);
  if (commit) cp_async_commit();
}

class EmulatorAsyncCopyDeathTest : public testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
  std::vector<unsigned> src = source_words(4 * kThreads, 6);
  std::vector<unsigned> dst = std::vector<unsigned>(4 * kThreads);
};

TEST_F(EmulatorAsyncCopyDeathTest, MisalignedAddressesAbort) {
  EXPECT_DEATH(cuda::launch(misaligned_destination_kernel, dim3(1), dim3(1), 64, nullptr, src.data()),
               "misaligned_destination_kernel.*cp.async at .*test_async_copy.cpp.*misaligned 16-byte destination");
  EXPECT_DEATH(cuda::launch(misaligned_source_kernel, dim3(1), dim3(1), 64, nullptr, src.data()),
               "misaligned_source_kernel.*cp.async at .*test_async_copy.cpp.*misaligned 16-byte source");
}

TEST_F(EmulatorAsyncCopyDeathTest, DestinationOutsideSharedMemoryAborts) {
  EXPECT_DEATH(cuda::launch(global_destination_kernel, dim3(1), dim3(1), 0, nullptr, dst.data(), src.data()),
               "global_destination_kernel.*destination .* is not shared memory");
  EXPECT_DEATH(cuda::launch(local_destination_kernel, dim3(1), dim3(1), 0, nullptr, src.data(), dst.data()),
               "local_destination_kernel.*destination .* is not shared memory");
}

TEST_F(EmulatorAsyncCopyDeathTest, ExitingWithCopiesPendingAborts) {
  const std::size_t shared = 4 * kThreads * sizeof(unsigned);
  EXPECT_DEATH(cuda::launch(exit_pending_kernel, dim3(1), dim3(kThreads), shared, nullptr, src.data(), true),
               "exit_pending_kernel.*exited with 1 cp.async copies pending \\(0 of them never committed\\)");
  EXPECT_DEATH(cuda::launch(exit_pending_kernel, dim3(1), dim3(kThreads), shared, nullptr, src.data(), false),
               "exit_pending_kernel.*exited with 1 cp.async copies pending \\(1 of them never committed\\)");
}

}  // namespace
}  // namespace minitron
