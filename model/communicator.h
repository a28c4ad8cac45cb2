// The processes of one data-parallel training run and the collectives the trainer needs.
//
// Data parallelism as in llm.c and Megatron: every rank holds the whole model, trains on its
// own slice of each global batch (TrainLoader's rank/world_size), and the parameter gradients
// are summed over ranks before the optimizer step, so every rank applies the same update and
// the replicas stay identical without ever exchanging weights.
//
// A run is launched the way torchrun or Slurm launch one process per GPU; each process reads
// its place from the environment (util/distributed.h). Rank 0 is the only one that prints,
// validates and writes checkpoints.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "model/backend.h"
#include "util/distributed.h"

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
  // Returns once every rank has called it.
  virtual void barrier() = 0;
};

// World size 1: every collective is the identity.
class SingleProcessCommunicator final : public Communicator {
 public:
  std::int64_t rank() const override { return 0; }
  std::int64_t world_size() const override { return 1; }
  void all_reduce_sum(Tensor) override {}
  void all_reduce_sum(std::span<double>) override {}
  void barrier() override {}
};

// The communicator for `backend` in the run `environment` describes: SingleProcessCommunicator
// for world size 1; NCCL for the cuda backend; for the CPU engines, sums over the TCP
// connections of util/tcp_group.h. Blocks until every rank has joined (or fails naming
// MASTER_ADDR:MASTER_PORT after environment.timeout_seconds).
std::unique_ptr<Communicator> make_communicator(Backend& backend, const DistributedEnvironment& environment);

}  // namespace minitron
