// An llm.c token shard: any bytes open as a shard whose every token can be read (and, with a
// vocabulary size from the first token, checked), or are a minitron::Error.
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
    volatile std::uint64_t sink = sum;
    (void)sink;
  });
  fuzz::expect_value_or_error([&] { (void)TokenShard::open(path, 64); });
  return 0;
}
