// The one reader of untrusted JSON (config.json, tokenizer.json, safetensors headers, recipes,
// score files, saved state, JSONL data): every file minitron reads comes from the internet.
//
// nlohmann's get<T>() converts whatever it finds: 4294967297 read as int32_t silently becomes 1,
// 7.5 becomes 7, and 3.3e37 is undefined behaviour. A JsonField is a view of one value that
// remembers the file and the JSON path it was reached by, and its readers accept only the type
// asked for, in range for the destination, refusing with one line that names all three:
//   tokenizer.json: model.vocab["&"] is 4294967297 (expected an integer from 0 to 2147483647)
// A missing key is not an error until it is read, so the refusal can say what was expected there.
// tools/check_json_access.py (a ctest) keeps nlohmann's converting accessors out of every other
// non-test file.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace minitron {

// Parses text into a document, refusing invalid JSON and nesting deeper than kMaxJsonDepth
// (nlohmann's serializer and the loaders recurse, so a file of a million '[' must not reach them)
// with "<file>: not valid JSON: <why> (expected <expected>)".
inline constexpr int kMaxJsonDepth = 256;
nlohmann::json parse_untrusted_json(std::string_view text, const std::string& file, const std::string& expected);

class JsonField {
 public:
  // The whole document; `file` names it in every message ("config.json", "data.jsonl line 7").
  JsonField(const nlohmann::json& document, std::string file) : value_(&document), file_(std::move(file)) {}

  const std::string& file() const { return file_; }
  // `model.vocab["&"]`, `added_tokens[3].id`; empty for the document itself.
  const std::string& path() const { return path_; }
  // "tokenizer.json: model.vocab" (or "tokenizer.json" for the document), for messages.
  std::string where() const;

  bool exists() const { return value_ != nullptr; }
  // Absent and null read the same: HF writes optional fields both ways.
  bool is_null() const { return !value_ || value_->is_null(); }
  bool is_object() const { return value_ && value_->is_object(); }
  bool is_array() const { return value_ && value_->is_array(); }
  bool is_string() const { return value_ && value_->is_string(); }
  bool is_number() const { return value_ && value_->is_number(); }
  bool is_bool() const { return value_ && value_->is_boolean(); }
  bool has(const std::string& key) const { return is_object() && !at(key).is_null(); }

  // The member `key`; refuses when this value is not an object (or is missing). A missing member
  // is returned as a field that refuses when read.
  JsonField at(const std::string& key) const;
  // The member `key`, or nullopt when it is absent or null.
  std::optional<JsonField> optional(const std::string& key) const;
  // Element i of an array; refuses when this is not an array or i is past its end.
  JsonField operator[](std::size_t i) const;
  std::size_t size() const { return as_array_value().size(); }

  std::vector<JsonField> as_array() const;
  std::vector<std::pair<std::string, JsonField>> as_object() const;

  // An integer, or a float holding an exact integer (some exporters write 4096.0), from
  // `minimum` to `maximum`.
  template <typename Integer>
  Integer as_int(Integer minimum = std::numeric_limits<Integer>::min(),
                 Integer maximum = std::numeric_limits<Integer>::max()) const;
  // Any finite JSON number.
  double as_float() const;
  const std::string& as_string() const;
  bool as_bool() const;

  template <typename Integer>
  std::vector<Integer> as_int_array(Integer minimum = std::numeric_limits<Integer>::min(),
                                    Integer maximum = std::numeric_limits<Integer>::max()) const;
  std::vector<double> as_float_array() const;
  std::vector<std::string> as_string_array() const;

  // The value's text as JSON (shortened past 60 characters), for messages.
  std::string excerpt() const;
  // The value itself, for copying or comparing it whole (never for reading a scalar out of it).
  const nlohmann::json& raw() const;

  // "<file>: <path> is <excerpt> (expected <expected>)" (or "is missing").
  [[noreturn]] void refuse(const std::string& expected) const;
  // "<file>: <path>: <why> (expected <expected>)", for checks beyond the value's type.
  [[noreturn]] void refuse(const std::string& why, const std::string& expected) const;

 private:
  JsonField(const nlohmann::json* value, std::string file, std::string path)
      : value_(value), file_(std::move(file)), path_(std::move(path)) {}
  const nlohmann::json& as_array_value() const;
  // Whole integers in [-2^63, 2^64) with their sign, or nothing for anything else.
  std::optional<std::int64_t> signed_integer() const;
  std::optional<std::uint64_t> unsigned_integer() const;
  [[noreturn]] void refuse_integer(const std::string& minimum, const std::string& maximum) const;

  const nlohmann::json* value_;  // null when the member is missing
  std::string file_;
  std::string path_;
};

template <typename Integer>
Integer JsonField::as_int(Integer minimum, Integer maximum) const {
  static_assert(std::is_integral_v<Integer> && !std::is_same_v<Integer, bool>);
  if constexpr (std::is_signed_v<Integer>) {
    if (std::optional<std::int64_t> v = signed_integer(); v && *v >= minimum && *v <= maximum)
      return static_cast<Integer>(*v);
  } else {
    if (std::optional<std::uint64_t> v = unsigned_integer(); v && *v >= minimum && *v <= maximum)
      return static_cast<Integer>(*v);
  }
  refuse_integer(std::to_string(minimum), std::to_string(maximum));
}

template <typename Integer>
std::vector<Integer> JsonField::as_int_array(Integer minimum, Integer maximum) const {
  std::vector<Integer> out;
  for (const JsonField& item : as_array()) out.push_back(item.as_int<Integer>(minimum, maximum));
  return out;
}

}  // namespace minitron
