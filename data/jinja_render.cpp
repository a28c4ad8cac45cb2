// The evaluator: walks the syntax tree with Jinja2's scoping (a for loop's body and a macro call
// get their own scope, so `set` inside them is not seen outside; namespace() objects are the
// way out, as in Jinja2) and Python's operator semantics.
#include "data/jinja_render.h"

#include <cmath>
#include <map>

#include "data/jinja_builtins.h"
#include "util/error.h"

namespace minitron::jinja {

namespace {

struct Scope {
  std::map<std::string, Value> variables;
  const Scope* parent = nullptr;

  const Value* find(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent) {
      auto it = s->variables.find(name);
      if (it != s->variables.end()) return &it->second;
    }
    return nullptr;
  }
};

enum class Flow { Normal, Break, Continue };

// Deep enough for any real template; stops a macro that calls itself forever.
constexpr int kMaxMacroDepth = 64;
// A template's output is a prompt: anything near this size is a template bug, not a prompt.
constexpr std::uint64_t kMaxStringBytes = 1ull << 28;

class Renderer {
 public:
  explicit Renderer(const Value& variables) {
    for (const auto& [name, value] : variables.dict->entries) root_.variables[name] = value;
  }

  std::string render(const Body& body) {
    std::string out;
    Flow flow = run(body, root_, out, 0);
    MINITRON_ASSERT(flow == Flow::Normal, "break or continue outside a loop reached the top");
    return out;
  }

 private:
  Flow run(const Body& body, Scope& scope, std::string& out, int loop_depth) {
    for (const Statement& s : body) {
      Flow flow = execute(s, scope, out, loop_depth);
      if (flow != Flow::Normal) return flow;
    }
    return Flow::Normal;
  }

  Flow execute(const Statement& s, Scope& scope, std::string& out, int loop_depth) {
    switch (s.kind) {
      case Statement::Kind::Text: out += s.text; return Flow::Normal;
      case Statement::Kind::Output: out += evaluate(*s.expression, scope).to_output(); return Flow::Normal;
      case Statement::Kind::If:
        for (const IfBranch& branch : s.branches)
          if (evaluate(*branch.condition, scope).truthy()) return run(branch.body, scope, out, loop_depth);
        return run(s.else_body, scope, out, loop_depth);
      case Statement::Kind::For: return for_loop(s, scope, out, loop_depth);
      case Statement::Kind::Set: assign(s, evaluate(*s.expression, scope), scope); return Flow::Normal;
      case Statement::Kind::SetBlock: {
        std::string captured;
        run(s.body, scope, captured, loop_depth);
        scope.variables[s.targets[0]] = Value::from_string(captured);
        return Flow::Normal;
      }
      case Statement::Kind::Macro: scope.variables[s.name] = make_macro(s); return Flow::Normal;
      case Statement::Kind::Break:
      case Statement::Kind::Continue:
        if (loop_depth == 0)
          fail_at(s.where, "break or continue outside a for loop", "it inside {% for %} ... {% endfor %}");
        return s.kind == Statement::Kind::Break ? Flow::Break : Flow::Continue;
      case Statement::Kind::Generation: return run(s.body, scope, out, loop_depth);
    }
    return Flow::Normal;
  }

  void assign(const Statement& s, const Value& value, Scope& scope) {
    if (!s.target_attribute.empty()) {
      const Value* target = scope.find(s.targets[0]);
      if (!target || target->kind != Value::Kind::Dict || !target->dict->is_namespace)
        fail_at(s.where, str("'", s.targets[0], "' is not a namespace"), "set NAME.attr only on a namespace()");
      target->dict->set(s.target_attribute, value);
      return;
    }
    if (s.targets.size() == 1) {
      scope.variables[s.targets[0]] = value;
      return;
    }
    ValueList parts = unpack(value, s.targets.size(), s.where);
    for (std::size_t i = 0; i < parts.size(); ++i) scope.variables[s.targets[i]] = parts[i];
  }

  ValueList unpack(const Value& value, std::size_t count, SourcePosition where) {
    ValueList parts = guarded(where, [&] { return iterate(value); });
    if (parts.size() != count) fail_at(where, str("cannot unpack ", parts.size(), " values"), str(count, " values"));
    return parts;
  }

