// Template text -> syntax tree, in two passes: the source is cut into text and tags (where the
// whitespace rules act), then each tag's contents are tokenized and parsed by recursive descent
// with Jinja2's operator precedence (parser.py: or < and < not < compare < + - < ~ < * / // % <
// ** < unary - < filters and tests < postfix).
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <set>

#include "data/jinja_builtins.h"
#include "data/jinja_syntax.h"
#include "util/error.h"

namespace minitron::jinja {

void fail_at(SourcePosition where, const std::string& why, const std::string& expected) {
  fail_expected(str("chat template line ", where.line, " column ", where.column), why, expected);
}

namespace {

class SourceMap {
 public:
  explicit SourceMap(const std::string& source) {
    line_starts_.push_back(0);
    for (std::size_t i = 0; i < source.size(); ++i)
      if (source[i] == '\n') line_starts_.push_back(i + 1);
  }
  SourcePosition at(std::size_t offset) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
    std::size_t line = static_cast<std::size_t>(it - line_starts_.begin());
    return {static_cast<int>(line), static_cast<int>(offset - line_starts_[line - 1] + 1)};
  }

 private:
  std::vector<std::size_t> line_starts_;
};

struct Piece {
  enum class Kind { Text, Output, Statement };
  Kind kind;
  std::size_t begin, end;  // Text: the text kept; tags: the contents between the markers
  std::string text;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// Where the tag whose contents start at `from` closes ("}}", "%}" or "#}"), skipping quoted strings
// and, as Jinja2's lexer does, brackets still open: {{ {'a': {'b': 1}} }} closes at the last "}}".
std::size_t find_tag_close(const std::string& s, std::size_t from, char closer, bool is_comment) {
  char quote = 0;
  int open_brackets = 0;
  for (std::size_t i = from; i + 1 < s.size(); ++i) {
    char c = s[i];
    if (quote) {
      if (c == '\\') ++i;
      if (c == quote) quote = 0;
      continue;
    }
    if (is_comment) {
      if (c == closer && s[i + 1] == '}') return i;
      continue;
    }
    if (c == '\'' || c == '"') {
      quote = c;
    } else if (c == '(' || c == '[' || c == '{') {
      ++open_brackets;
    } else if (open_brackets > 0 && (c == ')' || c == ']' || c == '}')) {
      --open_brackets;
    } else if (c == closer && s[i + 1] == '}') {
      return i;
    }
  }
  return std::string::npos;
}

std::vector<Piece> cut_into_pieces(const std::string& source, const SourceMap& map) {
  std::vector<Piece> pieces;
  bool strip_next_leading = false;
  std::size_t i = 0;
  // Jinja2's keep_trailing_newline=False: one newline at the very end of the template is dropped.
  std::size_t source_end = source.size();
  if (source_end > 0 && source[source_end - 1] == '\n') --source_end;
  while (i < source_end) {
    std::size_t open = i;
    while (true) {
      open = source.find('{', open);
      if (open == std::string::npos || open + 1 >= source_end) {
        open = std::string::npos;
        break;
      }
      char next = source[open + 1];
      if (next == '{' || next == '%' || next == '#') break;
      ++open;
    }
    std::size_t text_end = open == std::string::npos ? source_end : open;
    std::string text = source.substr(i, text_end - i);
    if (strip_next_leading) {
      std::size_t keep = 0;
      while (keep < text.size() && is_space(text[keep])) ++keep;
      text.erase(0, keep);
      strip_next_leading = false;
    }
    if (open == std::string::npos) {
      if (!text.empty()) pieces.push_back({Piece::Kind::Text, i, text_end, text});
      break;
    }
    char opener = source[open + 1];
    char modifier = open + 2 < source.size() ? source[open + 2] : '\0';
    if (modifier == '-') {
      while (!text.empty() && is_space(text.back())) text.pop_back();
    } else if (modifier != '+' && opener != '{') {
      // lstrip_blocks: spaces and tabs between the start of the line and a block or comment tag.
      std::size_t back = text.size();
      while (back > 0 && (text[back - 1] == ' ' || text[back - 1] == '\t')) --back;
      std::size_t source_back = open - (text.size() - back);
      bool at_line_start = source_back == 0 || source[source_back - 1] == '\n';
      if (at_line_start && source_back >= i) text.erase(back);
    }
    if (!text.empty()) pieces.push_back({Piece::Kind::Text, i, text_end, text});
    std::size_t contents = open + 2 + ((modifier == '-' || modifier == '+') ? 1 : 0);
    char closer = opener == '{' ? '}' : opener;
    std::size_t close = find_tag_close(source, contents, closer, opener == '#');
    if (close == std::string::npos)
      fail_at(map.at(open), str("the tag opened here is never closed"), str("'", closer, "}'"));
    std::size_t contents_end = close;
    char close_modifier = close > contents ? source[close - 1] : '\0';
    if (close_modifier == '-' || close_modifier == '+') --contents_end;
    if (opener != '#')
      pieces.push_back({opener == '{' ? Piece::Kind::Output : Piece::Kind::Statement, contents, contents_end, ""});
    i = close + 2;
    if (close_modifier == '-') {
      strip_next_leading = true;
    } else if (close_modifier != '+' && opener != '{' && i < source_end && source[i] == '\n') {
      ++i;  // trim_blocks: the first newline after a block or comment tag
    }
  }
  return pieces;
}

// Nesting deeper than this is refused rather than risking the parser's (and the evaluator's) stack;
// real templates nest a handful of levels.
constexpr int kMaxNesting = 200;

// Counts one level of nesting while alive.
class NestingGuard {
 public:
  NestingGuard(int& depth, SourcePosition where) : depth_(depth) {
    if (++depth_ > kMaxNesting) {
      --depth_;
      fail_at(where, "expressions or blocks nest too deeply", str("at most ", kMaxNesting, " levels"));
    }
  }
  ~NestingGuard() { --depth_; }
  NestingGuard(const NestingGuard&) = delete;
  NestingGuard& operator=(const NestingGuard&) = delete;

