// Chat templates: (a) small hand-checked templates, one or a few constructs each, and the refusals
// with their line and column; (b) templates written for the tests (Mistral [INST], ChatML and one
// with every construct) and (c) the real Llama 3 / 3.1, Qwen 3 and Gemma 3 templates from the
// tokenizer cache, rendered on the conversations of chat_template_conversations.json and compared
// byte for byte with what @huggingface/jinja rendered (tools/make_chat_template_goldens.mjs ->
// chat_template_goldens.json). The real templates are not committed; their tests skip when tools/fetch_tokenizers.sh
// has not run.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "data/chat_template.h"
#include "tests/data/tokenizer_test_util.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {
namespace {

using nlohmann::ordered_json;

std::string render(const std::string& text, const ordered_json& variables = ordered_json::object(),
                   std::vector<ChatMessage> messages = {}) {
  ChatTemplateInput input;
  input.messages = std::move(messages);
  input.bos_token = "<s>";
  input.eos_token = "</s>";
  input.extra_variables = variables;
  return render_chat_template(text, input);
}

// The message of the Error that rendering throws ("" when it renders).
std::string render_error(const std::string& text, const ordered_json& variables = ordered_json::object()) {
  try {
    render(text, variables);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ChatTemplateConstructs, TextOutputAndComments) {
  EXPECT_EQ(render("plain text"), "plain text");
  EXPECT_EQ(render("a{# a comment #}b"), "ab");
  EXPECT_EQ(render("{{ 'x' }}{{ \"y\" }}{{ 'a' 'b' }}"), "xyab");
  EXPECT_EQ(render("{{ bos_token }}{{ eos_token }}"), "<s></s>");
  EXPECT_EQ(render("{{ 'it\\'s\\n' }}"), "it's\n");
  EXPECT_EQ(render("{{ '}}' }}"), "}}");
  EXPECT_EQ(render("{{ '\\u00e9\\x41\\U0001F999' }}"), "éA🦙");
  // Brackets still open do not close the tag, as in Jinja2's lexer.
  EXPECT_EQ(render("{{ {'a': {'b': 1}} }}"), "{'a': {'b': 1}}");
}

TEST(ChatTemplateConstructs, WhitespaceControlAsTransformersSetsIt) {
  // Jinja2 reads \r\n and \r as \n before anything else.
  EXPECT_EQ(render("a\r\n{% if true %}\r\nb\rc{% endif %}\r\n"), "a\nb\nc");
  // Explicit markers strip every kind of whitespace on their side.
  EXPECT_EQ(render("a  \n {{- 'b' -}} \n  c"), "abc");
  EXPECT_EQ(render("a \n{%- if true -%}\n b {%- endif %}"), "ab");
  // trim_blocks: the newline right after a block or comment tag goes, not after {{ }}.
  EXPECT_EQ(render("{% if true %}\nx\n{% endif %}\ny"), "x\ny");
  EXPECT_EQ(render("{# c #}\nx"), "x");
  EXPECT_EQ(render("{{ 'v' }}\nx"), "v\nx");
  // lstrip_blocks: spaces and tabs before a block tag at the start of a line; not before {{ }},
  // not after other text on the line, and not with {%+.
  EXPECT_EQ(render("a\n  \t{% if true %}b{% endif %}"), "a\nb");
  EXPECT_EQ(render("a\n  {{ 'b' }}"), "a\n  b");
  EXPECT_EQ(render("a  {% if true %}b{% endif %}"), "a  b");
  EXPECT_EQ(render("a\n  {%+ if true %}b{% endif %}"), "a\n  b");
  // keep_trailing_newline=False: one final newline of the template is dropped.
  EXPECT_EQ(render("x\n"), "x");
  EXPECT_EQ(render("x\n\n"), "x\n");
}

TEST(ChatTemplateConstructs, IfElifElse) {
  const char* t = "{% if n == 1 %}one{% elif n == 2 %}two{% elif n > 2 %}many{% else %}none{% endif %}";
  EXPECT_EQ(render(t, {{"n", 1}}), "one");
  EXPECT_EQ(render(t, {{"n", 2}}), "two");
  EXPECT_EQ(render(t, {{"n", 7}}), "many");
  EXPECT_EQ(render(t, {{"n", 0}}), "none");
  EXPECT_EQ(render("{% if missing %}y{% else %}n{% endif %}"), "n");
}

TEST(ChatTemplateConstructs, ForLoopVariablesElseAndFilter) {
  ordered_json v = {{"xs", {"a", "b", "c"}}};
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ x }}{{ loop.length }}"
                   "{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %};{% endfor %}",
                   v),
            "10a3F;21b3;32c3L;");
  EXPECT_EQ(render("{% for x in xs %}{{ loop.revindex }}{{ loop.revindex0 }}{% endfor %}", v), "322110");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  // The filter runs before the loop variables count: loop.length is the kept items' count.
  EXPECT_EQ(render("{% for x in xs if x != 'b' %}{{ x }}{{ loop.index }}/{{ loop.length }} {% endfor %}", v),
            "a1/2 c2/2 ");
  EXPECT_EQ(render("{% for x in xs if x == 'z' %}{% else %}none kept{% endfor %}", v), "none kept");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}", {{"d", {{"b", 1}, {"a", 2}}}}),
            "b=1,a=2,");
  EXPECT_EQ(render("{% for k in d %}{{ k }}{% endfor %}", {{"d", {{"z", 1}, {"y", 2}}}}), "zy");
  EXPECT_EQ(render("{% for x in xs %}{% if x == 'b' %}{% continue %}{% endif %}{{ x }}{% endfor %}", v), "ac");
  EXPECT_EQ(render("{% for x in xs %}{% if x == 'b' %}{% break %}{% endif %}{{ x }}{% endfor %}", v), "a");
  EXPECT_EQ(render("{% for i in range(3) %}{{ i }}{% endfor %}{% for i in range(1, 7, 2) %}{{ i }}{% endfor %}"),
            "012135");
  // A break in an inner loop's else block ends the outer loop.
  EXPECT_EQ(render("{% for a in [1, 2] %}{{ a }}{% for b in [] %}{% else %}{% break %}{% endfor %}{% endfor %}"), "1");
  // A variable set inside a loop is gone after it, as in Jinja2.
  EXPECT_EQ(render("{% set n = 0 %}{% for x in xs %}{% set n = n + 1 %}{% endfor %}{{ n }}", v), "0");
}

