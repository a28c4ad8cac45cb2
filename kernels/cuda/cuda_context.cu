// The CUDA engine's per-device state (see cuda_context.h).
#include "kernels/cuda/cuda_context.h"

#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/gemm.h"

namespace minitron::cuda {

DeviceScratch::~DeviceScratch() {
  if (data_) cudaFree(data_);
}

void* DeviceScratch::get(std::size_t bytes, cudaStream_t stream) {
  if (bytes <= bytes_) return data_;
  if (data_) {
    // Kernels queued earlier may still read the old buffer.
    MINITRON_CUDA_CHECK(cudaStreamSynchronize(stream));
    MINITRON_CUDA_CHECK(cudaFree(data_));
    data_ = nullptr;
    bytes_ = 0;
  }
  MINITRON_CUDA_CHECK(cudaMalloc(&data_, bytes));
  bytes_ = bytes;
  return data_;
}

CudaContext::CudaContext(int device) {
  if (device >= 0) {
    MINITRON_CUDA_CHECK(cudaSetDevice(device));
    device_ = device;
  } else {
    MINITRON_CUDA_CHECK(cudaGetDevice(&device_));
  }
  MINITRON_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  MINITRON_CUBLAS_CHECK(cublasLtCreate(&cublas_));
  MINITRON_CUDA_CHECK(
      cudaMalloc(&cublas_workspace_, static_cast<std::size_t>(kCublasWorkspaceBytes)));
  gemm_ = std::make_unique<Gemm>(cublas_, cublas_workspace_,
                                 static_cast<std::size_t>(kCublasWorkspaceBytes));
}

CudaContext::~CudaContext() {
  // Destructors must not throw: errors here are reported by the next CUDA call, if any.
  cudaStreamSynchronize(stream_);
  gemm_.reset();
  if (cublas_workspace_) cudaFree(cublas_workspace_);
  if (cublas_) cublasLtDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

}  // namespace minitron::cuda
