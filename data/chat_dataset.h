// Instruction-tuning data (TRL's dataset formats) to SFT shards: the work behind
// `minitron tokenize --chat`.
//
// A JSONL line is conversational, {"messages": [{"role", "content"}, ...]}, or prompt-completion,
// {"prompt", "completion"} (two strings, or two lists of messages). Conversations are rendered
// by the chat template exactly as apply_chat_template renders them; the loss counts each
// assistant message's tokens and the end-of-turn marker the template writes after it, found by
// rendering prefixes as transformers and TRL do for templates without {% generation %} blocks:
// message i's span runs from the end of render(messages[:i], add_generation_prompt=True) to the
// end of render(messages[:i+1]), less trailing whitespace (ChatML's "\n" after <|im_end|>).
//
// The document's tokens are the whole text's (add_special_tokens=False: the template writes BOS).
// Character spans become token spans by tokenizing each text[:boundary]: where those tokens
// begin the whole text's, the boundary falls between tokens there (every boundary of the
// templates tested: Llama 3, Mistral [INST] with its SentencePiece-style tokenizer, ChatML);
// a token that straddles a boundary is trained when it holds a trained character.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "data/chat_template.h"
#include "data/tokenizer.h"

namespace minitron {

// A rendered conversation and the character spans [begin, end) the loss counts.
struct RenderedConversation {
  std::string text;
  std::vector<std::pair<std::size_t, std::size_t>> trained_spans;
};

// Renders base.messages (base.add_generation_prompt is ignored) and finds the span of every
// assistant message from index first_trained on. Throws naming `what` when the template does
// not render a prefix of the conversation as the start of the whole (the spans would be wrong).
RenderedConversation render_with_assistant_spans(const ChatTemplate& chat_template, const ChatTemplateInput& base,
                                                 std::size_t first_trained, const std::string& what);

// The text the template writes after an assistant message's content to end the turn, without
// surrounding whitespace ("<|eot_id|>" for Llama 3, "</s>" for Mistral [INST], "<|im_end|>" for
// ChatML), found by rendering a probe conversation (one user and one assistant turn) with
// `variables`; empty when the template writes nothing there.
std::string assistant_end_of_turn(const ChatTemplate& chat_template, const ChatTemplateInput& variables);

// A document's tokens and its loss mask (1: a target the loss counts).
struct MaskedDocument {
  std::vector<std::int32_t> tokens;
  std::vector<std::uint8_t> loss_mask;
};

// Tokenizes the text and masks in the spans' tokens (every token with train_on_prompt).
MaskedDocument tokenize_rendered(const Tokenizer& tokenizer, const RenderedConversation& rendered,
                                 bool train_on_prompt);

struct ChatTokenizeOptions {
  std::string output_prefix;
  std::int64_t shard_tokens = 100'000'000;
  std::int64_t validation_tokens = 0;
  bool train_on_prompt = false;
  // The template's variables besides the messages (bos_token, eos_token, extra_variables, today).
  ChatTemplateInput template_variables;
  bool show_progress = false;  // a progress bar (or periodic lines) over the input bytes, on stderr
};

struct ChatTokenizeSummary {
  std::int64_t documents = 0, tokens = 0, trained_tokens = 0;
  std::int64_t validation_documents = 0, validation_tokens = 0;
  std::vector<std::filesystem::path> shards;         // validation first
  std::vector<std::filesystem::path> removed_stale;  // old shards past the new last index
};

// One JSONL line (a parsed record) into a document; `what` names the file and line in refusals.
MaskedDocument tokenize_chat_record(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                                    const nlohmann::json& record, const ChatTokenizeOptions& options,
                                    const std::string& what);

// Reads every line of every input first (a bad line is refused, naming its file and line, before
// anything is written), then writes PREFIX_val_000000.bin (whole documents, at least
// validation_tokens tokens, when > 0) and PREFIX_train_000000.bin, ... of whole documents, each
// at most shard_tokens tokens unless one document alone is longer.
ChatTokenizeSummary tokenize_chat_to_shards(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                                            const std::vector<std::filesystem::path>& inputs,
                                            const ChatTokenizeOptions& options);

}  // namespace minitron
