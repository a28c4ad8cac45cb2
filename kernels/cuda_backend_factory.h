// The hook through which make_backend() reaches the CUDA engine. The CUDA engine (kernels/cuda/)
// defines these two functions and adds MINITRON_HAVE_CUDA_BACKEND=1 to minitron_kernels' compile
// definitions; until it does, make_backend("cuda") reports that this build has no CUDA engine.
#pragma once

#include <memory>

#include "model/backend.h"
#include "model/communicator.h"
#include "util/tcp_group.h"

namespace minitron {

// Throws Error naming why no GPU can be used (no device, driver too old, ...).
std::unique_ptr<Backend> make_cuda_backend();
// True when a CUDA device is present and usable.
bool cuda_device_available();
// NCCL over the ranks of `bootstrap`, for a backend made by make_cuda_backend(): rank 0's
// ncclUniqueId travels over bootstrap, which is not needed once this returns. Throws Error
// when this build has no NCCL.
std::unique_ptr<Communicator> make_nccl_communicator(Backend& backend, TcpGroup& bootstrap);

}  // namespace minitron
