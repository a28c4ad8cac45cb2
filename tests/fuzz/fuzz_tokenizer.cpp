// tokenizer.json, then encode and decode: the input is a tokenizer.json, a NUL byte, and text.
// Any tokenizer.json loads or is a minitron::Error; a loaded tokenizer encodes any bytes, and
// decodes ids made from them (in range, and one past it, which must be refused).
#include <algorithm>
#include <vector>

#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace minitron;
  static const fuzz::ScratchDirectory scratch;
  const std::string_view input = fuzz::as_text(data, size);
  const std::size_t separator = std::min(input.find('\0'), input.size());
  const std::string_view text = separator < input.size() ? input.substr(separator + 1) : std::string_view();
  const auto path = scratch.write("tokenizer.json", input.substr(0, separator));
  fuzz::expect_value_or_error([&] {
    const Tokenizer tokenizer = Tokenizer::load(path);
    const std::vector<std::int32_t> ids = tokenizer.encode(text, /*add_special_tokens=*/text.size() % 2 == 1);
    for (std::int32_t id : ids)
      if (id < 0 || id >= tokenizer.vocab_size()) fail("encode produced an id outside the vocabulary");
    (void)tokenizer.decode(ids);
    // Arbitrary ids: two bytes each, folded into [0, vocab_size] so one past the end occurs.
    std::vector<std::int32_t> arbitrary;
    for (std::size_t i = 0; i + 1 < text.size(); i += 2)
      arbitrary.push_back(static_cast<std::int32_t>(
          (static_cast<unsigned char>(text[i]) << 8 | static_cast<unsigned char>(text[i + 1])) %
          (tokenizer.vocab_size() + 1)));
    (void)tokenizer.decode(arbitrary, /*skip_special_tokens=*/text.size() % 3 == 0);
  });
  return 0;
}
