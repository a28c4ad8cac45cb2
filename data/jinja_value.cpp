#include "data/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "util/error.h"

namespace minitron::jinja {

const Value* ValueDict::find(const std::string& key) const {
  for (const auto& [k, v] : entries)
    if (k == key) return &v;
  return nullptr;
}

void ValueDict::set(const std::string& key, Value value) {
  for (auto& [k, v] : entries)
    if (k == key) {
      v = std::move(value);
      return;
    }
  entries.emplace_back(key, std::move(value));
}

Value Value::none() {
  Value v;
  v.kind = Kind::None;
  return v;
}
Value Value::from_bool(bool b) {
  Value v;
  v.kind = Kind::Bool;
  v.boolean = b;
  return v;
}
Value Value::from_int(std::int64_t i) {
  Value v;
  v.kind = Kind::Int;
  v.integer = i;
  return v;
}
Value Value::from_float(double f) {
  Value v;
  v.kind = Kind::Float;
  v.floating = f;
  return v;
}
Value Value::from_string(std::string s) {
  Value v;
  v.kind = Kind::String;
  v.string = std::move(s);
  return v;
}
Value Value::from_list(ValueList items) {
  Value v;
  v.kind = Kind::List;
  v.list = std::make_shared<ValueList>(std::move(items));
  return v;
}
Value Value::tuple(ValueList items) {
  Value v = from_list(std::move(items));
  v.is_tuple = true;
  return v;
}
Value Value::new_dict() {
  Value v;
  v.kind = Kind::Dict;
  v.dict = std::make_shared<ValueDict>();
  return v;
}
Value Value::from_function(Function f) {
  Value v;
  v.kind = Kind::Function;
  v.function = std::make_shared<Function>(std::move(f));
  return v;
}
Value Value::undefined(std::string name) {
  Value v;
  v.undefined_name = std::move(name);
  return v;
}

namespace {

// Deep enough for any conversation or tool schema; a file of a million '[' is refused, not recursed.
constexpr int kMaxJsonNesting = 256;

Value value_from_json(const nlohmann::ordered_json& j, int depth) {
  if (depth > kMaxJsonNesting)
    fail_expected("chat template variables", "JSON nests too deeply", str("at most ", kMaxJsonNesting, " levels"));
  // Each read below follows the type test that makes it exact; an integer beyond int64 (which
  // nlohmann keeps unsigned) would wrap, so it is refused.
  if (j.is_null()) return Value::none();
  if (j.is_boolean()) return Value::from_bool(j.get<bool>());
  if (j.is_number_unsigned() && j.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
    fail_expected("chat template variables", str("the integer ", j.dump(), " is beyond 64 bits"),
                  "integers within 64 bits");
  if (j.is_number_integer()) return Value::from_int(j.get<std::int64_t>());
  if (j.is_number()) return Value::from_float(j.get<double>());
  if (j.is_string()) return Value::from_string(j.get<std::string>());
  if (j.is_array()) {
    ValueList items;
    for (const auto& item : j) items.push_back(value_from_json(item, depth + 1));
    return Value::from_list(std::move(items));
  }
  Value d = Value::new_dict();
  for (const auto& [key, item] : j.items()) d.dict->set(key, value_from_json(item, depth + 1));
  return d;
}

}  // namespace

Value Value::from_json(const nlohmann::ordered_json& j) { return value_from_json(j, 0); }

double Value::as_double() const {
  switch (kind) {
    case Kind::Bool: return boolean ? 1 : 0;
    case Kind::Int: return static_cast<double>(integer);
    case Kind::Float: return floating;
    default: MINITRON_ASSERT(false, "as_double of a ", type_name());
  }
  return 0;
}

bool Value::truthy() const {
  switch (kind) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool: return boolean;
    case Kind::Int: return integer != 0;
    case Kind::Float: return floating != 0;
    case Kind::String: return !string.empty();
    case Kind::List: return !list->empty();
    case Kind::Dict: return !dict->entries.empty();
    case Kind::Function: return true;
  }
  return false;
}

namespace {

// Python's repr(float): the shortest digits that read back exactly, written positionally when the
// decimal exponent is in [-4, 16) and as d.ddde+XX otherwise, with ".0" on whole numbers.
std::string python_float(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  char buffer[64];
  auto [end, error] = std::to_chars(buffer, buffer + sizeof buffer, f, std::chars_format::scientific);
  std::string scientific(buffer, end);
  std::size_t e = scientific.find('e');
  int exponent = std::stoi(scientific.substr(e + 1));
  bool negative = scientific[0] == '-';
  std::string digits;
  for (std::size_t i = negative ? 1 : 0; i < e; ++i)
    if (scientific[i] != '.') digits += scientific[i];
  std::string out = negative ? "-" : "";
  if (exponent < -4 || exponent >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exponent_text[16];
    std::snprintf(exponent_text, sizeof exponent_text, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return out + exponent_text;
  }
  if (exponent < 0) return out + "0." + std::string(static_cast<std::size_t>(-exponent - 1), '0') + digits;
  auto integer_digits = static_cast<std::size_t>(exponent) + 1;
  if (digits.size() <= integer_digits) return out + digits + std::string(integer_digits - digits.size(), '0') + ".0";
  return out + digits.substr(0, integer_digits) + "." + digits.substr(integer_digits);
}

std::string python_string_repr(const std::string& s) {
  char quote = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == quote)
      out += std::string("\\") + static_cast<char>(c);
    else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char hex[16];  // "\\u" and 4 hex digits, with room for 8 so that GCC sees no truncation
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    } else
      out += static_cast<char>(c);
  }
  return out + quote;
}

