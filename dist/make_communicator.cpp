// make_communicator(): the one place that picks how an engine's ranks sum their gradients.
#include <memory>
#include <utility>

#include "dist/communicator.h"
#include "dist/host_communicator.h"
#include "dist/make_nccl_communicator.h"
#include "util/error.h"

namespace minitron {

std::unique_ptr<Communicator> make_communicator(Backend& backend, const DistributedEnvironment& environment) {
  if (environment.world_size == 1) return std::make_unique<SingleProcessCommunicator>();
  const bool device_memory = backend.memory_space() == MemorySpace::CudaDevice;
  // Refused before any rank waits for the others: every rank runs the same device, so all of
  // them stop here with this message.
  if (!device_memory && backend.gradient_dtype() != DType::F32)
    fail_expected(str("--device ", backend.name()),
                  str("its gradients are ", dtype_name(backend.gradient_dtype()),
                      "; training on several processes sums f32 gradients"),
                  "--device cpu (cpu-f64 is for gradient checks in one process)");
  auto group = std::make_unique<TcpGroup>(environment);
  if (device_memory) {
#if defined(MINITRON_HAVE_CUDA_BACKEND)
    return make_nccl_communicator(backend, *group);
#else
    fail_expected("--device cuda", "this build has no CUDA engine", "cpu");
#endif
  }
  return std::make_unique<HostCommunicator>(backend, std::move(group));
}

}  // namespace minitron
