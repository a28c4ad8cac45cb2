// A non-owning view of backend memory. Model, train and prune code pass these around and
// never dereference them: only the Backend that allocated a tensor touches its elements
// (host memory for the CPU backend, device memory for the CUDA backend).
#pragma once

#include <cstddef>
#include <cstdint>

#include "util/error.h"

namespace minitron {

// Storage types. F32 is the CPU engine's type and every backend's accumulation type; F64
// exists so the CPU backend can run gradient checks in double; BF16 is the CUDA engine's
// storage for parameters and activations; I32 holds token ids.
enum class DType : std::uint8_t { F32, F64, BF16, I32 };

constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::I32: return 4;
  }
  return 0;
}

constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
  }
  return "?";
}

struct Tensor {
  void* data = nullptr;
  std::int64_t numel = 0;
  DType dtype = DType::F32;

  bool empty() const { return data == nullptr; }
  std::size_t bytes() const { return static_cast<std::size_t>(numel) * dtype_size(dtype); }

  // Elements [offset, offset + count) as their own view.
  Tensor slice(std::int64_t offset, std::int64_t count) const {
    MINITRON_ASSERT(offset >= 0 && count >= 0 && offset + count <= numel, "slice ", offset, "+",
                    count, " of ", numel);
    return Tensor{static_cast<char*>(data) + static_cast<std::size_t>(offset) * dtype_size(dtype),
                  count, dtype};
  }

  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
};

}  // namespace minitron
