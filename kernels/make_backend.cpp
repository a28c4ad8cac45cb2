// make_backend(): the one place that maps a device name to an engine.
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu_backend.h"
#include "kernels/cuda_backend_factory.h"

namespace minitron {

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return std::make_unique<CpuBackend<float>>();
  if (device == "cpu-f64") return std::make_unique<CpuBackend<double>>();
  if (device == "cuda") {
#if defined(MINITRON_HAVE_CUDA_BACKEND)
    return make_cuda_backend();
#else
    fail_expected("device 'cuda'", "this build has no CUDA engine yet", "cpu or cpu-f64");
#endif
  }
  fail_expected(str("device '", device, "'"), "unknown device", "one of: cpu, cpu-f64, cuda");
}

std::vector<std::string> available_devices() {
  std::vector<std::string> devices = {"cpu", "cpu-f64"};
#if defined(MINITRON_HAVE_CUDA_BACKEND)
  if (cuda_device_available()) devices.push_back("cuda");
#endif
  return devices;
}

}  // namespace minitron