TEST(ChatTemplateConstructs, SetNamespaceAndBlockSet) {
  EXPECT_EQ(render("{% set a = 'x' %}{% set b, c = [1, 2] %}{{ a }}{{ b }}{{ c }}"), "x12");
  EXPECT_EQ(render("{% set ns = namespace(n=0, found=false) %}{% for x in [1, 2, 3] %}{% set ns.n = ns.n + x %}"
                   "{% if x == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.n }} {{ ns.found }}"),
            "6 True");
  EXPECT_EQ(render("{% set block %}a{{ 1 + 1 }}b{% endset %}[{{ block }}]"), "[a2b]");
}

TEST(ChatTemplateConstructs, MacrosAndCalls) {
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
                   "{{ greet('Ann') }} {{ greet('Bob', '?') }} {{ greet(punct='.', name='Cy') }}"),
            "Hi Ann! Hi Bob? Hi Cy.");
  EXPECT_EQ(render("{%- macro item(x) -%}\n  <{{ x }}>\n{%- endmacro -%}\n{{ item(1) }}{{ item(2) }}"), "<1><2>");
}

TEST(ChatTemplateConstructs, Expressions) {
  EXPECT_EQ(
      render("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }}"),
      "7 9 3 -4 1 2 1024");
  // Chained comparisons are Python's: a in b != c is (a in b) and (b != c).
  EXPECT_EQ(render("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'x' in ['role'] != 'system' }} {{ 1 == 1 in [1] }}"),
            "True False False True");
  EXPECT_EQ(render("{{ -true }} {{ +false }} {{ -(1 == 1) + 3 }}"), "-1 0 2");
  EXPECT_EQ(render("{{ 3 ** 0 }} {{ (-2) ** 3 }} {{ 2 ** 62 }} {{ 2 ** -1 }}"), "1 -8 4611686018427387904 0.5");
  EXPECT_EQ(render("{{ 7 / 2 }} {{ 1.5 + 1 }} {{ 4 / 2 }} {{ -3 }} {{ 0.1 + 0.2 }}"),
            "3.5 2.5 2.0 -3 0.30000000000000004");
  EXPECT_EQ(render("{{ 'a' + 'b' }} {{ 'a' ~ 1 ~ none }} {{ 'ab' * 2 }} {{ [1] + [2] }}"), "ab a1None abab [1, 2]");
  EXPECT_EQ(render("{{ 1 < 2 }} {{ 2 <= 1 }} {{ 'a' == 'a' }} {{ 1 == 1.0 }} {{ 'b' > 'a' }} {{ 1 != 2 }}"),
            "True False True True True True");
  EXPECT_EQ(render("{{ true and 'x' }} {{ false or 'y' }} {{ not 0 }} {{ none or 0 }} {{ 'a' and '' }}"),
            "x y True 0 ");
  EXPECT_EQ(
      render("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }} {{ 'z' not in 'abc' }}"),
      "True True True True True");
  EXPECT_EQ(render("{{ 'yes' if 1 > 0 else 'no' }} {{ 'yes' if 0 else 'no' }}[{{ 'only' if false }}]"), "yes no[]");
  EXPECT_EQ(render("{{ [1, 'a', none, true] }} {{ {'k': 'v', 'n': 1} }} {{ ('t', 1) }}"),
            "[1, 'a', None, True] {'k': 'v', 'n': 1} ('t', 1)");
  EXPECT_EQ(render("{{ 1, 'a' }} {% set t = 1, 2 %}{{ t }} {% for x in 3, 4 %}{{ x }}{% endfor %}"),
            "(1, 'a') (1, 2) 34");
  EXPECT_EQ(render("{{ (1,) }} {{ (1, 2) == [1, 2] }} {{ (1, 2) == (1, 2) }} {{ {'x': 1}.items() | first }}"),
            "(1,) False True ('x', 1)");
}

