// A pipeline recipe: any bytes are a Recipe or a minitron::Error.
#include "pipeline/recipe.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace minitron;
  static const fuzz::ScratchDirectory scratch;
  const auto path = scratch.write("recipe.json", fuzz::as_text(data, size));
  fuzz::expect_value_or_error([&] { (void)load_recipe(path); });
  return 0;
}
