// Helpers shared by the tokenizer tests: where the real tokenizer files live (outside the
// repository, see tools/fetch_tokenizers.sh) and where the committed fixtures are.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace minitron::test {

inline std::filesystem::path tokenizer_cache() {
  if (const char* dir = std::getenv("MINITRON_TOKENIZER_CACHE")) return dir;
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home ? home : "/nonexistent") / ".cache/minitron/tokenizers";
}

inline std::filesystem::path fixture(const std::string& name) {
  return std::filesystem::path(MINITRON_SOURCE_DIR) / "tests/data" / name;
}

}  // namespace minitron::test
