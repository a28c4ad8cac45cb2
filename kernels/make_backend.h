// make_backend(): the one place that maps a device name to an engine, and the device names a
// build and machine offer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"

namespace minitron {

// "cpu" (fp32), "cpu-f64" (double, for gradient checks) and, when built with CUDA and a GPU
// is present, "cuda". Throws Error naming the device and why it is unavailable.
std::unique_ptr<Backend> make_backend(const std::string& device);
// The device one process of a data-parallel run uses: for "cuda", cuda:<local_rank modulo the
// devices it sees> (one GPU per process, as Megatron picks it); any other name unchanged.
std::string device_for_local_rank(const std::string& device, std::int64_t local_rank);
std::vector<std::string> available_devices();

}  // namespace minitron
