// The one error type of the project: a message a user can read.
//
// Every failure a user can cause (bad file, bad flag, impossible target) throws minitron::Error
// with a message of the form "<what>: <why> (expected <expected>)". The CLI prints it as
// "minitron: error: <message>" and exits non-zero. Internal invariants use MINITRON_ASSERT,
// which also throws (with file:line) so that a bug never becomes a silent wrong answer.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace minitron {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Concatenates anything streamable: str("layer ", 3, " of ", 32).
template <typename... Args>
std::string str(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

[[noreturn]] inline void fail(const std::string& message) { throw Error(message); }

// fail_expected("model.safetensors", "header length 9e9 is beyond the file", "at most 1024 bytes")
[[noreturn]] inline void fail_expected(const std::string& what, const std::string& why, const std::string& expected) {
  throw Error(what + ": " + why + " (expected " + expected + ")");
}

}  // namespace minitron

#define MINITRON_ASSERT(cond, ...)                                                                 \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      ::minitron::fail(::minitron::str("internal error at ", __FILE__, ":", __LINE__, ": ", #cond, \
                                       " " __VA_OPT__(, ) __VA_ARGS__));                           \
  } while (0)
