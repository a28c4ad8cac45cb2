#include "data/dataloader.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "util/checked_json.h"
#include "util/error.h"
#include "util/random.h"

namespace minitron {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::int64_t> epoch_permutation(std::int64_t count, std::uint64_t seed, std::int64_t epoch) {
  // Hash seed and epoch separately: seeding with seed+epoch would make epoch e's xoshiro state a
  // shifted copy of epoch e-1's (splitmix64 is a counter).
  const std::uint64_t epoch_seed = static_cast<std::uint64_t>(epoch) ^ 0x632BE59BD9B4E019ull;
  Xoshiro256 rng(SplitMix64(seed).next() ^ SplitMix64(epoch_seed).next());
  std::vector<std::int64_t> order(static_cast<std::size_t>(count));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  for (std::int64_t i = count - 1; i > 0; --i) {
    const auto j = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(i) + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

// --- TokenWindows ----------------------------------------------------------------------------

std::int64_t TokenWindows::windows_in(std::int64_t tokens, std::int64_t sequence_length) {
  return tokens <= sequence_length ? 0 : (tokens - 1) / sequence_length;
}

TokenWindows::TokenWindows(const std::vector<fs::path>& paths, std::int64_t sequence_length,
                           std::optional<std::int64_t> vocab_size)
    : T_(sequence_length) {
  if (T_ < 1) fail_expected("sequence length", str(T_), "at least 1");
  if (paths.empty()) fail_expected("token shards", "none given", "at least one shard");
  first_window_.push_back(0);
  for (const auto& path : paths) {
    shards_.push_back(TokenShard::open(path, vocab_size));
    if (shards_.size() == 1) kind_ = shards_[0].kind();
    if (shards_.back().kind() != kind_)
      fail_expected(path.string(),
                    str("it is of the kind '", shard_kind_name(shards_.back().kind()), "' but ", paths[0].string(),
                        " is of the kind '", shard_kind_name(kind_), "'"),
                    "shards of one kind: token shards (minitron tokenize) or SFT shards (minitron tokenize --chat)");
    first_window_.push_back(first_window_.back() + windows_in(shards_.back().size(), T_));
  }
  if (count() == 0)
    fail_expected(paths.size() == 1 ? paths[0].string() : str(paths.size(), " token shards"),
                  str("no shard holds more than ", T_, " tokens, so there is no window"),
                  str("at least ", T_ + 1, " tokens (sequence length + 1) in a shard"));
}

void TokenWindows::copy(std::int64_t index, std::int32_t* inputs, std::int32_t* targets,
                        std::int32_t* positions) const {
  MINITRON_ASSERT(index >= 0 && index < count(), "window ", index, " of ", count());
  const auto shard = static_cast<std::size_t>(std::upper_bound(first_window_.begin(), first_window_.end(), index) -
                                              first_window_.begin() - 1);
  const std::uint32_t* tokens = shards_[shard].tokens().data() + (index - first_window_[shard]) * T_;
  for (std::int64_t t = 0; t <= T_; ++t) {
    // An id this large cannot be a token; as int32 it would turn negative and index out of range.
    if (tokens[t] > static_cast<std::uint32_t>(std::numeric_limits<std::int32_t>::max()))
      fail_expected(shards_[shard].path().string(), str("token id ", tokens[t]), "ids below 2^31");
  }
  for (std::int64_t t = 0; t < T_; ++t) {
    inputs[t] = static_cast<std::int32_t>(tokens[t]);
    targets[t] = static_cast<std::int32_t>(tokens[t + 1]);
  }
  if (kind_ == ShardKind::Tokens) {
    if (positions)
      for (std::int64_t t = 0; t < T_; ++t) positions[t] = static_cast<std::int32_t>(t);
    return;
  }
  const TokenShard& s = shards_[shard];
  const std::int64_t first = (index - first_window_[shard]) * T_;  // the window's first token in the shard
  const std::span<const std::uint8_t> mask = s.loss_mask();
  const std::span<const std::uint32_t> starts = s.document_starts();
  // The document holding token `first`, then each document start inside the window in turn.
  auto next_start = std::upper_bound(starts.begin(), starts.end(), static_cast<std::uint64_t>(first));
  // A document begun before the window counts from the window's first token: what came before is
  // out of the window's sight, and the model takes each row as starting a document (RoPE's
  // scores depend on relative positions only, so nothing within the window changes).
  std::int64_t document_start = std::max<std::int64_t>(static_cast<std::int64_t>(*(next_start - 1)), first);
  for (std::int64_t t = 0; t < T_; ++t) {
    const std::int64_t k = first + t;
    if (next_start != starts.end() && static_cast<std::int64_t>(*next_start) == k) {
      document_start = k;
      ++next_start;
    }
    if (positions) positions[t] = static_cast<std::int32_t>(k - document_start);
    // Token k+1 is a target only if the mask counts it and it continues token k's document.
    const bool crosses = next_start != starts.end() && static_cast<std::int64_t>(*next_start) == k + 1;
    if (mask[static_cast<std::size_t>(k + 1)] == 0 || crosses) targets[t] = -1;
  }
}

json TokenWindows::describe() const {
  json shards = json::array();
  for (const auto& shard : shards_)
    shards.push_back({{"name", shard.path().filename().string()}, {"tokens", shard.size()}});
  return shards;
}

static void check_batch_spans(std::span<std::int32_t> inputs, std::span<std::int32_t> targets, std::int64_t B,
                              std::int64_t T) {
  const auto need = static_cast<std::size_t>(B * T);
  MINITRON_ASSERT(inputs.size() >= need && targets.size() >= need, "batch buffers hold ", inputs.size(), " and ",
                  targets.size(), " ids, need ", need);
}

// --- TrainLoader -----------------------------------------------------------------------------

TrainLoader::TrainLoader(const std::vector<fs::path>& paths, const TrainLoaderOptions& options)
    : windows_(paths, options.sequence_length, options.vocab_size), options_(options) {
  if (options_.batch_size < 1) fail_expected("batch size", str(options_.batch_size), "at least 1");
  if (options_.world_size < 1) fail_expected("world size", str(options_.world_size), "at least 1");
  if (options_.rank < 0 || options_.rank >= options_.world_size)
    fail_expected("rank", str(options_.rank), str("0 to ", options_.world_size - 1));
  const std::int64_t global_batch = options_.batch_size * options_.world_size;
  steps_per_epoch_ = windows_.count() / global_batch;
  if (steps_per_epoch_ == 0)
    fail_expected("training data",
                  str("the shards hold ", windows_.count(), " windows of ", options_.sequence_length + 1,
                      " tokens, fewer than one global batch of ", global_batch, " (batch size x world size)"),
                  str("at least ", global_batch, " windows; use more data or a smaller batch or sequence"));
  order_ = epoch_permutation(windows_.count(), options_.seed, epoch_);
}

void TrainLoader::next(std::span<std::int32_t> inputs, std::span<std::int32_t> targets,
                       std::span<std::int32_t> positions) {
  const std::int64_t B = options_.batch_size, T = options_.sequence_length, R = options_.world_size;
  check_batch_spans(inputs, targets, B, T);
  MINITRON_ASSERT(positions.empty() || positions.size() >= static_cast<std::size_t>(B * T));
  if (step_ == steps_per_epoch_) {
    ++epoch_;
    step_ = 0;
    order_ = epoch_permutation(windows_.count(), options_.seed, epoch_);
  }
  const std::int64_t base = step_ * B * R + options_.rank;
  for (std::int64_t j = 0; j < B; ++j)
    windows_.copy(order_[static_cast<std::size_t>(base + j * R)], inputs.data() + j * T, targets.data() + j * T,
                  positions.empty() ? nullptr : positions.data() + j * T);
  ++step_;
}

json TrainLoader::state() const {
  return {{"format", "minitron-train-loader-1"},
          {"epoch", epoch_},
          {"step_in_epoch", step_},
          {"seed", options_.seed},
          {"rank", options_.rank},
          {"world_size", options_.world_size},
          {"batch_size", options_.batch_size},
          {"sequence_length", options_.sequence_length},
          {"shards", windows_.describe()}};
}

namespace {

constexpr std::int64_t kLargestEpoch = std::int64_t{1} << 40;

}  // namespace

void TrainLoader::restore(const json& state) { restore(JsonField(state, "data loader state")); }

void TrainLoader::restore(const JsonField& state) {
  const std::string what = state.where();
  if (!state.is_object() || !state.at("format").is_string() ||
      state.at("format").as_string() != "minitron-train-loader-1")
    state.at("format").refuse("\"minitron-train-loader-1\"");
  // Bounded far below INT64_MAX: next() counts epochs up from the saved one (fuzz_loader_state
  // found 2^63 - 1 overflowing there).
  const auto epoch = state.at("epoch").as_int<std::int64_t>(0, kLargestEpoch);
  const auto step = state.at("step_in_epoch").as_int<std::int64_t>();
  const auto seed = state.at("seed").as_int<std::uint64_t>();
  const auto world = state.at("world_size").as_int<std::int64_t>();
  const auto B = state.at("batch_size").as_int<std::int64_t>();
  const auto T = state.at("sequence_length").as_int<std::int64_t>();
  const json& shards = state.at("shards").raw();
  if (B != options_.batch_size || T != options_.sequence_length)
    fail_expected(what, str("it was saved with batch size ", B, " and sequence length ", T),
                  str("batch size ", options_.batch_size, " and sequence length ", options_.sequence_length,
                      " as this run uses"));
  if (world != options_.world_size)
    fail_expected(what, str("it was saved with world size ", world),
                  str("world size ", options_.world_size, " as this run uses"));
  if (shards != windows_.describe())
    fail_expected(what, str("it was saved for the shards ", shards.dump()),
                  str("the shards of this run, ", windows_.describe().dump()));
  if (epoch < 0 || step < 0 || step > steps_per_epoch_)
    fail_expected(what, str("epoch ", epoch, ", step ", step),
                  str("a step from 0 to ", steps_per_epoch_, " in a non-negative epoch"));
  options_.seed = seed;
  epoch_ = epoch;
  step_ = step;
  order_ = epoch_permutation(windows_.count(), options_.seed, epoch_);
}

// --- EvalLoader ------------------------------------------------------------------------------

EvalLoader::EvalLoader(const std::vector<fs::path>& paths, std::int64_t batch_size, std::int64_t sequence_length,
                       std::optional<std::int64_t> max_windows, std::optional<std::int64_t> vocab_size)
    : windows_(paths, sequence_length, vocab_size), B_(batch_size) {
  if (B_ < 1) fail_expected("batch size", str(B_), "at least 1");
  if (max_windows && *max_windows < 1) fail_expected("maximum windows", str(*max_windows), "at least 1");
  total_ = max_windows ? std::min(*max_windows, windows_.count()) : windows_.count();
}

std::int64_t EvalLoader::next(std::span<std::int32_t> inputs, std::span<std::int32_t> targets,
                              std::span<std::int32_t> positions) {
  const std::int64_t T = windows_.sequence_length();
  const std::int64_t n = std::min(B_, total_ - next_window_);
  check_batch_spans(inputs, targets, n, T);
  MINITRON_ASSERT(positions.empty() || positions.size() >= static_cast<std::size_t>(n * T));
  for (std::int64_t j = 0; j < n; ++j)
    windows_.copy(next_window_ + j, inputs.data() + j * T, targets.data() + j * T,
                  positions.empty() ? nullptr : positions.data() + j * T);
  next_window_ += n;
  return n;
}

}  // namespace minitron
