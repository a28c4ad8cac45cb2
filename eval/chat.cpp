#include "eval/chat.h"

#include <algorithm>

#include "data/chat_dataset.h"
#include "util/checked_json.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace fs = std::filesystem;

std::vector<std::int32_t> generation_config_eos_ids(const fs::path& model_dir) {
  const fs::path path = model_dir / "generation_config.json";
  if (!fs::exists(path)) return {};
  const nlohmann::json document =
      parse_untrusted_json(read_text_file(path), path.string(), "a generation_config.json object");
  const JsonField root(document, path.string());
  if (!root.is_object()) root.refuse("a generation_config.json object");
  const JsonField eos = root.at("eos_token_id");
  if (eos.is_null()) return {};
  if (eos.is_array()) return eos.as_int_array<std::int32_t>(0);
  return {eos.as_int<std::int32_t>(0)};
}

std::vector<std::int32_t> checkpoint_eos_ids(const ModelConfig& config, const Tokenizer& tokenizer,
                                             const fs::path& model_dir) {
  std::vector<std::int32_t> ids;
  auto add = [&](std::int64_t id) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(static_cast<std::int32_t>(id));
  };
  for (std::int64_t id : config.eos_token_ids) add(id);
  for (std::int32_t id : generation_config_eos_ids(model_dir)) add(id);
  if (tokenizer.eos_id()) add(*tokenizer.eos_id());
  return ids;
}

std::vector<std::int32_t> chat_stop_tokens(const ChatTemplate& chat_template, const ChatTemplateInput& variables,
                                           const Tokenizer& tokenizer, const ModelConfig& config,
                                           const fs::path& model_dir) {
  std::vector<std::int32_t> ids;
  const std::string end_of_turn = assistant_end_of_turn(chat_template, variables);
  if (!end_of_turn.empty()) {
    const std::vector<std::int32_t> marker = tokenizer.encode(end_of_turn);
    if (marker.size() == 1) ids.push_back(marker[0]);
  }
  for (std::int32_t id : checkpoint_eos_ids(config, tokenizer, model_dir))
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  return ids;
}

ChatSession::ChatSession(const LoadedCheckpoint& checkpoint, Backend& backend, const Tokenizer& tokenizer,
                         const ChatTemplate& chat_template, ChatTemplateInput conversation, SamplingOptions sampling)
    : checkpoint_(checkpoint),
      backend_(backend),
      tokenizer_(tokenizer),
      template_(chat_template),
      conversation_(std::move(conversation)),
      sampling_(std::move(sampling)) {}

ChatSession::~ChatSession() = default;

std::string ChatSession::reply(const std::function<void(const std::string&)>& on_text) {
  ChatTemplateInput input = conversation_;
  input.add_generation_prompt = true;
  // The template writes the special tokens (BOS included), as apply_chat_template(tokenize=True) does.
  const std::vector<std::int32_t> prompt = tokenizer_.encode(template_.render(input));
  const ModelConfig& config = checkpoint_.config;
  const auto n = static_cast<std::int64_t>(prompt.size());
  const std::int64_t limit = config.max_position_embeddings;
  if (n == 0) fail_expected("chat", "the conversation renders to no token", "a template that writes the messages");
  if (n >= limit)
    fail_expected("chat", str("the conversation is ", n, " tokens"),
                  str("fewer than max_position_embeddings = ", limit, " (start a new conversation)"));
  for (std::int32_t id : prompt)
    if (id >= config.vocab_size)
      fail_expected("--tokenizer", str("token id ", id, " in the rendered conversation"),
                    str("ids below the model's vocab_size ", config.vocab_size));
  SamplingOptions sampling = sampling_;
  sampling.max_new_tokens = std::min(sampling.max_new_tokens, limit - n);
  if (!model_ || model_tokens_ < n) {
    // Twice what this turn needs (within the limit), so a growing conversation rebuilds rarely.
    model_tokens_ = std::min(limit, 2 * n);
    model_ = std::make_unique<LlamaModel>(config, backend_, 1, model_tokens_, ModelMode::Inference);
    model_->set_parameters(checkpoint_.params);
  }
  // Keep the keys and values of the longest prefix this prompt shares with what the cache holds
  // (every earlier turn, where adding messages leaves the rendering before them as it was) and
  // run the rest: at least one token, for the logits.
  const auto shared = std::mismatch(cached_.begin(), cached_.end(), prompt.begin(), prompt.end()).first;
  reused_tokens_ = std::min<std::int64_t>(shared - cached_.begin(), n - 1);
  if (cache_) cache_->truncate(reused_tokens_);
  cached_.clear();  // until this turn's tokens are all in the cache
  if (!cache_ || cache_tokens_ < n + sampling.max_new_tokens) {
    cache_tokens_ = std::min(limit, std::max(2 * n, n + sampling.max_new_tokens));
    auto grown = std::make_unique<KvCache>(config, backend_, cache_tokens_);
    if (cache_) grown->copy_from(backend_, *cache_);
    cache_ = std::move(grown);
  }
  IncrementalDecoder decoder(tokenizer_);
  std::string text;
  auto emit = [&](const std::string& piece) {
    text += piece;
    if (on_text && !piece.empty()) on_text(piece);
  };
  const std::vector<std::int32_t> stop = sampling.stop_tokens;
  const std::vector<std::int32_t> generated =
      continue_generation(*model_, *cache_, std::span(prompt).subspan(static_cast<std::size_t>(reused_tokens_)),
                          sampling, [&](std::int32_t token) {
                            if (std::find(stop.begin(), stop.end(), token) == stop.end()) emit(decoder.push(token));
                          });
  cached_ = prompt;
  cached_.insert(cached_.end(), generated.begin(), generated.end() - 1);  // the last was never run
  emit(decoder.flush());
  conversation_.messages.push_back(ChatMessage{"assistant", text});
  return text;
}

}  // namespace minitron