 private:
  int& depth_;
};

void append_utf8(std::uint32_t code, std::string& out) {
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else if (code < 0x10000) {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code >> 18));
    out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
}

struct Token {
  enum class Kind { Name, Integer, Float, String, Operator, End };
  Kind kind;
  std::string text;
  SourcePosition where;
};

std::vector<Token> tokenize(const std::string& source, std::size_t begin, std::size_t end, const SourceMap& map) {
  static const char* const operators[] = {"//", "**", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ",",
                                          ".",  ":",  "|",  "~",  "+",  "-",  "*", "/", "%", "<", ">", "="};
  std::vector<Token> tokens;
  std::size_t i = begin;
  while (i < end) {
    char c = source[i];
    if (is_space(c)) {
      ++i;
      continue;
    }
    SourcePosition where = map.at(i);
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      std::size_t j = i;
      while (j < end && (std::isalnum(static_cast<unsigned char>(source[j])) || source[j] == '_')) ++j;
      tokens.push_back({Token::Kind::Name, source.substr(i, j - i), where});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      std::size_t j = i;
      while (j < end && std::isdigit(static_cast<unsigned char>(source[j]))) ++j;
      bool is_float = j + 1 < end && source[j] == '.' && std::isdigit(static_cast<unsigned char>(source[j + 1]));
      if (is_float) {
        ++j;
        while (j < end && std::isdigit(static_cast<unsigned char>(source[j]))) ++j;
      }
      tokens.push_back({is_float ? Token::Kind::Float : Token::Kind::Integer, source.substr(i, j - i), where});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string value;
      std::size_t j = i + 1;
      for (; j < end && source[j] != c; ++j) {
        if (source[j] != '\\' || j + 1 >= end) {
          value += source[j];
          continue;
        }
        char escaped = source[++j];
        switch (escaped) {
          case 'n': value += '\n'; break;
          case 't': value += '\t'; break;
          case 'r': value += '\r'; break;
          case '\\': value += '\\'; break;
          case '\'': value += '\''; break;
          case '"': value += '"'; break;
          case '\n': break;
          case 'a': value += '\a'; break;
          case 'b': value += '\b'; break;
          case 'f': value += '\f'; break;
          case 'v': value += '\v'; break;
          case 'x':
          case 'u':
          case 'U': {
            // Python's \xXX, \uXXXX and \UXXXXXXXX, written out as UTF-8.
            std::size_t digits = escaped == 'x' ? 2 : escaped == 'u' ? 4 : 8;
            std::string hex = source.substr(j + 1, std::min(digits, end - j - 1));
            if (hex.size() != digits || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
              fail_at(map.at(j - 1), str("a malformed \\", escaped, " escape"), str(digits, " hexadecimal digits"));
            auto code = static_cast<std::uint32_t>(std::stoul(hex, nullptr, 16));
            if (code > 0x10FFFF) fail_at(map.at(j - 1), "an escape beyond Unicode", "at most \\U0010FFFF");
            append_utf8(code, value);
            j += digits;
            break;
          }
          default: value += '\\', value += escaped;
        }
      }
      if (j >= end) fail_at(where, "the string starting here is never closed", str("a closing ", c));
      tokens.push_back({Token::Kind::String, value, where});
      i = j + 1;
    } else {
      bool matched = false;
      for (const char* op : operators) {
        std::size_t n = std::char_traits<char>::length(op);
        if (i + n <= end && source.compare(i, n, op) == 0) {
          tokens.push_back({Token::Kind::Operator, op, where});
          i += n;
          matched = true;
          break;
        }
      }
      if (!matched) fail_at(where, str("unexpected character '", c, "'"), "an expression");
    }
  }
  tokens.push_back({Token::Kind::End, "", map.at(end)});
  return tokens;
}

// Parses the expressions inside one tag.
class ExpressionParser {
 public:
  explicit ExpressionParser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  const Token& peek(std::size_t ahead = 0) const { return tokens_[std::min(position_ + ahead, tokens_.size() - 1)]; }
  bool at_end() const { return peek().kind == Token::Kind::End; }
  bool is_operator(const char* op) const { return peek().kind == Token::Kind::Operator && peek().text == op; }
  bool is_name(const char* name) const { return peek().kind == Token::Kind::Name && peek().text == name; }
  Token next() {
    Token t = peek();
    if (position_ < tokens_.size() - 1) ++position_;
    return t;
  }
  void expect_operator(const char* op) {
    if (!is_operator(op)) fail_at(peek().where, str("found '", peek().text, "'"), str("'", op, "'"));
    next();
  }
  void expect_name(const char* name) {
    if (!is_name(name)) fail_at(peek().where, str("found '", peek().text, "'"), str("'", name, "'"));
    next();
  }
  std::string expect_identifier() {
    if (peek().kind != Token::Kind::Name) fail_at(peek().where, str("found '", peek().text, "'"), "a name");
    return next().text;
  }
  void expect_end() {
    if (!at_end()) fail_at(peek().where, str("unexpected '", peek().text, "'"), "the end of the tag");
  }

