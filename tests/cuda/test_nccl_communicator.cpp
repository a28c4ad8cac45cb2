// NcclCommunicator on the emulated NCCL (kernels/emu/nccl.cpp): ranks are threads of this
// process, each with its own emulated CUDA backend, joined through one ncclUniqueId.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/nccl_communicator.h"
#include "kernels/emu/emulator.h"
#include "model/backend.h"

namespace minitron {
namespace {

using Body = std::function<void(int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& communicator)>;

// Runs `body` on world_size threads, one rank each; returns each rank's error message ("" when
// it finished). Assertions stay on the calling thread: bodies only record what they saw.
std::vector<std::string> run_ranks(int world_size, const Body& body) {
  ncclUniqueId id;
  MINITRON_NCCL_CHECK(ncclGetUniqueId(&id));
  std::vector<std::string> errors(static_cast<std::size_t>(world_size));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world_size; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        cuda::CudaBackend backend(0);
        cuda::NcclCommunicator communicator(backend, rank, world_size, id);
        body(rank, backend, communicator);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(rank)] = e.what();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  return errors;
}

void expect_no_errors(const std::vector<std::string>& errors) {
  for (std::size_t rank = 0; rank < errors.size(); ++rank) EXPECT_EQ(errors[rank], "") << "rank " << rank;
}

std::vector<std::uint32_t> bits_of(const std::vector<float>& values) {
  std::vector<std::uint32_t> bits(values.size());
  std::memcpy(bits.data(), values.data(), values.size() * sizeof(float));
  return bits;
}

// Multiples of 1/64 in [-8, 8): any sum of a few of them is exact in fp32, whatever the order.
float exact_value(std::size_t i, int rank) {
  return static_cast<float>(static_cast<int>((i * 7 + static_cast<std::size_t>(rank) * 131) % 1024) - 512) / 64.0f;
}

class NcclRanks : public ::testing::TestWithParam<int> {};

// An awkward length (a prime above a million) of exactly representable values: every rank
// receives the exact sum.
TEST_P(NcclRanks, AllReduceF32IsTheExactSumOnEveryRank) {
  const int world = GetParam();
  const std::size_t n = 1000003;
  std::vector<std::vector<float>> got(static_cast<std::size_t>(world));
  expect_no_errors(run_ranks(world, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
    EXPECT_EQ(nccl.rank(), rank);
    EXPECT_EQ(nccl.world_size(), world);
    std::vector<float> mine(n);
    for (std::size_t i = 0; i < n; ++i) mine[i] = exact_value(i, rank);
    BackendBuffer t(backend, static_cast<std::int64_t>(n), DType::F32);
    backend.upload(t, mine.data());
    nccl.all_reduce_sum(t);
    std::vector<float>& out = got[static_cast<std::size_t>(rank)];
    out.resize(n);
    backend.download(out.data(), t);
  }));
  std::vector<float> want(n);
  for (std::size_t i = 0; i < n; ++i) {
    double sum = 0;
    for (int r = 0; r < world; ++r) sum += exact_value(i, r);
    want[i] = static_cast<float>(sum);
  }
  for (int r = 0; r < world; ++r) EXPECT_TRUE(got[static_cast<std::size_t>(r)] == want) << "rank " << r;
}

// Values whose sum rounds: every rank gets the same bits, those of the emulator's order
// (rank 0 + rank 1 + ...). Real NCCL picks its own order; only the equality across ranks and
// the agreement with the exact sum to a few ulps would carry over.
TEST_P(NcclRanks, AllReduceF32GivesEveryRankTheSameBits) {
  const int world = GetParam();
  const std::size_t n = 4099;
  auto values_of = [&](int rank) {
    std::mt19937 rng(static_cast<unsigned>(100 + rank));
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
  };
  std::vector<std::vector<float>> got(static_cast<std::size_t>(world));
  expect_no_errors(run_ranks(world, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
    const std::vector<float> mine = values_of(rank);
    BackendBuffer t(backend, static_cast<std::int64_t>(n), DType::F32);
    backend.upload(t, mine.data());
    // Twice over the same buffer: the second collective starts from the first one's sums.
    nccl.all_reduce_sum(t);
    nccl.all_reduce_sum(t);
    std::vector<float>& out = got[static_cast<std::size_t>(rank)];
    out.resize(n);
    backend.download(out.data(), t);
  }));
  std::vector<float> once(n, 0.0f), twice(n, 0.0f);
  for (int r = 0; r < world; ++r) {
    const std::vector<float> v = values_of(r);
    for (std::size_t i = 0; i < n; ++i) once[i] = r == 0 ? v[i] : once[i] + v[i];
  }
  for (int r = 0; r < world; ++r)
    for (std::size_t i = 0; i < n; ++i) twice[i] = r == 0 ? once[i] : twice[i] + once[i];
  for (int r = 0; r < world; ++r)
    EXPECT_TRUE(bits_of(got[static_cast<std::size_t>(r)]) == bits_of(twice)) << "rank " << r;
}

