#include "kernels/host_communicator.h"

#include <utility>

#include "util/error.h"

namespace minitron {

HostCommunicator::HostCommunicator(Backend& backend, std::unique_ptr<TcpGroup> group)
    : backend_(backend), group_(std::move(group)) {
  MINITRON_ASSERT(group_ != nullptr, "HostCommunicator needs a TcpGroup");
}

void HostCommunicator::all_reduce_sum(Tensor t) {
  if (t.dtype != DType::F32)
    fail_expected(str("all_reduce_sum on ", backend_.name()), str("a tensor of dtype ", dtype_name(t.dtype)),
                  "f32 (gradients of the cpu engine; the cpu-f64 engine is for gradient checks in one process)");
  if (group_->world_size() == 1 || t.numel == 0) return;
  host_.resize(static_cast<std::size_t>(t.numel));
  backend_.download(host_.data(), t);
  group_->all_reduce_sum(std::span<float>(host_));
  backend_.upload(t, host_.data());
}

void HostCommunicator::all_reduce_sum(std::span<double> values) { group_->all_reduce_sum(values); }

void HostCommunicator::barrier() { group_->barrier(); }

}  // namespace minitron
