// Everything the CUDA engine holds per device: one stream, the cuBLASLt handle and its
// workspace, the GEMM plan cache and a growable scratch buffer for kernels that need one.
// One object owned by the backend and passed down: no global mutable state.
#pragma once

#include <cstddef>
#include <memory>

#include <cublasLt.h>

#include "kernels/launch.cuh"

namespace minitron::cuda {

class Gemm;

// Checks a cuBLAS(Lt) call, naming the call site.
#define MINITRON_CUBLAS_CHECK(call)                                                              \
  do {                                                                                           \
    cublasStatus_t minitron_cublas_status_ = (call);                                             \
    if (minitron_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                        \
      ::minitron::fail(::minitron::str("cuBLAS error at ", __FILE__, ":", __LINE__, ": ", #call, \
                                       ": status ", static_cast<int>(minitron_cublas_status_))); \
  } while (0)

// Device memory that grows to the largest request seen and is reused after that: kernels that
// need scratch (embedding backward, RMSNorm weight partials, attention D, sum of squares) take
// it from here, so after the first step no op allocates.
class DeviceScratch {
 public:
  DeviceScratch() = default;
  ~DeviceScratch();
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  // At least `bytes` bytes, 256-byte aligned; valid until the next call with a larger size.
  void* get(std::size_t bytes, cudaStream_t stream);

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

class CudaContext {
 public:
  // Makes `device` the calling thread's current device (cudaSetDevice) and creates everything
  // there; -1 keeps the current device. The backend must be used from a thread whose current
  // device is this one: CUDA's current device is per host thread.
  explicit CudaContext(int device = -1);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cublasLtHandle_t cublas() const { return cublas_; }
  Gemm& gemm() { return *gemm_; }
  void* scratch(std::size_t bytes) { return scratch_.get(bytes, stream_); }

 private:
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t cublas_ = nullptr;
  void* cublas_workspace_ = nullptr;
  std::unique_ptr<Gemm> gemm_;
  DeviceScratch scratch_;
};

}  // namespace minitron::cuda