TEST(ChatTemplateConstructs, AttributesSubscriptsAndSlices) {
  ordered_json v = {{"m", {{"role", "user"}, {"content", "héllo"}}}, {"xs", {10, 20, 30, 40}}};
  EXPECT_EQ(render("{{ m.role }} {{ m['content'] }} {{ m.missing is defined }} {{ m['missing'] is defined }}", v),
            "user héllo False False");
  EXPECT_EQ(render("{{ xs[0] }} {{ xs[-1] }} {{ xs.1 }} {{ xs[1:3] }} {{ xs[::-1] }} {{ xs[:-2] }} {{ xs[::2] }}", v),
            "10 40 20 [20, 30] [40, 30, 20, 10] [10, 20] [10, 30]");
  // Strings index by code point, as Python does.
  EXPECT_EQ(render("{{ m.content[1] }} {{ m.content[1:3] }} {{ m.content | length }} {{ m.content[::-1] }}", v),
            "é él 5 olléh");
  EXPECT_EQ(render("{{ xs[10] is defined }} {{ m.get('role') }} {{ m.get('nope', 'dflt') }} {{ m.keys() | list }}", v),
            "False user dflt ['role', 'content']");
}

TEST(ChatTemplateConstructs, Tests) {
  ordered_json v = {{"s", "x"}, {"n", 3}, {"f", 1.5}, {"z", nullptr}, {"l", {1}}, {"d", {{"k", 1}}}, {"b", true}};
  EXPECT_EQ(render("{{ s is defined }}{{ q is undefined }}{{ z is none }}{{ s is string }}{{ n is number }}"
                   "{{ n is integer }}{{ f is float }}{{ b is boolean }}{{ b is true }}{{ d is mapping }}"
                   "{{ l is iterable }}{{ l is sequence }}{{ n is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}"
                   "{{ 'ab' is lower }}{{ 'AB' is upper }}{{ s is not none }}{{ n is eq 3 }}{{ n is ne(3) }}",
                   v),
            "TrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueFalse");
  EXPECT_EQ(render("{{ s is number }}{{ d is string }}{{ z is defined }}", v), "FalseFalseTrue");
  EXPECT_EQ(render("{% if false %}{{ x is prime }}{% endif %}ok"), "ok");
  // Jinja2 waits to refuse an unknown filter inside an if block or a conditional expression.
  EXPECT_EQ(render("{% if false and x | nope %}{{ x | nope }}{% endif %}{{ (x | nope) if false else 1 }}"), "1");
  EXPECT_EQ(render("{% if false %}{{ x | trim.content }}{{ x is string.y }}{% endif %}{{ 'ab'[0, 1] is defined }}"),
            "False");
}

