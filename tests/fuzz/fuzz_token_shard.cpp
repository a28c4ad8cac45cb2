// A token shard (llm.c's, or an SFT shard with its loss mask and document starts): any bytes open
// as a shard whose every token, mask byte and start can be read (and, with a vocabulary size,
// checked) and whose windows can be cut (with positions within documents), or are a
// minitron::Error.
#include <vector>

#include "data/dataloader.h"
#include "data/shards.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace minitron;
  static const fuzz::ScratchDirectory scratch;
  const auto path = scratch.write("tokens.bin", fuzz::as_text(data, size));
  fuzz::expect_value_or_error([&] {
    const TokenShard shard = TokenShard::open(path);
    std::uint64_t sum = 0;
    for (std::uint32_t token : shard.tokens()) sum += token;
    for (std::uint8_t m : shard.loss_mask()) sum += m;
    for (std::uint32_t start : shard.document_starts()) sum += start;
    volatile std::uint64_t sink = sum;
    (void)sink;
  });
  fuzz::expect_value_or_error([&] { (void)TokenShard::open(path, 64); });
  fuzz::expect_value_or_error([&] {
    EvalLoader loader({path}, 2, 3);
    std::vector<std::int32_t> inputs(6), targets(6), positions(6);
    while (loader.next(inputs, targets, positions) > 0) {
    }
  });
  return 0;
}