TEST_P(NcclRanks, AllReduceDoublesAndBarrier) {
  const int world = GetParam();
  // 100 values: more than the 64 the staging buffer starts with, so it grows once.
  const std::size_t n = 100;
  auto values_of = [&](int rank) {
    std::vector<double> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = 0.1 * static_cast<double>(i + 1) + 1e6 * rank;
    return v;
  };
  std::vector<std::vector<double>> got(static_cast<std::size_t>(world));
  std::vector<std::vector<double>> small(static_cast<std::size_t>(world));
  std::atomic<int> before_barrier{0};
  std::vector<int> seen_after_barrier(static_cast<std::size_t>(world), -1);
  expect_no_errors(run_ranks(world, [&](int rank, cuda::CudaBackend&, cuda::NcclCommunicator& nccl) {
    std::vector<double> two = {0.25 * (rank + 1), 1000.0 + rank};
    nccl.all_reduce_sum(two);
    small[static_cast<std::size_t>(rank)] = two;
    std::vector<double> v = values_of(rank);
    nccl.all_reduce_sum(v);
    got[static_cast<std::size_t>(rank)] = v;
    nccl.all_reduce_sum(std::span<double>());  // nothing to sum: returns at once on every rank
    // The last rank arrives late: nobody may leave the barrier before it has arrived.
    if (rank == world - 1) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    before_barrier.fetch_add(1);
    nccl.barrier();
    seen_after_barrier[static_cast<std::size_t>(rank)] = before_barrier.load();
  }));
  std::vector<double> want(n, 0.0);
  double first = 0, second = 0;
  for (int r = 0; r < world; ++r) {
    const std::vector<double> v = values_of(r);
    for (std::size_t i = 0; i < n; ++i) want[i] += v[i];
    first += 0.25 * (r + 1);
    second += 1000.0 + r;
  }
  for (int r = 0; r < world; ++r) {
    // The emulator sums in rank order, as the loop above does: the same bits.
    EXPECT_EQ(got[static_cast<std::size_t>(r)], want) << "rank " << r;
    EXPECT_EQ(small[static_cast<std::size_t>(r)], (std::vector<double>{first, second})) << "rank " << r;
    EXPECT_EQ(seen_after_barrier[static_cast<std::size_t>(r)], world) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(TwoAndThree, NcclRanks, ::testing::Values(2, 3));

TEST(NcclCommunicator, WorldSizeOneIsTheIdentity) {
  std::vector<float> got;
  std::vector<double> doubles;
  expect_no_errors(run_ranks(1, [&](int, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
    EXPECT_EQ(nccl.rank(), 0);
    EXPECT_EQ(nccl.world_size(), 1);
    const std::vector<float> mine = {1.5f, -2.25f, 3.0f};
    BackendBuffer t(backend, 3, DType::F32);
    backend.upload(t, mine.data());
    nccl.all_reduce_sum(t);
    got.resize(3);
    backend.download(got.data(), t);
    doubles = {0.1, 0.2};
    nccl.all_reduce_sum(doubles);
    nccl.barrier();
  }));
  EXPECT_EQ(got, (std::vector<float>{1.5f, -2.25f, 3.0f}));
  EXPECT_EQ(doubles, (std::vector<double>{0.1, 0.2}));
}

TEST(NcclCommunicator, RefusesNonF32TensorsOnEveryRankWithoutHanging) {
  std::vector<std::string> refusals(2);
  std::vector<float> after(2, 0.0f);
  expect_no_errors(run_ranks(2, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
    BackendBuffer bf16(backend, 8, DType::BF16);
    try {
      nccl.all_reduce_sum(bf16);
    } catch (const Error& e) {
      refusals[static_cast<std::size_t>(rank)] = e.what();
    }
    // The refusal happens before NCCL: the communicator still works.
    const float one = 1.0f;
    BackendBuffer t(backend, 1, DType::F32);
    backend.upload(t, &one);
    nccl.all_reduce_sum(t);
    backend.download(&after[static_cast<std::size_t>(rank)], t);
  }));
  for (const std::string& message : refusals) {
    EXPECT_NE(message.find("NCCL all_reduce_sum"), std::string::npos) << message;
    EXPECT_NE(message.find("dtype bf16"), std::string::npos) << message;
    EXPECT_NE(message.find("f32"), std::string::npos) << message;
  }
  EXPECT_EQ(after, (std::vector<float>{2.0f, 2.0f}));
}

TEST(NcclCommunicator, MismatchedCountsAreAnErrorOnEveryRank) {
  const std::vector<std::string> errors =
      run_ranks(2, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
        BackendBuffer t(backend, 10 + rank, DType::F32);
        backend.zero(t);
        nccl.all_reduce_sum(t);
      });
  for (const std::string& message : errors) {
    EXPECT_NE(message.find("NCCL error at "), std::string::npos) << message;
    EXPECT_NE(message.find("ncclAllReduce"), std::string::npos) << message;
    EXPECT_NE(message.find("invalid usage"), std::string::npos) << message;
    EXPECT_NE(message.find("rank 0 passed 10 x ncclFloat32"), std::string::npos) << message;
    EXPECT_NE(message.find("rank 1 passed 11 x ncclFloat32"), std::string::npos) << message;
  }
}