TEST(ChatTemplateConstructs, Filters) {
  ordered_json v = {{"msgs", {{{"role", "user"}, {"content", "a"}}, {{"role", "bot"}, {"content", "b"}}}}};
  EXPECT_EQ(render("[{{ missing | trim }}] [{{ 3 | upper }}] [{{ none | lower }}]"), "[] [3] [none]");
  EXPECT_EQ(render("[{{ '  x \\n' | trim }}] {{ 'ab' | upper }} {{ 'AB' | lower }} {{ 'hello world' | capitalize }} "
                   "{{ 'hello world' | title }} {{ [1, 2] | length }} {{ 'abc' | count }}"),
            "[x] AB ab Hello world Hello World 2 3");
  EXPECT_EQ(render("{{ [1, 2, 3] | join(', ') }} {{ [1, 2] | first }} {{ [1, 2] | last }} {{ 'ab' | list }} "
                   "{{ x | default('d') }} {{ '' | default('e', true) }} {{ none | default('kept') }}"),
            "1, 2, 3 1 2 ['a', 'b'] d e None");
  EXPECT_EQ(render("{{ {'a': 1, 'b': [true, none, 'q\"']} | tojson }}"), "{\"a\": 1, \"b\": [true, null, \"q\\\"\"]}");
  EXPECT_EQ(render("{{ {'a': [1]} | tojson(indent=2) }}"), "{\n  \"a\": [\n    1\n  ]\n}");
  // json.dumps's other arguments as transformers' tojson passes them: indent=0 still breaks lines.
  EXPECT_EQ(render("{{ [1, {}] | tojson(indent=0) }}"), "[\n1,\n{}\n]");
  EXPECT_EQ(render("{{ {'b': 1, 'a': 'é🦙\\u007f'} | tojson(sort_keys=true, ensure_ascii=true) }}"),
            "{\"a\": \"\\u00e9\\ud83e\\udd99\\u007f\", \"b\": 1}");
  EXPECT_EQ(render("{{ {'a': [1, 2]} | tojson(separators=(',', ':')) }}"), "{\"a\":[1,2]}");
  EXPECT_EQ(render("{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }} "
                   "{{ msgs | rejectattr('role', 'equalto', 'user') | map(attribute='content') | join }} "
                   "{{ msgs | map(attribute='role') | join('/') }} {{ {'x': 1} | items | list }}",
                   v),
            "['a'] b user/bot [('x', 1)]");
  EXPECT_EQ(render("{{ 'a-b-c' | replace('-', '+') }} {{ 5 | string ~ '!' }} {{ ' 42 ' | int + 1 }} {{ 'x' | int }} "
                   "{{ 2.7 | int }} {{ [3, 1, 3] | unique | list }} {{ [1, 2] | reverse | list }}"),
            "a+b+c 5! 43 0 2 [3, 1] [2, 1]");
}

// Jinja2's title filter and Python's str.title split words differently; both are kept.
TEST(ChatTemplateConstructs, TitleFilterAndTitleMethodDiffer) {
  EXPECT_EQ(render("{{ \"it's a-b (c) wörld\" | title }}|{{ \"it's a-b (c) wörld\".title() }}"),
            "It's A-B (C) Wörld|It'S A-B (C) Wörld");
}

TEST(ChatTemplateConstructs, StringMethods) {
  EXPECT_EQ(
      render("[{{ '  a b  '.strip() }}] [{{ 'xxaxx'.strip('x') }}] [{{ '  a'.lstrip() }}] [{{ 'a  '.rstrip() }}]"),
      "[a b] [a] [a] [a]");
  EXPECT_EQ(render("{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }}"),
            "True True True");
  EXPECT_EQ(render("{{ 'a,b,,c'.split(',') }} {{ '  a  b '.split() }} {{ 'a b c'.split(' ', 1) }}"),
            "['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c']");
  EXPECT_EQ(
      render(
          "{{ 'aB'.upper() }} {{ 'aB'.lower() }} {{ 'hello wORLD'.title() }} {{ 'x</think>y'.split('</think>')[-1] }}"),
      "AB ab Hello World y");
}

