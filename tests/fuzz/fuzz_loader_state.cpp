// The data loader's saved state (the "loader" object of training_state.json), restored into a
// loader over one fixed shard: any bytes restore, after which batches are drawn, or are a
// minitron::Error.
#include <vector>

#include "data/dataloader.h"
#include "tests/fuzz/fuzz_util.h"
#include "util/checked_json.h"

namespace {

constexpr std::int64_t kTokens = 97;  // windows of T + 1 = 9 tokens: 12 of them

const std::filesystem::path& shard_path() {
  static const minitron::fuzz::ScratchDirectory scratch;
  static const std::filesystem::path path = [] {
    std::vector<std::int32_t> tokens(kTokens);
    for (std::int64_t i = 0; i < kTokens; ++i) tokens[i] = static_cast<std::int32_t>((i * 7 + 3) % 50);
    const std::filesystem::path shard = scratch.path() / "data.bin";
    minitron::write_shard(shard, tokens);
    return shard;
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace minitron;
  TrainLoaderOptions options;
  options.batch_size = 2;
  options.sequence_length = 8;
  options.seed = 1;
  TrainLoader loader({shard_path()}, options);
  fuzz::expect_value_or_error([&] {
    const nlohmann::json state = parse_untrusted_json(fuzz::as_text(data, size), "loader state", "a loader state");
    loader.restore(JsonField(state, "training_state.json").at("loader"));
    std::vector<std::int32_t> inputs(16), targets(16);
    for (int step = 0; step < 8; ++step) loader.next(inputs, targets);
  });
  return 0;
}
