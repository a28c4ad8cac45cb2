// Jinja2's filters and tests, and the Python str/dict methods, as far as chat templates use them.
// Each follows the Python implementation (jinja2/filters.py, jinja2/tests.py, str's methods);
// transformers' own additions are tojson (json.dumps, ensure_ascii=False) and raise_exception.
#include "data/jinja_builtins.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <optional>

#include "util/error.h"

namespace minitron::jinja {

namespace {

[[noreturn]] void problem(std::string why, std::string expected) {
  throw BuiltinProblem{std::move(why), std::move(expected)};
}

// Arguments of one call: by position or by keyword, with Python's defaults.
class Arguments {
 public:
  Arguments(const CallArguments& given, std::string function, std::initializer_list<const char*> names)
      : given_(given), function_(std::move(function)), names_(names) {
    if (given.positional.size() > names_.size())
      problem(str(function_, "() takes at most ", names_.size(), " arguments, ", given.positional.size(), " given"),
              str(names_.size(), " or fewer"));
    for (const auto& [keyword, value] : given.keyword)
      if (std::find(names_.begin(), names_.end(), keyword) == names_.end())
        problem(str(function_, "() has no argument '", keyword, "'"), str("one of: ", joined_names()));
  }
  Value get(std::size_t position, Value fallback = Value::undefined("")) const {
    if (position < given_.positional.size()) return given_.positional[position];
    for (const auto& [keyword, value] : given_.keyword)
      if (keyword == names_[position]) return value;
    return fallback;
  }
  std::string string(std::size_t position, const std::string& fallback) const {
    Value v = get(position, Value::from_string(fallback));
    if (v.kind != Value::Kind::String)
      problem(str(function_, "(): ", names_[position], " is a ", v.type_name()), "a string");
    return v.string;
  }
  std::int64_t integer(std::size_t position, std::int64_t fallback) const {
    Value v = get(position, Value::from_int(fallback));
    if (v.kind != Value::Kind::Int && v.kind != Value::Kind::Bool)
      problem(str(function_, "(): ", names_[position], " is a ", v.type_name()), "an integer");
    return v.kind == Value::Kind::Bool ? v.boolean : v.integer;
  }

 private:
  std::string joined_names() const {
    std::string s;
    for (const char* n : names_) s += (s.empty() ? "" : ", ") + std::string(n);
    return s;
  }
  const CallArguments& given_;
  std::string function_;
  std::vector<const char*> names_;
};

const std::string& as_string(const Value& v, const std::string& function) {
  if (v.kind != Value::Kind::String) problem(str(function, " applies to a string, not a ", v.type_name()), "a string");
  return v.string;
}

// Byte offsets of each UTF-8 code point, and the end: Python indexes strings by code point.
std::vector<std::size_t> code_point_offsets(const std::string& s) {
  std::vector<std::size_t> offsets;
  for (std::size_t i = 0; i < s.size(); ++i)
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) offsets.push_back(i);
  offsets.push_back(s.size());
  return offsets;
}

bool is_python_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string strip(const std::string& s, bool left, bool right, const Value& chars) {
  auto strippable = [&](char c) {
    return chars.kind == Value::Kind::String ? chars.string.find(c) != std::string::npos : is_python_space(c);
  };
  std::size_t begin = 0, end = s.size();
  if (left)
    while (begin < end && strippable(s[begin])) ++begin;
  if (right)
    while (end > begin && strippable(s[end - 1])) --end;
  return s.substr(begin, end - begin);
}

std::string to_upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}
std::string to_lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
std::string capitalize(const std::string& s) {
  std::string out = to_lower(s);
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}
// str.title(): a letter after a non-letter is upper case, every other letter lower case. Bytes of
// non-ASCII characters count as letters (é continues a word, as in Python); case changes are ASCII.
std::string python_title(const std::string& s) {
  std::string out = s;
  bool previous_is_letter = false;
  for (char& c : out) {
    auto byte = static_cast<unsigned char>(c);
    bool letter = std::isalpha(byte) || byte >= 0x80;
    if (byte < 0x80) c = static_cast<char>(letter && !previous_is_letter ? std::toupper(byte) : std::tolower(byte));
    previous_is_letter = letter;
  }
  return out;
}

