// Hugging Face tokenizer.json (BPE models) — the library API the engine uses.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace minitron {

class Tokenizer {
 public:
  // Loads a tokenizer.json file, or the tokenizer.json inside a model directory.
  static Tokenizer load(const std::filesystem::path& path_or_dir);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Ids as HF `tokenizers` gives them; with add_special_tokens, the post-processor's
  // BOS/EOS (e.g. <|begin_of_text|> for Llama 3, <s> for Llama 2) are added.
  std::vector<std::int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens = false) const;

  std::int64_t vocab_size() const;  // largest id + 1, added tokens included
  std::optional<std::int32_t> bos_id() const;
  std::optional<std::int32_t> eos_id() const;
  std::optional<std::int32_t> token_to_id(std::string_view token) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace minitron
