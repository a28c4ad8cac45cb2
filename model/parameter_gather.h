// The all-gather of the parameters after a sharded optimizer step (dist/communicator.h: each
// rank updated its own part), overlapped with the next forward (Megatron-LM's
// --overlap-param-gather; DeepSpeed ZeRO-3's prefetch of the next layers).
//
// The flat vector is cut into the buckets of gradient_buckets() (whole layers, the embedding
// alone). start() starts every bucket's all-gather, first to last (the embedding first), on the
// communicator's own stream (Communicator::start_all_gather: behind an event on the compute
// stream, after the optimizer's update); the next forward then makes the compute stream wait for
// a bucket's gather (an event: the host never blocks) only just before the first op that reads a
// parameter in it: the embedding before its lookup, layer l's bucket before layer l, the final
// norm's and the LM head's at the end. So while layer l computes, the gathers of the buckets
// after it run. Backward, and the recompute of activations inside it, come after the forward on
// the compute stream, so they see every bucket gathered.
//
// The gather moves bytes into the parameters in place (no second copy, no staging buffer): each
// bucket's parts are the whole vector's parts (shard_bounds) cut to the bucket, so every rank
// ends with the bits a single all_gather of the whole vector gives. Engines without streams
// (the CPU engine over TCP) gather each bucket at once.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "dist/communicator.h"
#include "model/gradient_buckets.h"
#include "model/parameters.h"

namespace minitron {

class ParameterGather {
 public:
  ParameterGather(const ParameterTable& table, std::int64_t bucket_elements);

  const std::vector<GradientBucket>& buckets() const { return buckets_; }

  // Starts the gather of every bucket of `parameters` (the whole flat vector) over the ranks of
  // `communicator`, whose parts are `bounds`; the previous gather must have been waited for.
  void start(Communicator& communicator, Tensor parameters, std::span<const std::int64_t> bounds);
  // Ops queued on the backend after this call see elements [begin, end) gathered.
  void wait(std::int64_t begin, std::int64_t end);
  void wait_layer(std::int64_t layer);  // every tensor of decoder layer `layer`
  void wait_all() { wait(0, total_); }
  bool pending() const { return pending_ > 0; }

 private:
  std::vector<GradientBucket> buckets_;
  std::int64_t total_ = 0;
  std::vector<std::pair<std::int64_t, std::int64_t>> layers_;  // per decoder layer: [begin, end) of its tensors
  Communicator* communicator_ = nullptr;                       // of the gather started last
  std::vector<std::int64_t> tickets_;                          // per bucket
  std::vector<bool> waiting_;                                  // per bucket: started and not yet waited for
  std::int64_t pending_ = 0;                                   // buckets waiting_
};

}  // namespace minitron
