// The filters, tests, methods and global functions a chat template can call. They report misuse by
// throwing BuiltinProblem; the evaluator adds the template line and column of the call.
#pragma once

#include <string>

#include "data/jinja_value.h"

namespace minitron::jinja {

struct BuiltinProblem {
  std::string why;
  std::string expected;
};

// Whether a filter or test of that name exists. The parser refuses an unknown filter when it reads
// the template, even in a branch that never runs; an unknown test only when it runs (both as Jinja2).
bool is_supported_filter(const std::string& name);
bool is_supported_test(const std::string& name);
// "trim, length, ... or max": for the messages that refuse a name.
std::string supported_filters();
std::string supported_tests();

Value apply_filter(const std::string& name, const Value& subject, const CallArguments& arguments);
bool apply_test(const std::string& name, const Value& subject, const CallArguments& arguments);
// subject.name: a dict's entry, or a string's or dict's method bound to it; undefined when absent.
Value member_of(const Value& subject, const std::string& name);
// range, namespace, dict, raise_exception; undefined for any other name.
Value builtin_global(const std::string& name);

// Python's sequence view of a value: a list's items, a dict's keys, a string's characters (code
// points); throws BuiltinProblem for anything else. Undefined iterates as empty, as in Jinja2.
ValueList iterate(const Value& v);
// len() in Python's units (code points for strings).
std::int64_t python_length(const Value& v);
// s[index] / s[start:stop:step] with Python's negative indices, for lists and strings.
Value python_index(const Value& subject, std::int64_t index);
Value python_slice(const Value& subject, const Value& start, const Value& stop, const Value& step);

}  // namespace minitron::jinja
