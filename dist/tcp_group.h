// The ranks of one run connected over TCP in a star around rank 0: rank 0 listens on
// MASTER_PORT and every other rank connects to MASTER_ADDR:MASTER_PORT and introduces itself.
// It bootstraps NCCL (rank 0 broadcasts the ncclUniqueId) and is the whole transport of the
// CPU engines' collectives, which move little data: sums are formed on rank 0 in rank order
// (deterministic) and sent back, so every rank receives the same bits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "dist/environment.h"

namespace minitron {

class TcpGroup {
 public:
  // Blocks until all world_size ranks are connected, or fails (an Error naming
  // MASTER_ADDR:MASTER_PORT and the rank count seen) after environment.timeout_seconds.
  // A peer that closes its connection mid-run is an Error naming its rank.
  explicit TcpGroup(const DistributedEnvironment& environment);
  ~TcpGroup();
  TcpGroup(const TcpGroup&) = delete;
  TcpGroup& operator=(const TcpGroup&) = delete;

  std::int64_t rank() const;
  std::int64_t world_size() const;
  // Rank 0's bytes replace every other rank's; all ranks pass the same size.
  void broadcast(std::span<std::byte> bytes);
  // Elementwise sums over ranks, added in rank order (0 + 1 + ...) on rank 0.
  void all_reduce_sum(std::span<float> values);
  void all_reduce_sum(std::span<double> values);
  // Rank r's bytes [bounds[r], bounds[r + 1]) replace that part on every rank (world_size + 1
  // non-decreasing byte offsets from 0 to bytes.size(); all ranks pass the same: a rank that
  // places its own part elsewhere than rank 0 does is an Error naming it).
  void all_gather(std::span<std::byte> bytes, std::span<const std::size_t> bounds);
  void barrier();

 private:
  DistributedEnvironment environment_;
  int listener_ = -1;
  std::vector<int> peers_;  // rank 0: the socket of rank r at r (index 0 unused); others: [rank 0's]
};

}  // namespace minitron