  // Jinja2's parse_tuple: in {{ }}, set and for, `a, b` without parentheses is a tuple.
  ExpressionPtr expression_or_tuple(bool with_conditional = true) {
    ExpressionPtr first = expression(with_conditional);
    if (!is_operator(",")) return first;
    std::vector<ExpressionPtr> items{first};
    while (is_operator(",")) {
      next();
      if (at_end() || is_name("if")) break;
      items.push_back(expression(with_conditional));
    }
    return make(Expression::Kind::TupleLiteral, first->where, "", items);
  }

  ExpressionPtr expression(bool with_conditional = true) {
    NestingGuard guard(depth_, peek().where);
    ExpressionPtr value = or_expression();
    if (!with_conditional || !is_name("if")) return value;
    SourcePosition where = next().where;
    ExpressionPtr condition = or_expression();
    ExpressionPtr otherwise;
    if (is_name("else")) {
      next();
      otherwise = expression();
    }
    return make(Expression::Kind::Conditional, where, "", {value, condition, otherwise});
  }

 private:
  static ExpressionPtr make(Expression::Kind kind, SourcePosition where, std::string name,
                            std::vector<ExpressionPtr> operands) {
    auto e = std::make_shared<Expression>();
    e->kind = kind;
    e->where = where;
    e->name = std::move(name);
    e->operands = std::move(operands);
    return e;
  }

