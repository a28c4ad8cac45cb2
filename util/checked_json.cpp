#include "util/checked_json.h"

#include <cctype>
#include <cmath>

namespace minitron {

using nlohmann::json;

namespace {

// Keys that read as identifiers are written `a.b`, the rest `a["b c"]` (JSON-quoted).
std::string member_path(const std::string& parent, const std::string& key) {
  bool identifier = !key.empty();
  for (char c : key)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) identifier = false;
  if (!identifier) return str(parent, "[", json(key).dump(-1, ' ', false, json::error_handler_t::replace), "]");
  return parent.empty() ? key : str(parent, ".", key);
}

// 2^63 and 2^64 as doubles (exact): the ranges a float must lie in to convert without UB.
constexpr double kTwoTo63 = 9223372036854775808.0;
constexpr double kTwoTo64 = 18446744073709551616.0;

}  // namespace

json parse_untrusted_json(std::string_view text, const std::string& file, const std::string& expected) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        fail_expected(file, str("not valid JSON: nested deeper than ", kMaxJsonDepth, " levels"), expected);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail_expected(file, str("not valid JSON: ", e.what()), expected);
  }
}

std::string JsonField::where() const { return path_.empty() ? file_ : str(file_, ": ", path_); }

JsonField JsonField::at(const std::string& key) const {
  if (!is_object()) refuse(str("an object with \"", key, "\""));
  auto it = value_->find(key);
  return JsonField(it == value_->end() ? nullptr : &*it, file_, member_path(path_, key));
}

std::optional<JsonField> JsonField::optional(const std::string& key) const {
  if (is_null()) return std::nullopt;
  JsonField member = at(key);
  if (member.is_null()) return std::nullopt;
  return member;
}

JsonField JsonField::operator[](std::size_t i) const {
  const json& array = as_array_value();
  if (i >= array.size()) refuse(str("an array of more than ", i, " elements"));
  return JsonField(&array[i], file_, str(path_, "[", i, "]"));
}

const json& JsonField::as_array_value() const {
  if (!is_array()) refuse("an array");
  return *value_;
}

std::vector<JsonField> JsonField::as_array() const {
  const json& array = as_array_value();
  std::vector<JsonField> out;
  out.reserve(array.size());
  for (std::size_t i = 0; i < array.size(); ++i) out.push_back(JsonField(&array[i], file_, str(path_, "[", i, "]")));
  return out;
}

std::vector<std::pair<std::string, JsonField>> JsonField::as_object() const {
  if (!is_object()) refuse("an object");
  std::vector<std::pair<std::string, JsonField>> out;
  out.reserve(value_->size());
  for (auto it = value_->begin(); it != value_->end(); ++it)
    out.emplace_back(it.key(), JsonField(&it.value(), file_, member_path(path_, it.key())));
  return out;
}

std::optional<std::int64_t> JsonField::signed_integer() const {
  if (!value_) return std::nullopt;
  if (value_->is_number_unsigned()) {
    const auto v = value_->get_ref<const json::number_unsigned_t&>();
    if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
    return static_cast<std::int64_t>(v);
  }
  if (value_->is_number_integer()) return value_->get_ref<const json::number_integer_t&>();
  if (value_->is_number_float()) {
    const double d = value_->get_ref<const json::number_float_t&>();
    if (std::isfinite(d) && d == std::floor(d) && d >= -kTwoTo63 && d < kTwoTo63) return static_cast<std::int64_t>(d);
  }
  return std::nullopt;
}

std::optional<std::uint64_t> JsonField::unsigned_integer() const {
  if (!value_) return std::nullopt;
  if (value_->is_number_unsigned()) return value_->get_ref<const json::number_unsigned_t&>();
  if (value_->is_number_integer()) {
    const auto v = value_->get_ref<const json::number_integer_t&>();
    if (v < 0) return std::nullopt;
    return static_cast<std::uint64_t>(v);
  }
  if (value_->is_number_float()) {
    const double d = value_->get_ref<const json::number_float_t&>();
    if (std::isfinite(d) && d == std::floor(d) && d >= 0 && d < kTwoTo64) return static_cast<std::uint64_t>(d);
  }
  return std::nullopt;
}

void JsonField::refuse_integer(const std::string& minimum, const std::string& maximum) const {
  refuse(str("an integer from ", minimum, " to ", maximum));
}

double JsonField::as_float() const {
  if (!is_number()) refuse("a number");
  const double d = value_->is_number_float() ? value_->get_ref<const json::number_float_t&>()
                   : value_->is_number_unsigned()
                       ? static_cast<double>(value_->get_ref<const json::number_unsigned_t&>())
                       : static_cast<double>(value_->get_ref<const json::number_integer_t&>());
  if (!std::isfinite(d)) refuse("a finite number");
  return d;
}

const std::string& JsonField::as_string() const {
  if (!is_string()) refuse("a string");
  return value_->get_ref<const std::string&>();
}

bool JsonField::as_bool() const {
  if (!is_bool()) refuse("true or false");
  return value_->get_ref<const json::boolean_t&>();
}

std::vector<double> JsonField::as_float_array() const {
  std::vector<double> out;
  for (const JsonField& item : as_array()) out.push_back(item.as_float());
  return out;
}

std::vector<std::string> JsonField::as_string_array() const {
  std::vector<std::string> out;
  for (const JsonField& item : as_array()) out.push_back(item.as_string());
  return out;
}

std::string JsonField::excerpt() const {
  if (!value_) return "missing";
  std::string text = value_->dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr std::size_t kLongest = 60;
  if (text.size() > kLongest) text = text.substr(0, kLongest - 3) + "...";
  return text;
}

const json& JsonField::raw() const {
  if (!value_) refuse("a value");
  return *value_;
}

void JsonField::refuse(const std::string& expected) const {
  const std::string found = value_ ? excerpt() : "missing";
  throw Error(str(path_.empty() ? file_ : str(file_, ": ", path_), " is ", found, " (expected ", expected, ")"));
}

void JsonField::refuse(const std::string& why, const std::string& expected) const {
  fail_expected(where(), why, expected);
}

}  // namespace minitron
