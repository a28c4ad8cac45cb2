// One safetensors file: any bytes are a file whose every tensor reads back, or a minitron::Error.
#include <vector>

#include "model/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace minitron;
  static const fuzz::ScratchDirectory scratch;
  const auto path = scratch.write("model.safetensors", fuzz::as_text(data, size));
  fuzz::expect_value_or_error([&] {
    const SafetensorsFile file(path);
    for (const SafetensorsTensor& tensor : file.tensors()) {
      // The header was checked against the file size, so every tensor's bytes are in the file.
      if (tensor.numel > (std::int64_t{1} << 20)) continue;
      std::vector<float> values(static_cast<std::size_t>(tensor.numel));
      file.read_f32(tensor.name, values);
    }
  });
  return 0;
}