// Jinja2's title filter, which differs from str.title: words start after runs of spaces, '-', '(',
// '{', '[' or '<' only, so "it's" gives "It's" (str.title gives "It'S").
std::string jinja_title(const std::string& s) {
  std::string out = s;
  bool at_word_start = true;
  for (char& c : out) {
    bool separator = is_python_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    auto byte = static_cast<unsigned char>(c);
    if (!separator && byte < 0x80) c = static_cast<char>(at_word_start ? std::toupper(byte) : std::tolower(byte));
    at_word_start = separator;
  }
  return out;
}

std::string replace(const std::string& s, const std::string& from, const std::string& to, std::int64_t count) {
  std::string out;
  std::size_t position = 0;
  std::int64_t done = 0;
  if (from.empty()) {
    // Python inserts `to` before every character and at the end.
    auto offsets = code_point_offsets(s);
    for (std::size_t i = 0; i + 1 < offsets.size(); ++i) {
      if (count < 0 || done++ < count) out += to;
      out += s.substr(offsets[i], offsets[i + 1] - offsets[i]);
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  while (count < 0 || done < count) {
    std::size_t found = s.find(from, position);
    if (found == std::string::npos) break;
    out += s.substr(position, found - position) + to;
    position = found + from.size();
    ++done;
  }
  return out + s.substr(position);
}

Value split(const std::string& s, const Value& separator, std::int64_t max_splits) {
  ValueList parts;
  if (separator.kind == Value::Kind::String) {
    if (separator.string.empty()) problem("split(): empty separator", "a non-empty separator");
    std::size_t position = 0;
    while (max_splits < 0 || static_cast<std::int64_t>(parts.size()) < max_splits) {
      std::size_t found = s.find(separator.string, position);
      if (found == std::string::npos) break;
      parts.push_back(Value::from_string(s.substr(position, found - position)));
      position = found + separator.string.size();
    }
    parts.push_back(Value::from_string(s.substr(position)));
    return Value::from_list(std::move(parts));
  }
  // No separator: runs of whitespace separate, and leading/trailing whitespace gives no empty parts.
  std::size_t i = 0;
  while (true) {
    while (i < s.size() && is_python_space(s[i])) ++i;
    if (i >= s.size()) break;
    if (max_splits >= 0 && static_cast<std::int64_t>(parts.size()) == max_splits) {
      std::size_t end = s.size();
      while (end > i && is_python_space(s[end - 1])) --end;
      parts.push_back(Value::from_string(s.substr(i, end - i)));
      break;
    }
    std::size_t j = i;
    while (j < s.size() && !is_python_space(s[j])) ++j;
    parts.push_back(Value::from_string(s.substr(i, j - i)));
    i = j;
  }
  return Value::from_list(std::move(parts));
}

bool affix_matches(const std::string& s, const Value& affixes, bool at_start, const std::string& method) {
  ValueList candidates = affixes.kind == Value::Kind::List ? *affixes.list : ValueList{affixes};
  for (const Value& candidate : candidates) {
    const std::string& a = as_string(candidate, method);
    if (a.size() <= s.size() && s.compare(at_start ? 0 : s.size() - a.size(), a.size(), a) == 0) return true;
  }
  return false;
}

Value bound(Function f) { return Value::from_function(std::move(f)); }

Value string_method(const std::string& s, const std::string& name) {
  if (name == "strip" || name == "lstrip" || name == "rstrip")
    return bound([s, name](const CallArguments& a) {
      Arguments args(a, name, {"chars"});
      return Value::from_string(strip(s, name != "rstrip", name != "lstrip", args.get(0)));
    });
  if (name == "startswith" || name == "endswith")
    return bound([s, name](const CallArguments& a) {
      Arguments args(a, name, {"prefix"});
      return Value::from_bool(affix_matches(s, args.get(0), name == "startswith", name));
    });
  if (name == "split")
    return bound([s](const CallArguments& a) {
      Arguments args(a, "split", {"sep", "maxsplit"});
      return split(s, args.get(0), args.integer(1, -1));
    });
  if (name == "upper") return bound([s](const CallArguments&) { return Value::from_string(to_upper(s)); });
  if (name == "lower") return bound([s](const CallArguments&) { return Value::from_string(to_lower(s)); });
  if (name == "title") return bound([s](const CallArguments&) { return Value::from_string(python_title(s)); });
  if (name == "capitalize") return bound([s](const CallArguments&) { return Value::from_string(capitalize(s)); });
  if (name == "replace")
    return bound([s](const CallArguments& a) {
      Arguments args(a, "replace", {"old", "new", "count"});
      return Value::from_string(replace(s, args.string(0, ""), args.string(1, ""), args.integer(2, -1)));
    });
  if (name == "join")
    return bound([s](const CallArguments& a) {
      Arguments args(a, "join", {"iterable"});
      std::string out;
      ValueList items = iterate(args.get(0));
      for (std::size_t i = 0; i < items.size(); ++i) out += (i ? s : "") + as_string(items[i], "join");
      return Value::from_string(out);
    });
  if (name == "find")
    return bound([s](const CallArguments& a) {
      Arguments args(a, "find", {"sub"});
      std::size_t found = s.find(args.string(0, ""));
      if (found == std::string::npos) return Value::from_int(-1);
      return Value::from_int(static_cast<std::int64_t>(code_point_offsets(s.substr(0, found)).size()) - 1);
    });
  return Value::undefined(name);
}

Value dict_method(const Value& d, const std::string& name) {
  if (name == "items")
    return bound([d](const CallArguments&) {
      ValueList pairs;
      for (const auto& [k, v] : d.dict->entries) pairs.push_back(Value::tuple({Value::from_string(k), v}));
      return Value::from_list(std::move(pairs));
    });
  if (name == "keys")
    return bound([d](const CallArguments&) {
      ValueList keys;
      for (const auto& entry : d.dict->entries) keys.push_back(Value::from_string(entry.first));
      return Value::from_list(std::move(keys));
    });
  if (name == "values")
    return bound([d](const CallArguments&) {
      ValueList values;
      for (const auto& entry : d.dict->entries) values.push_back(entry.second);
      return Value::from_list(std::move(values));
    });
  if (name == "get")
    return bound([d](const CallArguments& a) {
      Arguments args(a, "get", {"key", "default"});
      Value key = args.get(0);
      const Value* found = key.kind == Value::Kind::String ? d.dict->find(key.string) : nullptr;
      return found ? *found : args.get(1, Value::none());
    });
  return Value::undefined(name);
}

// attribute="a.b" as selectattr, map and join take it: nested lookups, undefined when absent.
Value attribute_path(const Value& item, const std::string& path) {
  Value current = item;
  std::size_t start = 0;
  while (true) {
    std::size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (current.kind == Value::Kind::Dict) {
      const Value* found = current.dict->find(part);
      current = found ? *found : Value::undefined(part);
    } else if (current.kind == Value::Kind::List && !part.empty() && std::all_of(part.begin(), part.end(), [](char c) {
                 return std::isdigit(static_cast<unsigned char>(c));
               })) {
      current = python_index(current, std::stoll(part));
    } else {
      current = Value::undefined(part);
    }
    if (dot == std::string::npos) return current;
    start = dot + 1;
  }
}

int compare_values(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return a.as_double() < b.as_double() ? -1 : (a.as_double() > b.as_double());
  if (a.kind == Value::Kind::String && b.kind == Value::Kind::String) return a.string.compare(b.string);
  problem(str("cannot order a ", a.type_name(), " and a ", b.type_name()), "numbers or strings");
}

// select/reject/selectattr/rejectattr: the items whose (attribute's) test result is `keep`.
Value select(const Value& subject, const CallArguments& a, bool by_attribute, bool keep) {
  CallArguments test_arguments;
  std::size_t first_test_argument = by_attribute ? 1 : 0;
  std::string attribute;
  if (by_attribute) {
    if (a.positional.empty() || a.positional[0].kind != Value::Kind::String)
      problem("selectattr/rejectattr need the attribute's name first", "a string");
    attribute = a.positional[0].string;
  }
  std::string test;
  if (a.positional.size() > first_test_argument) {
    test = as_string(a.positional[first_test_argument], "the test's name");
    test_arguments.positional.assign(a.positional.begin() + static_cast<std::ptrdiff_t>(first_test_argument) + 1,
                                     a.positional.end());
  }
  ValueList kept;
  for (const Value& item : iterate(subject)) {
    Value tested = by_attribute ? attribute_path(item, attribute) : item;
    bool result = test.empty() ? tested.truthy() : apply_test(test, tested, test_arguments);
    if (result == keep) kept.push_back(item);
  }
  return Value::from_list(std::move(kept));
}

std::string indent_lines(const std::string& s, const std::string& prefix, bool first, bool blank) {
  std::string out;
  std::size_t start = 0;
  bool is_first = true;
  while (start <= s.size()) {
    std::size_t end = s.find('\n', start);
    std::string line = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    bool add = (is_first ? first : true) && (blank || !line.empty());
    out += (add ? prefix : "") + line;
    if (end == std::string::npos) break;
    out += "\n";
    start = end + 1;
    is_first = false;
  }
  return out;
}

const std::vector<std::string> kFilters = {
    "trim",  "length",     "count",      "upper",  "lower",  "capitalize", "title",   "string",
    "safe",  "list",       "items",      "tojson", "join",   "first",      "last",    "default",
    "d",     "selectattr", "rejectattr", "select", "reject", "map",        "replace", "int",
    "float", "abs",        "reverse",    "unique", "indent", "sum",        "min",     "max"};
const std::vector<std::string> kTests = {"defined",     "undefined", "none",        "string", "number",  "integer",
                                         "float",       "boolean",   "true",        "false",  "mapping", "sequence",
                                         "iterable",    "callable",  "lower",       "upper",  "odd",     "even",
                                         "divisibleby", "eq",        "equalto",     "ne",     "lt",      "lessthan",
                                         "le",          "gt",        "greaterthan", "ge",     "sameas",  "in"};

std::string joined_with_or(const std::vector<std::string>& names) {
  std::string s;
  for (std::size_t i = 0; i < names.size(); ++i) s += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return s;
}

// The first thing inside `v` that json.dumps cannot write ("" when there is none).
std::string json_unwritable(const Value& v) {
  if (v.kind == Value::Kind::Undefined) return str("the undefined value '", v.undefined_name, "'");
  if (v.kind == Value::Kind::Function) return "a function";
  if (v.kind == Value::Kind::List)
    for (const Value& item : *v.list)
      if (std::string what = json_unwritable(item); !what.empty()) return what;
  if (v.kind == Value::Kind::Dict)
    for (const auto& entry : v.dict->entries)
      if (std::string what = json_unwritable(entry.second); !what.empty()) return what;
  return "";
}

}  // namespace

bool is_supported_filter(const std::string& name) {
  return std::find(kFilters.begin(), kFilters.end(), name) != kFilters.end();
}
bool is_supported_test(const std::string& name) {
  return std::find(kTests.begin(), kTests.end(), name) != kTests.end();
}
std::string supported_filters() { return joined_with_or(kFilters); }
std::string supported_tests() { return joined_with_or(kTests); }

ValueList iterate(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: return *v.list;
    case Value::Kind::Dict: {
      ValueList keys;
      for (const auto& entry : v.dict->entries) keys.push_back(Value::from_string(entry.first));
      return keys;
    }
    case Value::Kind::String: {
      ValueList characters;
      auto offsets = code_point_offsets(v.string);
      for (std::size_t i = 0; i + 1 < offsets.size(); ++i)
        characters.push_back(Value::from_string(v.string.substr(offsets[i], offsets[i + 1] - offsets[i])));
      return characters;
    }
    default: problem(str("a ", v.type_name(), " cannot be iterated"), "a list, dict or string");
  }
}

