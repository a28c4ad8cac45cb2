// TcpGroup: ranks as threads on 127.0.0.1. Collectives against sums worked out by hand, the
// rank-order summation, and the failures a run meets: a rank that never starts, a rank that
// dies mid-collective, a duplicate rank, disagreeing world sizes or collectives. all_gather
// against bytes from a rule of the test's own, with garbage outside each rank's own part.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <numeric>
#include <string>
#include <vector>

#include "dist/tcp_group.h"
#include "tests/dist/tcp_test_util.h"

namespace minitron {
namespace {

using testing::free_tcp_port;
using testing::local_environment;
using testing::run_ranks;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(TcpGroup, OneRankIsTheIdentity) {
  DistributedEnvironment env;  // world size 1: no sockets at all
  TcpGroup group(env);
  EXPECT_EQ(group.rank(), 0);
  EXPECT_EQ(group.world_size(), 1);
  std::vector<float> f{1.5f, -2.0f};
  std::vector<double> d{0.1};
  std::vector<std::byte> b{std::byte{7}};
  group.all_reduce_sum(f);
  group.all_reduce_sum(d);
  group.broadcast(b);
  group.barrier();
  EXPECT_EQ(f, (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(d, (std::vector<double>{0.1}));
  EXPECT_EQ(b[0], std::byte{7});
}

TEST(TcpGroup, Broadcast) {
  const int port = free_tcp_port();
  std::vector<std::vector<std::byte>> received(3);
  const auto errors = run_ranks(3, [&](std::int64_t rank) {
    TcpGroup group(local_environment(rank, 3, port));
    EXPECT_EQ(group.rank(), rank);
    EXPECT_EQ(group.world_size(), 3);
    // 300 000 bytes: more than one socket buffer, so partial sends and receives happen.
    std::vector<std::byte> bytes(300000, std::byte{0});
    if (rank == 0)
      for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>(i % 251);
    group.broadcast(bytes);
    received[static_cast<std::size_t>(rank)] = bytes;
  });
  EXPECT_EQ(errors, std::vector<std::string>(3));
  for (std::size_t r = 0; r < 3; ++r)
    for (std::size_t i = 0; i < received[r].size(); i += 997)
      ASSERT_EQ(received[r][i], static_cast<std::byte>(i % 251)) << "rank " << r << " byte " << i;
}

TEST(TcpGroup, FloatSums) {
  const int port = free_tcp_port();
  const std::size_t n = 100000;  // 400 kB each way: partial sends and receives
  std::vector<std::vector<float>> results(3);
  const auto errors = run_ranks(3, [&](std::int64_t rank) {
    TcpGroup group(local_environment(rank, 3, port));
    // Element 0 tells the order: 1e8, -1e8, 1 (ranks 0, 1, 2) sum to 1 in rank order, but to 0
    // from the other end (1 - 1e8 rounds to -1e8 in float, whose spacing there is 8).
    // Elements i >= 1 hold i * (rank + 1): small integers, exact in float, summing to 6 i.
    std::vector<float> values(n);
    values[0] = rank == 0 ? 1e8f : rank == 1 ? -1e8f : 1.0f;
    for (std::size_t i = 1; i < n; ++i) values[i] = static_cast<float>(i) * static_cast<float>(rank + 1);
    group.all_reduce_sum(values);
    results[static_cast<std::size_t>(rank)] = values;
  });
  EXPECT_EQ(errors, std::vector<std::string>(3));
  for (std::size_t r = 0; r < 3; ++r) {
    ASSERT_EQ(results[r].size(), n);
    EXPECT_EQ(results[r][0], 1.0f) << "rank " << r;
    for (std::size_t i = 1; i < n; ++i)
      ASSERT_EQ(results[r][i], 6.0f * static_cast<float>(i)) << "rank " << r << " i " << i;
  }
}

TEST(TcpGroup, DoubleSumsInRankOrder) {
  const int port = free_tcp_port();
  std::vector<std::vector<double>> results(3);
  const auto errors = run_ranks(3, [&](std::int64_t rank) {
    TcpGroup group(local_environment(rank, 3, port));
    // (0.1 + 0.2) + 0.3 is 0.6000000000000001 in double; (0.3 + 0.2) + 0.1 would be 0.6.
    std::vector<double> values{rank == 0 ? 0.1 : rank == 1 ? 0.2 : 0.3, static_cast<double>(rank)};
    group.all_reduce_sum(values);
    results[static_cast<std::size_t>(rank)] = values;
  });
  EXPECT_EQ(errors, std::vector<std::string>(3));
  for (const auto& v : results) EXPECT_EQ(v, (std::vector<double>{0.6000000000000001, 3.0}));
}

TEST(TcpGroup, Barrier) {
  const int port = free_tcp_port();
  std::atomic<int> arrived{0};
  std::vector<int> seen(3, -1);
  const auto errors = run_ranks(3, [&](std::int64_t rank) {
    TcpGroup group(local_environment(rank, 3, port));
    // The last rank arrives late: nobody may leave the barrier before it has arrived.
    if (rank == 2) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    ++arrived;
    group.barrier();
    seen[static_cast<std::size_t>(rank)] = arrived.load();
  });
  EXPECT_EQ(errors, std::vector<std::string>(3));
  EXPECT_EQ(seen, (std::vector<int>{3, 3, 3}));
}

TEST(TcpGroup, RankZeroAloneTimesOut) {
  const int port = free_tcp_port();
  const auto start = std::chrono::steady_clock::now();
  std::string error;
  try {
    TcpGroup group(local_environment(0, 2, port, 0.5));
  } catch (const Error& e) {
    error = e.what();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(error,
            "rank 0 listening on MASTER_ADDR:MASTER_PORT = 127.0.0.1:" + std::to_string(port) +
                ": 1 of 2 ranks joined within 0.5 s (MINITRON_DISTRIBUTED_TIMEOUT); missing rank(s) 1 (expected "
                "all WORLD_SIZE=2 ranks started (torchrun or srun start them) with this MASTER_ADDR and MASTER_PORT)");
  EXPECT_LT(seconds, 5.0);  // the wait is 0.5 s; 5 s leaves room for a loaded machine
}

TEST(TcpGroup, RankOneAloneTimesOut) {
  const int port = free_tcp_port();
  const auto start = std::chrono::steady_clock::now();
  std::string error;
  try {
    TcpGroup group(local_environment(1, 2, port, 0.5));
  } catch (const Error& e) {
    error = e.what();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(contains(error, "rank 1 connecting to rank 0 at MASTER_ADDR:MASTER_PORT = 127.0.0.1:" +
                                  std::to_string(port) + ": no connection within 0.5 s"))
      << error;
  EXPECT_TRUE(contains(error, "Connection refused")) << error;
  EXPECT_LT(seconds, 5.0);  // the wait is 0.5 s; 5 s leaves room for a loaded machine
}

TEST(TcpGroup, PeerThatLeavesMidCollectiveIsNamed) {
  const int port = free_tcp_port();
  const auto errors = run_ranks(3, [&](std::int64_t rank) {
    TcpGroup group(local_environment(rank, 3, port));
    if (rank == 2) return;  // leaves: its connection closes while the others sum
    std::vector<float> values(10, 1.0f);
    group.all_reduce_sum(values);
  });
  EXPECT_TRUE(contains(errors[0], "TcpGroup: rank 2 closed its connection during all_reduce_sum(float)")) << errors[0];
  // Rank 1 learns of it when rank 0's error closes rank 0's connections.
  EXPECT_TRUE(contains(errors[1], "rank 0")) << errors[1];
  EXPECT_EQ(errors[2], "");
}

TEST(TcpGroup, SendingToADeadRankZeroIsAnErrorNotSigpipe) {
  const int port = free_tcp_port();
  const auto errors = run_ranks(2, [&](std::int64_t rank) {
    TcpGroup group(local_environment(rank, 2, port));
    group.barrier();
    if (rank == 0) return;  // gone before rank 1 sends
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::vector<float> values(4 << 20, 1.0f);  // 16 MB: far beyond what a closed socket buffers
    group.all_reduce_sum(values);
  });
  EXPECT_EQ(errors[0], "");
  EXPECT_TRUE(contains(errors[1], "rank 0")) << errors[1];
  EXPECT_TRUE(contains(errors[1], "all_reduce_sum(float)")) << errors[1];
}

TEST(TcpGroup, DuplicateRankIsRefused) {
  const int port = free_tcp_port();
  // Threads 1 and 2 both claim rank 1 of 3.
  const auto errors = run_ranks(
      3, [&](std::int64_t thread) { TcpGroup group(local_environment(thread == 2 ? 1 : thread, 3, port, 10)); });
  EXPECT_TRUE(contains(errors[0], "rank 1 joining MASTER_ADDR:MASTER_PORT = 127.0.0.1:" + std::to_string(port) +
                                      ": a second process claims that rank"))
      << errors[0];
  EXPECT_TRUE(contains(errors[1], "rank 0")) << errors[1];
  EXPECT_TRUE(contains(errors[2], "rank 0")) << errors[2];
}

TEST(TcpGroup, MismatchedWorldSizeIsRefused) {
  const int port = free_tcp_port();
  const auto errors =
      run_ranks(2, [&](std::int64_t rank) { TcpGroup group(local_environment(rank, rank == 0 ? 2 : 3, port, 10)); });
  EXPECT_TRUE(
      contains(errors[0], "rank 1 joining MASTER_ADDR:MASTER_PORT = 127.0.0.1:" + std::to_string(port) +
                              ": it has world size 3, rank 0 has 2 (expected one WORLD_SIZE for every rank of a run)"))
      << errors[0];
  EXPECT_TRUE(contains(errors[1], "rank 0 closed its connection during the handshake")) << errors[1];
}

TEST(TcpGroup, MismatchedCollectivesAreAnError) {
  const int port = free_tcp_port();
  const auto errors = run_ranks(2, [&](std::int64_t rank) {
    TcpGroup group(local_environment(rank, 2, port));
    if (rank == 0) {
      group.barrier();
    } else {
      std::vector<double> values(3, 1.0);
      group.all_reduce_sum(values);
    }
  });
  EXPECT_EQ(errors[0],
            "TcpGroup: rank 1: it called all_reduce_sum(double) of 24 bytes while rank 0 called barrier of 4 bytes "
            "(expected every rank running the same collectives in the same order)");
  EXPECT_TRUE(contains(errors[1], "rank 0")) << errors[1];
}

// all_gather: part p of the bytes (between byte offsets bounds[p] and bounds[p + 1]) that rank
// p holds, as a rule of the test's own: every (part, offset) gives a byte, and the garbage a
// rank starts with outside its own part is that byte's complement, so no garbage byte can pass
// for a gathered one.
std::byte gathered_byte(std::size_t part, std::size_t i) { return static_cast<std::byte>((part * 89 + i * 7) % 251); }

// Each rank of `world` threads fills its own part and garbage elsewhere, all-gathers over
// `bounds`, and returns what it holds afterwards.
std::vector<std::vector<std::byte>> gather_as_threads(std::int64_t world, const std::vector<std::size_t>& bounds) {
  const int port = free_tcp_port();
  std::vector<std::vector<std::byte>> held(static_cast<std::size_t>(world));
  const auto errors = run_ranks(world, [&](std::int64_t rank) {
    TcpGroup group(local_environment(rank, world, port));
    std::vector<std::byte> bytes(bounds.back());
    for (std::size_t p = 0; p + 1 < bounds.size(); ++p)
      for (std::size_t i = bounds[p]; i < bounds[p + 1]; ++i)
        bytes[i] = p == static_cast<std::size_t>(rank) ? gathered_byte(p, i) : ~gathered_byte(p, i);
    group.all_gather(bytes, bounds);
    held[static_cast<std::size_t>(rank)] = bytes;
  });
  EXPECT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world)));
  return held;
}

// Every rank holds every part's bytes.
void expect_gathered(const std::vector<std::vector<std::byte>>& held, const std::vector<std::size_t>& bounds) {
  for (std::size_t r = 0; r < held.size(); ++r) {
    ASSERT_EQ(held[r].size(), bounds.back()) << "rank " << r;
    for (std::size_t p = 0; p + 1 < bounds.size(); ++p)
      for (std::size_t i = bounds[p]; i < bounds[p + 1]; ++i)
        ASSERT_EQ(held[r][i], gathered_byte(p, i)) << "rank " << r << " part " << p << " byte " << i;
  }
}

TEST(TcpGroupAllGather, TwoRanks) {
  const std::vector<std::size_t> bounds{0, 64, 200};
  expect_gathered(gather_as_threads(2, bounds), bounds);
}

TEST(TcpGroupAllGather, ThreeRanksOfUnequalParts) {
  // 300 000 bytes in parts of no common size or alignment: beyond one socket buffer each way,
  // so partial sends and receives happen.
  const std::vector<std::size_t> bounds{0, 100003, 190001, 300000};
  expect_gathered(gather_as_threads(3, bounds), bounds);
}

TEST(TcpGroupAllGather, EmptyParts) {
  // Rank 0's, the middle one's, the last one's and every part empty in turn.
  for (const std::vector<std::size_t>& bounds : std::vector<std::vector<std::size_t>>{
           {0, 0, 40, 100}, {0, 40, 40, 100}, {0, 40, 100, 100}, {0, 0, 0, 100}, {0, 0, 0, 0}}) {
    SCOPED_TRACE("bounds " + std::to_string(bounds[1]) + " " + std::to_string(bounds[2]) + " " +
                 std::to_string(bounds[3]));
    expect_gathered(gather_as_threads(3, bounds), bounds);
  }
}

TEST(TcpGroupAllGather, OneRankIsTheIdentity) {
  TcpGroup group(DistributedEnvironment{});
  std::vector<std::byte> bytes{std::byte{1}, std::byte{2}, std::byte{3}};
  group.all_gather(bytes, std::vector<std::size_t>{0, 3});
  EXPECT_EQ(bytes, (std::vector<std::byte>{std::byte{1}, std::byte{2}, std::byte{3}}));
  std::vector<std::byte> none;
  group.all_gather(none, std::vector<std::size_t>{0, 0});
  EXPECT_TRUE(none.empty());
}

TEST(TcpGroupAllGather, BoundsThatDoNotFitAreAnError) {
  TcpGroup group(DistributedEnvironment{});
  std::vector<std::byte> bytes(8);
  for (const std::vector<std::size_t>& bounds : std::vector<std::vector<std::size_t>>{{0, 4, 8}, {0, 7}, {1, 8}, {}}) {
    std::string error;
    try {
      group.all_gather(bytes, bounds);
    } catch (const Error& e) {
      error = e.what();
    }
    EXPECT_TRUE(
        contains(error, "TcpGroup::all_gather: " + std::to_string(bounds.size()) + " bounds for 1 ranks and 8 bytes"))
        << error;
  }
}

TEST(TcpGroupAllGather, AgainstAnotherCollectiveIsAnError) {
  const int port = free_tcp_port();
  const auto errors = run_ranks(2, [&](std::int64_t rank) {
    TcpGroup group(local_environment(rank, 2, port));
    if (rank == 0) {
      group.barrier();
    } else {
      std::vector<std::byte> bytes(24);
      group.all_gather(bytes, std::vector<std::size_t>{0, 8, 24});
    }
  });
  EXPECT_EQ(errors[0],
            "TcpGroup: rank 1: it called all_gather of 24 bytes while rank 0 called barrier of 4 bytes "
            "(expected every rank running the same collectives in the same order)");
  // Closed or reset, depending on whether rank 0 closed with rank 1's part still unread.
  EXPECT_TRUE(contains(errors[1], "rank 0")) << errors[1];
  EXPECT_TRUE(contains(errors[1], "during all_gather")) << errors[1];
}

TEST(TcpGroupAllGather, AnotherCollectiveAgainstItIsAnError) {
  const int port = free_tcp_port();
  const auto errors = run_ranks(2, [&](std::int64_t rank) {
    TcpGroup group(local_environment(rank, 2, port));
    if (rank == 0) {
      std::vector<std::byte> bytes(16);
      group.all_gather(bytes, std::vector<std::size_t>{0, 8, 16});
    } else {
      std::vector<float> values(4, 1.0f);
      group.all_reduce_sum(values);
    }
  });
  EXPECT_EQ(errors[0],
            "TcpGroup: rank 1: it called all_reduce_sum(float) of 16 bytes while rank 0 called all_gather of 16 bytes "
            "(expected every rank running the same collectives in the same order)");
  EXPECT_TRUE(contains(errors[1], "rank 0")) << errors[1];
  EXPECT_TRUE(contains(errors[1], "during all_reduce_sum(float)")) << errors[1];
}

TEST(TcpGroupAllGather, DisagreeingSizesAreAnError) {
  const int port = free_tcp_port();
  // Ranks 1 and 2 agree with each other, not with rank 0: rank 0 names the first it hears.
  const auto errors = run_ranks(3, [&](std::int64_t rank) {
    TcpGroup group(local_environment(rank, 3, port));
    const std::size_t size = rank == 0 ? 30 : 33;
    std::vector<std::byte> bytes(size);
    group.all_gather(bytes, std::vector<std::size_t>{0, 10, 20, size});
  });
  EXPECT_EQ(errors[0],
            "TcpGroup: rank 1: it called all_gather of 33 bytes while rank 0 called all_gather of 30 bytes "
            "(expected every rank running the same collectives in the same order)");
  EXPECT_TRUE(contains(errors[1], "rank 0")) << errors[1];
  EXPECT_TRUE(contains(errors[2], "rank 0")) << errors[2];
}

TEST(TcpGroupAllGather, DecreasingBoundsAreAnErrorNotACrash) {
  const int port = free_tcp_port();
  // The right count and ends, but part 1 would run from byte 10 back to byte 8.
  const auto errors = run_ranks(2, [&](std::int64_t rank) {
    TcpGroup group(local_environment(rank, 2, port));
    std::vector<std::byte> bytes(8);
    group.all_gather(bytes, std::vector<std::size_t>{0, 10, 8});
  });
  for (const std::string& error : errors)
    EXPECT_TRUE(contains(error, "TcpGroup::all_gather: 3 bounds for 2 ranks and 8 bytes")) << error;
}

TEST(TcpGroupAllGather, DisagreeingBoundsOfOneSizeAreAnErrorNotAHang) {
  // Rank 1 sends fewer bytes than rank 0 reads for its part (which would leave both waiting),
  // then more (which would leave bytes behind for the next collective to misread).
  for (const std::size_t rank_one_from : {10u, 6u}) {
    const int port = free_tcp_port();
    const auto errors = run_ranks(2, [&](std::int64_t rank) {
      TcpGroup group(local_environment(rank, 2, port));
      std::vector<std::byte> bytes(20);
      group.all_gather(bytes, std::vector<std::size_t>{0, rank == 0 ? 8 : rank_one_from, 20});
    });
    EXPECT_EQ(errors[0], "TcpGroup: rank 1: its all_gather part is bytes " + std::to_string(rank_one_from) +
                             " to 20, rank 0's bounds put it at 8 to 20 (expected every rank passing the same bounds)");
    EXPECT_TRUE(contains(errors[1], "rank 0")) << errors[1];
    EXPECT_TRUE(contains(errors[1], "during all_gather")) << errors[1];
  }
}

}  // namespace
}  // namespace minitron