  ExpressionPtr or_expression() {
    ExpressionPtr left = and_expression();
    while (is_name("or")) {
      SourcePosition where = next().where;
      left = make(Expression::Kind::Binary, where, "or", {left, and_expression()});
    }
    return left;
  }
  ExpressionPtr and_expression() {
    ExpressionPtr left = not_expression();
    while (is_name("and")) {
      SourcePosition where = next().where;
      left = make(Expression::Kind::Binary, where, "and", {left, not_expression()});
    }
    return left;
  }
  ExpressionPtr not_expression() {
    NestingGuard guard(depth_, peek().where);
    if (is_name("not")) {
      SourcePosition where = next().where;
      return make(Expression::Kind::Unary, where, "not", {not_expression()});
    }
    return comparison();
  }
  ExpressionPtr comparison() {
    ExpressionPtr first = additive();
    auto chain = std::make_shared<Expression>();
    chain->kind = Expression::Kind::ComparisonChain;
    chain->where = first->where;
    chain->operands.push_back(first);
    while (true) {
      SourcePosition where = peek().where;
      std::string op;
      if (peek().kind == Token::Kind::Operator && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                                   peek().text == "<=" || peek().text == ">" || peek().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && peek(1).kind == Token::Kind::Name && peek(1).text == "in") {
        next();
        next();
        op = "not in";
      } else {
        break;
      }
      chain->comparison_operators.push_back(op);
      chain->operands.push_back(additive());
      if (chain->operands.size() == 2) chain->where = where;
    }
    if (chain->comparison_operators.empty()) return first;
    // One comparison stays a plain binary operation; longer chains compare neighbours, as Python.
    if (chain->comparison_operators.size() == 1)
      return make(Expression::Kind::Binary, chain->where, chain->comparison_operators[0], chain->operands);
    return chain;
  }
  ExpressionPtr additive() {
    ExpressionPtr left = concatenation();
    while (is_operator("+") || is_operator("-")) {
      Token op = next();
      left = make(Expression::Kind::Binary, op.where, op.text, {left, concatenation()});
    }
    return left;
  }
  ExpressionPtr concatenation() {
    ExpressionPtr left = multiplicative();
    while (is_operator("~")) {
      Token op = next();
      left = make(Expression::Kind::Binary, op.where, "~", {left, multiplicative()});
    }
    return left;
  }
  ExpressionPtr multiplicative() {
    ExpressionPtr left = power();
    while (is_operator("*") || is_operator("/") || is_operator("//") || is_operator("%")) {
      Token op = next();
      left = make(Expression::Kind::Binary, op.where, op.text, {left, power()});
    }
    return left;
  }
  ExpressionPtr power() {
    ExpressionPtr left = unary();
    while (is_operator("**")) {
      Token op = next();
      left = make(Expression::Kind::Binary, op.where, "**", {left, unary()});
    }
    return left;
  }
  ExpressionPtr unary() {
    if (is_operator("-") || is_operator("+")) {
      Token op = next();
      return filters_and_tests(make(Expression::Kind::Unary, op.where, op.text, {unary_without_filters()}));
    }
    return filters_and_tests(postfix(primary()));
  }
  ExpressionPtr unary_without_filters() {
    NestingGuard guard(depth_, peek().where);
    if (is_operator("-") || is_operator("+")) {
      Token op = next();
      return make(Expression::Kind::Unary, op.where, op.text, {unary_without_filters()});
    }
    return postfix(primary());
  }

