// make_backend("cuda") through the real (nvcc-built) engine: on a machine without a GPU it must
// fail with one clear line naming the reason; with a GPU it must give a working "cuda" backend.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend_factory.h"
#include "kernels/make_backend.h"

namespace minitron {
namespace {

TEST(CudaFactory, ClearErrorWithoutDeviceOrWorkingBackend) {
  if (!cuda_device_available()) {
    try {
      make_backend("cuda");
      FAIL() << "make_backend(\"cuda\") succeeded without a device";
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.rfind("cuda: no CUDA device found (cudaGetDeviceCount: ", 0), 0u)
          << message;
    }
    const std::vector<std::string> devices = available_devices();
    EXPECT_EQ(std::count(devices.begin(), devices.end(), "cuda"), 0);
    return;
  }
  auto backend = make_backend("cuda");
  EXPECT_EQ(backend->name(), "cuda");
  EXPECT_EQ(backend->activation_dtype(), DType::BF16);
  EXPECT_EQ(backend->gradient_dtype(), DType::F32);
  BackendBuffer t(*backend, 3, DType::BF16);
  const std::vector<float> values = {1.0f, -2.5f, 3.0f};
  backend->upload(t, values.data());
  std::vector<float> back(3);
  backend->download(back.data(), t);
  EXPECT_EQ(back, values);  // all three are exact in bf16
}

}  // namespace
}  // namespace minitron
