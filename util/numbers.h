// Whole decimal integers from user text (flag values, comma lists, layer ranges): std::stoll
// reports overflow as a bare "stoll", so every such parse goes through here and fails with
// "<what>: value '<text>' ... (expected an integer from <low> to <high>)".
#pragma once

#include <charconv>
#include <cstdint>
#include <string>
#include <system_error>

#include "util/error.h"

namespace minitron {

inline std::int64_t parse_integer(const std::string& what, const std::string& text, std::int64_t low,
                                  std::int64_t high) {
  std::int64_t value = 0;
  const char* begin = text.data();
  const char* end = begin + text.size();
  const auto [stop, error] = std::from_chars(begin, end, value);
  if (text.empty() || error == std::errc::invalid_argument || stop != end)
    fail_expected(what, str("'", text, "' is not a whole number"), str("an integer from ", low, " to ", high));
  if (error == std::errc::result_out_of_range || value < low || value > high)
    fail_expected(what, str("value ", text, " is out of range"), str("an integer from ", low, " to ", high));
  return value;
}

}  // namespace minitron