  ExpressionPtr primary() {
    Token t = next();
    auto literal = [&](Value v) {
      auto e = std::make_shared<Expression>();
      e->kind = Expression::Kind::Literal;
      e->where = t.where;
      e->literal = std::move(v);
      return e;
    };
    switch (t.kind) {
      case Token::Kind::Name:
        if (t.text == "true" || t.text == "True") return literal(Value::from_bool(true));
        if (t.text == "false" || t.text == "False") return literal(Value::from_bool(false));
        if (t.text == "none" || t.text == "None") return literal(Value::none());
        return make(Expression::Kind::Name, t.where, t.text, {});
      case Token::Kind::Integer: return literal(Value::from_int(std::strtoll(t.text.c_str(), nullptr, 10)));
      case Token::Kind::Float: return literal(Value::from_float(std::strtod(t.text.c_str(), nullptr)));
      case Token::Kind::String: {
        std::string s = t.text;
        while (peek().kind == Token::Kind::String) s += next().text;  // 'a' 'b' is 'ab', as in Python
        return literal(Value::from_string(s));
      }
      case Token::Kind::End: fail_at(t.where, "the expression ends early", "a value");
      case Token::Kind::Operator: break;
    }
    if (t.text == "(") {
      ExpressionPtr inner = expression();
      if (is_operator(",")) {
        std::vector<ExpressionPtr> items{inner};
        while (is_operator(",")) {
          next();
          if (is_operator(")")) break;
          items.push_back(expression());
        }
        inner = make(Expression::Kind::TupleLiteral, t.where, "", items);
      }
      expect_operator(")");
      return inner;
    }
    if (t.text == "[") {
      std::vector<ExpressionPtr> items;
      while (!is_operator("]")) {
        items.push_back(expression());
        if (!is_operator(",")) break;
        next();
      }
      expect_operator("]");
      return make(Expression::Kind::ListLiteral, t.where, "", items);
    }
    if (t.text == "{") {
      std::vector<ExpressionPtr> items;
      while (!is_operator("}")) {
        items.push_back(expression());
        expect_operator(":");
        items.push_back(expression());
        if (!is_operator(",")) break;
        next();
      }
      expect_operator("}");
      return make(Expression::Kind::DictLiteral, t.where, "", items);
    }
    fail_at(t.where, str("unexpected '", t.text, "'"), "a value");
  }

  void arguments(std::vector<ExpressionPtr>& operands, std::vector<std::string>& keyword_names) {
    expect_operator("(");
    while (!is_operator(")")) {
      std::string keyword;
      if (peek().kind == Token::Kind::Name && peek(1).kind == Token::Kind::Operator && peek(1).text == "=") {
        keyword = next().text;
        next();
      } else if (is_operator("*") || is_operator("**")) {
        fail_at(peek().where, "*args and **kwargs in calls are not supported", "plain or keyword arguments");
      }
      operands.push_back(expression());
      keyword_names.push_back(keyword);
      if (!is_operator(",")) break;
      next();
    }
    expect_operator(")");
  }

