#include "model/gradient_buckets.h"

#include <algorithm>

#include "util/error.h"

namespace minitron {

namespace {

// A unit: the tensors backward() completes together. Every decoder layer's tensors are one unit
// (contiguous in the table); the embedding, the final norm and the LM head one each.
struct Unit {
  std::int64_t begin = 0, end = 0;
  bool embedding = false;
};

std::vector<Unit> units_of(const ParameterTable& table) {
  std::vector<Unit> units;
  std::int64_t layer = -1;
  for (const ParamInfo& info : table.entries()) {
    const bool same_layer = info.layer >= 0 && info.layer == layer && !units.empty();
    if (same_layer) {
      units.back().end = info.offset + info.numel;
    } else {
      units.push_back({info.offset, info.offset + info.numel, info.offset == table.embed_tokens()});
    }
    layer = info.layer;
  }
  return units;
}

bool tied_head(const ParameterTable& table) { return table.lm_head() == table.embed_tokens(); }

}  // namespace

GradientSlotLayout gradient_slot_layout(const ParameterTable& table, const std::vector<GradientBucket>& buckets) {
  GradientSlotLayout layout;
  layout.offsets.assign(buckets.size(), 0);
  layout.slots.assign(buckets.size(), 0);
  // A tied head's bucket (the embedding, alone and first) is written from head_backward() until
  // the end of backward: below the others, for good.
  const bool tied = tied_head(table) && !buckets.empty();
  const std::int64_t base = tied ? buckets.front().end - buckets.front().begin : 0;
  if (tied) layout.slots.front() = 2;
  const std::size_t first = tied ? 1 : 0;
  // The others in the order backward completes them (from the end of the vector): at most two
  // hold gradients at once, the one being written and the one before it (reducing), so
  // alternate ones go to the bottom and to the top of a span as large as any two in a row.
  std::int64_t span = 0;
  for (std::size_t b = first; b < buckets.size(); ++b) {
    std::int64_t live = buckets[b].end - buckets[b].begin;
    if (b + 1 < buckets.size()) live += buckets[b + 1].end - buckets[b + 1].begin;
    span = std::max(span, live);
  }
  for (std::size_t b = buckets.size(); b-- > first;) {
    const std::size_t order = buckets.size() - 1 - b;  // 0 for the bucket completed first
    const std::int64_t size = buckets[b].end - buckets[b].begin;
    layout.slots[b] = static_cast<int>(order % 2);
    layout.offsets[b] = order % 2 == 0 ? base : base + span - size;
  }
  layout.elements = base + span;
  return layout;
}

std::vector<GradientBucket> gradient_buckets(const ParameterTable& table, std::int64_t bucket_elements) {
  MINITRON_ASSERT(bucket_elements >= 1, "gradient bucket of ", bucket_elements, " elements");
  const std::vector<Unit> units = units_of(table);
  // From the end of the vector, the order backward() completes the units in.
  std::vector<GradientBucket> buckets;
  std::int64_t end = -1, begin = -1;
  for (auto unit = units.rbegin(); unit != units.rend(); ++unit) {
    if (unit->embedding && end >= 0) {
      buckets.push_back({begin, end});
      end = -1;
    }
    if (end < 0) end = unit->end;
    begin = unit->begin;
    if (end - begin >= bucket_elements || unit->embedding) {
      buckets.push_back({begin, end});
      end = -1;
    }
  }
  if (end >= 0) buckets.push_back({begin, end});
  std::reverse(buckets.begin(), buckets.end());
  return buckets;
}

GradientBuckets::DeviceBytes GradientBuckets::device_bytes(const ParameterTable& table, DType gradient, int stage,
                                                           std::int64_t bucket_elements, std::int64_t world_size,
                                                           std::int64_t rank) {
  const auto size = static_cast<std::int64_t>(dtype_size(gradient));
  if (stage == 1) return {table.total_numel() * size, 0};
  const std::vector<std::int64_t> bounds = ::minitron::shard_bounds(table.total_numel(), world_size);
  const std::int64_t part = bounds[static_cast<std::size_t>(rank) + 1] - bounds[static_cast<std::size_t>(rank)];
  return {part * size, gradient_slot_layout(table, gradient_buckets(table, bucket_elements)).elements * size};
}

GradientBuckets::GradientBuckets(Backend& backend, const ParameterTable& table, const GradientSharding& sharding)
    : backend_(backend), table_(table), stage_(sharding.stage), communicator_(sharding.communicator) {
  if (stage_ != 1 && stage_ != 2) fail_expected("--zero-stage", str(stage_), "1 or 2");
  MINITRON_ASSERT(stage_ == 1 || communicator_ != nullptr, "ZeRO stage 2 needs the run's communicator");
  for (const ParamInfo& info : table.entries()) offsets_.push_back(info.offset);
  MINITRON_ASSERT(std::is_sorted(offsets_.begin(), offsets_.end()), "parameter table out of order");
  written_.assign(offsets_.size(), false);
  const std::int64_t n = table.total_numel();
  if (stage_ == 1) {
    bounds_ = {0, n};
    storage_ = BackendBuffer(backend, n, backend.gradient_dtype());
    return;
  }
  bounds_ = ::minitron::shard_bounds(n, communicator_->world_size());
  const auto rank = static_cast<std::size_t>(communicator_->rank());
  storage_ = BackendBuffer(backend, bounds_[rank + 1] - bounds_[rank], backend.gradient_dtype());
  buckets_ = gradient_buckets(table, sharding.bucket_elements);
  layout_ = gradient_slot_layout(table, buckets_);
  slot_arena_ = BackendBuffer(backend, layout_.elements, backend.gradient_dtype());
  slots_.resize(3);
  bucket_slot_.assign(buckets_.size(), -1);
  bucket_done_.assign(buckets_.size(), false);
  completed_.assign(offsets_.size(), false);
  unfinished_.assign(buckets_.size(), 0);
  for (std::int64_t offset : offsets_) ++unfinished_[static_cast<std::size_t>(bucket_of(offset))];
  parameters_per_bucket_ = unfinished_;
}

std::size_t GradientBuckets::parameter_index(std::int64_t offset) const {
  const auto it = std::lower_bound(offsets_.begin(), offsets_.end(), offset);
  MINITRON_ASSERT(it != offsets_.end() && *it == offset, "no parameter at offset ", offset);
  return static_cast<std::size_t>(it - offsets_.begin());
}

int GradientBuckets::bucket_of(std::int64_t offset) const {
  const auto it = std::upper_bound(buckets_.begin(), buckets_.end(), offset,
                                   [](std::int64_t o, const GradientBucket& b) { return o < b.end; });
  MINITRON_ASSERT(it != buckets_.end() && it->begin <= offset, "no gradient bucket holds offset ", offset);
  return static_cast<int>(it - buckets_.begin());
}

void GradientBuckets::begin_step() {
  MINITRON_ASSERT(reducing_.empty(), "a new step while gradient reductions are pending");
  std::fill(written_.begin(), written_.end(), false);
  shard_written_ = false;
}

GradientBuckets::Destination GradientBuckets::destination(std::int64_t offset, std::int64_t numel, bool zero_first) {
  const std::size_t i = parameter_index(offset);
  MINITRON_ASSERT(numel == table_.entries()[i].numel, "gradient of ", table_.entries()[i].name, ": ", numel,
                  " elements for ", table_.entries()[i].numel);
  Destination d;
  if (stage_ == 1) {
    d.tensor = storage_.tensor().slice(offset, numel);
  } else {
    MINITRON_ASSERT(!completed_[i], "gradient of ", table_.entries()[i].name, " written after it was complete");
    const int b = bucket_of(offset);
    int& slot = bucket_slot_[static_cast<std::size_t>(b)];
    if (slot < 0) slot = acquire_slot(b);
    d.tensor = slot_tensor(b).slice(offset - buckets_[b].begin, numel);
  }
  d.accumulate = written_[i];
  if (!written_[i] && zero_first) {
    backend_.zero(d.tensor);
    d.accumulate = true;
  }
  written_[i] = true;
  return d;
}

Tensor GradientBuckets::slot_tensor(int bucket) const {
  const GradientBucket& b = buckets_[static_cast<std::size_t>(bucket)];
  return slot_arena_.tensor().slice(layout_.offsets[static_cast<std::size_t>(bucket)], b.end - b.begin);
}

GradientBuckets::Destination GradientBuckets::destination_of_run(std::int64_t offset, std::int64_t count) {
  const std::size_t first = parameter_index(offset);
  MINITRON_ASSERT(count >= 1 && first + static_cast<std::size_t>(count) <= offsets_.size(), "a run of ", count,
                  " parameters from ", table_.entries()[first].name);
  const std::size_t end = first + static_cast<std::size_t>(count);
  std::int64_t numel = 0;
  for (std::size_t i = first; i < end; ++i) {
    const ParamInfo& info = table_.entries()[i];
    MINITRON_ASSERT(info.offset == offset + numel, "gradient run: ", info.name, " is not adjacent to the one before");
    MINITRON_ASSERT(written_[i] == written_[first], "gradient run: ", info.name, " written apart from ",
                    table_.entries()[first].name);
    if (stage_ == 2)
      MINITRON_ASSERT(bucket_of(info.offset) == bucket_of(offset), "gradient run: ", info.name, " in another bucket");
    numel += info.numel;
  }
  Destination d = destination(offset, table_.entries()[first].numel);
  // The first parameter's destination starts the run: the others follow it in the same buffer.
  const Tensor whole = stage_ == 1 ? storage_.tensor() : slot_tensor(bucket_of(offset));
  const std::int64_t start =
      stage_ == 1 ? offset : offset - buckets_[static_cast<std::size_t>(bucket_of(offset))].begin;
  d.tensor = whole.slice(start, numel);
  for (std::size_t i = first + 1; i < end; ++i) {
    MINITRON_ASSERT(stage_ == 1 || !completed_[i], "gradient of ", table_.entries()[i].name,
                    " written after it was complete");
    written_[i] = true;
  }
  return d;
}

int GradientBuckets::acquire_slot(int bucket) {
  // The layout holds two buckets in a row apart only if the one before this (in backward's
  // order, the next in the vector) is complete: at most one is being written at a time.
  const auto next = static_cast<std::size_t>(bucket) + 1;
  const bool tied_embedding = layout_.slots[static_cast<std::size_t>(bucket)] == 2;
  MINITRON_ASSERT(tied_embedding || next == buckets_.size() || unfinished_[next] == 0, "gradient bucket ", bucket,
                  " written before bucket ", next, " was complete");
  const int s = layout_.slots[static_cast<std::size_t>(bucket)];
  // Its place is free once the bucket that had it (two before, in the same place) is reduced
  // and added into the shard: the oldest reduction. None running means that bucket is still
  // being written, which the unit order rules out.
  while (slots_[static_cast<std::size_t>(s)].bucket >= 0) {
    MINITRON_ASSERT(!reducing_.empty(), "gradient bucket ", bucket, "'s slot holds a bucket still being written");
    const int oldest = reducing_.front();
    reducing_.pop_front();
    retire(slots_[static_cast<std::size_t>(oldest)]);
  }
  slots_[static_cast<std::size_t>(s)].bucket = bucket;
  return s;
}

void GradientBuckets::complete(std::int64_t offset) {
  if (stage_ == 1) return;
  const std::size_t i = parameter_index(offset);
  MINITRON_ASSERT(written_[i] && !completed_[i], "gradient of ", table_.entries()[i].name,
                  written_[i] ? " completed twice" : " completed before it was written");
  completed_[i] = true;
  const int b = bucket_of(offset);
  if (--unfinished_[static_cast<std::size_t>(b)] > 0) return;
  // The bucket is whole: sum it over the ranks, each rank's part of it as the whole vector's
  // bounds cut it.
  const GradientBucket& bucket = buckets_[static_cast<std::size_t>(b)];
  std::vector<std::int64_t> local(bounds_.size());
  for (std::size_t r = 0; r < bounds_.size(); ++r)
    local[r] = std::clamp(bounds_[r], bucket.begin, bucket.end) - bucket.begin;
  const int s = bucket_slot_[static_cast<std::size_t>(b)];
  MINITRON_ASSERT(s >= 0 && !bucket_done_[static_cast<std::size_t>(b)], "gradient bucket ", b, " reduced twice");
  Slot& slot = slots_[static_cast<std::size_t>(s)];
  slot.ticket = communicator_->start_reduce_scatter_sum(slot_tensor(b), local);
  reducing_.push_back(s);
}

void GradientBuckets::retire(Slot& slot) {
  MINITRON_ASSERT(slot.bucket >= 0, "a gradient slot retired twice");
  const std::size_t b = static_cast<std::size_t>(slot.bucket);
  communicator_->wait_collective(slot.ticket);
  const GradientBucket& bucket = buckets_[b];
  const auto rank = static_cast<std::size_t>(communicator_->rank());
  const std::int64_t lo = std::max(bucket.begin, bounds_[rank]), hi = std::min(bucket.end, bounds_[rank + 1]);
  if (lo < hi) {
    const Tensor sum = slot_tensor(static_cast<int>(b)).slice(lo - bucket.begin, hi - lo);
    const Tensor part = storage_.tensor().slice(lo - bounds_[rank], hi - lo);
    if (shard_written_)
      backend_.add_inplace(part, sum);
    else
      backend_.copy(part, sum);
  }
  bucket_done_[b] = true;
  slot.bucket = -1;
}

void GradientBuckets::end_micro_batch() {
  for (std::size_t i = 0; i < written_.size(); ++i)
    MINITRON_ASSERT(written_[i], "backward wrote no gradient for ", table_.entries()[i].name);
  if (stage_ == 1) return;
  for (std::size_t b = 0; b < buckets_.size(); ++b)
    MINITRON_ASSERT(unfinished_[b] == 0, "gradient bucket ", b, " was never completed");
  while (!reducing_.empty()) {
    const int oldest = reducing_.front();
    reducing_.pop_front();
    retire(slots_[static_cast<std::size_t>(oldest)]);
  }
  for (std::size_t b = 0; b < buckets_.size(); ++b) MINITRON_ASSERT(bucket_done_[b], "gradient bucket ", b, " lost");
  shard_written_ = true;
  std::fill(written_.begin(), written_.end(), false);
  std::fill(completed_.begin(), completed_.end(), false);
  std::fill(bucket_done_.begin(), bucket_done_.end(), false);
  std::fill(bucket_slot_.begin(), bucket_slot_.end(), -1);
  unfinished_ = parameters_per_bucket_;
}

}  // namespace minitron