TEST(ChatTemplateConstructs, RaiseExceptionNamesTheTemplatesMessage) {
  std::string message = render_error("line one\n{{ raise_exception('Roles must alternate') }}");
  EXPECT_NE(message.find("Roles must alternate"), std::string::npos) << message;
  EXPECT_NE(message.find("line 2 column 4"), std::string::npos) << message;
}

TEST(ChatTemplateConstructs, StrftimeNowFormatsTheDateTheCallerGives) {
  ChatTemplateInput input;
  input.today = CalendarDate{2024, 7, 26};
  EXPECT_EQ(render_chat_template("{{ strftime_now('%d %b %Y') }} {{ strftime_now('%A %B %-d') }}", input),
            "26 Jul 2024 Friday July 26");
  input.today.reset();
  EXPECT_THROW(render_chat_template("{{ strftime_now('%Y') }}", input), Error);
  EXPECT_EQ(parse_calendar_date("2025-01-31").day, 31);
  EXPECT_THROW(parse_calendar_date("2025-13-01"), Error);
}

// Llama 3.1/3.2's way of asking for the date: strftime_now is defined, and prints the given day.
TEST(ChatTemplateConstructs, DateStringFallsBackToStrftimeNowAsLlamaTemplatesAsk) {
  const char* t =
      "{%- if not date_string is defined %}\n"
      "    {%- if strftime_now is defined %}\n"
      "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n"
      "    {%- else %}\n"
      "        {%- set date_string = \"26 Jul 2024\" %}\n"
      "    {%- endif %}\n"
      "{%- endif %}\n"
      "Today Date: {{ date_string }}";
  ChatTemplateInput input;
  input.today = CalendarDate{2025, 3, 1};
  EXPECT_EQ(render_chat_template(t, input), "Today Date: 01 Mar 2025");
  input.extra_variables = {{"date_string", "given"}};
  EXPECT_EQ(render_chat_template(t, input), "Today Date: given");
}

TEST(ChatTemplateConstructs, ToolsAndDocumentsAreNoneUnlessGivenAsInApplyChatTemplate) {
  const char* t = "{{ tools is defined }} {{ tools is none }} {{ documents is none }}";
  EXPECT_EQ(render(t), "True True True");
  EXPECT_EQ(render(t, {{"tools", ordered_json::array()}}), "True False True");
}

TEST(ChatTemplateConstructs, ParsedOnceRendersManyConversationsWithTheirOtherFields) {
  ChatTemplate chat(
      "{% for m in messages %}{{ m.role }}:{{ m.content }}"
      "{% if m.tool_calls %}{{ m.tool_calls | map(attribute='name') | join(',') }}{% endif %};{% endfor %}");
  ChatTemplateInput first;
  first.messages = {{"user", "hi"}};
  ChatTemplateInput second;
  second.messages = parse_conversation(
      ordered_json::parse(R"([{"role": "assistant", "content": "", "tool_calls": [{"name": "a"}, {"name": "b"}]}])"),
      "conversation");
  EXPECT_EQ(chat.render(first), "user:hi;");
  EXPECT_EQ(chat.render(second), "assistant:a,b;");
  EXPECT_EQ(chat.render(first), "user:hi;");
  EXPECT_THROW(ChatTemplate("{% for %}"), Error);
  // Content that is not a string (null, a list of parts) reaches the template as it is.
  ChatTemplate parts(
      "{% for m in messages %}{{ m.content is none }} {{ m.content is string }}"
      "{% if m.content is iterable and m.content is not string %}{{ m.content[0].text }}{% endif %};"
      "{% endfor %}");
  ChatTemplateInput mixed;
  mixed.messages = parse_conversation(ordered_json::parse(R"([{"role": "assistant", "content": null},
      {"role": "user", "content": [{"type": "text", "text": "look"}]}, {"role": "user", "content": "s"}])"),
                                      "conversation");
  EXPECT_EQ(parts.render(mixed), "True False;False Falselook;False True;");
  EXPECT_THROW(parse_conversation(ordered_json::parse(R"([{"role": "user"}])"), "conversation"), Error);
  // Untrusted JSON: integers beyond 64 bits and deep nesting are refused, not wrapped or recursed.
  EXPECT_THROW(render("{{ n }}", {{"n", ordered_json::parse("18446744073709551615")}}), Error);
  EXPECT_THROW(render("{{ n }}", {{"n", ordered_json::parse(std::string(300, '[') + std::string(300, ']'))}}), Error);
  EXPECT_EQ(render("{{ n }}", {{"n", ordered_json::parse("9223372036854775807")}}), "9223372036854775807");
}

