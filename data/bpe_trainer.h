// Byte-level BPE training (GPT-2 / Llama 3 style): the Llama 3 pre-tokenizer regex, a
// ByteLevel decoder, <|begin_of_text|>/<|end_of_text|> added special tokens and a
// TemplateProcessing post-processor that adds BOS. The output is a tokenizer.json in the form
// HF `tokenizers` writes, loadable by it, by transformers.js and by minitron::Tokenizer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace minitron {

struct BpeTrainOptions {
  // Total vocab: 256 byte tokens + learned merges + special tokens (ids at the end, as Llama 3).
  std::int64_t vocab_size = 8192;
  // Added special tokens; the first is BOS (added by the post-processor), the second EOS.
  std::vector<std::string> special_tokens{"<|begin_of_text|>", "<|end_of_text|>"};
  // Pairs seen fewer times than this are not merged (training may stop below vocab_size).
  std::int64_t min_frequency = 2;
};

struct TrainedBpe {
  std::string tokenizer_json;         // HF tokenizer.json text
  std::string tokenizer_config_json;  // transformers tokenizer_config.json (bos/eos)
  std::int64_t vocab_size = 0;        // as reached (may be below the request on tiny corpora)
  std::int64_t merges = 0;
};

// Counts pre-tokens over many texts, then learns merges. Deterministic: the same texts in the
// same order give the same file (ties go to the pair with the smaller ids).
class BpeTrainer {
 public:
  explicit BpeTrainer(BpeTrainOptions options);
  ~BpeTrainer();
  BpeTrainer(BpeTrainer&&) noexcept;
  BpeTrainer& operator=(BpeTrainer&&) noexcept;

  void add_text(std::string_view text);
  TrainedBpe train() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Reads the files, trains, and writes dir/tokenizer.json and dir/tokenizer_config.json.
TrainedBpe train_bpe_files(const std::vector<std::filesystem::path>& inputs, const BpeTrainOptions& options,
                           const std::filesystem::path& dir);

}  // namespace minitron
