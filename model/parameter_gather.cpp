#include "model/parameter_gather.h"

#include <algorithm>

#include "util/error.h"

namespace minitron {

ParameterGather::ParameterGather(const ParameterTable& table, std::int64_t bucket_elements)
    : buckets_(gradient_buckets(table, bucket_elements)), total_(table.total_numel()) {
  tickets_.assign(buckets_.size(), 0);
  waiting_.assign(buckets_.size(), false);
  for (const ParamInfo& info : table.entries()) {
    if (info.layer < 0) continue;
    const auto l = static_cast<std::size_t>(info.layer);
    if (layers_.size() <= l) layers_.resize(l + 1, {total_, 0});
    layers_[l] = {std::min(layers_[l].first, info.offset), std::max(layers_[l].second, info.offset + info.numel)};
  }
}

void ParameterGather::wait_layer(std::int64_t layer) {
  MINITRON_ASSERT(layer >= 0 && layer < static_cast<std::int64_t>(layers_.size()), "no decoder layer ", layer);
  const auto& [begin, end] = layers_[static_cast<std::size_t>(layer)];
  wait(begin, end);
}

void ParameterGather::start(Communicator& communicator, Tensor parameters, std::span<const std::int64_t> bounds) {
  MINITRON_ASSERT(pending_ == 0, "a parameter gather started before the previous one was waited for");
  MINITRON_ASSERT(parameters.numel == total_, "parameter gather of ", parameters.numel, " elements for ", total_);
  communicator_ = &communicator;
  std::vector<std::int64_t> local(bounds.size());
  for (std::size_t b = 0; b < buckets_.size(); ++b) {
    const GradientBucket& bucket = buckets_[b];
    // Each rank's part of the bucket as the whole vector's bounds cut it: the same bytes land
    // where one all_gather of the whole vector puts them.
    for (std::size_t r = 0; r < bounds.size(); ++r)
      local[r] = std::clamp(bounds[r], bucket.begin, bucket.end) - bucket.begin;
    tickets_[b] = communicator.start_all_gather(parameters.slice(bucket.begin, bucket.end - bucket.begin), local);
    waiting_[b] = true;
  }
  pending_ = static_cast<std::int64_t>(buckets_.size());
}

void ParameterGather::wait(std::int64_t begin, std::int64_t end) {
  if (pending_ == 0) return;
  // The first bucket ending after `begin`, then every bucket starting before `end`.
  auto it = std::upper_bound(buckets_.begin(), buckets_.end(), begin,
                             [](std::int64_t o, const GradientBucket& b) { return o < b.end; });
  for (; it != buckets_.end() && it->begin < end; ++it) {
    const auto b = static_cast<std::size_t>(it - buckets_.begin());
    if (!waiting_[b]) continue;
    communicator_->wait_collective(tickets_[b]);
    waiting_[b] = false;
    --pending_;
  }
}

}  // namespace minitron
