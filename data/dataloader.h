// Batches of fixed-length windows from token shards, for training and for evaluation.
//
// Window i of a shard of n tokens is tokens[i*T .. i*T+T] (T+1 tokens): inputs are the first T,
// targets the last T, so consecutive windows share one boundary token and a shard holds
// floor((n-1)/T) windows (a last partial window is dropped). Windows of all shards are numbered
// globally in shard order.
//
// Training: each epoch visits every window once in a shuffled order that depends only on
// (seed, epoch) — util/random.h's xoshiro256** and our own Fisher–Yates, because std::shuffle and
// the std distributions differ between standard libraries. A global step takes B*R consecutive
// positions of the epoch's order; rank r takes positions step*B*R + j*R + r (j < B), so ranks are
// disjoint; the epoch's last W mod (B*R) positions are skipped on every rank alike.
//
// SFT shards (data/shards.h) are windowed the same way; a target the shard's loss mask leaves
// out, and one that would predict the first token of the next document from the previous
// document, is -1 (every loss ignores negative targets), and each window can also give every
// input token's position within its document (0 at each document start), for attention that
// stays inside documents.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/shards.h"
#include "util/checked_json.h"

namespace minitron {

// The order in which epoch `epoch` visits windows 0..count-1 (Fisher–Yates from the top).
std::vector<std::int64_t> epoch_permutation(std::int64_t count, std::uint64_t seed, std::int64_t epoch);

// Shards opened and numbered as windows of T+1 tokens.
class TokenWindows {
 public:
  TokenWindows(const std::vector<std::filesystem::path>& paths, std::int64_t sequence_length,
               std::optional<std::int64_t> vocab_size = std::nullopt);

  std::int64_t sequence_length() const { return T_; }
  std::int64_t count() const { return first_window_.back(); }
  // Every shard's kind (TokenWindows refuses a mix).
  ShardKind kind() const { return kind_; }
  // Windows per shard: floor((n-1)/T), 0 for n <= T.
  static std::int64_t windows_in(std::int64_t tokens, std::int64_t sequence_length);
  // Copies window `index` into T inputs and T targets (masked targets -1 for SFT shards) and, when
  // positions is given, T positions within the document, counted from the window's start for a
  // document begun before it (SFT shards; token shards, whose document boundaries are not
  // recorded, give 0..T-1).
  void copy(std::int64_t index, std::int32_t* inputs, std::int32_t* targets, std::int32_t* positions = nullptr) const;
  // [{"name": file name, "tokens": n}, ...]: identifies the data in a loader state.
  nlohmann::json describe() const;

 private:
  std::int64_t T_;
  ShardKind kind_ = ShardKind::Tokens;
  std::vector<TokenShard> shards_;
  std::vector<std::int64_t> first_window_;  // prefix sums; size shards+1
};

struct TrainLoaderOptions {
  std::int64_t batch_size = 1;       // B windows per rank per step
  std::int64_t sequence_length = 0;  // T
  std::uint64_t seed = 0;
  std::int64_t rank = 0;
  std::int64_t world_size = 1;
  std::optional<std::int64_t> vocab_size = std::nullopt;  // when set, every id is checked on open
};

class TrainLoader {
 public:
  TrainLoader(const std::vector<std::filesystem::path>& paths, const TrainLoaderOptions& options);

  // Fills inputs[B*T] and targets[B*T] (row-major: window j is [j*T, j*T+T)) and advances;
  // positions[B*T], when not empty, receives each input token's position within its document
  // (TokenWindows::copy).
  void next(std::span<std::int32_t> inputs, std::span<std::int32_t> targets, std::span<std::int32_t> positions = {});

  std::int64_t epoch() const { return epoch_; }
  std::int64_t step_in_epoch() const { return step_; }
  std::int64_t steps_per_epoch() const { return steps_per_epoch_; }
  const TokenWindows& windows() const { return windows_; }

  // Everything needed to continue exactly where this loader is. restore() refuses a state from
  // other shards, B, T or world size; it takes the state's seed and keeps this loader's rank.
  nlohmann::json state() const;
  void restore(const nlohmann::json& state);
  // The same, naming the file and JSON path of the state in every refusal.
  void restore(const JsonField& state);

 private:
  TokenWindows windows_;
  TrainLoaderOptions options_;
  std::int64_t steps_per_epoch_ = 0;
  std::int64_t epoch_ = 0, step_ = 0;
  std::vector<std::int64_t> order_;  // the current epoch's permutation
};

// Windows 0, 1, 2, ... (at most max_windows), in batches of up to B; the last may be smaller.
class EvalLoader {
 public:
  EvalLoader(const std::vector<std::filesystem::path>& paths, std::int64_t batch_size, std::int64_t sequence_length,
             std::optional<std::int64_t> max_windows = std::nullopt,
             std::optional<std::int64_t> vocab_size = std::nullopt);

  // Fills up to B windows and returns how many (0 when all windows were served); positions as
  // TrainLoader::next.
  std::int64_t next(std::span<std::int32_t> inputs, std::span<std::int32_t> targets,
                    std::span<std::int32_t> positions = {});
  void reset() { next_window_ = 0; }

  std::int64_t total_windows() const { return total_; }
  std::int64_t total_batches() const { return (total_ + B_ - 1) / B_; }
  const TokenWindows& windows() const { return windows_; }

 private:
  TokenWindows windows_;
  std::int64_t B_, total_, next_window_ = 0;
};

}  // namespace minitron
