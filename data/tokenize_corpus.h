// Text and JSONL documents to llm.c token shards: the work behind `minitron tokenize`.
//
// Documents are tokenized in parallel and written in input order, so the shards are the same
// bytes for any thread count. Each document is delimited as llm.c does for Llama 3: it starts
// with the tokenizer's BOS (<|begin_of_text|>); a tokenizer without BOS ends documents with EOS
// instead. The first documents, at least validation_tokens tokens, go to
// <prefix>_val_000000.bin; the rest fill <prefix>_train_000000.bin, _000001.bin, ... with exactly
// shard_tokens tokens each (documents may straddle shards; the last shard holds the remainder).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace minitron {

struct TokenizeOptions {
  std::string output_prefix;
  std::int64_t shard_tokens = 100'000'000;
  std::int64_t validation_tokens = 0;
  bool split_blank_lines = false;
  int threads = 1;
  bool show_progress = false;
};

struct TokenizeSummary {
  std::int64_t documents = 0, tokens = 0;
  std::int64_t validation_documents = 0, validation_tokens = 0;
  std::vector<std::filesystem::path> shards;         // in writing order: validation first
  std::vector<std::filesystem::path> removed_stale;  // old shards past the new last index
};

TokenizeSummary tokenize_to_shards(const Tokenizer& tokenizer, const std::vector<std::filesystem::path>& inputs,
                                   const TokenizeOptions& options);

std::filesystem::path shard_path(const std::string& prefix, const std::string& split, std::int64_t index);

}  // namespace minitron