// The code point of the UTF-8 sequence at s[i], advancing i past it (a stray byte stands for itself).
std::uint32_t next_code_point(const std::string& s, std::size_t& i) {
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char lead = byte(i);
  int length = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 1;
  if (i + static_cast<std::size_t>(length) > s.size()) length = 1;
  std::uint32_t code = length == 1 ? lead : lead & (0x7F >> length);
  for (int k = 1; k < length; ++k) code = (code << 6) | (byte(i + static_cast<std::size_t>(k)) & 0x3F);
  i += static_cast<std::size_t>(length);
  return code;
}

std::string json_string(const std::string& s, bool ensure_ascii) {
  std::string out = "\"";
  auto escape = [&](std::uint32_t code) {
    char hex[16];  // "\\u" and 4 hex digits, with room for 8 so that GCC sees no truncation
    std::snprintf(hex, sizeof hex, "\\u%04x", static_cast<unsigned>(code));
    out += hex;
  };
  for (std::size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      std::size_t start = i;
      std::uint32_t code = next_code_point(s, i);
      if (!ensure_ascii) {
        out += s.substr(start, i - start);
      } else if (code >= 0x10000) {
        escape(0xD800 + ((code - 0x10000) >> 10));  // a surrogate pair, as json.dumps writes it
        escape(0xDC00 + ((code - 0x10000) & 0x3FF));
      } else {
        escape(code);
      }
      continue;
    }
    ++i;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || (ensure_ascii && c == 0x7F))
          escape(c);
        else
          out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