  ExpressionPtr postfix(ExpressionPtr subject) {
    while (true) {
      if (is_operator(".")) {
        SourcePosition where = next().where;
        Token member = next();
        if (member.kind == Token::Kind::Integer) {
          auto index = std::make_shared<Expression>();
          index->where = member.where;
          index->literal = Value::from_int(std::strtoll(member.text.c_str(), nullptr, 10));
          subject = make(Expression::Kind::Subscript, where, "", {subject, index});
        } else if (member.kind == Token::Kind::Name) {
          subject = make(Expression::Kind::Attribute, where, member.text, {subject});
        } else {
          fail_at(member.where, str("found '", member.text, "' after '.'"), "an attribute name");
        }
      } else if (is_operator("[")) {
        SourcePosition where = next().where;
        std::vector<ExpressionPtr> bounds;
        bool is_slice = false;
        for (int part = 0; part < 3; ++part) {
          bounds.push_back(is_operator(":") || is_operator("]") ? nullptr : expression());
          if (!is_operator(":")) break;
          is_slice = true;
          next();
        }
        if (!is_slice && bounds[0] && is_operator(",")) {
          // x[a, b] subscripts with a tuple, as Python does.
          std::vector<ExpressionPtr> items{bounds[0]};
          while (is_operator(",")) {
            next();
            if (is_operator("]")) break;
            items.push_back(expression());
          }
          bounds[0] = make(Expression::Kind::TupleLiteral, where, "", items);
        }
        expect_operator("]");
        if (is_slice) {
          bounds.resize(3);
          subject = make(Expression::Kind::Slice, where, "", {subject, bounds[0], bounds[1], bounds[2]});
        } else {
          if (!bounds[0]) fail_at(where, "an empty subscript", "an index or a key");
          subject = make(Expression::Kind::Subscript, where, "", {subject, bounds[0]});
        }
      } else if (is_operator("(")) {
        auto call = std::make_shared<Expression>();
        call->kind = Expression::Kind::Call;
        call->where = subject->where;
        call->operands.push_back(subject);
        arguments(call->operands, call->keyword_names);
        subject = call;
      } else {
        return subject;
      }
    }
  }

  // Jinja2 reads a filter's or test's name with dots (x | a.b names the filter "a.b").
  std::string dotted_name() {
    std::string name = expect_identifier();
    while (is_operator(".") && peek(1).kind == Token::Kind::Name) {
      next();
      name += "." + next().text;
    }
    return name;
  }

  ExpressionPtr filters_and_tests(ExpressionPtr subject) {
    while (true) {
      if (is_operator("|")) {
        next();
        auto filter = std::make_shared<Expression>();
        filter->kind = Expression::Kind::Filter;
        filter->where = peek().where;
        filter->name = dotted_name();
        filter->operands.push_back(subject);
        if (is_operator("(")) arguments(filter->operands, filter->keyword_names);
        subject = filter;
      } else if (is_name("is")) {
        next();
        auto test = std::make_shared<Expression>();
        test->kind = Expression::Kind::Test;
        if (is_name("not")) {
          next();
          test->negated = true;
        }
        test->where = peek().where;
        // `is none`, `is true`, `is false` name tests, not literals.
        test->name = dotted_name();
        test->operands.push_back(subject);
        if (is_operator("(")) {
          arguments(test->operands, test->keyword_names);
        } else if (peek().kind == Token::Kind::String || peek().kind == Token::Kind::Integer ||
                   peek().kind == Token::Kind::Float ||
                   (peek().kind == Token::Kind::Name && !is_name("and") && !is_name("or") && !is_name("if") &&
                    !is_name("else") && !is_name("is") && !is_name("in") && !is_name("not"))) {
          // `is divisibleby 3`, `is sameas none`: one argument without parentheses.
          test->operands.push_back(postfix(primary()));
          test->keyword_names.push_back("");
        }
        subject = test;
      } else {
        return subject;
      }
    }
  }

