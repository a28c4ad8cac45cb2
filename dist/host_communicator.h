// The collectives of the CPU engines (and of any engine without NCCL): every tensor goes to the
// host as fp32, is summed over the ranks of a TcpGroup (on rank 0, in rank order, so every rank
// receives the same bits) and comes back. The CPU engines train models small enough that
// moving their gradients through one process is not the bottleneck; the cuda engine sums with
// NCCL instead (make_nccl_communicator).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/backend.h"
#include "dist/communicator.h"
#include "dist/tcp_group.h"

namespace minitron {

class HostCommunicator final : public Communicator {
 public:
  // The staging copies to and from the host refuse other dtypes with an Error naming them.
  HostCommunicator(Backend& backend, std::unique_ptr<TcpGroup> group);

  std::int64_t rank() const override { return group_->rank(); }
  std::int64_t world_size() const override { return group_->world_size(); }
  // t must be F32 (an Error naming the dtype otherwise).
  void all_reduce_sum(Tensor t) override;
  void all_reduce_sum(std::span<double> values) override;
  // The whole of t is summed (each rank only needs its part, but the star moves every byte
  // through rank 0 either way). F32.
  void reduce_scatter_sum(Tensor t, std::span<const std::int64_t> bounds) override;
  // F32 (the CPU engines' parameters): each rank's part goes to rank 0, which sends the whole.
  void all_gather(Tensor t, std::span<const std::int64_t> bounds) override;
  void barrier() override;

 private:
  Backend& backend_;
  std::unique_ptr<TcpGroup> group_;
  std::vector<float> host_;  // staging, kept between calls: gradients are summed every step
};

}  // namespace minitron
