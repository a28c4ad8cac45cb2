#include "data/jinja_value.h"

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

Value Value::from_json(const nlohmann::ordered_json& j) {
  if (j.is_null()) return none();
  if (j.is_boolean()) return from_bool(j.get<bool>());
  if (j.is_number_integer()) return from_int(j.get<std::int64_t>());
  if (j.is_number()) return from_float(j.get<double>());
  if (j.is_string()) return from_string(j.get<std::string>());
  if (j.is_array()) {
    ValueList items;
    for (const auto& item : j) items.push_back(from_json(item));
    return from_list(std::move(items));
  }
  Value d = new_dict();
  for (const auto& [key, item] : j.items()) d.dict->set(key, from_json(item));
  return d;
}

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
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    } else
      out += static_cast<char>(c);
  }
  return out + quote;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char hex[8];
          std::snprintf(hex, sizeof hex, "\\u%04x", c);
          out += hex;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

void append_json(const Value& v, int indent, int depth, std::string& out) {
  // json.dumps's default separators: ", " and ": " on one line; "," before a newline when indenting.
  const std::string item_separator = indent > 0 ? "," : ", ";
  auto newline = [&](int level) {
    if (indent > 0) out += "\n" + std::string(static_cast<std::size_t>(indent * level), ' ');
  };
  switch (v.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None: out += "null"; return;
    case Value::Kind::Bool: out += v.boolean ? "true" : "false"; return;
    case Value::Kind::Int: out += std::to_string(v.integer); return;
    case Value::Kind::Float: out += python_float(v.floating); return;
    case Value::Kind::String: out += json_string(v.string); return;
    case Value::Kind::Function: fail("tojson: a function cannot be written as JSON");
    case Value::Kind::List:
      out += "[";
      for (std::size_t i = 0; i < v.list->size(); ++i) {
        if (i) out += item_separator;
        newline(depth + 1);
        append_json((*v.list)[i], indent, depth + 1, out);
      }
      if (!v.list->empty()) newline(depth);
      out += "]";
      return;
    case Value::Kind::Dict:
      out += "{";
      for (std::size_t i = 0; i < v.dict->entries.size(); ++i) {
        if (i) out += item_separator;
        newline(depth + 1);
        out += json_string(v.dict->entries[i].first) + ": ";
        append_json(v.dict->entries[i].second, indent, depth + 1, out);
      }
      if (!v.dict->entries.empty()) newline(depth);
      out += "}";
      return;
  }
}

}  // namespace

std::string Value::repr() const {
  if (kind == Kind::String) return python_string_repr(string);
  if (kind == Kind::List) {
    std::string out = "[";
    for (std::size_t i = 0; i < list->size(); ++i) out += (i ? ", " : "") + (*list)[i].repr();
    return out + "]";
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

std::string Value::to_json(int indent) const {
  std::string out;
  append_json(*this, indent, 0, out);
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
      if (a.list->size() != b.list->size()) return false;
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
