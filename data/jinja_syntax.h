// The syntax tree of a Jinja template, and the parser that builds it. The parser applies
// whitespace control as transformers' chat-template environment does (trim_blocks=True,
// lstrip_blocks=True, plus the explicit {%- -%} markers) and refuses any construct outside the
// subset, naming its line and column.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/jinja_value.h"

namespace minitron::jinja {

struct SourcePosition {
  int line = 1;
  int column = 1;
};

// "chat template line 3 column 7: <why> (expected <expected>)", thrown as minitron::Error.
[[noreturn]] void fail_at(SourcePosition where, const std::string& why, const std::string& expected);

struct Expression;
using ExpressionPtr = std::shared_ptr<const Expression>;

struct Expression {
  enum class Kind {
    Literal,          // literal
    Name,             // name
    ListLiteral,      // operands: the items
    TupleLiteral,     // operands: the items
    DictLiteral,      // operands: key, value, key, value, ...
    Attribute,        // operands[0].name
    Subscript,        // operands[0][operands[1]]
    Slice,            // operands[0][operands[1]:operands[2]:operands[3]], each bound may be null
    Unary,            // name: "not", "-" or "+"; operands[0]
    Binary,           // name: the operator ("+", "and", "not in", ...); operands[0], operands[1]
    ComparisonChain,  // operands[0] op0 operands[1] op1 operands[2] ...: comparison_operators
    Conditional,      // operands[0] if operands[1] else operands[2] (null: undefined)
    Call,             // operands[0](operands[1..]); keyword_names[i] names operands[i + 1] or is ""
    Filter,           // operands[0] | name(operands[1..]); keyword_names as for Call
    Test,             // operands[0] is [not] name(operands[1..])
  };
  Kind kind = Kind::Literal;
  SourcePosition where;
  Value literal;
  std::string name;
  bool negated = false;
  std::vector<ExpressionPtr> operands;
  std::vector<std::string> keyword_names;
  std::vector<std::string> comparison_operators;  // ComparisonChain: "==", "<", "in", "not in", ...
};

struct Statement;
using Body = std::vector<Statement>;

struct IfBranch {
  ExpressionPtr condition;
  Body body;
};

struct MacroParameter {
  std::string name;
  ExpressionPtr default_value;  // null: none given
};

struct Statement {
  enum class Kind { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue, Generation };
  Kind kind = Kind::Text;
  SourcePosition where;
  std::string text;                  // Text
  ExpressionPtr expression;          // Output; Set's value; For's iterable
  std::vector<IfBranch> branches;    // If: if and each elif
  Body body;                         // For, SetBlock, Macro, Generation
  Body else_body;                    // If, For
  std::vector<std::string> targets;  // For's and Set's names (several: unpacking)
  std::string target_attribute;      // Set ns.attr = ...: "attr"
  ExpressionPtr loop_filter;         // For ... if filter
  std::string name;                  // Macro
  std::vector<MacroParameter> parameters;
};

struct Template {
  Body body;
};

Template parse_template(const std::string& source);

}  // namespace minitron::jinja
