// HostCommunicator's halves of an all-reduce for the sharded optimizer (reduce_scatter_sum and
// all_gather over a rank partition), ranks as threads of one process on the cpu engine over
// TCP on 127.0.0.1: sums against a loop of the test's own, gathered parts bit for bit against
// the bits each rank put in, and the refusals with their exact messages.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dist/host_communicator.h"
#include "kernels/make_backend.h"
#include "tests/dist/tcp_test_util.h"
#include "tests/util/error_test_util.h"

namespace minitron {
namespace {

using Bounds = std::vector<std::int64_t>;
using testing::error_of;

// Runs body(rank, backend, communicator) on one thread per rank, each with its own cpu engine.
// Returns each rank's error ("" when it returned normally).
std::vector<std::string> run_communicators(std::int64_t world,
                                           const std::function<void(std::int64_t, Backend&, HostCommunicator&)>& body) {
  const int port = testing::free_tcp_port();
  return testing::run_ranks(world, [&](std::int64_t rank) {
    auto backend = make_backend("cpu");
    HostCommunicator communicator(*backend, std::make_unique<TcpGroup>(testing::local_environment(rank, world, port)));
    body(rank, *backend, communicator);
  });
}

std::vector<float> download(Backend& backend, Tensor t) {
  std::vector<float> host(static_cast<std::size_t>(t.numel));
  backend.download(host.data(), t);
  return host;
}

// Each rank r holds r * 1000 + i at element i and reduce-scatters; returns what each holds after.
std::vector<std::vector<float>> reduce_scatter_as_threads(std::int64_t world, const Bounds& bounds) {
  std::vector<std::vector<float>> held(static_cast<std::size_t>(world));
  const auto errors =
      run_communicators(world, [&](std::int64_t rank, Backend& backend, HostCommunicator& communicator) {
        std::vector<float> values(static_cast<std::size_t>(bounds.back()));
        for (std::size_t i = 0; i < values.size(); ++i)
          values[i] = static_cast<float>(rank * 1000 + static_cast<std::int64_t>(i));
        BackendBuffer t(backend, bounds.back(), DType::F32);
        backend.upload(t, values.data());
        communicator.reduce_scatter_sum(t, bounds);
        held[static_cast<std::size_t>(rank)] = download(backend, t);
      });
  EXPECT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world)));
  return held;
}

// Rank r's part [bounds[r], bounds[r + 1]) is the sum over ranks, added up here in integers
// (every term and sum is an integer below 2^24, so the float results are exact).
void expect_own_parts_summed(const std::vector<std::vector<float>>& held, const Bounds& bounds) {
  const auto world = static_cast<std::int64_t>(held.size());
  for (std::int64_t r = 0; r < world; ++r) {
    const auto& h = held[static_cast<std::size_t>(r)];
    ASSERT_EQ(static_cast<std::int64_t>(h.size()), bounds.back()) << "rank " << r;
    for (std::int64_t i = bounds[static_cast<std::size_t>(r)]; i < bounds[static_cast<std::size_t>(r) + 1]; ++i) {
      std::int64_t sum = 0;
      for (std::int64_t q = 0; q < world; ++q) sum += q * 1000 + i;
      ASSERT_EQ(h[static_cast<std::size_t>(i)], static_cast<float>(sum)) << "rank " << r << " element " << i;
    }
  }
}

TEST(HostCommunicatorReduceScatter, TwoRanks) {
  // Element 5: 0 * 1000 + 5 + 1 * 1000 + 5 = 1010, in rank 0's part; element 150: 1300 (rank 1's).
  const Bounds bounds{0, 128, 300};
  const auto held = reduce_scatter_as_threads(2, bounds);
  ASSERT_EQ(held.size(), 2u);
  EXPECT_EQ(held[0][5], 1010.0f);
  EXPECT_EQ(held[1][150], 1300.0f);
  expect_own_parts_summed(held, bounds);
}

TEST(HostCommunicatorReduceScatter, ThreeRanks) {
  // Element 70: 70 + 1070 + 2070 = 3210, in rank 1's part; element 199: 3597 (rank 2's).
  const Bounds bounds{0, 64, 128, 200};
  const auto held = reduce_scatter_as_threads(3, bounds);
  ASSERT_EQ(held.size(), 3u);
  EXPECT_EQ(held[1][70], 3210.0f);
  EXPECT_EQ(held[2][199], 3597.0f);
  expect_own_parts_summed(held, bounds);
}

TEST(HostCommunicatorReduceScatter, ThreeRanksWithEmptyAndUnevenParts) {
  expect_own_parts_summed(reduce_scatter_as_threads(3, Bounds{0, 0, 77, 100}), Bounds{0, 0, 77, 100});
  // 400 kB each way: partial sends and receives.
  expect_own_parts_summed(reduce_scatter_as_threads(3, Bounds{0, 33331, 66667, 100000}),
                          Bounds{0, 33331, 66667, 100000});
}