  std::vector<Token> tokens_;
  std::size_t position_ = 0;
  int depth_ = 0;
};

// Jinja2 refuses an unknown filter when it compiles the template, except inside an if statement
// (its tests and blocks) or a conditional expression, where the refusal waits until the filter runs; a for loop's or a
// macro's body is checked again.
void check_filter_names(const Expression& e, bool deferred) {
  if (e.kind == Expression::Kind::Filter && !deferred && !is_supported_filter(e.name))
    fail_at(e.where, str("the filter '", e.name, "' is not supported"), supported_filters());
  for (const ExpressionPtr& operand : e.operands)
    if (operand) check_filter_names(*operand, deferred || e.kind == Expression::Kind::Conditional);
}

void check_filter_names(const Body& body, bool deferred) {
  for (const Statement& s : body) {
    for (const ExpressionPtr& e : {s.expression, s.loop_filter})
      if (e) check_filter_names(*e, deferred);
    for (const IfBranch& branch : s.branches) {
      check_filter_names(*branch.condition, true);
      check_filter_names(branch.body, true);
    }
    for (const MacroParameter& p : s.parameters)
      if (p.default_value) check_filter_names(*p.default_value, false);
    bool loop_or_macro = s.kind == Statement::Kind::For || s.kind == Statement::Kind::Macro;
    check_filter_names(s.body, loop_or_macro ? false : deferred);
    check_filter_names(s.else_body, s.kind == Statement::Kind::If || deferred);
  }
}

class TemplateParser {
 public:
  TemplateParser(const std::string& source) : source_(source), map_(source), pieces_(cut_into_pieces(source, map_)) {}

  Template parse() {
    Template t;
    std::string terminator = body(t.body, {});
    if (!terminator.empty()) fail_at(terminator_where_, str("'", terminator, "' without its opening tag"), "");
    check_filter_names(t.body, false);
    return t;
  }

 private:
  ExpressionParser tag_parser(const Piece& piece) const {
    return ExpressionParser(tokenize(source_, piece.begin, piece.end, map_));
  }

  // Parses statements until one of `ends` (e.g. "elif", "else", "endif") opens a tag; returns that
  // keyword with the parser positioned after its name, or "" at the end of the template.
  std::string body(Body& out, const std::set<std::string>& ends) {
    while (index_ < pieces_.size()) {
      const Piece& piece = pieces_[index_++];
      SourcePosition where = map_.at(piece.begin);
      if (piece.kind == Piece::Kind::Text) {
        Statement s;
        s.kind = Statement::Kind::Text;
        s.where = where;
        s.text = piece.text;
        out.push_back(std::move(s));
        continue;
      }
      current_ = std::make_unique<ExpressionParser>(tag_parser(piece));
      if (piece.kind == Piece::Kind::Output) {
        Statement s;
        s.kind = Statement::Kind::Output;
        s.where = where;
        s.expression = current_->expression_or_tuple();
        current_->expect_end();
        out.push_back(std::move(s));
        continue;
      }
      SourcePosition keyword_where = current_->peek().where;
      std::string keyword = current_->expect_identifier();
      if (ends.count(keyword)) return keyword;
      if (keyword.rfind("end", 0) == 0 || keyword == "elif" || keyword == "else") {
        terminator_where_ = keyword_where;
        if (ends.empty()) return keyword;
        fail_at(keyword_where, str("'", keyword, "' here"), str("one of: ", join(ends)));
      }
      out.push_back(statement(keyword, keyword_where));
    }
    if (!ends.empty())
      fail_at(map_.at(source_.size()), "the template ends inside a block", str("one of: ", join(ends)));
    return "";
  }

  static std::string join(const std::set<std::string>& words) {
    std::string s;
    for (const auto& w : words) s += (s.empty() ? "" : ", ") + w;
    return s;
  }

