// A chat JSONL file for `tokenize --chat` (TRL's conversational and prompt-completion lines),
// rendered by a ChatML template and tokenized by a byte-level tokenizer: any bytes become SFT
// shards whose masks match their tokens, or are a minitron::Error.
#include "data/bpe_trainer.h"
#include "data/chat_dataset.h"
#include "data/shards.h"
#include "tests/fuzz/fuzz_util.h"
#include "util/files.h"

namespace {

const char* kChatML =
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nBe brief.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace minitron;
  static const fuzz::ScratchDirectory scratch;
  static const Tokenizer tokenizer = [] {
    BpeTrainOptions options;
    options.vocab_size = 300;
    options.special_tokens = {"<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"};
    BpeTrainer trainer(options);
    trainer.add_text("the quick brown fox jumps over the lazy dog, the end");
    return Tokenizer::load(scratch.write("tokenizer.json", trainer.train().tokenizer_json));
  }();
  static const ChatTemplate chat_template(kChatML);
  const auto input = scratch.write("chat.jsonl", fuzz::as_text(data, size));
  ChatTokenizeOptions options;
  options.output_prefix = (scratch.path() / "out").string();
  options.validation_tokens = 8;
  fuzz::expect_value_or_error([&] {
    const ChatTokenizeSummary summary = tokenize_chat_to_shards(tokenizer, chat_template, {input}, options);
    for (const auto& path : summary.shards) {
      const TokenShard shard = TokenShard::open(path, tokenizer.vocab_size());
      if (shard.kind() != ShardKind::Sft || shard.loss_mask().size() != shard.tokens().size())
        fail("a written SFT shard does not read back as one");
    }
  });
  return 0;
}
