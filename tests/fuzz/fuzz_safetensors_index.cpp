// model.safetensors.index.json beside one fixed valid shard: any bytes are a checkpoint whose
// every tensor reads back, or a minitron::Error.
#include <vector>

#include "model/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// The shard the seed indexes name: "a" (2 values) and "b" (2 x 3 values).
const minitron::fuzz::ScratchDirectory& checkpoint_directory() {
  static const minitron::fuzz::ScratchDirectory scratch;
  static const bool written = [] {
    const std::vector<float> a = {1.0f, -2.0f}, b = {0.5f, 0.25f, 0.125f, 4.0f, 8.0f, 16.0f};
    const std::vector<minitron::SafetensorsEntry> entries = {{"a", {2}, a.data()}, {"b", {2, 3}, b.data()}};
    minitron::write_safetensors_file(scratch.path() / "model-00001-of-00001.safetensors", entries,
                                     minitron::SafetensorsDType::F32);
    return true;
  }();
  (void)written;
  return scratch;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace minitron;
  const fuzz::ScratchDirectory& directory = checkpoint_directory();
  directory.write("model.safetensors.index.json", fuzz::as_text(data, size));
  fuzz::expect_value_or_error([&] {
    const SafetensorsCheckpoint checkpoint(directory.path());
    for (const std::string& name : checkpoint.names()) {
      std::vector<float> values(static_cast<std::size_t>(checkpoint.at(name).numel));
      checkpoint.read_f32(name, values);
    }
  });
  return 0;
}