std::int64_t python_length(const Value& v) {
  if (v.kind == Value::Kind::String) return static_cast<std::int64_t>(code_point_offsets(v.string).size()) - 1;
  if (v.kind == Value::Kind::Dict) return static_cast<std::int64_t>(v.dict->entries.size());
  if (v.kind == Value::Kind::List) return static_cast<std::int64_t>(v.list->size());
  if (v.kind == Value::Kind::Undefined) return 0;
  problem(str("a ", v.type_name(), " has no length"), "a list, dict or string");
}

Value python_index(const Value& subject, std::int64_t index) {
  std::int64_t n = python_length(subject);
  if (index < 0) index += n;
  if (index < 0 || index >= n) return Value::undefined(str("index ", index));
  if (subject.kind == Value::Kind::List) return (*subject.list)[static_cast<std::size_t>(index)];
  return iterate(subject)[static_cast<std::size_t>(index)];
}

Value python_slice(const Value& subject, const Value& start_value, const Value& stop_value, const Value& step_value) {
  if (subject.kind != Value::Kind::List && subject.kind != Value::Kind::String)
    problem(str("a ", subject.type_name(), " cannot be sliced"), "a list or a string");
  auto bound_or = [](const Value& v, const char* which) -> std::optional<std::int64_t> {
    if (v.kind == Value::Kind::Undefined || v.kind == Value::Kind::None) return std::nullopt;
    if (v.kind != Value::Kind::Int) problem(str("slice ", which, " is a ", v.type_name()), "an integer");
    return v.integer;
  };
  ValueList items = iterate(subject);
  std::int64_t n = static_cast<std::int64_t>(items.size());
  std::int64_t step = bound_or(step_value, "step").value_or(1);
  if (step == 0) problem("slice step is zero", "a non-zero step");
  // Python's slice.indices(n).
  auto clamp = [&](std::optional<std::int64_t> bound, std::int64_t fallback) {
    if (!bound) return fallback;
    std::int64_t b = *bound < 0 ? *bound + n : *bound;
    if (step > 0) return std::clamp<std::int64_t>(b, 0, n);
    return std::clamp<std::int64_t>(b, -1, n - 1);
  };
  std::int64_t start = clamp(bound_or(start_value, "start"), step > 0 ? 0 : n - 1);
  std::int64_t stop = clamp(bound_or(stop_value, "stop"), step > 0 ? n : -1);
  ValueList picked;
  for (std::int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
    picked.push_back(items[static_cast<std::size_t>(i)]);
  if (subject.kind == Value::Kind::List)
    return subject.is_tuple ? Value::tuple(std::move(picked)) : Value::from_list(std::move(picked));
  std::string s;
  for (const Value& c : picked) s += c.string;
  return Value::from_string(s);
}

Value member_of(const Value& subject, const std::string& name) {
  if (subject.kind == Value::Kind::Dict) {
    if (!subject.dict->is_namespace && (name == "items" || name == "keys" || name == "values" || name == "get"))
      return dict_method(subject, name);
    const Value* found = subject.dict->find(name);
    return found ? *found : Value::undefined(name);
  }
  if (subject.kind == Value::Kind::String) return string_method(subject.string, name);
  return Value::undefined(name);
}

Value builtin_global(const std::string& name) {
  if (name == "range")
    return bound([](const CallArguments& a) {
      Arguments args(a, "range", {"start", "stop", "step"});
      std::int64_t start = 0, stop = 0, step = 1;
      if (a.positional.size() == 1) {
        stop = args.integer(0, 0);
      } else {
        start = args.integer(0, 0);
        stop = args.integer(1, 0);
        step = args.integer(2, 1);
      }
      if (step == 0) problem("range() step is zero", "a non-zero step");
      constexpr double kMaxRange = 1e6;
      if ((static_cast<double>(stop) - static_cast<double>(start)) / static_cast<double>(step) > kMaxRange)
        problem("range() is too long", str("at most ", kMaxRange, " numbers"));
      ValueList numbers;
      for (std::int64_t i = start; step > 0 ? i < stop : i > stop; i += step) numbers.push_back(Value::from_int(i));
      return Value::from_list(std::move(numbers));
    });
  if (name == "namespace" || name == "dict")
    return bound([name](const CallArguments& a) {
      Value d = Value::new_dict();
      d.dict->is_namespace = name == "namespace";
      for (const Value& initial : a.positional) {
        if (initial.kind != Value::Kind::Dict) problem(str(name, "() takes a dict or keywords"), "keyword arguments");
        for (const auto& [k, v] : initial.dict->entries) d.dict->set(k, v);
      }
      for (const auto& [k, v] : a.keyword) d.dict->set(k, v);
      return d;
    });
  if (name == "raise_exception")
    return bound([](const CallArguments& a) -> Value {
      std::string message = a.positional.empty() ? "" : a.positional[0].to_output();
      problem(str("the template raised an exception: ", message), "a conversation this template accepts");
    });
  return Value::undefined(name);
}

bool apply_test(const std::string& name, const Value& v, const CallArguments& a) {
  using K = Value::Kind;
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.kind == K::None;
  if (name == "string") return v.kind == K::String;
  if (name == "number") return v.kind == K::Int || v.kind == K::Float;
  if (name == "integer") return v.kind == K::Int;
  if (name == "float") return v.kind == K::Float;
  if (name == "boolean") return v.kind == K::Bool;
  if (name == "true") return v.kind == K::Bool && v.boolean;
  if (name == "false") return v.kind == K::Bool && !v.boolean;
  if (name == "mapping") return v.kind == K::Dict;
  if (name == "sequence") return v.kind == K::List || v.kind == K::String || v.kind == K::Dict;
  if (name == "iterable") return v.kind == K::List || v.kind == K::String || v.kind == K::Dict;
  if (name == "callable") return v.kind == K::Function;
  if (name == "lower") return v.kind == K::String && to_lower(v.string) == v.string;
  if (name == "upper") return v.kind == K::String && to_upper(v.string) == v.string;
  if (name == "odd" || name == "even") {
    if (v.kind != K::Int) problem(str("'", name, "' tests an integer, not a ", v.type_name()), "an integer");
    return (((v.integer % 2) + 2) % 2 == 1) == (name == "odd");
  }
  Arguments args(a, name, {"other"});
  Value other = args.get(0);
  if (name == "divisibleby") {
    std::int64_t divisor = args.integer(0, 1);
    if (v.kind != K::Int || divisor == 0) problem("divisibleby needs integers and a non-zero divisor", "integers");
    return v.integer % divisor == 0;
  }
  if (name == "eq" || name == "equalto" || name == "==") return values_equal(v, other);
  if (name == "ne" || name == "!=") return !values_equal(v, other);
  if (name == "lt" || name == "lessthan" || name == "<") return compare_values(v, other) < 0;
  if (name == "le" || name == "<=") return compare_values(v, other) <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return compare_values(v, other) > 0;
  if (name == "ge" || name == ">=") return compare_values(v, other) >= 0;
  if (name == "sameas") return v.kind == other.kind && values_equal(v, other);
  if (name == "in") {
    for (const Value& item : iterate(other))
      if (values_equal(item, v)) return true;
    return other.kind == K::String && v.kind == K::String && other.string.find(v.string) != std::string::npos;
  }
  problem(str("the test '", name, "' is not supported"), supported_tests());
}

Value apply_filter(const std::string& name, const Value& v, const CallArguments& a) {
  using K = Value::Kind;
  // Jinja2's string filters take str() of anything (soft_str): undefined is "", none is "None".
  if (name == "trim") {
    Arguments args(a, name, {"chars"});
    return Value::from_string(strip(v.to_output(), true, true, args.get(0)));
  }
  if (name == "length" || name == "count") return Value::from_int(python_length(v));
  if (name == "upper") return Value::from_string(to_upper(v.to_output()));
  if (name == "lower") return Value::from_string(to_lower(v.to_output()));
  if (name == "capitalize") return Value::from_string(capitalize(v.to_output()));
  if (name == "title") return Value::from_string(jinja_title(v.to_output()));
  if (name == "string") return v.kind == K::String ? v : Value::from_string(v.to_output());
  if (name == "safe" || name == "list" || name == "items") {
    if (name == "safe") return v;
    if (name == "items") {
      if (v.kind == K::Undefined) return Value::from_list({});
      if (v.kind != K::Dict) problem(str("items applies to a dict, not a ", v.type_name()), "a dict");
      return member_of(v, "items").function->operator()({});
    }
    return Value::from_list(iterate(v));
  }
  if (name == "tojson") {
    Arguments args(a, name, {"indent", "sort_keys", "ensure_ascii", "separators"});
    JsonStyle style;
    Value indent = args.get(0, Value::none());
    if (indent.kind == K::String) problem("tojson(indent=) as a string is not supported", "an integer or none");
    if (indent.kind != K::None) style.indent = static_cast<int>(std::max<std::int64_t>(0, args.integer(0, 0)));
    style.sort_keys = args.get(1, Value::from_bool(false)).truthy();
    style.ensure_ascii = args.get(2, Value::from_bool(false)).truthy();
    Value separators = args.get(3, Value::none());
    if (separators.kind != K::None) {
      if (separators.kind != K::List || separators.list->size() != 2 || (*separators.list)[0].kind != K::String ||
          (*separators.list)[1].kind != K::String)
        problem("tojson(separators=) is not two strings", "(item_separator, key_separator)");
      style.item_separator = (*separators.list)[0].string;
      style.key_separator = (*separators.list)[1].string;
    }
    if (std::string what = json_unwritable(v); !what.empty())
      problem(str("tojson cannot write ", what), "values that JSON can hold");
    return Value::from_string(v.to_json(style));
  }
  if (name == "join") {
    Arguments args(a, name, {"d", "attribute"});
    std::string separator = args.string(0, "");
    Value attribute = args.get(1);
    std::string out;
    ValueList items = iterate(v);
    for (std::size_t i = 0; i < items.size(); ++i) {
      Value item = attribute.kind == K::String ? attribute_path(items[i], attribute.string) : items[i];
      out += (i ? separator : "") + item.to_output();
    }
    return Value::from_string(out);
  }
  if (name == "first" || name == "last") {
    ValueList items = iterate(v);
    if (items.empty()) return Value::undefined(name);
    return name == "first" ? items.front() : items.back();
  }
  if (name == "default" || name == "d") {
    Arguments args(a, name, {"default_value", "boolean"});
    bool use_default = v.is_undefined() || (args.get(1, Value::from_bool(false)).truthy() && !v.truthy());
    return use_default ? args.get(0, Value::from_string("")) : v;
  }
  if (name == "selectattr" || name == "rejectattr") return select(v, a, true, name == "selectattr");
  if (name == "select" || name == "reject") return select(v, a, false, name == "select");
  if (name == "map") {
    ValueList mapped;
    for (const auto& [keyword, value] : a.keyword)
      if (keyword != "attribute" && keyword != "default")
        problem(str("map() has no argument '", keyword, "'"), "attribute= or a filter name");
    Value attribute, fallback = Value::undefined("");
    for (const auto& [keyword, value] : a.keyword) (keyword == "attribute" ? attribute : fallback) = value;
    CallArguments filter_arguments;
    if (a.positional.size() > 1) filter_arguments.positional.assign(a.positional.begin() + 1, a.positional.end());
    for (const Value& item : iterate(v)) {
      if (attribute.kind == K::String) {
        Value found = attribute_path(item, attribute.string);
        mapped.push_back(found.is_undefined() && !fallback.is_undefined() ? fallback : found);
      } else if (!a.positional.empty()) {
        mapped.push_back(apply_filter(as_string(a.positional[0], "map's filter name"), item, filter_arguments));
      } else {
        problem("map() needs attribute= or a filter name", "map(attribute='name') or map('filter')");
      }
    }
    return Value::from_list(std::move(mapped));
  }
  if (name == "replace") {
    Arguments args(a, name, {"old", "new", "count"});
    return Value::from_string(replace(v.kind == K::String ? v.string : v.to_output(), args.string(0, ""),
                                      args.string(1, ""), args.integer(2, -1)));
  }
  if (name == "int") {
    Arguments args(a, name, {"default"});
    if (v.kind == K::Int) return v;
    if (v.kind == K::Bool) return Value::from_int(v.boolean);
    if (v.kind == K::Float) return Value::from_int(static_cast<std::int64_t>(v.floating));
    if (v.kind == K::String) {
      std::string s = strip(v.string, true, true, Value());
      char* end = nullptr;
      long long parsed = std::strtoll(s.c_str(), &end, 10);
      if (!s.empty() && *end == '\0') return Value::from_int(parsed);
      double as_float = std::strtod(s.c_str(), &end);
      if (!s.empty() && *end == '\0') return Value::from_int(static_cast<std::int64_t>(as_float));
    }
    return Value::from_int(args.integer(0, 0));
  }
  if (name == "float") {
    if (v.is_number()) return Value::from_float(v.as_double());
    if (v.kind == K::String) {
      char* end = nullptr;
      double parsed = std::strtod(v.string.c_str(), &end);
      if (!v.string.empty() && *end == '\0') return Value::from_float(parsed);
    }
    return Value::from_float(0);
  }
  if (name == "abs") {
    if (v.kind == K::Int) return Value::from_int(v.integer < 0 ? -v.integer : v.integer);
    if (v.kind == K::Float) return Value::from_float(std::fabs(v.floating));
    problem(str("abs applies to a number, not a ", v.type_name()), "a number");
  }
  if (name == "reverse") {
    if (v.kind == K::String) return python_slice(v, Value(), Value(), Value::from_int(-1));
    ValueList items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value::from_list(std::move(items));
  }
  if (name == "unique") {
    ValueList kept;
    for (const Value& item : iterate(v))
      if (std::none_of(kept.begin(), kept.end(), [&](const Value& k) { return values_equal(k, item); }))
        kept.push_back(item);
    return Value::from_list(std::move(kept));
  }
  if (name == "indent") {
    Arguments args(a, name, {"width", "first", "blank"});
    Value width = args.get(0, Value::from_int(4));
    std::string prefix =
        width.kind == K::String ? width.string : std::string(static_cast<std::size_t>(args.integer(0, 4)), ' ');
    return Value::from_string(indent_lines(as_string(v, name), prefix, args.get(1, Value::from_bool(false)).truthy(),
                                           args.get(2, Value::from_bool(false)).truthy()));
  }
  if (name == "sum") {
    std::int64_t integer_sum = 0;
    double float_sum = 0;
    bool any_float = false;
    for (const Value& item : iterate(v)) {
      if (!item.is_number()) problem(str("sum of a ", item.type_name()), "numbers");
      any_float |= item.kind == K::Float;
      float_sum += item.as_double();
      integer_sum += item.kind == K::Bool ? item.boolean : item.integer;
    }
    return any_float ? Value::from_float(float_sum) : Value::from_int(integer_sum);
  }
  if (name == "min" || name == "max") {
    ValueList items = iterate(v);
    if (items.empty()) return Value::undefined(name);
    Value best = items[0];
    for (const Value& item : items)
      if ((compare_values(item, best) < 0) == (name == "min") && !values_equal(item, best)) best = item;
    return best;
  }
  problem(str("the filter '", name, "' is not supported"), supported_filters());
}

}  // namespace minitron::jinja
