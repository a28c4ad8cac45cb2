// Device names for the CUDA engine: "cuda" and PyTorch's "cuda:N", parsed by make_backend and
// range-checked by make_cuda_backend against the device count (the emulator has one device),
// and each data-parallel process's device.
#include <gtest/gtest.h>

#include <optional>
#include <string>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_backend_factory.h"
#include "kernels/cuda/cuda_context.h"
#include "kernels/make_backend.h"
#include "tests/util/error_test_util.h"

namespace minitron {
namespace {

TEST(CudaDeviceSelection, ParsesCudaAndCudaN) {
  EXPECT_EQ(cuda_device_ordinal("cuda"), std::optional<int>(-1));
  EXPECT_EQ(cuda_device_ordinal("cuda:0"), std::optional<int>(0));
  EXPECT_EQ(cuda_device_ordinal("cuda:12"), std::optional<int>(12));
  EXPECT_EQ(cuda_device_ordinal("cpu"), std::nullopt);
  EXPECT_EQ(cuda_device_ordinal("cudax"), std::nullopt);
  for (const char* bad :
       {"cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda: 1", "cuda:1x", "cuda:99999999999"}) {
    const std::string message = testing::error_of([&] { cuda_device_ordinal(bad); });
    EXPECT_NE(message.find(str("device '", bad, "'")), std::string::npos) << message;
    EXPECT_NE(message.find("is not a device number"), std::string::npos) << message;
    EXPECT_NE(message.find("cuda:N"), std::string::npos) << message;
  }
}

TEST(CudaDeviceSelection, MakeBackendRefusesMalformedNames) {
  EXPECT_NE(testing::error_of([] { make_backend("cuda:x"); }).find("'x' is not a device number"),
            std::string::npos);
  EXPECT_NE(testing::error_of([] { make_backend("cudax"); }).find("unknown device"),
            std::string::npos);
}

TEST(CudaDeviceSelection, OrdinalInRangeOrErrorNamingTheCount) {
  auto backend = make_cuda_backend(0);
  EXPECT_EQ(backend->name(), "cuda-emulated");
  EXPECT_EQ(dynamic_cast<cuda::CudaBackend&>(*backend).context().device(), 0);
  EXPECT_EQ(dynamic_cast<cuda::CudaBackend&>(*make_cuda_backend()).context().device(), 0);
  const std::string message = testing::error_of([] { make_cuda_backend(7); });
  EXPECT_NE(message.find("device 'cuda:7'"), std::string::npos) << message;
  EXPECT_NE(message.find("this machine has 1 CUDA device"), std::string::npos) << message;
  EXPECT_NE(message.find("cuda:0"), std::string::npos) << message;
}

TEST(CudaDeviceSelection, ThroughMakeBackend) {
#if defined(MINITRON_HAVE_CUDA_BACKEND)
  EXPECT_EQ(make_backend("cuda:0")->name(), "cuda-emulated");
  EXPECT_EQ(make_backend("cuda")->name(), "cuda-emulated");
  EXPECT_NE(
      testing::error_of([] { make_backend("cuda:7"); }).find("this machine has 1 CUDA device"),
      std::string::npos);
#else
  // A build without the nvcc engine (the sanitizer builds): make_backend has no CUDA engine.
  EXPECT_NE(testing::error_of([] { make_backend("cuda:0"); }).find("no CUDA engine"),
            std::string::npos);
#endif
}

TEST(CudaDeviceSelection, LocalRankModuloTheVisibleDevices) {
  EXPECT_EQ(device_for_local_rank("cpu", 3), "cpu");
  EXPECT_EQ(device_for_local_rank("cuda:1", 3), "cuda:1");  // an explicit choice stays
#if defined(MINITRON_HAVE_CUDA_BACKEND)
  EXPECT_EQ(cuda_device_count(), 1);
  // One visible device, as under Slurm's --gpus-per-task=1: every local rank uses cuda:0.
  EXPECT_EQ(device_for_local_rank("cuda", 0), "cuda:0");
  EXPECT_EQ(device_for_local_rank("cuda", 3), "cuda:0");
#endif
}

}  // namespace
}  // namespace minitron
