// Where a Training-mode model's parameter gradients live, and how they are summed over the ranks
// of a data-parallel run (dist/communicator.h). The model writes every parameter gradient through
// destination() and says when a parameter's gradient of the micro-batch is complete; the optimizer
// reads the summed gradient of its part of the flat vector.
//
// ZeRO stage 1 (GradientSharding::stage 1, and any one-process run): one fp32 buffer of the whole
// flat vector on every rank, accumulated over the micro-batches of a step; AdamW::step
// reduce-scatters it once, after the last backward.
//
// ZeRO stage 2 (Rajbhandari et al., 2020; DeepSpeed's reduce_scatter with contiguous gradients):
// each rank keeps fp32 gradients of its own part only (shard_bounds, as the optimizer state).
// The flat vector is cut into buckets, each a contiguous run of whole "units" (a decoder layer's
// tensors, the embedding, the final norm, the LM head), which backward() completes one after the
// other from the end of the vector to its start. A bucket's gradient of one micro-batch is
// written into its slot, a place in one arena (gradient_slot_layout); once the model completes
// the bucket, its reduce-scatter starts (Communicator::start_reduce_scatter_sum: NCCL's own
// stream, behind an event on the compute stream) while backward goes on into the next bucket in
// another place. A place is reused only after the compute stream has waited for its reduction
// (an event, not a device synchronisation) and added this rank's part of the sum into the shard.
// The arena holds two buckets in a row (the one being written and the one reducing: alternate
// buckets at its bottom and its top), not two of the largest: for Llama-3.1-8B the 128256 x 4096
// LM head and the final norm with the last layer, 2.8 GiB of fp32 where two slots of the head
// took 3.9. Bucket boundaries inside a parameter would not bound it further: the head's and the
// embedding's gradients are each written whole by every chunk of rows (head_backward, the
// embedding's scatter), so each is in memory whole until it is complete.
//
// The sums: a bucket's elements are summed over the ranks by the same collective, in the same
// order, as stage 1's one reduce-scatter of the whole vector sums them, so with one micro-batch
// per step stage 2 gives stage 1's gradient to the bit (rank order on TCP and the emulated NCCL).
// With several micro-batches stage 2 sums each micro-batch over the ranks and then the
// micro-batches (stage 1: the micro-batches on each rank, then the ranks): the same sum in
// another association, equal to a few fp32 ulps.
//
// No memset of the gradients per step: the first write of a parameter's gradient in a step
// (stage 1) or in a micro-batch's slot (stage 2) overwrites (GEMMs with beta = 0), later writes
// accumulate; ops that can only accumulate (norm and embedding weight gradients) get their
// parameter zeroed first by destination(). end_micro_batch() refuses a parameter that was never
// written, whose gradient would be whatever the buffer held before.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "core/backend.h"
#include "dist/communicator.h"
#include "model/parameters.h"

namespace minitron {

// Elements per bucket unless a unit alone is larger: 2^25 fp32 = 128 MiB, near DeepSpeed's
// default reduce_bucket_size (5e8 elements is its ZeRO-2 setting for large models; Megatron's
// DDP bucket is 4e7). Larger buckets move fewer, longer collectives; smaller ones start sooner
// and need less slot memory.
inline constexpr std::int64_t kDefaultBucketElements = std::int64_t{1} << 25;

struct GradientSharding {
  int stage = 1;                         // 1: whole gradient on every rank; 2: this rank's part only
  Communicator* communicator = nullptr;  // stage 2: the ranks (must outlive the model)
  std::int64_t bucket_elements = kDefaultBucketElements;
  // After a sharded optimizer step, the parameters are all-gathered bucket by bucket beside the
  // next forward (model/parameter_gather.h); false: in one all_gather of the whole vector on
  // the compute stream, in the step (the same bits, without the overlap).
  bool overlap_parameter_gather = true;
};

// One bucket: [begin, end) of the flat vector, whole units.
struct GradientBucket {
  std::int64_t begin = 0, end = 0;
};

// The buckets of stage 2 for `table`, first to last in the flat vector: whole units, each
// bucket at least bucket_elements unless it reaches the vector's start, closed before the
// embedding (which a tied LM head writes first and completes last, so it stays alone).
std::vector<GradientBucket> gradient_buckets(const ParameterTable& table, std::int64_t bucket_elements);

// Where stage 2 writes each bucket's gradient: one arena of `elements`, bucket b at offsets[b].
// In backward's order (from the last bucket) the k-th goes to the arena's bottom for even k and
// to its top for odd k, in a span as large as the largest two buckets in a row, so a bucket never
// overlaps the one before it (still reducing while it is written); the bucket two before, in the
// same place, is reduced and added by then. A tied head's bucket (the embedding) is written all
// backward long: it lies below that span, in place 2. slots[b]: the place (0 bottom, 1 top, 2).
struct GradientSlotLayout {
  std::vector<std::int64_t> offsets;
  std::vector<int> slots;
  std::int64_t elements = 0;
};
GradientSlotLayout gradient_slot_layout(const ParameterTable& table, const std::vector<GradientBucket>& buckets);

class GradientBuckets {
 public:
  GradientBuckets(Backend& backend, const ParameterTable& table, const GradientSharding& sharding);
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  // Bytes rank `rank` of world_size allocates (the memory plan): gradients, the whole vector
  // (stage 1) or the rank's part (stage 2); slots, stage 2's arena of buckets being written and
  // reduced (gradient_slot_layout).
  struct DeviceBytes {
    std::int64_t gradients = 0, slots = 0;
  };
  static DeviceBytes device_bytes(const ParameterTable& table, DType gradient, int stage, std::int64_t bucket_elements,
                                  std::int64_t world_size, std::int64_t rank);

