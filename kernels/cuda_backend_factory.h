// The hook through which make_backend() reaches the CUDA engine. The CUDA engine (kernels/cuda/)
// defines these two functions and adds MINITRON_HAVE_CUDA_BACKEND=1 to minitron_kernels' compile
// definitions; until it does, make_backend("cuda") reports that this build has no CUDA engine.
#pragma once

#include <memory>

#include "model/backend.h"

namespace minitron {

// Throws Error naming why no GPU can be used (no device, driver too old, ...).
std::unique_ptr<Backend> make_cuda_backend();
// True when a CUDA device is present and usable.
bool cuda_device_available();

}  // namespace minitron
