// make_backend(): the one place that maps a device name to an engine.
#include "kernels/make_backend.h"

#include <charconv>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend_factory.h"

namespace minitron {

std::optional<int> cuda_device_ordinal(const std::string& device) {
  if (device == "cuda") return -1;
  const std::string prefix = "cuda:";
  if (device.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  const std::string number = device.substr(prefix.size());
  int ordinal = -1;
  const char* end = number.data() + number.size();
  // from_chars takes no sign or spaces, so "cuda:-1", "cuda:+1" and "cuda: 1" fail here too.
  const auto [stop, error] = std::from_chars(number.data(), end, ordinal);
  if (number.empty() || error != std::errc() || stop != end || ordinal < 0)
    fail_expected(str("device '", device, "'"), str("'", number, "' is not a device number"),
                  "cuda or cuda:N with N = 0, 1, ...");
  return ordinal;
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return std::make_unique<CpuBackend<float>>();
  if (device == "cpu-f64") return std::make_unique<CpuBackend<double>>();
  if (const std::optional<int> ordinal = cuda_device_ordinal(device)) {
#if defined(MINITRON_HAVE_CUDA_BACKEND)
    return make_cuda_backend(*ordinal);
#else
    fail_expected(str("device '", device, "'"), "this build has no CUDA engine yet",
                  "cpu or cpu-f64");
#endif
  }
  fail_expected(str("device '", device, "'"), "unknown device",
                "one of: cpu, cpu-f64, cuda, cuda:N");
}

std::string device_for_local_rank(const std::string& device,
                                  [[maybe_unused]] std::int64_t local_rank) {
  if (device != "cuda") return device;
#if defined(MINITRON_HAVE_CUDA_BACKEND)
  // Modulo the devices this process sees: a launcher that binds one GPU per task (Slurm's
  // --gpus-per-task, CUDA_VISIBLE_DEVICES per rank) leaves each process one device, cuda:0.
  if (const int count = cuda_device_count(); count > 0) return str("cuda:", local_rank % count);
#endif
  return device;  // make_backend says why there is no GPU
}

std::vector<std::string> available_devices() {
  std::vector<std::string> devices = {"cpu", "cpu-f64"};
#if defined(MINITRON_HAVE_CUDA_BACKEND)
  if (cuda_device_available()) devices.push_back("cuda");
#endif
  return devices;
}

}  // namespace minitron
