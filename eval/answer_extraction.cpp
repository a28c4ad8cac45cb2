#include "eval/answer_extraction.h"

#include <optional>

#include "util/error.h"

namespace minitron {

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
// [0-9\.\,]
bool is_number_char(char c) { return is_digit(c) || c == '.' || c == ','; }
// [$0-9.,]
bool is_money_char(char c) { return is_number_char(c) || c == '$'; }

std::size_t run_length(const std::string& s, std::size_t from, bool (*in_class)(char)) {
  std::size_t n = 0;
  while (from + n < s.size() && in_class(s[from + n])) ++n;
  return n;
}

// One match of a single-group pattern: the group's text and where the whole match ends.
struct GroupMatch {
  std::string group;
  std::size_t end = 0;
};

// r"<prefix>(\-?[0-9\.\,]+)" followed by `then_any_char` ('.' outside DOTALL: any byte but
// "\n") when set, tried at position `at` as Python's backtracking matcher does: "-" taken
// first, then without it; the run greedy, giving back one character for a trailing '.'.
std::optional<GroupMatch> number_group_at(const std::string& s, std::size_t at, bool then_any_char) {
  for (const bool minus : {true, false}) {
    if (minus && (at >= s.size() || s[at] != '-')) continue;
    const std::size_t start = at + (minus ? 1 : 0);
    const std::size_t run = run_length(s, start, is_number_char);
    for (std::size_t take = run; take >= 1; --take) {
      const std::size_t end = start + take;
      if (then_any_char) {
        if (end >= s.size() || s[end] == '\n') continue;  // '.' needs one more character
        return GroupMatch{s.substr(at, end - at), end + 1};
      }
      return GroupMatch{s.substr(at, end - at), end};
    }
  }
  return std::nullopt;
}

// findall(prefix + group [+ "."])[0]: the leftmost occurrence that matches.
std::string first_number_after(const std::string& s, const std::string& prefix, bool then_any_char) {
  for (std::size_t p = s.find(prefix); p != std::string::npos; p = s.find(prefix, p + 1))
    if (auto m = number_group_at(s, p + prefix.size(), then_any_char)) return python_strip(m->group);
  return kFilterFallback;
}

std::string lower_ascii(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

std::string remove_char(const std::string& s, char drop) {
  std::string out;
  for (char c : s)
    if (c != drop) out += c;
  return out;
}

}  // namespace

std::string extract_gsm8k_strict(const std::string& text) { return first_number_after(text, "#### ", false); }

std::string extract_gsm8k_cot_strict(const std::string& text) {
  return first_number_after(text, "The answer is ", true);
}

std::string extract_last_number(const std::string& s) {
  std::optional<std::string> last;
  std::size_t p = 0;
  while (p < s.size()) {
    // Alternative 1: -?[$0-9.,]{2,} ("-" tried first); alternative 2: -?[0-9]+.
    std::optional<std::pair<std::size_t, std::size_t>> match;  // [begin, end)
    const bool minus = s[p] == '-';
    if (minus && run_length(s, p + 1, is_money_char) >= 2)
      match = {{p, p + 1 + run_length(s, p + 1, is_money_char)}};
    else if (!minus && run_length(s, p, is_money_char) >= 2)
      match = {{p, p + run_length(s, p, is_money_char)}};
    else if (minus && run_length(s, p + 1, is_digit) >= 1)
      match = {{p, p + 1 + run_length(s, p + 1, is_digit)}};
    else if (!minus && run_length(s, p, is_digit) >= 1)
      match = {{p, p + run_length(s, p, is_digit)}};
    if (!match) {
      ++p;
      continue;
    }
    last = s.substr(match->first, match->second - match->first);
    p = match->second;
  }
  return last ? python_strip(*last) : std::string(kFilterFallback);
}

std::string normalise_gsm8k_answer(const std::string& text) {
  std::string s = remove_char(remove_char(text, ','), '$');
  // re.sub(r"(?s).*#### ", "", s): the greedy match from the start runs to the last "#### ".
  if (const std::size_t last = s.rfind("#### "); last != std::string::npos) s = s.substr(last + 5);
  // re.sub(r"\.$", "", s): a '.' at the end, or just before a final "\n".
  if (!s.empty() && s.back() == '.')
    s.pop_back();
  else if (s.size() >= 2 && s[s.size() - 1] == '\n' && s[s.size() - 2] == '.')
    s.erase(s.size() - 2, 1);
  return lower_ascii(s);
}

std::vector<std::string> generation_filter_names(TaskKind kind) {
  MINITRON_ASSERT(task_is_generative(kind), task_kind_name(kind), " has no generation filters");
  return {"strict-match", "flexible-extract"};
}

std::vector<double> score_generation(TaskKind kind, const std::string& generation, const std::string& reference) {
  const std::string strict =
      kind == TaskKind::Gsm8kCot ? extract_gsm8k_cot_strict(generation) : extract_gsm8k_strict(generation);
  const std::string flexible = extract_last_number(generation);
  const std::string gold = normalise_gsm8k_answer(reference);
  return {normalise_gsm8k_answer(strict) == gold ? 1.0 : 0.0, normalise_gsm8k_answer(flexible) == gold ? 1.0 : 0.0};
}

}  // namespace minitron