TEST(ChatTemplateRefusals, NameLineAndColumn) {
  struct Case {
    const char* text;
    const char* expected_fragment;
  };
  const Case cases[] = {
      {"ok\n{% include 'x' %}", "line 2 column 4: the statement 'include' is not supported"},
      {"{{ x | wordwrap }}", "line 1 column 8: the filter 'wordwrap' is not supported"},
      // An unknown filter is refused when the template is read, as Jinja2 does, even in a loop that
      // never runs (but not inside an if block; an unknown test only when it runs).
      {"{% for a in [] %}{{ x | wordwrap }}{% endfor %}", "line 1 column 25: the filter 'wordwrap' is not supported"},
      {"{% if true %}{% for a in [] %}{{ x | nope }}{% endfor %}{% endif %}", "line 1 column 38: the filter 'nope'"},
      {"{% macro m() %}{{ x | nope }}{% endmacro %}", "line 1 column 23: the filter 'nope' is not supported"},
      {"{{ 1 if false else x | nope }}", "line 1 column 24: the filter 'nope' is not supported"},
      {"{{ {'a': missing} | tojson }}", "line 1 column 21: tojson cannot write the undefined value 'missing'"},
      {"{% if a if b else c %}{% endif %}", "line 1 column 9: unexpected 'if'"},
      {"a\nb\n  {{ 1 is prime }}", "line 3 column 11: the test 'prime' is not supported"},
      {"{% if true %}never closed", "the template ends inside a block"},
      {"{% endfor %}", "line 1 column 4: 'endfor' without its opening tag"},
      {"{{ 1 + }}", "line 1 column 8: the expression ends early"},
      {"{{ 'open }}", "line 1 column 1: the tag opened here is never closed"},
      {"{{ a.b }}", "line 1 column 4: 'a' is undefined"},
      {"{{ 'a' + 1 }}", "line 1 column 8: '+' between a string and a integer"},
      {"{{ nope() }}", "line 1 column 4: 'nope' is not a known function"},
      {"\n\n{% for x in xs recursive %}{% endfor %}", "line 3 column 16: recursive loops are not supported"},
      {"{% set x = 1 %}{% set x.y = 2 %}", "line 1 column 19: 'x' is not a namespace"},
      {"{{ 1 / 0 }}", "line 1 column 6: division by zero"},
      {"{{ x @ y }}", "line 1 column 6: unexpected character '@'"},
      {"{{ 9223372036854775807 + 1 }}", "line 1 column 24: integer overflow in '+'"},
      {"{{ 3 ** 99 }}", "line 1 column 6: integer overflow in '**'"},
      {"{% for i in range(10000000000) %}{% endfor %}", "line 1 column 13: range() is too long"},
  };
  for (const Case& c : cases) {
    std::string message = render_error(c.text);
    EXPECT_NE(message.find(c.expected_fragment), std::string::npos)
        << "template: " << c.text << "\nmessage: " << message;
    EXPECT_EQ(message.rfind("chat template", 0), 0u) << message;
  }
}

TEST(ChatTemplateRefusals, DeepNestingIsRefusedNotAStackOverflow) {
  std::string parentheses = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  std::string nots = "{{ " + std::string(20000, '-') + "1 }}";
  std::string blocks;
  for (int i = 0; i < 5000; ++i) blocks += "{% if true %}";
  for (const std::string& text : {parentheses, nots, blocks}) {
    std::string message = render_error(text);
    EXPECT_NE(message.find("nest too deeply"), std::string::npos) << message.substr(0, 200);
  }
  EXPECT_EQ(render("{{ ((((1)))) }}{{ - - 2 }}{% if true %}{% if true %}x{% endif %}{% endif %}"), "12x");
}

