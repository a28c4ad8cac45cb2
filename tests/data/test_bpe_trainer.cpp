// The BPE trainer: its tokenizer.json loads back, round-trips, is deterministic, and encodes
// exactly as an independent HF implementation does on the same file. goldens_trained512.json
// holds the ids @huggingface/tokenizers gives on the file trained here from
// english_sample.txt with vocab 512 (tools/make_tokenizer_goldens.mjs --dir ... --name trained512).
#include <gtest/gtest.h>

#include <unistd.h>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "data/bpe_trainer.h"
#include "data/tokenizer.h"
#include "tests/data/tokenizer_test_util.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;

struct TrainedDir {
  fs::path dir = fs::temp_directory_path() / ("minitron_bpe_test_" + std::to_string(::getpid()));
  TrainedBpe trained;
  TrainedDir() {
    BpeTrainOptions options;
    options.vocab_size = 512;
    trained = train_bpe_files({test::fixture("english_sample.txt")}, options, dir);
  }
  ~TrainedDir() { fs::remove_all(dir); }
};

TEST(BpeTrainer, OutputLoadsAndMatchesReference) {
  TrainedDir t;
  Tokenizer tok = Tokenizer::load(t.dir);
  // The sample is small: merges stop where no pair occurs twice (min_frequency 2).
  EXPECT_EQ(tok.vocab_size(), t.trained.vocab_size);
  EXPECT_EQ(t.trained.vocab_size, 256 + t.trained.merges + 2);
  EXPECT_GT(t.trained.merges, 200);
  EXPECT_EQ(tok.bos_id(), t.trained.vocab_size - 2);
  EXPECT_EQ(tok.eos_id(), t.trained.vocab_size - 1);
  EXPECT_EQ(tok.token_to_id("<|begin_of_text|>"), tok.bos_id());

  auto goldens = nlohmann::json::parse(read_text_file(test::fixture("goldens_trained512.json")));
  for (const auto& c : goldens["cases"]) {
    std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tok.encode(text), c["ids"].get<std::vector<std::int32_t>>()) << text.substr(0, 60);
    EXPECT_EQ(tok.encode(text, true), c["ids_with_special"].get<std::vector<std::int32_t>>());
    EXPECT_EQ(tok.decode(tok.encode(text)), text);
  }
  // Special tokens are never split, and decode can skip them.
  std::vector<std::int32_t> ids = tok.encode("<|begin_of_text|>The river<|end_of_text|>");
  EXPECT_EQ(ids.front(), *tok.bos_id());
  EXPECT_EQ(ids.back(), *tok.eos_id());
  EXPECT_EQ(tok.decode(ids, true), "The river");
}

TEST(BpeTrainer, IsDeterministicAndHasHfLayout) {
  BpeTrainOptions options;
  options.vocab_size = 400;
  std::string text = read_text_file(test::fixture("english_sample.txt"));
  BpeTrainer first(options), second(options);
  first.add_text(text);
  second.add_text(text);
  TrainedBpe a = first.train(), b = second.train();
  EXPECT_EQ(a.tokenizer_json, b.tokenizer_json);
  EXPECT_EQ(a.vocab_size, 400);
  auto j = nlohmann::ordered_json::parse(a.tokenizer_json);
  std::vector<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
  EXPECT_EQ(keys, (std::vector<std::string>{"version", "truncation", "padding", "added_tokens", "normalizer",
                                            "pre_tokenizer", "post_processor", "decoder", "model"}));
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["merges"].size(), 400u - 256u - 2u);
  EXPECT_TRUE(j["model"]["merges"][0].is_array());
  EXPECT_EQ(j["model"]["vocab"].size(), 400u - 2u);
  auto config = nlohmann::json::parse(a.tokenizer_config_json);
  EXPECT_EQ(config["bos_token"], "<|begin_of_text|>");
  EXPECT_EQ(config["eos_token"], "<|end_of_text|>");
}

TEST(BpeTrainer, RejectsBadOptions) {
  BpeTrainOptions options;
  options.vocab_size = 100;
  EXPECT_THROW(BpeTrainer{options}, Error);
  options.vocab_size = 300;
  EXPECT_THROW(train_bpe_files({"/nonexistent/input.txt"}, options, "/tmp/minitron_never_written"), Error);
  EXPECT_THROW(train_bpe_files({}, options, "/tmp/minitron_never_written"), Error);
}

}  // namespace
}  // namespace minitron
