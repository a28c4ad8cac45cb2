// What the emulator's runtime API (cuda_runtime.cpp) tells its scheduler.
#pragma once

#include <cstddef>

namespace minitron::emu::detail {

// The dynamic shared memory a launch of `kernel` may request: 48 KiB, or what
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n) allowed.
std::size_t max_dynamic_shared_bytes(const void* kernel);

}  // namespace minitron::emu::detail
