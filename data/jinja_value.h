// The values a Jinja chat template computes with, shaped like the Python objects that transformers
// hands to Jinja2: lists and dicts are shared by reference (a namespace() set inside a loop is seen
// after it), dicts keep insertion order (tojson and `for k, v in d.items()` print in that order).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace minitron::jinja {

struct Value;
using ValueList = std::vector<Value>;

struct ValueDict {
  std::vector<std::pair<std::string, Value>> entries;
  bool is_namespace = false;
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value value);
};

struct CallArguments {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};
using Function = std::function<Value(const CallArguments&)>;

// json.dumps's keyword arguments as transformers' tojson passes them (its defaults are these).
struct JsonStyle {
  int indent = -1;  // -1: None (one line); 0 or more: newlines, that many spaces per level
  bool sort_keys = false;
  bool ensure_ascii = false;
  // The separators=(item, key) argument; empty: json.dumps's defaults for the indent.
  std::string item_separator;
  std::string key_separator;
};

struct Value {
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Function };
  Kind kind = Kind::Undefined;
  bool boolean = false;
  std::int64_t integer = 0;
  double floating = 0;
  std::string string;
  std::shared_ptr<ValueList> list;
  // A Python tuple ((a, b) literals, dict items): a list that prints as (a, b) and never equals a list.
  bool is_tuple = false;
  std::shared_ptr<ValueDict> dict;
  std::shared_ptr<Function> function;
  // For an undefined value: the name that was looked up, so the error that uses it can name it.
  std::string undefined_name;

  static Value none();
  static Value from_bool(bool b);
  static Value from_int(std::int64_t i);
  static Value from_float(double f);
  static Value from_string(std::string s);
  static Value from_list(ValueList items);
  static Value tuple(ValueList items);
  static Value new_dict();
  static Value from_function(Function f);
  static Value undefined(std::string name);
  static Value from_json(const nlohmann::ordered_json& j);

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float || kind == Kind::Bool; }
  double as_double() const;
  bool truthy() const;
  // What `{{ value }}` prints: Python's str() of the object (None, True, ['a', 1], {'k': 'v'}).
  std::string to_output() const;
  // Python's repr(): strings quoted, as they appear inside a printed list or dict.
  std::string repr() const;
  // json.dumps(value, **style), as transformers' tojson filter calls it.
  std::string to_json(const JsonStyle& style) const;
  std::string type_name() const;
};

bool values_equal(const Value& a, const Value& b);

}  // namespace minitron::jinja