  int stage() const { return stage_; }
  const std::vector<GradientBucket>& buckets() const { return buckets_; }

  // ---- the model's side ----
  // A new optimizer step: no parameter has a gradient yet (nothing is cleared).
  void begin_step();
  // Where the gradient of the parameter at `offset` (its whole numel) goes in this micro-batch.
  // accumulate: false for the first write (the op overwrites: beta = 0), true after. With
  // zero_first the destination is zeroed on a first write and accumulate is true (for ops that
  // only add into their output).
  struct Destination {
    Tensor tensor;
    bool accumulate = false;
  };
  Destination destination(std::int64_t offset, std::int64_t numel, bool zero_first = false);
  // The gradient of `count` consecutive parameters from the one at `offset` (a fused
  // projection's weights, adjacent in the table and so in every gradient layout: the whole vector,
  // a bucket's slot), as one tensor of their numel together, for one GEMM that writes them all.
  // They must share their state (all written before in this micro-batch, or none) and a bucket.
  Destination destination_of_run(std::int64_t offset, std::int64_t count);
  // The parameter at `offset` has all of this micro-batch's gradient: stage 2 starts the
  // reduction of a bucket once every parameter in it is complete.
  void complete(std::int64_t offset);
  // The model's backward() is over: refuses an unwritten parameter or an incomplete bucket;
  // stage 2 waits for every reduction (events) and adds its part into the shard.
  void end_micro_batch();

  // ---- the optimizer's side ----
  // Stage 1: the whole vector, each rank's own (summed by the optimizer's reduce-scatter).
  // Stage 2: this rank's part [bounds[rank], bounds[rank + 1]), summed over ranks.
  Tensor gradients() const { return storage_.tensor(); }
  // Stage 2: the part bounds (the optimizer's); {0, n} for stage 1.
  const std::vector<std::int64_t>& shard_bounds() const { return bounds_; }

 private:
  // A place of the arena (GradientSlotLayout::slots): the bucket in it.
  struct Slot {
    int bucket = -1;          // the bucket written into it, -1 when free
    std::int64_t ticket = 0;  // its reduction's (Communicator::start_reduce_scatter_sum)
  };
  std::size_t parameter_index(std::int64_t offset) const;  // the table entry at `offset`
  int bucket_of(std::int64_t offset) const;
  Tensor slot_tensor(int bucket) const;  // the bucket's place in the arena
  int acquire_slot(int bucket);          // the bucket's place, once the bucket there before is retired
  void retire(Slot& slot);               // waits for its reduction and adds this rank's part into the shard

  Backend& backend_;
  const ParameterTable& table_;
  int stage_;
  Communicator* communicator_ = nullptr;
  std::vector<std::int64_t> bounds_;
  std::vector<std::int64_t> offsets_;  // of table entries, ascending
  std::vector<bool> written_;          // per entry: written in this step (1) / micro-batch (2)
  BackendBuffer storage_;              // stage 1: the whole vector; stage 2: this rank's part
  // Stage 2.
  std::vector<GradientBucket> buckets_;
  std::vector<int> bucket_slot_;          // per bucket: its slot this micro-batch, or -1
  std::vector<bool> completed_;           // per entry: complete in this micro-batch
  std::vector<std::int64_t> unfinished_;  // per bucket: parameters not yet complete
  std::vector<std::int64_t> parameters_per_bucket_;
  std::vector<bool> bucket_done_;  // per bucket: reduced and added this micro-batch
  GradientSlotLayout layout_;
  BackendBuffer slot_arena_;
  std::vector<Slot> slots_;     // the three places
  std::deque<int> reducing_;    // slots whose reduction runs, oldest first
  bool shard_written_ = false;  // a micro-batch of this step was added into the shard
};

}  // namespace minitron
