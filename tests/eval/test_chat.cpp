// Chat generation's stop ids: the template's end-of-turn token, config.json's EOS ids,
// generation_config.json's (an id or a list) and the tokenizer's, each once; refusals of a bad
// generation_config.json. A conversation's later turns run only what they add to the KV cache
// and reply what a fresh session replies.
#include <gtest/gtest.h>

#include "data/bpe_trainer.h"
#include "data/chat_template.h"
#include "eval/chat.h"
#include "eval/generate.h"
#include "kernels/make_backend.h"
#include "model/llama.h"
#include "tests/util/temp_dir.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {
namespace {

class Chat : public ::testing::Test {
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

TEST_F(Chat, EndOfTurnThenEveryEosOnce) {
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

TEST_F(Chat, AnEndOfTurnOfSeveralTokensIsNoStopId) {
  // "END" is three byte tokens: replies end at the EOS ids only.
  const ChatTemplate t("{% for m in messages %}{{ m.content }}END\n{% endfor %}");
  EXPECT_EQ(chat_stop_tokens(t, ChatTemplateInput{}, *tokenizer_, config_, dir_.path()),
            (std::vector<std::int32_t>{7, 257}));
}

TEST_F(Chat, BadGenerationConfigIsRefused) {
  write_bytes_atomically(dir_ / "generation_config.json", R"({"eos_token_id": [1, -2]})");
  try {
    generation_config_eos_ids(dir_.path());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("generation_config.json: eos_token_id[1] is -2"), std::string::npos)
        << e.what();
  }
}

// A model over the fixture's byte-level tokenizer, initialised with std 0.3 (not training's 0.02)
// so that logits lie far apart and greedy paths vary with the context.
LoadedCheckpoint byte_model() {
  ModelConfig c;
  c.vocab_size = 260;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 256;
  LoadedCheckpoint m{c, ParameterTable(c), {}};
  m.params.resize(static_cast<std::size_t>(m.table.total_numel()));
  initialize_parameters(c, m.table, m.params, /*seed=*/5, /*std=*/0.3);
  return m;
}

// Prompts stay under 64 tokens, where the CPU engine's products are row-independent: running a
// suffix after cached rows computes what running the whole prompt computes, bit for bit.
TEST_F(Chat, LaterTurnsRunOnlyWhatTheyAddAndReplyAsAFreshSession) {
  const LoadedCheckpoint checkpoint = byte_model();
  const auto backend = make_backend("cpu");
  const ChatTemplate t(kChatML);
  SamplingOptions sampling;
  sampling.max_new_tokens = 6;
  sampling.stop_tokens = {259};
  ChatSession session(checkpoint, *backend, *tokenizer_, t, ChatTemplateInput{}, sampling);
  ChatTemplateInput conversation;
  std::int64_t earlier_prompt = 0;
  for (const char* turn : {"Hi", "And?", "Why"}) {
    session.add_user(turn);
    conversation.messages.push_back(ChatMessage{"user", turn});
    const std::string reply = session.reply();
    // Every token of the turn before's prompt comes from the cache (the first turn has none).
    EXPECT_GE(session.reused_tokens(), earlier_prompt) << turn;
    EXPECT_EQ(session.reused_tokens() == 0, earlier_prompt == 0) << turn;
    ChatSession fresh(checkpoint, *backend, *tokenizer_, t, conversation, sampling);
    EXPECT_EQ(fresh.reply(), reply) << turn;
    EXPECT_EQ(fresh.reused_tokens(), 0);
    conversation.add_generation_prompt = true;
    earlier_prompt = static_cast<std::int64_t>(tokenizer_->encode(t.render(conversation)).size());
    conversation.add_generation_prompt = false;
    conversation.messages.push_back(ChatMessage{"assistant", reply});
  }
}

// continue_generation after KvCache::truncate (and in a larger cache the kept tokens were copied
// into): the kept tokens and the new ones generate what the whole prompt generates on an empty
// cache; the forgotten tokens play no part.
TEST_F(Chat, ContinuingATruncatedCacheGeneratesAsTheWholePrompt) {
  const LoadedCheckpoint checkpoint = byte_model();
  const auto backend = make_backend("cpu");
  LlamaModel model(checkpoint.config, *backend, 1, 16, ModelMode::Inference);
  model.set_parameters(checkpoint.params);
  SamplingOptions sampling;
  sampling.max_new_tokens = 8;
  const std::vector<std::int32_t> first = {72, 105, 33, 10, 200, 3, 77, 150, 9, 41};
  const std::vector<std::int32_t> second = {72, 105, 33, 10, 200, 99, 18, 64};  // shares 5 tokens
  KvCache cache(checkpoint.config, *backend, 32);
  generate(model, cache, first, sampling);
  ASSERT_EQ(cache.length(), 10 + 8 - 1);  // the last generated token is never run
  cache.truncate(5);
  KvCache grown(checkpoint.config, *backend, 48);  // a conversation outgrowing its cache
  grown.copy_from(*backend, cache);
  EXPECT_EQ(grown.length(), 5);
  const std::vector<std::int32_t> continued = continue_generation(model, cache, std::span(second).subspan(5), sampling);
  KvCache empty(checkpoint.config, *backend, 32);
  const std::vector<std::int32_t> whole = generate(model, empty, second, sampling);
  EXPECT_EQ(continued, whole);
  EXPECT_EQ(continue_generation(model, grown, std::span(second).subspan(5), sampling), whole);
  // Without the truncation the forgotten tokens would be context: the test can tell.
  KvCache stale(checkpoint.config, *backend, 40);
  generate(model, stale, first, sampling);
  EXPECT_NE(continue_generation(model, stale, std::span(second).subspan(5), sampling), whole);
  EXPECT_THROW(cache.truncate(cache.length() + 1), Error);
}

}  // namespace
}  // namespace minitron