TEST(ChatTemplateConfig, LoadsStringOrNamedListAndTokens) {
  auto dir = std::filesystem::temp_directory_path() / "minitron_test_chat_template_config";
  std::filesystem::create_directories(dir);
  auto file = dir / "tokenizer_config.json";
  write_bytes_atomically(
      file, R"({"bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>", "unk_token": "<unk>",
    "pad_token": null, "additional_special_tokens": ["<a>", {"content": "<b>"}],
    "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  ChatTemplateConfig config = load_chat_template_config(dir);
  EXPECT_EQ(config.chat_template, "D");
  EXPECT_EQ(config.bos_token, "<s>");
  EXPECT_EQ(config.eos_token, "</s>");
  EXPECT_EQ(config.other_special_tokens.dump(), R"({"unk_token":"<unk>","additional_special_tokens":["<a>","<b>"]})");
  write_bytes_atomically(file, R"({"chat_template": "{{ bos_token }}"})");
  EXPECT_EQ(load_chat_template_config(file).chat_template, "{{ bos_token }}");
  write_bytes_atomically(file, R"({"bos_token": "<s>"})");
  EXPECT_THROW(load_chat_template_config(file), Error);
  std::filesystem::remove_all(dir);
}

// (b) and (c): every rendering of chat_template_goldens.json for the template `name`.
void matches_reference_renderings(const std::string& name) {
  auto spec = ordered_json::parse(read_text_file(test::fixture("chat_template_conversations.json")));
  auto goldens = ordered_json::parse(read_text_file(test::fixture("chat_template_goldens.json")));
  ChatTemplateConfig config;
  for (const auto& t : spec["templates"]) {
    if (t["name"] != name) continue;
    if (t.contains("file")) {
      config.chat_template = read_text_file(std::filesystem::path(MINITRON_SOURCE_DIR) / t["file"].get<std::string>());
      config.bos_token = t["bos_token"];
      config.eos_token = t["eos_token"];
    } else {
      auto path = test::tokenizer_cache() / t["cache"].get<std::string>() / "tokenizer_config.json";
      if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " absent: run tools/fetch_tokenizers.sh";
      config = load_chat_template_config(path);
    }
  }
  ASSERT_FALSE(config.chat_template.empty()) << name << " is not in chat_template_conversations.json";
  int checked = 0;
  for (const auto& golden : goldens["renderings"]) {
    if (golden["template"] != name) continue;
    ChatTemplateInput input;
    for (const auto& c : spec["conversations"])
      if (c["name"] == golden["conversation"]) {
        input.messages = parse_conversation(c["messages"], c["name"].get<std::string>());
        if (c.contains("variables")) input.extra_variables = c["variables"];
      }
    input.add_generation_prompt = golden["add_generation_prompt"].get<bool>();
    input.bos_token = config.bos_token;
    input.eos_token = config.eos_token;
    std::string what = str(name, " on ", golden["conversation"].get<std::string>(),
                           " add_generation_prompt=", input.add_generation_prompt);
    if (golden.contains("error")) {
      try {
        render_chat_template(config.chat_template, input);
        ADD_FAILURE() << what << ": rendered, but the reference raised " << golden["error"];
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(golden["error"].get<std::string>()), std::string::npos)
            << what << ": " << e.what();
      }
    } else {
      EXPECT_EQ(render_chat_template(config.chat_template, input), golden["text"].get<std::string>()) << what;
    }
    ++checked;
  }
  EXPECT_GE(checked, 16) << name;
}

TEST(ChatTemplateReference, MistralInst) { matches_reference_renderings("mistral_inst"); }
TEST(ChatTemplateReference, ChatML) { matches_reference_renderings("chatml"); }
TEST(ChatTemplateReference, EveryConstruct) { matches_reference_renderings("constructs"); }
TEST(ChatTemplateReference, RealLlama3) { matches_reference_renderings("llama3"); }
TEST(ChatTemplateReference, RealLlama3_1) { matches_reference_renderings("llama3_1"); }
TEST(ChatTemplateReference, RealQwen3) { matches_reference_renderings("qwen3"); }
TEST(ChatTemplateReference, RealGemma3) { matches_reference_renderings("gemma3"); }

TEST(ChatTemplateReference, MistralRefusesAnAssistantFirstConversation) {
  auto text = read_text_file(test::fixture("chat_templates/mistral_inst.jinja"));
  ChatTemplateInput input;
  input.messages = {{"assistant", "Hi"}, {"user", "Hello"}};
  try {
    render_chat_template(text, input);
    FAIL() << "rendered an assistant-first conversation";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("conversation roles must alternate user/assistant"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("line 13"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace minitron
