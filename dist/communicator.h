// The processes of one data-parallel training run and the collectives the trainer needs.
//
// Data parallelism as in llm.c and Megatron: every rank holds the whole model and trains on its
// own slice of each global batch (TrainLoader's rank/world_size). The optimizer state is
// sharded as in ZeRO stage 1 (Rajbhandari et al., 2020; llm.c's multi-GPU path): rank r keeps
// the AdamW moments and fp32 master weights of its part shard_bounds()[r] .. [r + 1] of the
// flat parameter vector only. Each step the gradients are reduce-scattered (every rank gets
// the sum over ranks of its own part), each rank updates its part, and the parameters are
// all-gathered, so the replicas stay identical while the AdamW state, 12 of the 18 bytes per
// parameter of the cuda engine, is divided by the number of ranks. ZeRO stage 2 divides the 4
// bytes of fp32 gradient too: backward reduce-scatters the gradients bucket by bucket as they are
// complete (start_reduce_scatter_sum below; model/gradient_buckets.h).
//
// A run is launched the way torchrun or Slurm launch one process per GPU; each process reads
// its place from the environment (dist/environment.h). Rank 0 is the only one that prints,
// validates and writes checkpoints.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/backend.h"
#include "dist/environment.h"
#include "util/error.h"

namespace minitron {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::int64_t rank() const = 0;
  virtual std::int64_t world_size() const = 0;
  // In place: t (F32, in the memory of the backend the communicator was made for) becomes the
  // elementwise sum of every rank's t. Every rank receives the same bits.
  virtual void all_reduce_sum(Tensor t) = 0;
  // The same for a few host values (losses, token counts).
  virtual void all_reduce_sum(std::span<double> values) = 0;
  // The two halves of an all-reduce, over t split into world_size() parts: part r is
  // [bounds[r], bounds[r + 1]), with bounds as check_shard_bounds() requires. Both work in
  // place and every rank passes the same bounds.
  // reduce_scatter_sum: part rank() of t becomes the elementwise sum over ranks of that part;
  // the other parts are left unspecified. F32 (an Error naming the dtype otherwise).
  virtual void reduce_scatter_sum(Tensor t, std::span<const std::int64_t> bounds) = 0;
  // all_gather: every part r of every rank's t becomes rank r's part r, bit for bit. Any dtype
  // the engine stores parameters in (F32 on the CPU engine, which refuses others; BF16 or F32
  // on cuda).
  virtual void all_gather(Tensor t, std::span<const std::int64_t> bounds) = 0;
  // Returns once every rank has called it.
  virtual void barrier() = 0;
  // reduce_scatter_sum, started behind every op queued on the backend so far and left running
  // beside the ops queued after it (ZeRO-2's gradient buckets, model/gradient_buckets.h):
  // engines with streams (NCCL) queue it on a communication stream of their own after an event
  // on the backend's stream; others reduce at once. t must not be read or written until
  // wait_collective(the returned ticket). Every rank starts the same reductions in the same order.
  virtual std::int64_t start_reduce_scatter_sum(Tensor t, std::span<const std::int64_t> bounds) {
    reduce_scatter_sum(t, bounds);
    return 0;
  }
  // all_gather, started the same way (behind every op queued so far, beside the ops queued
  // after it): the bf16 parameters of the next forward, bucket by bucket after the optimizer
  // step (model/parameter_gather.h). t must not be read or written until
  // wait_collective(the returned ticket). Every rank starts the same gathers in the same order.
  virtual std::int64_t start_all_gather(Tensor t, std::span<const std::int64_t> bounds) {
    all_gather(t, bounds);
    return 0;
  }
  // Ops queued on the backend after this call see the result of the started collective
  // `ticket` (and of those started before it), without the host waiting for it.
  virtual void wait_collective(std::int64_t /*ticket*/) {}
};

// World size 1: every collective is the identity.
class SingleProcessCommunicator final : public Communicator {
 public:
  std::int64_t rank() const override { return 0; }
  std::int64_t world_size() const override { return 1; }
  void all_reduce_sum(Tensor) override {}
  void all_reduce_sum(std::span<double>) override {}
  void reduce_scatter_sum(Tensor, std::span<const std::int64_t>) override {}
  void all_gather(Tensor, std::span<const std::int64_t>) override {}
  void barrier() override {}
};

// The parts of a flat vector of n elements that the ranks of a sharded optimizer own: world_size
// + 1 offsets from 0 to n. Every rank but the last gets the same count, a multiple of
// kShardAlignment elements, and the last one the rest (under kShardAlignment x world_size more):
// equal parts let NCCL's reduce-scatter and all-gather move all but that short tail, and every
// part then starts 64 elements apart from an aligned base (256 bytes of fp32, 128 of bf16), as
// the vectorised kernels want. A vector shorter than kShardAlignment x world_size is all the
// last rank's.
inline constexpr std::int64_t kShardAlignment = 64;
inline std::vector<std::int64_t> shard_bounds(std::int64_t n, std::int64_t world_size) {
  MINITRON_ASSERT(n >= 0 && world_size >= 1, "shard_bounds(", n, ", ", world_size, ")");
  const std::int64_t part = n / (kShardAlignment * world_size) * kShardAlignment;
  std::vector<std::int64_t> bounds(static_cast<std::size_t>(world_size) + 1);
  for (std::int64_t r = 0; r < world_size; ++r) bounds[static_cast<std::size_t>(r)] = r * part;
  bounds.back() = n;
  return bounds;
}

// Refuses (an Error naming `what`) bounds that are not world_size + 1 non-decreasing offsets
// from 0 to numel.
inline void check_shard_bounds(const char* what, std::span<const std::int64_t> bounds, std::int64_t world_size,
                               std::int64_t numel) {
  bool ok = bounds.size() == static_cast<std::size_t>(world_size) + 1 && bounds.front() == 0 && bounds.back() == numel;
  for (std::size_t r = 1; ok && r < bounds.size(); ++r) ok = bounds[r - 1] <= bounds[r];
  if (!ok) {
    std::string given;
    for (std::size_t r = 0; r < bounds.size(); ++r) given += str(r > 0 ? ", " : "", bounds[r]);
    fail_expected(what, str("bounds {", given, "}"),
                  str(world_size + 1, " non-decreasing offsets from 0 to ", numel, " (one part per rank)"));
  }
}

// The communicator for `backend` in the run `environment` describes: SingleProcessCommunicator
// for world size 1; otherwise by where the backend's tensors live (Backend::memory_space), NCCL
// for CUDA device memory and, for host memory, sums over the TCP connections of
// dist/tcp_group.h. Blocks until every rank has joined (or fails naming MASTER_ADDR:MASTER_PORT
// after environment.timeout_seconds).
std::unique_ptr<Communicator> make_communicator(Backend& backend, const DistributedEnvironment& environment);

}  // namespace minitron
