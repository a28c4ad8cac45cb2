// Chat with a model: a conversation rendered by the chat template with the generation prompt,
// the assistant's reply generated (KV cache) until an end-of-turn or end-of-sequence token, and
// appended to the conversation for the next turn.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "eval/generate.h"
#include "model/checkpoint.h"
#include "model/llama.h"

namespace minitron {

// The eos_token_id of a model directory's generation_config.json (an id or a list of ids);
// empty when the file is absent or has none.
std::vector<std::int32_t> generation_config_eos_ids(const std::filesystem::path& model_dir);

// Every end-of-sequence id of a checkpoint: config.json's eos_token_id(s), generation_config.json's
// (which transformers' generate reads) and the tokenizer's EOS; each id once, in that order.
std::vector<std::int32_t> checkpoint_eos_ids(const ModelConfig& config, const Tokenizer& tokenizer,
                                             const std::filesystem::path& model_dir);

// Where a chat reply ends: the template's end-of-turn marker when it is one token of the
// tokenizer (assistant_end_of_turn: <|eot_id|>, <|im_end|>, </s>), config.json's eos_token_id(s),
// generation_config.json's and the tokenizer's EOS; each id once, in that order.
std::vector<std::int32_t> chat_stop_tokens(const ChatTemplate& chat_template, const ChatTemplateInput& variables,
                                           const Tokenizer& tokenizer, const ModelConfig& config,
                                           const std::filesystem::path& model_dir);

class ChatSession {
 public:
  // conversation: the template's variables and the messages so far. sampling.stop_tokens ends
  // each reply (the caller gathers the end-of-turn and EOS ids); the stop token is not part of
  // the reply's text. All references must outlive the session.
  ChatSession(const LoadedCheckpoint& checkpoint, Backend& backend, const Tokenizer& tokenizer,
              const ChatTemplate& chat_template, ChatTemplateInput conversation, SamplingOptions sampling);
  ~ChatSession();

  void add_user(const std::string& text) { conversation_.messages.push_back(ChatMessage{"user", text}); }
  // Generates the assistant's reply to the conversation so far, streaming its text to on_text,
  // appends it as an assistant message and returns it. Refuses a conversation whose rendering
  // leaves no room for a new token (max_position_embeddings).
  std::string reply(const std::function<void(const std::string&)>& on_text = {});
  const std::vector<ChatMessage>& messages() const { return conversation_.messages; }
  // Tokens of the last reply's prompt taken from the KV cache instead of run again: the longest
  // prefix it shares with what the turn before ran (its prompt and its reply but the last token).
  std::int64_t reused_tokens() const { return reused_tokens_; }

 private:
  const LoadedCheckpoint& checkpoint_;
  Backend& backend_;
  const Tokenizer& tokenizer_;
  const ChatTemplate& template_;
  ChatTemplateInput conversation_;
  SamplingOptions sampling_;
  // Sized for the longest prompt so far, rebuilt larger when a turn needs more.
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<KvCache> cache_;
  std::int64_t model_tokens_ = 0, cache_tokens_ = 0;
  std::vector<std::int32_t> cached_;  // the tokens whose keys and values cache_ holds, in order
  std::int64_t reused_tokens_ = 0;
};

}  // namespace minitron
