// Numbers to and from user text. Whole decimal integers (flag values, comma lists, layer ranges):
// std::stoll reports overflow as a bare "stoll", so every such parse goes through parse_integer
// and fails with "<what>: value '<text>' ... (expected an integer from <low> to <high>)".
#pragma once

#include <charconv>
#include <cstdint>
#include <cstdio>
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

// n with three significant digits and a K/M/B/T suffix, e.g. 8.03B: parameter counts for people.
inline std::string human_count(std::int64_t n) {
  const char* suffixes[] = {"", "K", "M", "B", "T"};
  double value = static_cast<double>(n);
  int i = 0;
  while (value >= 999.5 && i < 4) value /= 1000, ++i;
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.3g%s", value, suffixes[i]);
  return buffer;
}

}  // namespace minitron
