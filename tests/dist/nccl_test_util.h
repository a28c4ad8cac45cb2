// Ranks of an NcclCommunicator as threads of one test process, each with its own emulated CUDA
// backend, joined through one ncclUniqueId (the emulated NCCL of emu/nccl.cpp).
#pragma once

#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "dist/nccl_communicator.h"
#include "kernels/cuda/cuda_backend.h"

namespace minitron::testing {

using NcclRankBody = std::function<void(int rank, cuda::CudaBackend& backend, cuda::NcclCommunicator& communicator)>;

// Runs `body` on world_size threads, one rank each; returns each rank's error message ("" when
// it finished). Assertions stay on the calling thread: bodies only record what they saw.
inline std::vector<std::string> run_nccl_ranks(int world_size, const NcclRankBody& body) {
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

}  // namespace minitron::testing