TEST(NcclCommunicator, ARankThatNeverComesIsAnErrorNotAHang) {
  emu::Options options = emu::options();
  options.nccl_timeout_seconds = 0.3;
  const emu::ScopedOptions scoped(options);
  std::atomic<bool> rank0_done{false};
  const std::vector<std::string> errors =
      run_ranks(2, [&](int rank, cuda::CudaBackend&, cuda::NcclCommunicator& nccl) {
        if (rank == 0) {
          try {
            nccl.barrier();
          } catch (...) {
            rank0_done = true;
            throw;
          }
          rank0_done = true;
        } else {
          // Rank 1 keeps its communicator but never calls the collective until rank 0 gave up.
          while (!rank0_done) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      });
  EXPECT_NE(errors[0].find("unhandled system error"), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("rank 0 waited 0.3 s for ranks 1 to call it"), std::string::npos) << errors[0];
  EXPECT_EQ(errors[1], "");
}

// The emulator's behaviour, so that a test with a missing rank fails instead of hanging: real
// NCCL has no such check and waits for the rank forever (hence the trainer's abort on unwind).
TEST(NcclCommunicator, ARankThatLeavesIsAnErrorNotAHang) {
  std::vector<std::string> errors(2);
  ncclUniqueId id;
  MINITRON_NCCL_CHECK(ncclGetUniqueId(&id));
  std::thread leaver([&] {
    cuda::CudaBackend backend(0);
    cuda::NcclCommunicator nccl(backend, 1, 2, id);
  });  // destroyed at once, without a collective
  try {
    cuda::CudaBackend backend(0);
    cuda::NcclCommunicator nccl(backend, 0, 2, id);
    leaver.join();
    nccl.barrier();
  } catch (const Error& e) {
    errors[0] = e.what();
  }
  if (leaver.joinable()) leaver.join();
  EXPECT_NE(errors[0].find("ranks 1 destroyed their communicator"), std::string::npos) << errors[0];
}

TEST(NcclCommunicator, RefusesABadRankBeforeNccl) {
  ncclUniqueId id;
  MINITRON_NCCL_CHECK(ncclGetUniqueId(&id));
  cuda::CudaBackend backend(0);
  for (const auto& [rank, world] : {std::pair{2, 2}, std::pair{-1, 2}, std::pair{0, 0}}) {
    try {
      cuda::NcclCommunicator nccl(backend, rank, world, id);
      ADD_FAILURE() << "rank " << rank << " of " << world << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(str("rank ", rank, " of world size ", world)), std::string::npos) << e.what();
    }
  }
}

// The emulated library itself: only ncclSum on the emulated types; the rest is refused, not
// computed some other way.
TEST(EmulatedNccl, RefusesOtherOpsAndTypes) {
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  ncclComm_t comm = nullptr;
  ASSERT_EQ(ncclCommInitRank(&comm, 1, id, 0), ncclSuccess);
  float x = 1.0f;
  EXPECT_EQ(ncclAllReduce(&x, &x, 1, ncclFloat32, ncclMax, comm, nullptr), ncclInvalidArgument);
  EXPECT_NE(std::string(ncclGetLastError(comm)).find("not emulated"), std::string::npos);
  EXPECT_EQ(ncclAllReduce(&x, &x, 1, ncclFloat16, ncclSum, comm, nullptr), ncclInvalidArgument);
  int count = 0, rank = -1;
  EXPECT_EQ(ncclCommCount(comm, &count), ncclSuccess);
  EXPECT_EQ(ncclCommUserRank(comm, &rank), ncclSuccess);
  EXPECT_EQ(count, 1);
  EXPECT_EQ(rank, 0);
  ncclComm_t refused = nullptr;
  EXPECT_EQ(ncclCommInitRank(&refused, 1, id, 1), ncclInvalidArgument);  // rank 1 of 1
  EXPECT_EQ(refused, nullptr);
  EXPECT_STREQ(ncclGetErrorString(ncclInvalidArgument), "invalid argument");
  EXPECT_EQ(ncclCommDestroy(comm), ncclSuccess);
}

}  // namespace
}  // namespace minitron
