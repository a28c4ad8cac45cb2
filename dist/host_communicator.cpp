#include "dist/host_communicator.h"

#include <span>
#include <utility>
#include <vector>

#include "util/error.h"

namespace minitron {

HostCommunicator::HostCommunicator(Backend& backend, std::unique_ptr<TcpGroup> group)
    : backend_(backend), group_(std::move(group)) {
  MINITRON_ASSERT(group_ != nullptr, "HostCommunicator needs a TcpGroup");
}

namespace {

void require_f32(const char* collective, const Backend& backend, Tensor t) {
  if (t.dtype != DType::F32)
    fail_expected(
        str(collective, " on ", backend.name()), str("a tensor of dtype ", dtype_name(t.dtype)),
        "f32 (the cpu engine's parameters and gradients; the cpu-f64 engine is for gradient checks in one process)");
}

}  // namespace

void HostCommunicator::all_reduce_sum(Tensor t) {
  require_f32("all_reduce_sum", backend_, t);
  if (group_->world_size() == 1 || t.numel == 0) return;
  host_.resize(static_cast<std::size_t>(t.numel));
  backend_.download(host_.data(), t);
  group_->all_reduce_sum(std::span<float>(host_));
  backend_.upload(t, host_.data());
}

void HostCommunicator::reduce_scatter_sum(Tensor t, std::span<const std::int64_t> bounds) {
  require_f32("reduce_scatter_sum", backend_, t);
  check_shard_bounds("reduce_scatter_sum", bounds, world_size(), t.numel);
  all_reduce_sum(t);
}

void HostCommunicator::all_gather(Tensor t, std::span<const std::int64_t> bounds) {
  require_f32("all_gather", backend_, t);
  check_shard_bounds("all_gather", bounds, world_size(), t.numel);
  if (group_->world_size() == 1 || t.numel == 0) return;
  host_.resize(static_cast<std::size_t>(t.numel));
  backend_.download(host_.data(), t);
  std::vector<std::size_t> byte_bounds(bounds.size());
  for (std::size_t r = 0; r < bounds.size(); ++r) byte_bounds[r] = static_cast<std::size_t>(bounds[r]) * sizeof(float);
  group_->all_gather(std::as_writable_bytes(std::span<float>(host_)), byte_bounds);
  backend_.upload(t, host_.data());
}

void HostCommunicator::all_reduce_sum(std::span<double> values) { group_->all_reduce_sum(values); }

void HostCommunicator::barrier() { group_->barrier(); }

}  // namespace minitron