  // Returns the flow of the else block, which runs outside this loop: a break there ends the
  // enclosing loop, as in Jinja2.
  Flow for_loop(const Statement& s, Scope& scope, std::string& out, int loop_depth) {
    Value iterable = evaluate(*s.expression, scope);
    if (iterable.kind == Value::Kind::None) fail_at(s.expression->where, "none cannot be iterated", "a list or dict");
    ValueList items = guarded(s.expression->where, [&] { return iterate(iterable); });
    auto bind = [&](Scope& inner, const Value& item) {
      if (s.targets.size() == 1) {
        inner.variables[s.targets[0]] = item;
        return;
      }
      ValueList parts = unpack(item, s.targets.size(), s.where);
      for (std::size_t i = 0; i < parts.size(); ++i) inner.variables[s.targets[i]] = parts[i];
    };
    if (s.loop_filter) {
      ValueList kept;
      for (const Value& item : items) {
        Scope probe{{}, &scope};
        bind(probe, item);
        if (evaluate(*s.loop_filter, probe).truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return run(s.else_body, scope, out, loop_depth);
    auto n = static_cast<std::int64_t>(items.size());
    for (std::int64_t i = 0; i < n; ++i) {
      Scope inner{{}, &scope};
      bind(inner, items[static_cast<std::size_t>(i)]);
      Value loop = Value::new_dict();
      loop.dict->set("index", Value::from_int(i + 1));
      loop.dict->set("index0", Value::from_int(i));
      loop.dict->set("revindex", Value::from_int(n - i));
      loop.dict->set("revindex0", Value::from_int(n - i - 1));
      loop.dict->set("first", Value::from_bool(i == 0));
      loop.dict->set("last", Value::from_bool(i == n - 1));
      loop.dict->set("length", Value::from_int(n));
      loop.dict->set("previtem", i > 0 ? items[static_cast<std::size_t>(i - 1)] : Value::undefined("previtem"));
      loop.dict->set("nextitem", i + 1 < n ? items[static_cast<std::size_t>(i + 1)] : Value::undefined("nextitem"));
      loop.dict->set("cycle", Value::from_function([i](const CallArguments& a) {
                       if (a.positional.empty())
                         throw BuiltinProblem{"loop.cycle() needs values", "at least one value"};
                       return a.positional[static_cast<std::size_t>(i) % a.positional.size()];
                     }));
      inner.variables["loop"] = loop;
      if (run(s.body, inner, out, 1) == Flow::Break) break;
    }
    return Flow::Normal;
  }

  Value make_macro(const Statement& s) {
    const Statement* macro = &s;
    return Value::from_function([this, macro](const CallArguments& a) {
      if (a.positional.size() > macro->parameters.size())
        throw BuiltinProblem{str("macro ", macro->name, " takes ", macro->parameters.size(), " arguments"),
                             str("at most ", macro->parameters.size())};
      if (macro_depth_ >= kMaxMacroDepth)
        throw BuiltinProblem{str("macro ", macro->name, " nests too deeply"),
                             str("at most ", kMaxMacroDepth, " calls")};
      Scope call{{}, &root_};
      for (std::size_t i = 0; i < macro->parameters.size(); ++i) {
        const MacroParameter& p = macro->parameters[i];
        Value argument = Value::undefined(p.name);
        if (i < a.positional.size())
          argument = a.positional[i];
        else if (p.default_value)
          argument = evaluate(*p.default_value, call);
        call.variables[p.name] = argument;
      }
      for (const auto& [keyword, value] : a.keyword) {
        bool known = false;
        for (const MacroParameter& p : macro->parameters) known |= p.name == keyword;
        if (!known)
          throw BuiltinProblem{str("macro ", macro->name, " has no parameter '", keyword, "'"), "its parameters"};
        call.variables[keyword] = value;
      }
      std::string out;
      ++macro_depth_;
      try {
        run(macro->body, call, out, 0);
      } catch (...) {
        --macro_depth_;
        throw;
      }
      --macro_depth_;
      return Value::from_string(out);
    });
  }

  template <typename F>
  static auto guarded(SourcePosition where, F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const BuiltinProblem& p) {
      fail_at(where, p.why, p.expected);
    }
  }

  CallArguments arguments(const Expression& e, Scope& scope) {
    CallArguments a;
    for (std::size_t i = 1; i < e.operands.size(); ++i) {
      Value v = evaluate(*e.operands[i], scope);
      const std::string& keyword = e.keyword_names[i - 1];
      if (keyword.empty()) {
        if (!a.keyword.empty()) fail_at(e.operands[i]->where, "a positional argument after a keyword", "keywords last");
        a.positional.push_back(std::move(v));
      } else {
        a.keyword.emplace_back(keyword, std::move(v));
      }
    }
    return a;
  }

  static void require_defined(const Value& v, SourcePosition where) {
    if (v.is_undefined()) fail_at(where, str("'", v.undefined_name, "' is undefined"), "a defined value");
  }

  Value evaluate(const Expression& e, Scope& scope) {
    using K = Expression::Kind;
    switch (e.kind) {
      case K::Literal: return e.literal;
      case K::Name: {
        if (const Value* v = scope.find(e.name)) return *v;
        return builtin_global(e.name);
      }
      case K::ListLiteral:
      case K::TupleLiteral: {
        ValueList items;
        for (const auto& item : e.operands) items.push_back(evaluate(*item, scope));
        return e.kind == K::TupleLiteral ? Value::tuple(std::move(items)) : Value::from_list(std::move(items));
      }
      case K::DictLiteral: {
        Value d = Value::new_dict();
        for (std::size_t i = 0; i + 1 < e.operands.size(); i += 2) {
          Value key = evaluate(*e.operands[i], scope);
          if (key.kind != Value::Kind::String)
            fail_at(e.operands[i]->where, str("a dict key that is a ", key.type_name()), "a string key");
          d.dict->set(key.string, evaluate(*e.operands[i + 1], scope));
        }
        return d;
      }
      case K::Attribute: {
        Value subject = evaluate(*e.operands[0], scope);
        require_defined(subject, e.operands[0]->where);
        return member_of(subject, e.name);
      }
      case K::Subscript: {
        Value subject = evaluate(*e.operands[0], scope);
        require_defined(subject, e.operands[0]->where);
        Value key = evaluate(*e.operands[1], scope);
        if (subject.kind == Value::Kind::Dict) {
          if (key.kind != Value::Kind::String) return Value::undefined(key.to_output());
          const Value* found = subject.dict->find(key.string);
          return found ? *found : Value::undefined(key.string);
        }
        if (key.kind == Value::Kind::String) return member_of(subject, key.string);
        // Jinja2's getitem falls back to an undefined value for keys a sequence cannot take.
        if (key.kind == Value::Kind::Bool) key = Value::from_int(key.boolean);
        if (key.kind != Value::Kind::Int || (subject.kind != Value::Kind::List && subject.kind != Value::Kind::String))
          return Value::undefined(key.to_output());
        return guarded(e.where, [&] { return python_index(subject, key.integer); });
      }
      case K::Slice: {
        Value subject = evaluate(*e.operands[0], scope);
        require_defined(subject, e.operands[0]->where);
        auto bound = [&](std::size_t i) { return e.operands[i] ? evaluate(*e.operands[i], scope) : Value(); };
        Value start = bound(1), stop = bound(2), step = bound(3);
        return guarded(e.where, [&] { return python_slice(subject, start, stop, step); });
      }
      case K::Unary: {
        Value v = evaluate(*e.operands[0], scope);
        if (e.name == "not") return Value::from_bool(!v.truthy());
        if (v.kind == Value::Kind::Int || v.kind == Value::Kind::Bool) {
          std::int64_t integer = v.kind == Value::Kind::Bool ? v.boolean : v.integer;
          if (e.name == "-" && integer == INT64_MIN)
            fail_at(e.where, "integer overflow in '-'", "results within 64 bits");
          return Value::from_int(e.name == "-" ? -integer : integer);
        }
        if (v.kind == Value::Kind::Float) return Value::from_float(e.name == "-" ? -v.floating : v.floating);
        fail_at(e.where, str("unary ", e.name, " of a ", v.type_name()), "a number");
      }
      case K::Binary: return binary(e, scope);
      case K::ComparisonChain: return comparison_chain(e, scope);
      case K::Conditional:
        if (evaluate(*e.operands[1], scope).truthy()) return evaluate(*e.operands[0], scope);
        return e.operands[2] ? evaluate(*e.operands[2], scope) : Value::undefined("else");
      case K::Call: {
        Value callee = evaluate(*e.operands[0], scope);
        if (callee.kind != Value::Kind::Function) {
          std::string what = e.operands[0]->kind == K::Name || e.operands[0]->kind == K::Attribute
                                 ? str("'", e.operands[0]->name, "'")
                                 : "the expression";
          fail_at(e.where, str(what, " is ", callee.is_undefined() ? "not a known function" : "not callable"),
                  "a macro, a builtin (range, namespace, dict, raise_exception, strftime_now) or a method");
        }
        CallArguments a = arguments(e, scope);
        return guarded(e.where, [&] { return (*callee.function)(a); });
      }
      case K::Filter: {
        Value subject = evaluate(*e.operands[0], scope);
        CallArguments a = arguments(e, scope);
        return guarded(e.where, [&] { return apply_filter(e.name, subject, a); });
      }
      case K::Test: {
        Value subject = evaluate(*e.operands[0], scope);
        CallArguments a = arguments(e, scope);
        bool result = guarded(e.where, [&] { return apply_test(e.name, subject, a); });
        return Value::from_bool(result != e.negated);
      }
    }
    return Value();
  }

  Value binary(const Expression& e, Scope& scope) {
    const std::string& op = e.name;
    Value left = evaluate(*e.operands[0], scope);
    if (op == "and") return left.truthy() ? evaluate(*e.operands[1], scope) : left;
    if (op == "or") return left.truthy() ? left : evaluate(*e.operands[1], scope);
    return apply_binary(op, left, evaluate(*e.operands[1], scope), e.where);
  }

  // a < b == c is (a < b) and (b == c), each operand evaluated once, stopping at the first false.
  Value comparison_chain(const Expression& e, Scope& scope) {
    Value left = evaluate(*e.operands[0], scope);
    for (std::size_t i = 0; i < e.comparison_operators.size(); ++i) {
      Value right = evaluate(*e.operands[i + 1], scope);
      if (!apply_binary(e.comparison_operators[i], left, right, e.operands[i + 1]->where).truthy())
        return Value::from_bool(false);
      left = std::move(right);
    }
    return Value::from_bool(true);
  }

  Value apply_binary(const std::string& op, const Value& left, const Value& right, SourcePosition where) {
    using K = Value::Kind;
    if (op == "~") return Value::from_string(left.to_output() + right.to_output());
    if (op == "==") return Value::from_bool(values_equal(left, right));
    if (op == "!=") return Value::from_bool(!values_equal(left, right));
    if (op == "in" || op == "not in") {
      bool found = false;
      if (right.kind == K::String) {
        if (left.kind != K::String)
          fail_at(where, str("'in <string>' needs a string, not a ", left.type_name()), "a string");
        found = right.string.find(left.string) != std::string::npos;
      } else if (right.kind == K::List || right.kind == K::Dict || right.kind == K::Undefined) {
        for (const Value& item : iterate(right)) found |= values_equal(item, left);
      } else {
        fail_at(where, str("'in' a ", right.type_name()), "a list, dict or string");
      }
      return Value::from_bool(found == (op == "in"));
    }
    if (op == "<" || op == "<=" || op == ">" || op == ">=") {
      int order = 0;
      if (left.is_number() && right.is_number()) {
        order = left.as_double() < right.as_double() ? -1 : left.as_double() > right.as_double();
      } else if (left.kind == K::String && right.kind == K::String) {
        order = left.string.compare(right.string);
      } else {
        fail_at(where, str("'", op, "' between a ", left.type_name(), " and a ", right.type_name()),
                "two numbers or two strings");
      }
      if (op == "<") return Value::from_bool(order < 0);
      if (op == "<=") return Value::from_bool(order <= 0);
      if (op == ">") return Value::from_bool(order > 0);
      return Value::from_bool(order >= 0);
    }
    if (op == "+" && left.kind == K::String && right.kind == K::String)
      return Value::from_string(left.string + right.string);
    if (op == "+" && left.kind == K::List && right.kind == K::List) {
      ValueList joined = *left.list;
      joined.insert(joined.end(), right.list->begin(), right.list->end());
      return Value::from_list(std::move(joined));
    }
    if (op == "*" &&
        ((left.kind == K::String && right.kind == K::Int) || (left.kind == K::Int && right.kind == K::String))) {
      const Value& s = left.kind == K::String ? left : right;
      std::int64_t times = left.kind == K::Int ? left.integer : right.integer;
      if (times > 0 && !s.string.empty() && static_cast<std::uint64_t>(times) > kMaxStringBytes / s.string.size())
        fail_at(where, "the repeated string is too long", str("at most ", kMaxStringBytes, " bytes"));
      std::string out;
      for (std::int64_t i = 0; i < times; ++i) out += s.string;
      return Value::from_string(out);
    }
    if (!left.is_number() || !right.is_number())
      fail_at(where, str("'", op, "' between a ", left.type_name(), " and a ", right.type_name()),
              op == "+" ? "two numbers, two strings or two lists" : "two numbers");
    bool integers = left.kind != K::Float && right.kind != K::Float;
    auto integer_of = [](const Value& v) -> std::int64_t { return v.kind == K::Bool ? v.boolean : v.integer; };
    double a = left.as_double(), b = right.as_double();
    if ((op == "/" || op == "//" || op == "%") && b == 0) fail_at(where, "division by zero", "a non-zero divisor");
    // Python's integers do not overflow; ours are 64-bit, so an overflow is refused, never wrapped.
    auto checked = [&](bool overflowed, std::int64_t result) {
      if (overflowed) fail_at(where, str("integer overflow in '", op, "'"), "results within 64 bits");
      return Value::from_int(result);
    };
    if (integers && (op == "+" || op == "-" || op == "*")) {
      std::int64_t result = 0;
      bool overflowed = op == "+"   ? __builtin_add_overflow(integer_of(left), integer_of(right), &result)
                        : op == "-" ? __builtin_sub_overflow(integer_of(left), integer_of(right), &result)
                                    : __builtin_mul_overflow(integer_of(left), integer_of(right), &result);
      return checked(overflowed, result);
    }
    if (op == "+") return Value::from_float(a + b);
    if (op == "-") return Value::from_float(a - b);
    if (op == "*") return Value::from_float(a * b);
    if (op == "/") return Value::from_float(a / b);
    if (op == "//") {
      if (!integers) return Value::from_float(std::floor(a / b));
      std::int64_t x = integer_of(left), y = integer_of(right), q = x / y;
      return Value::from_int((x % y != 0 && ((x < 0) != (y < 0))) ? q - 1 : q);
    }
    if (op == "%") {
      if (!integers) return Value::from_float(a - b * std::floor(a / b));
      std::int64_t x = integer_of(left), y = integer_of(right), r = x % y;
      return Value::from_int(r != 0 && ((r < 0) != (y < 0)) ? r + y : r);
    }
    if (op == "**") {
      if (integers && integer_of(right) >= 0) {
        std::int64_t power = 1, base = integer_of(left);
        bool overflowed = false;
        for (std::int64_t exponent = integer_of(right); exponent > 0 && !overflowed; exponent >>= 1) {
          if (exponent & 1) overflowed |= __builtin_mul_overflow(power, base, &power);
          if (exponent > 1) overflowed |= __builtin_mul_overflow(base, base, &base);
        }
        return checked(overflowed, power);
      }
      return Value::from_float(std::pow(a, b));
    }
    fail_at(where, str("the operator '", op, "'"), "a supported operator");
  }

  Scope root_;
  int macro_depth_ = 0;
};

}  // namespace

std::string render(const Template& parsed, const Value& variables) {
  MINITRON_ASSERT(variables.kind == Value::Kind::Dict, "render's variables must be a dict");
  return Renderer(variables).render(parsed.body);
}

}  // namespace minitron::jinja
