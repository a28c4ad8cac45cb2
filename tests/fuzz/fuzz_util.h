// Shared by the libFuzzer targets (one per parser of untrusted files, issue 22).
//
// The contract each target checks: a parser turns every input into a value or minitron::Error.
// Targets catch minitron::Error only; any other exception, crash, sanitizer report or hang is a
// finding. Parsers that take a path get the input through a ScratchDirectory, one per process
// (libFuzzer's -jobs/-fork runs several), removed at exit.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "util/error.h"

namespace minitron::fuzz {

class ScratchDirectory {
 public:
  ScratchDirectory() : path_(std::filesystem::temp_directory_path() / ("minitron-fuzz-" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(path_);
  }
  ~ScratchDirectory() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDirectory(const ScratchDirectory&) = delete;
  ScratchDirectory& operator=(const ScratchDirectory&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path write(const std::string& name, std::string_view bytes) const {
    const std::filesystem::path file = path_ / name;
    std::ofstream(file, std::ios::binary | std::ios::trunc)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return file;
  }

 private:
  std::filesystem::path path_;
};

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Runs parse, treating minitron::Error as the expected refusal of a bad input.
template <typename Parse>
void expect_value_or_error(Parse&& parse) {
  try {
    parse();
  } catch (const Error&) {
  }
}

}  // namespace minitron::fuzz
