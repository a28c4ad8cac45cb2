// Streamed loading: safetensors tensors go from the mapped file to an engine's memory piece by
// piece through one fixed-size host chunk, converted to fp32 there and uploaded (the engine
// rounds to its storage dtype, as Backend::upload does for a whole buffer). Loading a model or a
// rank's part of a training state so never holds more than that chunk on the heap; the mapping
// itself is backed by the page cache, which the kernel can drop, not by the process's memory.
#pragma once

#include <cstdint>
#include <vector>

#include "core/backend.h"
#include "model/safetensors.h"

namespace minitron {

// The host chunk a streamed load goes through, reused across tensors and files. It grows to
// the largest piece asked of it, at most capacity() elements.
class HostStaging {
 public:
  // 4 Mi fp32 values (16 MiB): each upload's fixed cost (a stream synchronisation on the CUDA
  // engine) is then small beside the copy, and the chunk nothing beside a model of billions.
  static constexpr std::int64_t kDefaultCapacity = std::int64_t{1} << 22;
  explicit HostStaging(std::int64_t capacity = kDefaultCapacity);

  std::int64_t capacity() const { return capacity_; }
  // The most elements staged at once so far, for tests that compare it with a model's size.
  std::int64_t high_water() const { return high_water_; }

  // Elements [first, first + dst.numel) of `tensor` (a tensor of `file`) into dst, a tensor of
  // `backend` of any float dtype. The range must lie inside the tensor.
  void stream(const SafetensorsFile& file, const SafetensorsTensor& tensor, std::int64_t first, Backend& backend,
              Tensor dst);

 private:
  std::int64_t capacity_;
  std::int64_t high_water_ = 0;
  std::vector<float> chunk_;
};

// Host bytes a streamed load uses on the heap when the engine stores the destination as
// `storage`: the fp32 chunk and, for bf16, the engine's rounded copy of it (CudaBackend's upload
// rounds on the host before the copy to the device).
std::int64_t host_staging_bytes(DType storage, std::int64_t capacity = HostStaging::kDefaultCapacity);

}  // namespace minitron
