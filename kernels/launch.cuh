// The one way kernels are launched. Under nvcc it is <<<grid, block, shared, stream>>>; under
// the CUDA emulator (MINITRON_EMULATE, host C++) the same kernel source runs on CPU fibers, so
// every kernel is tested without a GPU. Dynamic shared memory is declared only through
// MINITRON_DYNAMIC_SHARED so the emulator can poison it (a plain `extern __shared__` does not
// compile there, on purpose).
#pragma once

#include <cstddef>
#include <utility>

#if defined(MINITRON_EMULATE)
#include "emu/emulator.h"
#define MINITRON_DYNAMIC_SHARED(T, name) T* name = ::minitron::emu::dynamic_shared<T>()
#else
#include <cuda_runtime.h>
#define MINITRON_DYNAMIC_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char minitron_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(minitron_dynamic_smem_)
#endif

#include "util/error.h"

namespace minitron::cuda {

// Checks a CUDA runtime call, naming the call site.
#define MINITRON_CUDA_CHECK(call)                                                              \
  do {                                                                                         \
    cudaError_t minitron_cuda_status_ = (call);                                                \
    if (minitron_cuda_status_ != cudaSuccess)                                                  \
      ::minitron::fail(::minitron::str("CUDA error at ", __FILE__, ":", __LINE__, ": ", #call, \
                                       ": ", cudaGetErrorString(minitron_cuda_status_)));      \
  } while (0)

template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, std::size_t shared_bytes,
            cudaStream_t stream, Args&&... args) {
#if defined(MINITRON_EMULATE)
  ::minitron::emu::launch(kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
#else
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  MINITRON_CUDA_CHECK(cudaGetLastError());
#endif
}

}  // namespace minitron::cuda
