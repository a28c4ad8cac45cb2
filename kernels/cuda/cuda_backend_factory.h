// The hook through which make_backend() reaches the CUDA engine. The CUDA engine (kernels/cuda/)
// defines make_cuda_backend, cuda_device_available and cuda_device_count and adds
// MINITRON_HAVE_CUDA_BACKEND=1 to minitron_kernels' compile definitions; until it does,
// make_backend("cuda") reports that this build has no CUDA engine.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "core/backend.h"

namespace minitron {

// The device ordinal a device name asks for: -1 for "cuda" (the calling thread's current
// device), N for "cuda:N" (PyTorch's spelling); nullopt for a name that is not a CUDA device.
// "cuda:" followed by anything but a decimal number is an Error. Defined in make_backend.cpp,
// so it exists in every build.
std::optional<int> cuda_device_ordinal(const std::string& device);

// The engine on device `ordinal` (cudaSetDevice on the calling thread, which must be the thread
// that uses the backend), or on the current device for -1. Throws Error naming why no GPU can
// be used (no device, driver too old, ...) or, for an ordinal out of range, how many exist.
std::unique_ptr<Backend> make_cuda_backend(int ordinal = -1);
// True when a CUDA device is present and usable.
bool cuda_device_available();
// The usable CUDA devices; 0 when none is.
int cuda_device_count();

}  // namespace minitron