// all_gather moves bits, not values: the bits of element i in part p, as a rule of the test's
// own. Among them negative zero, infinities, subnormals and NaNs (quiet and signalling, with
// payloads), which an arithmetic copy could change; the garbage a rank starts with outside its
// own part is the complement, so no garbage element can pass for a gathered one.
std::uint32_t gathered_bits(std::size_t p, std::size_t i) {
  static constexpr std::uint32_t kSpecial[] = {0x80000000u, 0x7F800000u, 0xFF800000u, 0x00000001u,
                                               0x807FFFFFu, 0x7FC00001u, 0x7F800001u, 0xFFA5A5A5u};
  if (i % 3 == 0) return kSpecial[(i / 3 + p) % 8];
  return static_cast<std::uint32_t>(p * 0x9E3779B1u) ^ static_cast<std::uint32_t>(i * 0x85EBCA6Bu);
}

float from_bits(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

std::uint32_t to_bits(float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

std::vector<std::vector<float>> gather_as_threads(std::int64_t world, const Bounds& bounds) {
  std::vector<std::vector<float>> held(static_cast<std::size_t>(world));
  const auto errors =
      run_communicators(world, [&](std::int64_t rank, Backend& backend, HostCommunicator& communicator) {
        std::vector<float> values(static_cast<std::size_t>(bounds.back()));
        for (std::size_t p = 0; p + 1 < bounds.size(); ++p)
          for (auto i = static_cast<std::size_t>(bounds[p]); i < static_cast<std::size_t>(bounds[p + 1]); ++i)
            values[i] = from_bits(p == static_cast<std::size_t>(rank) ? gathered_bits(p, i) : ~gathered_bits(p, i));
        BackendBuffer t(backend, bounds.back(), DType::F32);
        backend.upload(t, values.data());
        communicator.all_gather(t, bounds);
        held[static_cast<std::size_t>(rank)] = download(backend, t);
      });
  EXPECT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world)));
  return held;
}

void expect_gathered(const std::vector<std::vector<float>>& held, const Bounds& bounds) {
  for (std::size_t r = 0; r < held.size(); ++r) {
    ASSERT_EQ(static_cast<std::int64_t>(held[r].size()), bounds.back()) << "rank " << r;
    for (std::size_t p = 0; p + 1 < bounds.size(); ++p)
      for (auto i = static_cast<std::size_t>(bounds[p]); i < static_cast<std::size_t>(bounds[p + 1]); ++i)
        ASSERT_EQ(to_bits(held[r][i]), gathered_bits(p, i)) << "rank " << r << " part " << p << " element " << i;
  }
}

TEST(HostCommunicatorAllGather, TwoRanks) {
  const Bounds bounds{0, 128, 300};
  expect_gathered(gather_as_threads(2, bounds), bounds);
}

TEST(HostCommunicatorAllGather, ThreeRanks) {
  const Bounds bounds{0, 64, 128, 200};
  expect_gathered(gather_as_threads(3, bounds), bounds);
}

TEST(HostCommunicatorAllGather, ThreeRanksWithEmptyAndUnevenParts) {
  for (const Bounds& bounds : std::vector<Bounds>{{0, 0, 0, 100}, {0, 50, 50, 100}, {0, 30, 100, 100}}) {
    SCOPED_TRACE("bounds " + std::to_string(bounds[1]) + " " + std::to_string(bounds[2]));
    expect_gathered(gather_as_threads(3, bounds), bounds);
  }
  // 400 kB: partial sends and receives.
  expect_gathered(gather_as_threads(3, Bounds{0, 33331, 66667, 100000}), Bounds{0, 33331, 66667, 100000});
}

TEST(HostCommunicator, EmptyTensorsLeaveTheRanksInStep) {
  std::vector<std::vector<float>> after(2);
  const auto errors = run_communicators(2, [&](std::int64_t rank, Backend& backend, HostCommunicator& communicator) {
    BackendBuffer empty(backend, 0, DType::F32);
    communicator.reduce_scatter_sum(empty, Bounds{0, 0, 0});
    communicator.all_gather(empty, Bounds{0, 0, 0});
    // The next collective still pairs up: the empty calls sent nothing, or sent alike.
    std::vector<float> values{static_cast<float>(rank + 1)};
    BackendBuffer one(backend, 1, DType::F32);
    backend.upload(one, values.data());
    communicator.all_reduce_sum(one);
    after[static_cast<std::size_t>(rank)] = download(backend, one);
  });
  EXPECT_EQ(errors, std::vector<std::string>(2));
  EXPECT_EQ(after, (std::vector<std::vector<float>>{{3.0f}, {3.0f}}));  // 1 + 2
}

