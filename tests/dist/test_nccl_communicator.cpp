// NcclCommunicator on the emulated NCCL (emu/nccl.cpp): ranks are threads of this
// process, each with its own emulated CUDA backend, joined through one ncclUniqueId.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/backend.h"
#include "dist/communicator.h"
#include "dist/host_communicator.h"
#include "dist/nccl_communicator.h"
#include "emu/emulator.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_backend_factory.h"
#include "kernels/cuda/cuda_context.h"
#include "kernels/make_backend.h"
#include "tests/dist/nccl_test_util.h"
#include "tests/dist/tcp_test_util.h"

namespace minitron {
namespace {

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
  expect_no_errors(
      testing::run_nccl_ranks(world, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
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
  expect_no_errors(
      testing::run_nccl_ranks(world, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
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
  expect_no_errors(testing::run_nccl_ranks(world, [&](int rank, cuda::CudaBackend&, cuda::NcclCommunicator& nccl) {
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

// The partitions the sharded collectives are tested on, for `world` ranks: shard_bounds' (with a
// tail and without; one shorter than 64 x world, all the last rank's), other equal parts with a
// tail, and general ones (empty parts; a last part shorter than the others, which the equal-part
// collectives could not move).
std::vector<std::vector<std::int64_t>> partitions(int world) {
  std::vector<std::vector<std::int64_t>> all = {shard_bounds(200, world), shard_bounds(384, world),
                                                shard_bounds(100, world)};
  if (world == 2) {
    all.push_back({0, 3, 7});
    all.push_back({0, 7, 7});
    all.push_back({0, 0, 9});
    all.push_back({0, 5, 8});
  } else {
    all.push_back({0, 3, 6, 10});
    all.push_back({0, 5, 5, 17});
    all.push_back({0, 0, 0, 4});
    all.push_back({0, 5, 10, 12});
  }
  return all;
}

TEST(NcclCommunicator, ShardBoundsAreTheExpectedParts) {
  // Written out by hand: parts of 64 x k for all but the last rank, which takes the rest.
  EXPECT_EQ(shard_bounds(200, 3), (std::vector<std::int64_t>{0, 64, 128, 200}));
  EXPECT_EQ(shard_bounds(384, 3), (std::vector<std::int64_t>{0, 128, 256, 384}));
  EXPECT_EQ(shard_bounds(200, 2), (std::vector<std::int64_t>{0, 64, 200}));
  EXPECT_EQ(shard_bounds(100, 2), (std::vector<std::int64_t>{0, 0, 100}));
}

// Every rank's own part is the exact sum (multiples of 1/64: exact in any order) of that part
// over the ranks, for every partition. The partitions follow one another on one communicator, so
// ranks that issued different sequences of NCCL calls would fail the mismatch check.
TEST_P(NcclRanks, ReduceScatterSumsEachRanksOwnPart) {
  const int world = GetParam();
  const auto all = partitions(world);
  // got[p][rank]: rank's own part after the collective on partition p.
  std::vector<std::vector<std::vector<float>>> got(all.size(), std::vector<std::vector<float>>(world));
  expect_no_errors(
      testing::run_nccl_ranks(world, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
        for (std::size_t p = 0; p < all.size(); ++p) {
          const std::vector<std::int64_t>& bounds = all[p];
          const std::int64_t n = bounds.back();
          std::vector<float> mine(static_cast<std::size_t>(n));
          for (std::size_t i = 0; i < mine.size(); ++i) mine[i] = exact_value(i, rank);
          BackendBuffer t(backend, n, DType::F32);
          backend.upload(t, mine.data());
          nccl.reduce_scatter_sum(t, bounds);
          std::vector<float> out(static_cast<std::size_t>(n));
          backend.download(out.data(), t);
          got[p][static_cast<std::size_t>(rank)].assign(out.begin() + bounds[static_cast<std::size_t>(rank)],
                                                        out.begin() + bounds[static_cast<std::size_t>(rank) + 1]);
        }
      }));
  for (std::size_t p = 0; p < all.size(); ++p) {
    const std::vector<std::int64_t>& bounds = all[p];
    for (int rank = 0; rank < world; ++rank) {
      std::vector<float> want;
      for (std::int64_t i = bounds[static_cast<std::size_t>(rank)]; i < bounds[static_cast<std::size_t>(rank) + 1];
           ++i) {
        double sum = 0;
        for (int r = 0; r < world; ++r) sum += exact_value(static_cast<std::size_t>(i), r);
        want.push_back(static_cast<float>(sum));
      }
      EXPECT_EQ(got[p][static_cast<std::size_t>(rank)], want) << "partition " << p << ", rank " << rank;
    }
  }
}

// bf16 values that are exact: k / 4 for integers |k| <= 128 need at most 8 significant bits.
float bf16_exact_value(std::size_t i, int rank) {
  return static_cast<float>(static_cast<int>((i * 5 + static_cast<std::size_t>(rank) * 77) % 256) - 128) / 4.0f;
}

// The bf16 bit pattern of a value bf16 holds exactly: the high half of its f32 bits.
std::uint16_t bf16_bits(float value) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  EXPECT_EQ(bits & 0xffffu, 0u) << value << " is not exact in bf16";
  return static_cast<std::uint16_t>(bits >> 16);
}

// After all_gather every rank holds every rank's own part, bit for bit: f32 values that are not
// sums of anything (random bits of a generator), and bf16 read back as raw 16-bit words, so no
// conversion stands between the collective and the comparison.
TEST_P(NcclRanks, AllGatherGivesEveryRankEveryPartBitForBit) {
  const int world = GetParam();
  const auto all = partitions(world);
  auto f32_values_of = [](int rank, std::size_t n) {
    std::mt19937 rng(static_cast<unsigned>(200 + rank));
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
  };
  std::vector<std::vector<std::vector<float>>> got_f32(all.size(), std::vector<std::vector<float>>(world));
  std::vector<std::vector<std::vector<std::uint16_t>>> got_bf16(all.size(),
                                                                std::vector<std::vector<std::uint16_t>>(world));
  expect_no_errors(
      testing::run_nccl_ranks(world, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
        for (std::size_t p = 0; p < all.size(); ++p) {
          const std::int64_t n = all[p].back();
          const std::size_t count = static_cast<std::size_t>(n);
          BackendBuffer f32(backend, n, DType::F32);
          backend.upload(f32, f32_values_of(rank, count).data());
          nccl.all_gather(f32, all[p]);
          std::vector<float>& out = got_f32[p][static_cast<std::size_t>(rank)];
          out.resize(count);
          backend.download(out.data(), f32);

          std::vector<float> mine(count);
          for (std::size_t i = 0; i < count; ++i) mine[i] = bf16_exact_value(i, rank);
          BackendBuffer bf16(backend, n, DType::BF16);
          backend.upload(bf16, mine.data());
          nccl.all_gather(bf16, all[p]);
          std::vector<std::uint16_t>& words = got_bf16[p][static_cast<std::size_t>(rank)];
          words.resize(count);
          MINITRON_CUDA_CHECK(cudaStreamSynchronize(backend.context().stream()));
          if (count > 0)
            MINITRON_CUDA_CHECK(cudaMemcpy(words.data(), bf16.tensor().data, count * 2, cudaMemcpyDeviceToHost));
        }
      }));
  for (std::size_t p = 0; p < all.size(); ++p) {
    const std::vector<std::int64_t>& bounds = all[p];
    const std::size_t count = static_cast<std::size_t>(bounds.back());
    std::vector<float> want_f32(count);
    std::vector<std::uint16_t> want_bf16(count);
    for (int owner = 0; owner < world; ++owner) {
      const std::vector<float> v = f32_values_of(owner, count);
      for (std::int64_t i = bounds[static_cast<std::size_t>(owner)]; i < bounds[static_cast<std::size_t>(owner) + 1];
           ++i) {
        want_f32[static_cast<std::size_t>(i)] = v[static_cast<std::size_t>(i)];
        want_bf16[static_cast<std::size_t>(i)] = bf16_bits(bf16_exact_value(static_cast<std::size_t>(i), owner));
      }
    }
    for (int rank = 0; rank < world; ++rank) {
      EXPECT_TRUE(bits_of(got_f32[p][static_cast<std::size_t>(rank)]) == bits_of(want_f32))
          << "f32, partition " << p << ", rank " << rank;
      EXPECT_EQ(got_bf16[p][static_cast<std::size_t>(rank)], want_bf16) << "bf16, partition " << p << ", rank " << rank;
    }
  }
}

// Bounds check_shard_bounds refuses, on every rank and before NCCL, so the communicator still
// works after: too few, not reaching numel, decreasing.
TEST_P(NcclRanks, BadBoundsAreRefusedBeforeNccl) {
  const int world = GetParam();
  const std::vector<std::vector<std::int64_t>> bad = {
      {0, 10},
      world == 2 ? std::vector<std::int64_t>{0, 5, 9} : std::vector<std::int64_t>{0, 3, 5, 9},
      world == 2 ? std::vector<std::int64_t>{0, 6, 4} : std::vector<std::int64_t>{0, 6, 4, 10}};
  std::vector<std::vector<std::string>> refusals(static_cast<std::size_t>(world));
  std::vector<float> after(static_cast<std::size_t>(world), 0.0f);
  expect_no_errors(
      testing::run_nccl_ranks(world, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
        BackendBuffer t(backend, 10, DType::F32);
        backend.zero(t);
        for (const auto& bounds : bad) {
          for (int collective = 0; collective < 2; ++collective) {
            try {
              if (collective == 0)
                nccl.reduce_scatter_sum(t, bounds);
              else
                nccl.all_gather(t, bounds);
              refusals[static_cast<std::size_t>(rank)].push_back("accepted");
            } catch (const Error& e) {
              refusals[static_cast<std::size_t>(rank)].push_back(e.what());
            }
          }
        }
        const float one = 1.0f;
        BackendBuffer x(backend, 1, DType::F32);
        backend.upload(x, &one);
        nccl.all_reduce_sum(x);
        backend.download(&after[static_cast<std::size_t>(rank)], x);
      }));
  const std::string expected = str(world + 1, " non-decreasing offsets from 0 to 10 (one part per rank)");
  for (int rank = 0; rank < world; ++rank) {
    const auto& messages = refusals[static_cast<std::size_t>(rank)];
    ASSERT_EQ(messages.size(), 2 * bad.size()) << "rank " << rank;
    for (std::size_t k = 0; k < messages.size(); ++k) {
      EXPECT_NE(messages[k].find(k % 2 == 0 ? "NCCL reduce_scatter_sum" : "NCCL all_gather"), std::string::npos)
          << messages[k];
      EXPECT_NE(messages[k].find(expected), std::string::npos) << messages[k];
    }
    EXPECT_EQ(after[static_cast<std::size_t>(rank)], static_cast<float>(world)) << "rank " << rank;
  }
}

INSTANTIATE_TEST_SUITE_P(TwoAndThree, NcclRanks, ::testing::Values(2, 3));

TEST(NcclCommunicator, WorldSizeOneIsTheIdentity) {
  std::vector<float> got;
  std::vector<double> doubles;
  expect_no_errors(testing::run_nccl_ranks(1, [&](int, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
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
  expect_no_errors(testing::run_nccl_ranks(2, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
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

TEST(NcclCommunicator, ShardedCollectivesOnOneRankLeaveTheTensor) {
  std::vector<float> got(5);
  std::string refusal;
  expect_no_errors(testing::run_nccl_ranks(1, [&](int, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
    const std::vector<float> mine = {1.5f, -2.25f, 3.0f, 0.5f, 8.0f};
    BackendBuffer t(backend, 5, DType::F32);
    backend.upload(t, mine.data());
    const std::vector<std::int64_t> bounds = {0, 5};
    nccl.reduce_scatter_sum(t, bounds);
    nccl.all_gather(t, bounds);
    backend.download(got.data(), t);
    try {
      nccl.all_gather(t, std::vector<std::int64_t>{0, 4});  // the checks apply on one rank too
    } catch (const Error& e) {
      refusal = e.what();
    }
  }));
  EXPECT_EQ(got, (std::vector<float>{1.5f, -2.25f, 3.0f, 0.5f, 8.0f}));
  EXPECT_NE(refusal.find("NCCL all_gather"), std::string::npos) << refusal;
  EXPECT_NE(refusal.find("2 non-decreasing offsets from 0 to 5"), std::string::npos) << refusal;
}

TEST(NcclCommunicator, ReduceScatterRefusesNonF32OnEveryRankWithoutHanging) {
  std::vector<std::string> refusals(2);
  expect_no_errors(testing::run_nccl_ranks(2, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
    BackendBuffer bf16(backend, 128, DType::BF16);
    try {
      nccl.reduce_scatter_sum(bf16, shard_bounds(128, 2));
    } catch (const Error& e) {
      refusals[static_cast<std::size_t>(rank)] = e.what();
    }
    nccl.barrier();  // the refusal happened before NCCL: both ranks meet here
  }));
  for (const std::string& message : refusals) {
    EXPECT_NE(message.find("NCCL reduce_scatter_sum"), std::string::npos) << message;
    EXPECT_NE(message.find("dtype bf16"), std::string::npos) << message;
    EXPECT_NE(message.find("f32"), std::string::npos) << message;
  }
}

// Ranks that reach the same point with different collectives (one reduce-scatters, the other
// all-gathers) both get an error naming both calls, instead of hanging or mixing them.
TEST(NcclCommunicator, DifferentCollectivesAtOnePointAreAnErrorOnEveryRank) {
  const std::vector<std::string> errors =
      testing::run_nccl_ranks(2, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
        BackendBuffer t(backend, 128, DType::F32);
        backend.zero(t);
        if (rank == 0)
          nccl.reduce_scatter_sum(t, shard_bounds(128, 2));
        else
          nccl.all_gather(t, shard_bounds(128, 2));
      });
  for (const std::string& message : errors) {
    EXPECT_NE(message.find("invalid usage"), std::string::npos) << message;
    // Parts of 64 floats: 64 elements to reduce-scatter, 256 bytes to gather.
    EXPECT_NE(message.find("rank 0 called ncclReduceScatter with 64 x ncclFloat32"), std::string::npos) << message;
    EXPECT_NE(message.find("rank 1 called ncclAllGather with 256 x ncclUint8"), std::string::npos) << message;
  }
}

TEST(NcclCommunicator, MismatchedCountsAreAnErrorOnEveryRank) {
  const std::vector<std::string> errors =
      testing::run_nccl_ranks(2, [&](int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& nccl) {
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
      testing::run_nccl_ranks(2, [&](int rank, cuda::CudaBackend&, cuda::NcclCommunicator& nccl) {
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
      EXPECT_NE(std::string(e.what()).find(str("rank ", rank, " of world size ", world)), std::string::npos)
          << e.what();
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

// The rooted collectives of the emulated library on host buffers (emulated device memory is host
// memory), ranks as threads: ncclReduce writes the sum on the root only, ncclBroadcast the root's
// buffer everywhere, and the ranks must agree on the root.
TEST(EmulatedNccl, ReduceReachesTheRootOnlyAndBroadcastEveryRank) {
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  std::vector<std::vector<std::int32_t>> reduced = {{1, 2, 3}, {10, 20, 30}};
  std::vector<std::vector<std::int32_t>> received = {{-1, -1, -1}, {-1, -1, -1}};
  std::vector<std::vector<unsigned char>> broadcast = {{1, 2}, {7, 8}};
  std::vector<ncclResult_t> results(6, ncclInternalError);
  std::vector<std::string> mismatch(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      const auto r = static_cast<std::size_t>(rank);
      ncclComm_t comm = nullptr;
      results[r * 3] = ncclCommInitRank(&comm, 2, id, rank);
      if (results[r * 3] != ncclSuccess) return;
      // Root 1; rank 0's receive buffer is not the root's and must stay as it was.
      ncclResult_t result = ncclReduce(reduced[r].data(), received[r].data(), 3, ncclInt32, ncclSum, 1, comm, nullptr);
      if (result == ncclSuccess)
        result = ncclBroadcast(broadcast[r].data(), broadcast[r].data(), 2, ncclUint8, 1, comm, nullptr);
      results[r * 3 + 1] = result;
      // Each rank names itself the root.
      results[r * 3 + 2] = ncclBroadcast(broadcast[r].data(), broadcast[r].data(), 2, ncclUint8, rank, comm, nullptr);
      mismatch[r] = ncclGetLastError(comm);
      ncclCommDestroy(comm);
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(results, (std::vector<ncclResult_t>{ncclSuccess, ncclSuccess, ncclInvalidUsage, ncclSuccess, ncclSuccess,
                                                ncclInvalidUsage}));
  EXPECT_EQ(received[0], (std::vector<std::int32_t>{-1, -1, -1}));
  EXPECT_EQ(received[1], (std::vector<std::int32_t>{11, 22, 33}));
  EXPECT_EQ(broadcast[0], (std::vector<unsigned char>{7, 8}));
  EXPECT_EQ(broadcast[1], (std::vector<unsigned char>{7, 8}));
  for (const std::string& message : mismatch) {
    EXPECT_NE(message.find("ncclBroadcast #3: rank 0 passed 2 x ncclUint8 (root 0) but rank 1 passed 2 x ncclUint8 "
                           "(root 1)"),
              std::string::npos)
        << message;
  }
}

TEST(EmulatedNccl, RefusesRootsOutOfRangeAndTypesAKindDoesNotTake) {
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  ncclComm_t comm = nullptr;
  ASSERT_EQ(ncclCommInitRank(&comm, 1, id, 0), ncclSuccess);
  float x = 1.0f;
  std::uint16_t half = 0x3f80;
  EXPECT_EQ(ncclBroadcast(&x, &x, 1, ncclFloat32, 1, comm, nullptr), ncclInvalidArgument);  // root 1 of 1 rank
  EXPECT_NE(std::string(ncclGetLastError(comm)).find("ncclBroadcast: root 1 (expected 0 <= root < 1)"),
            std::string::npos)
      << ncclGetLastError(comm);
  EXPECT_EQ(ncclReduce(&x, &x, 1, ncclFloat32, ncclSum, -1, comm, nullptr), ncclInvalidArgument);
  // Bytes and bf16 are moved, never summed.
  EXPECT_EQ(ncclReduceScatter(&half, &half, 1, ncclBfloat16, ncclSum, comm, nullptr), ncclInvalidArgument);
  EXPECT_NE(std::string(ncclGetLastError(comm)).find("ncclReduceScatter: datatype"), std::string::npos);
  EXPECT_EQ(ncclReduce(&half, &half, 2, ncclUint8, ncclSum, 0, comm, nullptr), ncclInvalidArgument);
  EXPECT_EQ(ncclAllGather(&half, &half, 1, ncclFloat16, comm, nullptr), ncclInvalidArgument);
  EXPECT_EQ(ncclReduceScatter(&x, &x, 1, ncclFloat32, ncclMax, comm, nullptr), ncclInvalidArgument);
  // One rank: the whole is its own.
  EXPECT_EQ(ncclAllGather(&half, &half, 1, ncclBfloat16, comm, nullptr), ncclSuccess);
  EXPECT_EQ(half, 0x3f80);
  EXPECT_EQ(ncclCommDestroy(comm), ncclSuccess);
}

// What make_communicator gave two ranks of one engine, and what their one-element sum of 1 + 2
// came to; errors[rank] is "" when the rank finished.
struct TwoRanks {
  std::vector<std::string> kinds = std::vector<std::string>(2);
  std::vector<float> sums = std::vector<float>(2, 0.0f);
  std::vector<std::string> errors;
};

TwoRanks communicators_of(const std::function<std::unique_ptr<Backend>()>& make_engine) {
  TwoRanks out;
  const int port = testing::free_tcp_port();
  out.errors = testing::run_ranks(2, [&](std::int64_t rank) {
    const std::unique_ptr<Backend> backend = make_engine();
    const std::unique_ptr<Communicator> communicator =
        make_communicator(*backend, testing::local_environment(rank, 2, port));
    const auto r = static_cast<std::size_t>(rank);
    out.kinds[r] = dynamic_cast<cuda::NcclCommunicator*>(communicator.get()) != nullptr ? "nccl"
                   : dynamic_cast<HostCommunicator*>(communicator.get()) != nullptr     ? "host"
                                                                                        : "other";
    BackendBuffer t(*backend, 1, DType::F32);
    const float mine = static_cast<float>(rank + 1);
    backend->upload(t, &mine);
    communicator->all_reduce_sum(t);
    backend->download(&out.sums[r], t);
  });
  return out;
}

// make_communicator picks by where an engine's tensors live, not by its name: the emulated CUDA
// engine (named "cuda-emulated", device memory) gets NCCL, the CPU engine (host memory) sums over
// TCP.
TEST(MakeCommunicator, PicksNcclForDeviceMemoryAndTcpForHostMemory) {
  const TwoRanks device = communicators_of([] { return make_cuda_backend(0); });
#if defined(MINITRON_HAVE_CUDA_BACKEND)
  expect_no_errors(device.errors);
  EXPECT_EQ(device.kinds, std::vector<std::string>(2, "nccl"));
  EXPECT_EQ(device.sums, std::vector<float>(2, 3.0f));
#else
  // A build without the nvcc engine (the sanitizer builds) has no NCCL path in make_communicator.
  for (const std::string& error : device.errors)
    EXPECT_NE(error.find("this build has no CUDA engine"), std::string::npos) << error;
#endif
  const TwoRanks host = communicators_of([] { return make_backend("cpu"); });
  expect_no_errors(host.errors);
  EXPECT_EQ(host.kinds, std::vector<std::string>(2, "host"));
  EXPECT_EQ(host.sums, std::vector<float>(2, 3.0f));
}

}  // namespace
}  // namespace minitron
