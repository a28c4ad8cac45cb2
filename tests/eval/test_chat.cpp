// Chat generation's stop ids: the template's end-of-turn token, config.json's EOS ids,
// generation_config.json's (an id or a list) and the tokenizer's, each once; refusals of a bad
// generation_config.json.
#include <gtest/gtest.h>

#include "data/bpe_trainer.h"
#include "data/chat_template.h"
#include "eval/chat.h"
#include "tests/util/temp_dir.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {
namespace {

class ChatStops : public ::testing::Test {
 protected:
  void SetUp() override {
    BpeTrainOptions options;
    options.vocab_size = 256 + 4;  // ids 256..259: the special tokens below, in order
    options.special_tokens = {"<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"};
    options.min_frequency = std::int64_t{1} << 40;
    BpeTrainer trainer(options);
    trainer.add_text("unused");
    write_bytes_atomically(dir_ / "tokenizer.json", trainer.train().tokenizer_json);
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::load(dir_ / "tokenizer.json"));
    config_.eos_token_ids = {7, 257};
  }
  testing::TempDir dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ModelConfig config_;
};

const char* kChatML =
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

TEST_F(ChatStops, EndOfTurnThenEveryEosOnce) {
  const ChatTemplate t(kChatML);
  // No generation_config.json: <|im_end|> (259), config.json's 7 and 257 (the tokenizer's EOS too).
  EXPECT_EQ(chat_stop_tokens(t, ChatTemplateInput{}, *tokenizer_, config_, dir_.path()),
            (std::vector<std::int32_t>{259, 7, 257}));
  write_bytes_atomically(dir_ / "generation_config.json", R"({"eos_token_id": [257, 11, 12]})");
  EXPECT_EQ(chat_stop_tokens(t, ChatTemplateInput{}, *tokenizer_, config_, dir_.path()),
            (std::vector<std::int32_t>{259, 7, 257, 11, 12}));
  write_bytes_atomically(dir_ / "generation_config.json", R"({"eos_token_id": 13, "do_sample": true})");
  EXPECT_EQ(generation_config_eos_ids(dir_.path()), (std::vector<std::int32_t>{13}));
}

TEST_F(ChatStops, AnEndOfTurnOfSeveralTokensIsNoStopId) {
  // "END" is three byte tokens: replies end at the EOS ids only.
  const ChatTemplate t("{% for m in messages %}{{ m.content }}END\n{% endfor %}");
  EXPECT_EQ(chat_stop_tokens(t, ChatTemplateInput{}, *tokenizer_, config_, dir_.path()),
            (std::vector<std::int32_t>{7, 257}));
}

TEST_F(ChatStops, BadGenerationConfigIsRefused) {
  write_bytes_atomically(dir_ / "generation_config.json", R"({"eos_token_id": [1, -2]})");
  try {
    generation_config_eos_ids(dir_.path());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("generation_config.json: eos_token_id[1] is -2"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace minitron