TEST(HostCommunicator, OneRankLeavesItsTensorAsItIs) {
  auto backend = make_backend("cpu");
  HostCommunicator communicator(*backend, std::make_unique<TcpGroup>(DistributedEnvironment{}));
  const std::vector<float> values{1.5f, -0.0f, 3.25f};
  BackendBuffer t(*backend, 3, DType::F32);
  backend->upload(t, values.data());
  communicator.reduce_scatter_sum(t, Bounds{0, 3});
  EXPECT_EQ(download(*backend, t), values);
  communicator.all_gather(t, Bounds{0, 3});
  const auto after = download(*backend, t);
  ASSERT_EQ(after.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(to_bits(after[i]), to_bits(values[i])) << i;
}

TEST(HostCommunicator, RefusesTensorsOtherThanF32InBothHalves) {
  auto f64_backend = make_backend("cpu-f64");
  HostCommunicator f64(*f64_backend, std::make_unique<TcpGroup>(DistributedEnvironment{}));
  BackendBuffer doubles(*f64_backend, 4, DType::F64);
  EXPECT_EQ(error_of([&] {
              f64.reduce_scatter_sum(doubles, Bounds{0, 4});
            }),
            "reduce_scatter_sum on cpu-f64: a tensor of dtype f64 (expected f32 (the cpu engine's parameters and "
            "gradients; the cpu-f64 engine is for gradient checks in one process))");
  EXPECT_EQ(error_of([&] {
              f64.all_gather(doubles, Bounds{0, 4});
            }),
            "all_gather on cpu-f64: a tensor of dtype f64 (expected f32 (the cpu engine's parameters and gradients; "
            "the cpu-f64 engine is for gradient checks in one process))");
  // The dtype is checked before the bounds: a tensor of the wrong kind is named first.
  EXPECT_EQ(error_of([&] {
              f64.all_gather(doubles, Bounds{0, 3});
            }),
            "all_gather on cpu-f64: a tensor of dtype f64 (expected f32 (the cpu engine's parameters and gradients; "
            "the cpu-f64 engine is for gradient checks in one process))");

  auto cpu = make_backend("cpu");
  HostCommunicator f32(*cpu, std::make_unique<TcpGroup>(DistributedEnvironment{}));
  BackendBuffer halves(*cpu, 4, DType::BF16);
  EXPECT_EQ(error_of([&] {
              f32.all_gather(halves, Bounds{0, 4});
            }),
            "all_gather on cpu: a tensor of dtype bf16 (expected f32 (the cpu engine's parameters and gradients; "
            "the cpu-f64 engine is for gradient checks in one process))");
}

TEST(HostCommunicator, RefusesBadBoundsBeforeSendingAnything) {
  std::vector<std::vector<std::string>> refusals(2);
  std::vector<std::vector<float>> after(2);
  const auto errors = run_communicators(2, [&](std::int64_t rank, Backend& backend, HostCommunicator& communicator) {
    BackendBuffer t(backend, 100, DType::F32);
    auto& mine = refusals[static_cast<std::size_t>(rank)];
    mine.push_back(error_of([&] { communicator.reduce_scatter_sum(t, Bounds{0, 100}); }));
    mine.push_back(error_of([&] { communicator.reduce_scatter_sum(t, Bounds{0, 64, 99}); }));
    mine.push_back(error_of([&] { communicator.all_gather(t, Bounds{0, 120, 100}); }));
    mine.push_back(error_of([&] { communicator.all_gather(t, Bounds{5, 64, 100}); }));
    // Nothing went over the wire: a sum right after still pairs up.
    std::vector<float> values{static_cast<float>(rank + 1)};
    BackendBuffer one(backend, 1, DType::F32);
    backend.upload(one, values.data());
    communicator.all_reduce_sum(one);
    after[static_cast<std::size_t>(rank)] = download(backend, one);
  });
  EXPECT_EQ(errors, std::vector<std::string>(2));
  const std::vector<std::string> expected{
      "reduce_scatter_sum: bounds {0, 100} (expected 3 non-decreasing offsets from 0 to 100 (one part per rank))",
      "reduce_scatter_sum: bounds {0, 64, 99} (expected 3 non-decreasing offsets from 0 to 100 (one part per rank))",
      "all_gather: bounds {0, 120, 100} (expected 3 non-decreasing offsets from 0 to 100 (one part per rank))",
      "all_gather: bounds {5, 64, 100} (expected 3 non-decreasing offsets from 0 to 100 (one part per rank))"};
  EXPECT_EQ(refusals[0], expected);
  EXPECT_EQ(refusals[1], expected);
  EXPECT_EQ(after, (std::vector<std::vector<float>>{{3.0f}, {3.0f}}));  // 1 + 2
  // One process checks the bounds too, though it has nothing to exchange.
  auto backend = make_backend("cpu");
  HostCommunicator communicator(*backend, std::make_unique<TcpGroup>(DistributedEnvironment{}));
  BackendBuffer t(*backend, 10, DType::F32);
  EXPECT_EQ(error_of([&] { communicator.all_gather(t, Bounds{0, 10}); }), "");
  EXPECT_EQ(error_of([&] {
              communicator.reduce_scatter_sum(t, Bounds{0, 11});
            }),
            "reduce_scatter_sum: bounds {0, 11} (expected 2 non-decreasing offsets from 0 to 10 (one part per rank))");
}

}  // namespace
}  // namespace minitron
