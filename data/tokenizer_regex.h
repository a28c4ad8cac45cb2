// A compiled PCRE2 pattern (UTF + UCP + JIT) for the pre-tokenizer splits of tokenizer.json.
//
// HF `tokenizers` uses Oniguruma; PCRE2 with UCP gives the same \p{L}, \p{N}, \s classes and
// supports the look-ahead (\s+(?!\S)) and scoped case-insensitive groups these patterns use.
// Subjects may hold invalid UTF-8 (PCRE2_MATCH_INVALID_UTF): invalid bytes never match and
// so end up in the gaps between matches, which keeps encode total on arbitrary bytes.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace minitron {

class TokenizerRegex {
 public:
  // Throws minitron::Error naming `what` and PCRE2's message when the pattern does not compile.
  TokenizerRegex(const std::string& pattern, const std::string& what);
  ~TokenizerRegex();
  TokenizerRegex(TokenizerRegex&&) noexcept;
  TokenizerRegex& operator=(TokenizerRegex&&) noexcept;

  // Appends the [begin, end) byte ranges of all non-overlapping matches in `subject`.
  // Empty matches are skipped (they carry no text for a split).
  void find_all(std::string_view subject, std::vector<std::pair<std::size_t, std::size_t>>& out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace minitron