void append_json(const Value& v, const JsonStyle& style, int depth, std::string& out) {
  // json.dumps's default separators: ", " and ": " on one line; "," before a newline when indenting.
  const bool indented = style.indent >= 0;
  const std::string item_separator = !style.item_separator.empty() ? style.item_separator : (indented ? "," : ", ");
  const std::string key_separator = !style.key_separator.empty() ? style.key_separator : ": ";
  auto newline = [&](int level) {
    if (indented) out += "\n" + std::string(static_cast<std::size_t>(style.indent * level), ' ');
  };
  switch (v.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None: out += "null"; return;
    case Value::Kind::Bool: out += v.boolean ? "true" : "false"; return;
    case Value::Kind::Int: out += std::to_string(v.integer); return;
    case Value::Kind::Float:
      if (std::isnan(v.floating))
        out += "NaN";
      else if (std::isinf(v.floating))
        out += v.floating > 0 ? "Infinity" : "-Infinity";
      else
        out += python_float(v.floating);
      return;
    case Value::Kind::String: out += json_string(v.string, style.ensure_ascii); return;
    case Value::Kind::Function: fail("tojson: a function cannot be written as JSON");
    case Value::Kind::List:
      out += "[";
      for (std::size_t i = 0; i < v.list->size(); ++i) {
        if (i) out += item_separator;
        newline(depth + 1);
        append_json((*v.list)[i], style, depth + 1, out);
      }
      if (!v.list->empty()) newline(depth);
      out += "]";
      return;
    case Value::Kind::Dict: {
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& entry : v.dict->entries) entries.push_back(&entry);
      if (style.sort_keys)
        std::stable_sort(entries.begin(), entries.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out += "{";
      for (std::size_t i = 0; i < entries.size(); ++i) {
        if (i) out += item_separator;
        newline(depth + 1);
        out += json_string(entries[i]->first, style.ensure_ascii) + key_separator;
        append_json(entries[i]->second, style, depth + 1, out);
      }
      if (!entries.empty()) newline(depth);
      out += "}";
      return;
    }
  }
}

}  // namespace

std::string Value::repr() const {
  if (kind == Kind::String) return python_string_repr(string);
  if (kind == Kind::List) {
    std::string out = is_tuple ? "(" : "[";
    for (std::size_t i = 0; i < list->size(); ++i) out += (i ? ", " : "") + (*list)[i].repr();
    if (is_tuple && list->size() == 1) out += ",";
    return out + (is_tuple ? ")" : "]");
  }
  if (kind == Kind::Dict) {
    std::string out = "{";
    for (std::size_t i = 0; i < dict->entries.size(); ++i)
      out += (i ? ", " : "") + python_string_repr(dict->entries[i].first) + ": " + dict->entries[i].second.repr();
    return out + "}";
  }
  return to_output();
}

std::string Value::to_output() const {
  switch (kind) {
    case Kind::Undefined: return "";
    case Kind::None: return "None";
    case Kind::Bool: return boolean ? "True" : "False";
    case Kind::Int: return std::to_string(integer);
    case Kind::Float: return python_float(floating);
    case Kind::String: return string;
    case Kind::Function: return "<function>";
    case Kind::List:
    case Kind::Dict: return repr();
  }
  return "";
}

std::string Value::to_json(const JsonStyle& style) const {
  std::string out;
  append_json(*this, style, 0, out);
  return out;
}

std::string Value::type_name() const {
  switch (kind) {
    case Kind::Undefined: return "undefined";
    case Kind::None: return "none";
    case Kind::Bool: return "boolean";
    case Kind::Int: return "integer";
    case Kind::Float: return "float";
    case Kind::String: return "string";
    case Kind::List: return "list";
    case Kind::Dict: return dict->is_namespace ? "namespace" : "dict";
    case Kind::Function: return "function";
  }
  return "?";
}

bool values_equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind != Value::Kind::Float && b.kind != Value::Kind::Float)
      return (a.kind == Value::Kind::Bool ? a.boolean : a.integer) ==
             (b.kind == Value::Kind::Bool ? b.boolean : b.integer);
    return a.as_double() == b.as_double();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return true;
    case Value::Kind::String: return a.string == b.string;
    case Value::Kind::List:
      if (a.is_tuple != b.is_tuple || a.list->size() != b.list->size()) return false;
      for (std::size_t i = 0; i < a.list->size(); ++i)
        if (!values_equal((*a.list)[i], (*b.list)[i])) return false;
      return true;
    case Value::Kind::Dict:
      if (a.dict->entries.size() != b.dict->entries.size()) return false;
      for (const auto& [key, value] : a.dict->entries) {
        const Value* other = b.dict->find(key);
        if (!other || !values_equal(value, *other)) return false;
      }
      return true;
    case Value::Kind::Function: return a.function == b.function;
    default: return false;
  }
}

}  // namespace minitron::jinja
