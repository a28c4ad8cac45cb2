// config.json: any bytes are a ModelConfig or a minitron::Error.
#include "model/config.h"
#include "tests/fuzz/fuzz_util.h"
#include "util/checked_json.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace minitron;
  fuzz::expect_value_or_error([&] {
    const nlohmann::json document = parse_untrusted_json(fuzz::as_text(data, size), "config.json", "a config.json");
    const ModelConfig config = parse_model_config(document, "config.json");
    // The derived sizes every later step multiplies (bounded, so they must not overflow).
    volatile std::int64_t sink = config.q_dim() + config.kv_dim() + config.query_heads_per_group();
    (void)sink;
    (void)rope_inverse_frequencies(config);
    (void)model_config_to_json(config).dump();
  });
  return 0;
}
