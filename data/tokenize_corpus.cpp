#include "data/tokenize_corpus.h"

#include <atomic>
#include <cstdio>
#include <exception>
#include <optional>
#include <span>
#include <thread>

#include "data/shards.h"
#include "data/text_input.h"
#include "util/error.h"
#include "util/progress.h"

namespace minitron {

namespace fs = std::filesystem;

fs::path shard_path(const std::string& prefix, const std::string& split, std::int64_t index) {
  char number[16];
  std::snprintf(number, sizeof(number), "%06lld", static_cast<long long>(index));
  return fs::path(prefix + "_" + split + "_" + number + ".bin");
}

namespace {

// Receives documents' tokens in order and writes the validation shard, then training shards.
class ShardSink {
 public:
  ShardSink(const TokenizeOptions& options, TokenizeSummary& summary)
      : options_(options), summary_(summary), in_validation_(options.validation_tokens > 0) {}

  void add_document(const std::vector<std::int32_t>& tokens) {
    ++summary_.documents;
    summary_.tokens += static_cast<std::int64_t>(tokens.size());
    if (in_validation_) {
      buffer_.insert(buffer_.end(), tokens.begin(), tokens.end());
      ++summary_.validation_documents;
      if (static_cast<std::int64_t>(buffer_.size()) >= options_.validation_tokens) close_validation();
      return;
    }
    buffer_.insert(buffer_.end(), tokens.begin(), tokens.end());
    const auto n = static_cast<std::size_t>(options_.shard_tokens);
    if (buffer_.size() >= n) {
      std::size_t begin = 0;
      for (; buffer_.size() - begin >= n; begin += n)
        write(shard_path(options_.output_prefix, "train", train_shards_++), {buffer_.data() + begin, n});
      buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(begin));
    }
  }

  void finish() {
    if (in_validation_) close_validation();
    if (!buffer_.empty()) write(shard_path(options_.output_prefix, "train", train_shards_++), buffer_);
    buffer_.clear();
  }

  std::int64_t train_shards() const { return train_shards_; }

 private:
  void close_validation() {
    if (static_cast<std::int64_t>(buffer_.size()) > kShardMaxTokens)
      fail_expected("--validation-tokens", str("the validation split reached ", buffer_.size(), " tokens"),
                    str("at most ", kShardMaxTokens, " tokens in the one validation shard"));
    summary_.validation_tokens = static_cast<std::int64_t>(buffer_.size());
    write(shard_path(options_.output_prefix, "val", 0), buffer_);
    buffer_.clear();
    in_validation_ = false;
  }

  void write(const fs::path& path, std::span<const std::int32_t> tokens) {
    write_shard(path, tokens);
    summary_.shards.push_back(path);
  }

  const TokenizeOptions& options_;
  TokenizeSummary& summary_;
  bool in_validation_;
  std::vector<std::int32_t> buffer_;
  std::int64_t train_shards_ = 0;
};

// Tokenizes documents[i] into results[i] on `threads` threads; rethrows the first failure.
void encode_all(const Tokenizer& tokenizer, std::span<const std::string> documents,
                std::vector<std::vector<std::int32_t>>& results, int threads) {
  results.assign(documents.size(), {});
  std::atomic<std::size_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto work = [&](std::exception_ptr& my_error) {
    try {
      for (std::size_t i; !failed && (i = next++) < documents.size();)
        results[i] = tokenizer.encode(documents[i], /*add_special_tokens=*/false);
    } catch (...) {
      my_error = std::current_exception();
      failed = true;
    }
  };
  const auto n = static_cast<std::size_t>(std::max(1, threads));
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> pool;
  for (std::size_t t = 1; t < n; ++t) pool.emplace_back(work, std::ref(errors[t]));
  work(errors[0]);
  for (auto& thread : pool) thread.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace

TokenizeSummary tokenize_to_shards(const Tokenizer& tokenizer, const std::vector<fs::path>& inputs,
                                   const TokenizeOptions& options) {
  if (options.output_prefix.empty()) fail_expected("output prefix", "it is empty", "a path prefix such as data/corpus");
  if (options.shard_tokens < 1 || options.shard_tokens > kShardMaxTokens)
    fail_expected("shard tokens", str(options.shard_tokens), str("1 to ", kShardMaxTokens));
  if (options.validation_tokens < 0) fail_expected("validation tokens", str(options.validation_tokens), "at least 0");
  if (inputs.empty()) fail_expected("inputs", "none given", "at least one text or JSONL file");
  const std::optional<std::int32_t> bos = tokenizer.bos_id(), eos = tokenizer.eos_id();
  if (!bos && !eos)
    fail_expected("tokenizer", "it has neither a BOS nor an EOS token",
                  "one of them, to separate documents in the shards");

  std::int64_t total_bytes = 0;
  for (const auto& input : inputs) {
    std::error_code ec;
    const auto size = fs::file_size(input, ec);
    if (ec) fail_expected(input.string(), ec.message(), "a readable text or JSONL file");
    total_bytes += static_cast<std::int64_t>(size);
  }

  TokenizeSummary summary;
  ShardSink sink(options, summary);
  std::optional<Progress> progress;
  if (options.show_progress) progress.emplace("tokenize", total_bytes, "B");
  // Bounded batches keep memory at a few documents' tokens per thread, not the whole corpus.
  constexpr std::size_t kBatchBytes = 8 << 20;
  std::int64_t bytes_done = 0;
  std::vector<std::vector<std::int32_t>> encoded;
  for (const auto& input : inputs) {
    const std::vector<std::string> documents = read_documents(input, {.split_blank_lines = options.split_blank_lines});
    for (std::size_t begin = 0; begin < documents.size();) {
      std::size_t end = begin, bytes = 0;
      while (end < documents.size() && (end == begin || bytes < kBatchBytes)) bytes += documents[end++].size();
      encode_all(tokenizer, std::span<const std::string>(documents).subspan(begin, end - begin), encoded,
                 options.threads);
      for (auto& tokens : encoded) {
        if (bos)
          tokens.insert(tokens.begin(), *bos);
        else
          tokens.push_back(*eos);
        sink.add_document(tokens);
      }
      if (progress) progress->advance(static_cast<std::int64_t>(bytes));
      begin = end;
    }
    bytes_done += static_cast<std::int64_t>(fs::file_size(input));
    if (progress) progress->set(bytes_done);
  }
  if (summary.documents == 0)
    fail_expected("inputs", "they hold no non-empty document", "text or JSONL with at least one document");
  sink.finish();
  if (progress) progress->finish();
  if (sink.train_shards() == 0)
    fail_expected("--validation-tokens",
                  str("the inputs hold ", summary.tokens, " tokens, all of which went to the validation shard ",
                      shard_path(options.output_prefix, "val", 0).string()),
                  str("fewer than ", summary.tokens, " so that training shards remain"));

  // Shards of an earlier, longer run under the same prefix would be picked up by a
  // "<prefix>_train_*.bin" pattern and silently mix two corpora: remove them.
  for (std::int64_t k = sink.train_shards();; ++k) {
    const fs::path stale = shard_path(options.output_prefix, "train", k);
    if (!fs::exists(stale)) break;
    fs::remove(stale);
    summary.removed_stale.push_back(stale);
  }
  if (options.validation_tokens == 0 && fs::exists(shard_path(options.output_prefix, "val", 0))) {
    fs::remove(shard_path(options.output_prefix, "val", 0));
    summary.removed_stale.push_back(shard_path(options.output_prefix, "val", 0));
  }
  return summary;
}

}  // namespace minitron
