// make_nccl_communicator (dist/make_nccl_communicator.h): rank 0's ncclUniqueId over the run's
// TCP bootstrap, then NcclCommunicator. Its own file because it needs TcpGroup: a program or
// test that never calls it links neither.
#include "dist/make_nccl_communicator.h"

#if defined(MINITRON_HAVE_NCCL)
#include <span>

#include "dist/nccl_communicator.h"
#include "kernels/cuda/cuda_backend.h"
#endif

namespace minitron {

std::unique_ptr<Communicator> make_nccl_communicator(Backend& backend, TcpGroup& bootstrap) {
#if defined(MINITRON_HAVE_NCCL)
  auto* cuda_backend = dynamic_cast<cuda::CudaBackend*>(&backend);
  if (cuda_backend == nullptr)
    fail_expected("NCCL communicator", str("the backend is '", backend.name(), "'"),
                  "the CUDA engine (device cuda or cuda:N)");
  ncclUniqueId id{};
  if (bootstrap.rank() == 0) MINITRON_NCCL_CHECK(ncclGetUniqueId(&id));
  bootstrap.broadcast(std::as_writable_bytes(std::span(id.internal)));
  return std::make_unique<cuda::NcclCommunicator>(*cuda_backend, static_cast<int>(bootstrap.rank()),
                                                  static_cast<int>(bootstrap.world_size()), id);
#else
  (void)backend;
  (void)bootstrap;
  fail_expected("NCCL communicator", "this build has no NCCL",
                "nccl.h and libnccl in the CUDA toolkit, or cmake -DNCCL_ROOT=<folder with include/nccl.h "
                "and lib/libnccl.so*>, e.g. pip's nvidia-nccl-cu13 at site-packages/nvidia/nccl");
#endif
}

}  // namespace minitron
