// An importance scores file: any bytes are scores, checked for finiteness and against a model's
// shape as prune does, or a minitron::Error.
#include "prune/scores.h"
#include "tests/fuzz/fuzz_util.h"
#include "util/checked_json.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace minitron;
  fuzz::expect_value_or_error([&] {
    const nlohmann::json document = parse_untrusted_json(fuzz::as_text(data, size), "scores.json", "a scores file");
    const ImportanceScores scores = scores_from_json(document, "scores.json");
    check_scores_finite(scores, "scores.json");
    ModelConfig config;
    config.vocab_size = 64;
    config.hidden_size = 8;
    config.intermediate_size = 12;
    config.num_hidden_layers = 2;
    config.num_attention_heads = 2;
    config.num_key_value_heads = 1;
    config.head_dim = 4;
    check_scores_match(scores, config, "scores.json");
  });
  return 0;
}
