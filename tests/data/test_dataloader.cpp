#include <algorithm>
#include <limits>
#include <map>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "data/dataloader.h"
#include "tests/data/data_test_util.h"
#include "util/error.h"

namespace minitron {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

// Shard s holds tokens s*1000 + i (i < n), so every token says where it came from.
std::vector<fs::path> make_shards(const TempDir& dir, const std::vector<int>& sizes) {
  std::vector<fs::path> paths;
  for (std::size_t s = 0; s < sizes.size(); ++s) {
    std::vector<std::int32_t> tokens(static_cast<std::size_t>(sizes[s]));
    for (int i = 0; i < sizes[s]; ++i) tokens[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(s * 1000 + i);
    paths.push_back(dir / ("d_train_00000" + std::to_string(s) + ".bin"));
    write_shard(paths.back(), tokens);
  }
  return paths;
}

// The window a batch row holds, recovered from its first input token (shard*1000 + offset).
struct WindowId {
  int shard, index;
  auto operator<=>(const WindowId&) const = default;
};

WindowId window_of(std::int32_t first_input, int T) { return {first_input / 1000, (first_input % 1000) / T}; }

// Fisher–Yates from an independent Python implementation (seed/epoch hashing as documented in
// dataloader.cpp, the generators as in util/random.h):
// these orders must not change across platforms or releases, or resumed runs would diverge.
TEST(Random, EpochPermutationIsPinned) {
  EXPECT_EQ(epoch_permutation(10, 7, 0), (std::vector<std::int64_t>{5, 2, 0, 7, 1, 3, 9, 8, 4, 6}));
  EXPECT_EQ(epoch_permutation(10, 7, 1), (std::vector<std::int64_t>{1, 4, 5, 9, 0, 3, 6, 8, 2, 7}));
  EXPECT_EQ(epoch_permutation(10, 8, 0), (std::vector<std::int64_t>{1, 7, 5, 6, 2, 9, 8, 0, 4, 3}));
}

TEST(Windows, Arithmetic) {
  // floor((n-1)/T): 4 tokens of T=4 make no window (a window needs T+1).
  EXPECT_EQ(TokenWindows::windows_in(0, 4), 0);
  EXPECT_EQ(TokenWindows::windows_in(4, 4), 0);
  EXPECT_EQ(TokenWindows::windows_in(5, 4), 1);
  EXPECT_EQ(TokenWindows::windows_in(8, 4), 1);
  EXPECT_EQ(TokenWindows::windows_in(9, 4), 2);
  EXPECT_EQ(TokenWindows::windows_in(12, 4), 2);
}

TEST(Windows, ExactContentsAcrossShards) {
  TempDir dir;
  // T=4: shard 0 has 11 tokens -> windows at 0 and 4 (tokens 8..10 are a dropped partial
  // window); shard 1 has 3 tokens -> none; shard 2 has 5 tokens -> one.
  const auto paths = make_shards(dir, {11, 3, 5});
  const TokenWindows windows(paths, 4);
  ASSERT_EQ(windows.count(), 3);
  std::int32_t in[4], tg[4];
  windows.copy(0, in, tg);
  EXPECT_EQ(std::vector<std::int32_t>(in, in + 4), (std::vector<std::int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(std::vector<std::int32_t>(tg, tg + 4), (std::vector<std::int32_t>{1, 2, 3, 4}));
  windows.copy(1, in, tg);
  EXPECT_EQ(std::vector<std::int32_t>(in, in + 4), (std::vector<std::int32_t>{4, 5, 6, 7}));
  EXPECT_EQ(std::vector<std::int32_t>(tg, tg + 4), (std::vector<std::int32_t>{5, 6, 7, 8}));
  windows.copy(2, in, tg);
  EXPECT_EQ(std::vector<std::int32_t>(in, in + 4), (std::vector<std::int32_t>{2000, 2001, 2002, 2003}));
  EXPECT_EQ(std::vector<std::int32_t>(tg, tg + 4), (std::vector<std::int32_t>{2001, 2002, 2003, 2004}));
  EXPECT_EQ(windows.describe()[1]["tokens"], 3);
}

TEST(Windows, NoWindowIsAnError) {
  TempDir dir;
  const auto paths = make_shards(dir, {4});
  EXPECT_THROW(TokenWindows(paths, 4), Error);
}

TEST(Windows, VocabCheckOnOpen) {
  TempDir dir;
  const auto paths = make_shards(dir, {20});  // ids 0..19
  EXPECT_NO_THROW(TokenWindows(paths, 4, 20));
  EXPECT_THROW(TokenWindows(paths, 4, 19), Error);
}

// Runs `steps` batches and returns each row's window.
std::vector<WindowId> take(TrainLoader& loader, int steps, int B, int T) {
  std::vector<std::int32_t> in(static_cast<std::size_t>(B * T)), tg(in.size());
  std::vector<WindowId> out;
  for (int s = 0; s < steps; ++s) {
    loader.next(in, tg);
    for (int j = 0; j < B; ++j) {
      out.push_back(window_of(in[static_cast<std::size_t>(j * T)], T));
      // Targets are the inputs shifted by one token.
      for (int t = 0; t + 1 < T; ++t)
        EXPECT_EQ(tg[static_cast<std::size_t>(j * T + t)], in[static_cast<std::size_t>(j * T + t + 1)]);
    }
  }
  return out;
}

TEST(TrainLoader, SameSeedSameBatchesDifferentSeedDifferentOrder) {
  TempDir dir;
  const auto paths = make_shards(dir, {161, 81});  // T=8: 20 + 10 windows
  TrainLoaderOptions options{.batch_size = 3, .sequence_length = 8, .seed = 11};
  TrainLoader a(paths, options), b(paths, options);
  options.seed = 12;
  TrainLoader c(paths, options);
  const auto wa = take(a, 10, 3, 8), wb = take(b, 10, 3, 8), wc = take(c, 10, 3, 8);
  EXPECT_EQ(wa, wb);
  EXPECT_NE(wa, wc);
}

TEST(TrainLoader, EachEpochVisitsEveryWindowOnce) {
  TempDir dir;
  const auto paths = make_shards(dir, {161, 81});  // 30 windows, B=5: 6 steps per epoch
  TrainLoader loader(paths, {.batch_size = 5, .sequence_length = 8, .seed = 3});
  ASSERT_EQ(loader.steps_per_epoch(), 6);
  const auto epoch0 = take(loader, 6, 5, 8);
  const auto epoch1 = take(loader, 6, 5, 8);
  EXPECT_EQ(loader.epoch(), 1);
  std::set<WindowId> all;
  for (int i = 0; i < 20; ++i) all.insert({0, i});
  for (int i = 0; i < 10; ++i) all.insert({1, i});
  for (const auto& epoch : {epoch0, epoch1}) {
    EXPECT_EQ(epoch.size(), 30u);
    EXPECT_EQ(std::set<WindowId>(epoch.begin(), epoch.end()), all);
  }
  EXPECT_NE(epoch0, epoch1);  // a new order each epoch
}

TEST(TrainLoader, LeftoverWindowsAreSkipped) {
  TempDir dir;
  const auto paths = make_shards(dir, {161, 81});  // 30 windows, B=4: 7 steps, 2 left over
  TrainLoader loader(paths, {.batch_size = 4, .sequence_length = 8, .seed = 5});
  ASSERT_EQ(loader.steps_per_epoch(), 7);
  const auto epoch0 = take(loader, 7, 4, 8);
  EXPECT_EQ(std::set<WindowId>(epoch0.begin(), epoch0.end()).size(), 28u);
  take(loader, 1, 4, 8);
  EXPECT_EQ(loader.epoch(), 1);
  EXPECT_EQ(loader.step_in_epoch(), 1);
}

TEST(TrainLoader, RanksAreDisjointAndCoverTheEpoch) {
  TempDir dir;
  const auto paths = make_shards(dir, {161, 81});  // 30 windows; B=2, R=3: 5 steps per epoch
  std::vector<WindowId> united;
  for (int r = 0; r < 3; ++r) {
    TrainLoader loader(paths, {.batch_size = 2, .sequence_length = 8, .seed = 9, .rank = r, .world_size = 3});
    ASSERT_EQ(loader.steps_per_epoch(), 5);
    const auto mine = take(loader, 5, 2, 8);
    united.insert(united.end(), mine.begin(), mine.end());
  }
  EXPECT_EQ(united.size(), 30u);
  EXPECT_EQ(std::set<WindowId>(united.begin(), united.end()).size(), 30u);  // disjoint, union = all
}

TEST(TrainLoader, ResumeContinuesExactly) {
  TempDir dir;
  const auto paths = make_shards(dir, {161, 81});
  const TrainLoaderOptions options{.batch_size = 4, .sequence_length = 8, .seed = 21};
  TrainLoader uninterrupted(paths, options);
  const auto expected = take(uninterrupted, 20, 4, 8);  // crosses two epoch boundaries (7 steps each)

  for (int k : {0, 3, 7, 9}) {
    TrainLoader first(paths, options);
    auto got = take(first, k, 4, 8);
    const nlohmann::json saved = nlohmann::json::parse(first.state().dump());
    TrainLoaderOptions fresh_options = options;
    fresh_options.seed = 999;  // the state's seed wins
    TrainLoader second(paths, fresh_options);
    second.restore(saved);
    const auto rest = take(second, 20 - k, 4, 8);
    got.insert(got.end(), rest.begin(), rest.end());
    EXPECT_EQ(got, expected) << "resumed after " << k << " batches";
  }
}

TEST(TrainLoader, RestoreRefusesOtherDataOrShape) {
  TempDir dir;
  const auto paths = make_shards(dir, {161, 81});
  TrainLoader loader(paths, {.batch_size = 4, .sequence_length = 8});
  const auto state = loader.state();
  TrainLoader other_batch(paths, {.batch_size = 3, .sequence_length = 8});
  EXPECT_THROW(other_batch.restore(state), Error);
  TrainLoader other_sequence(paths, {.batch_size = 4, .sequence_length = 4});
  EXPECT_THROW(other_sequence.restore(state), Error);
  TrainLoader other_shards(std::vector<fs::path>{paths[0]}, {.batch_size = 4, .sequence_length = 8});
  try {
    other_shards.restore(state);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("d_train_000001.bin"), std::string::npos) << e.what();
  }
  EXPECT_THROW(loader.restore(nlohmann::json{{"epoch", 1}}), Error);
}

// Found by fuzz_loader_state: a saved epoch of 2^63 - 1 at the end of an epoch made next()
// overflow the epoch counter (undefined behaviour); such a state is refused on restore.
TEST(TrainLoader, RestoreRefusesAnEpochNextCannotCountPast) {
  TempDir dir;
  const auto paths = make_shards(dir, {161});
  TrainLoader loader(paths, {.batch_size = 4, .sequence_length = 8});
  nlohmann::json state = loader.state();
  state["epoch"] = std::numeric_limits<std::int64_t>::max();
  state["step_in_epoch"] = loader.steps_per_epoch();
  try {
    loader.restore(JsonField(state, "training_state.json"));
    ADD_FAILURE() << "restored epoch 2^63 - 1";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "training_state.json: epoch is 9223372036854775807 (expected an integer from 0 to 1099511627776)");
  }
  state["epoch"] = 7.5;
  EXPECT_THROW(loader.restore(state), Error);
  state["epoch"] = 3;
  loader.restore(state);
  EXPECT_EQ(loader.epoch(), 3);
}

TEST(TrainLoader, TooLittleDataIsAClearError) {
  TempDir dir;
  const auto paths = make_shards(dir, {17});  // 2 windows of T=8
  try {
    TrainLoader loader(paths, {.batch_size = 3, .sequence_length = 8});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2 windows"), std::string::npos) << e.what();
  }
}

TEST(EvalLoader, SequentialWithSmallerLastBatch) {
  TempDir dir;
  const auto paths = make_shards(dir, {161, 81});  // 20 + 10 windows
  EvalLoader loader(paths, 8, 8);
  EXPECT_EQ(loader.total_windows(), 30);
  EXPECT_EQ(loader.total_batches(), 4);
  std::vector<std::int32_t> in(64), tg(64);
  std::vector<WindowId> seen;
  std::vector<std::int64_t> sizes;
  while (std::int64_t n = loader.next(in, tg)) {
    sizes.push_back(n);
    for (std::int64_t j = 0; j < n; ++j) seen.push_back(window_of(in[static_cast<std::size_t>(j * 8)], 8));
  }
  EXPECT_EQ(sizes, (std::vector<std::int64_t>{8, 8, 8, 6}));
  ASSERT_EQ(seen.size(), 30u);
  for (int i = 0; i < 30; ++i)
    EXPECT_EQ(seen[static_cast<std::size_t>(i)], (i < 20 ? WindowId{0, i} : WindowId{1, i - 20}));
}

TEST(EvalLoader, MaxWindowsAndReset) {
  TempDir dir;
  const auto paths = make_shards(dir, {161});
  EvalLoader loader(paths, 4, 8, 6);
  EXPECT_EQ(loader.total_windows(), 6);
  std::vector<std::int32_t> in(32), tg(32);
  EXPECT_EQ(loader.next(in, tg), 4);
  EXPECT_EQ(loader.next(in, tg), 2);
  EXPECT_EQ(in[8], 40);  // window 5 starts at token 5*8
  EXPECT_EQ(loader.next(in, tg), 0);
  loader.reset();
  EXPECT_EQ(loader.next(in, tg), 4);
  EXPECT_EQ(in[0], 0);
}

}  // namespace
}  // namespace minitron
