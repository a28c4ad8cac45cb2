// The NCCL communicator for the CUDA engine, built over a run's TCP bootstrap. Declared apart
// from nccl_communicator.h so that callers need neither nccl.h nor a build with NCCL:
// make_nccl_communicator.cu defines it in every build with the CUDA engine, and says so when
// NCCL is missing.
#pragma once

#include <memory>

#include "core/backend.h"
#include "dist/communicator.h"
#include "dist/tcp_group.h"

namespace minitron {

// NCCL over the ranks of `bootstrap`, for a backend whose tensors live in CUDA device memory:
// rank 0's ncclUniqueId travels over bootstrap, which is not needed once this returns. Throws
// Error when this build has no NCCL or `backend` is not the CUDA engine.
std::unique_ptr<Communicator> make_nccl_communicator(Backend& backend, TcpGroup& bootstrap);

}  // namespace minitron