  Statement statement(const std::string& keyword, SourcePosition where) {
    NestingGuard guard(block_depth_, where);
    Statement s;
    s.where = where;
    ExpressionParser& p = *current_;
    if (keyword == "if") {
      s.kind = Statement::Kind::If;
      // Jinja2 reads an if's test without the `a if b else c` form (parse_if: with_condexpr=False).
      IfBranch branch{p.expression(false), {}};
      p.expect_end();
      while (true) {
        std::string end = body(branch.body, {"elif", "else", "endif"});
        s.branches.push_back(std::move(branch));
        if (end == "elif") {
          branch = IfBranch{current_->expression(false), {}};
          current_->expect_end();
          continue;
        }
        current_->expect_end();
        if (end == "else") {
          body(s.else_body, {"endif"});
          current_->expect_end();
        }
        return s;
      }
    }
    if (keyword == "for") {
      s.kind = Statement::Kind::For;
      s.targets.push_back(p.expect_identifier());
      while (p.is_operator(",")) {
        p.next();
        s.targets.push_back(p.expect_identifier());
      }
      p.expect_name("in");
      s.expression = p.expression_or_tuple(false);
      if (p.is_name("if")) {
        p.next();
        s.loop_filter = p.expression(false);
      }
      if (p.is_name("recursive")) fail_at(p.peek().where, "recursive loops are not supported", "a plain for loop");
      p.expect_end();
      std::string end = body(s.body, {"else", "endfor"});
      current_->expect_end();
      if (end == "else") {
        body(s.else_body, {"endfor"});
        current_->expect_end();
      }
      return s;
    }
    if (keyword == "set") {
      s.targets.push_back(p.expect_identifier());
      if (p.is_operator(".")) {
        p.next();
        s.target_attribute = p.expect_identifier();
      }
      while (p.is_operator(",") && s.target_attribute.empty()) {
        p.next();
        s.targets.push_back(p.expect_identifier());
      }
      if (p.at_end() && s.targets.size() == 1 && s.target_attribute.empty()) {
        s.kind = Statement::Kind::SetBlock;
        body(s.body, {"endset"});
        current_->expect_end();
        return s;
      }
      s.kind = Statement::Kind::Set;
      p.expect_operator("=");
      s.expression = p.expression_or_tuple();
      p.expect_end();
      return s;
    }
    if (keyword == "macro") {
      s.kind = Statement::Kind::Macro;
      s.name = p.expect_identifier();
      p.expect_operator("(");
      while (!p.is_operator(")")) {
        MacroParameter parameter{p.expect_identifier(), nullptr};
        if (p.is_operator("=")) {
          p.next();
          parameter.default_value = p.expression();
        }
        s.parameters.push_back(std::move(parameter));
        if (!p.is_operator(",")) break;
        p.next();
      }
      p.expect_operator(")");
      p.expect_end();
      body(s.body, {"endmacro"});
      current_->expect_end();
      return s;
    }
    if (keyword == "break" || keyword == "continue") {
      s.kind = keyword == "break" ? Statement::Kind::Break : Statement::Kind::Continue;
      p.expect_end();
      return s;
    }
    if (keyword == "generation") {
      // transformers' AssistantTracker marks the assistant's tokens; the text renders unchanged.
      s.kind = Statement::Kind::Generation;
      p.expect_end();
      body(s.body, {"endgeneration"});
      current_->expect_end();
      return s;
    }
    fail_at(where, str("the statement '", keyword, "' is not supported"),
            "if, for, set, macro, break, continue or generation");
  }

  const std::string& source_;
  SourceMap map_;
  std::vector<Piece> pieces_;
  std::size_t index_ = 0;
  int block_depth_ = 0;
  std::unique_ptr<ExpressionParser> current_;
  SourcePosition terminator_where_;
};

}  // namespace

Template parse_template(const std::string& source) {
  // Jinja2 reads "\r\n" and "\r" as "\n" everywhere in the source before lexing.
  std::string normalized;
  normalized.reserve(source.size());
  for (std::size_t i = 0; i < source.size(); ++i) {
    if (source[i] != '\r') {
      normalized += source[i];
    } else {
      normalized += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    }
  }
  return TemplateParser(normalized).parse();
}

}  // namespace minitron::jinja
