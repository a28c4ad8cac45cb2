#include "model/tensor_streaming.h"

#include <algorithm>
#include <span>

#include "util/error.h"

namespace minitron {

HostStaging::HostStaging(std::int64_t capacity) : capacity_(capacity) {
  MINITRON_ASSERT(capacity > 0, "host staging of ", capacity, " elements");
}

void HostStaging::stream(const SafetensorsFile& file, const SafetensorsTensor& tensor, std::int64_t first,
                         Backend& backend, Tensor dst) {
  if (first < 0 || first > tensor.numel || dst.numel > tensor.numel - first)
    fail_expected(str(file.path().string(), ": tensor '", tensor.name, "'"),
                  str("elements ", first, " to ", first + dst.numel, " asked of ", tensor.numel),
                  "a range inside the tensor");
  const std::int64_t piece = std::min(capacity_, dst.numel);
  if (static_cast<std::int64_t>(chunk_.size()) < piece) chunk_.resize(static_cast<std::size_t>(piece));
  high_water_ = std::max(high_water_, piece);
  for (std::int64_t done = 0; done < dst.numel; done += piece) {
    const std::int64_t count = std::min(piece, dst.numel - done);
    const std::span<float> chunk(chunk_.data(), static_cast<std::size_t>(count));
    file.read_f32_range(tensor, first + done, chunk);
    backend.upload(dst.slice(done, count), chunk.data());
  }
}

std::int64_t host_staging_bytes(DType storage, std::int64_t capacity) {
  const std::int64_t rounded = storage == DType::BF16 ? capacity * static_cast<std::int64_t>(dtype_size(storage)) : 0;
  return capacity * static_cast<std::int64_t>(dtype_size(DType::F32)) + rounded;
}

}  // namespace minitron
