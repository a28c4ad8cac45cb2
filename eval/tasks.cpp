#include "eval/tasks.h"

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "util/checked_json.h"
#include "util/error.h"

namespace minitron {

using json = nlohmann::json;

namespace {

struct KindName {
  TaskKind kind;
  const char* name;
};
constexpr KindName kKinds[] = {
    {TaskKind::HellaSwag, "hellaswag"},
    {TaskKind::Winogrande, "winogrande"},
    {TaskKind::Mmlu, "mmlu"},
    {TaskKind::ArcEasy, "arc_easy"},
    {TaskKind::ArcChallenge, "arc_challenge"},
    {TaskKind::MultipleChoice, "multiple_choice"},
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::vector<std::string> string_list(const JsonField& v) {
  if (!v.is_array() || v.size() == 0) v.refuse("a non-empty list of strings");
  return v.as_string_array();
}

// An index given as a number or a digit string ("label": "2" in HellaSwag's HF files).
int index_field(const JsonField& v) {
  if (v.is_number()) return v.as_int<int>();
  if (v.is_string()) {
    const std::string& s = v.as_string();
    if (!s.empty() && s.size() < 9 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return std::stoi(s);
  }
  v.refuse("an integer index");
}

void check_gold(const TaskDoc& doc, const std::string& where) {
  if (doc.gold < 0 || doc.gold >= static_cast<int>(doc.choices.size()))
    fail_expected(where, str("answer index ", doc.gold, " is out of range"),
                  str("0 to ", doc.choices.size() - 1, " (one per choice)"));
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  std::string out;
  std::size_t i = 0;
  while (true) {
    std::size_t j = text.find(from, i);
    if (j == std::string::npos) break;
    out.append(text, i, j - i);
    out += to;
    i = j + from.size();
  }
  out.append(text, i, std::string::npos);
  return out;
}

}  // namespace

TaskKind parse_task_kind(const std::string& name) {
  for (const KindName& k : kKinds)
    if (name == k.name) return k.kind;
  fail_expected("--task", str("'", name, "' is not a known task"),
                "hellaswag, winogrande, mmlu, arc_easy, arc_challenge or multiple_choice");
}

const char* task_kind_name(TaskKind kind) {
  for (const KindName& k : kKinds)
    if (k.kind == kind) return k.name;
  return "?";
}

bool task_reports_acc_norm(TaskKind kind) { return kind != TaskKind::Winogrande && kind != TaskKind::Mmlu; }

std::string python_strip(const std::string& text) {
  std::size_t b = 0, e = text.size();
  while (b < e && is_space(text[b])) ++b;
  while (e > b && is_space(text[e - 1])) --e;
  return text.substr(b, e - b);
}

std::string python_capitalize(const std::string& text) {
  std::string out = text;
  for (std::size_t i = 0; i < out.size(); ++i) {
    char c = out[i];
    if (i == 0 && c >= 'a' && c <= 'z') out[i] = static_cast<char>(c - 'a' + 'A');
    if (i > 0 && c >= 'A' && c <= 'Z') out[i] = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::string hellaswag_preprocess(const std::string& input) {
  std::string text = python_strip(input);
  text = replace_all(text, " [title]", ". ");
  // re.sub("\\[.*?\\]", "", text): the shortest "[...]" from each '[' ('.' excludes newlines).
  std::string no_brackets;
  for (std::size_t i = 0; i < text.size();) {
    if (text[i] == '[') {
      std::size_t j = i + 1;
      while (j < text.size() && text[j] != ']' && text[j] != '\n') ++j;
      if (j < text.size() && text[j] == ']') {
        i = j + 1;
        continue;
      }
    }
    no_brackets += text[i++];
  }
  return replace_all(no_brackets, "  ", " ");
}

TaskDoc parse_task_doc(TaskKind kind, const std::string& line, const std::string& where) {
  json source = parse_untrusted_json(line, where, "one JSON object per line");
  const JsonField doc(source, where);
  if (!doc.is_object()) doc.refuse("a JSON object");
  auto string_field = [&](const char* name) -> const std::string& { return doc.at(name).as_string(); };
  TaskDoc out;
  switch (kind) {
    case TaskKind::HellaSwag: {
      const std::string ctx = string_field("ctx_a") + " " + python_capitalize(string_field("ctx_b"));
      out.query = hellaswag_preprocess(string_field("activity_label") + ": " + ctx);
      for (const std::string& e : string_list(doc.at("endings"))) out.choices.push_back(hellaswag_preprocess(e));
      out.gold = index_field(doc.at("label"));
      break;
    }
    case TaskKind::Winogrande: {
      const std::string& sentence = string_field("sentence");
      const std::size_t blank = sentence.find('_');
      if (blank == std::string::npos) fail_expected(where, "\"sentence\" has no \"_\"", "a sentence with a _ blank");
      out.query = sentence.substr(0, blank);
      out.target = python_strip(sentence.substr(blank + 1));
      out.choices = {string_field("option1"), string_field("option2")};
      const int a = index_field(doc.at("answer"));
      if (a != 1 && a != 2) doc.at("answer").refuse("\"1\" or \"2\"");
      out.gold = a - 1;
      break;
    }
    case TaskKind::Mmlu: {
      out.subject = string_field("subject");
      const std::vector<std::string> options = string_list(doc.at("choices"));
      if (options.size() != 4) fail_expected(where, str("\"choices\" has ", options.size(), " entries"), "4 (A to D)");
      out.query = python_strip(string_field("question")) + "\nA. " + options[0] + "\nB. " + options[1] + "\nC. " +
                  options[2] + "\nD. " + options[3] + "\nAnswer:";
      out.choices = {"A", "B", "C", "D"};
      const JsonField answer = doc.at("answer");
      if (answer.is_string() && answer.as_string().size() == 1 && answer.as_string()[0] >= 'A' &&
          answer.as_string()[0] <= 'D')
        out.gold = answer.as_string()[0] - 'A';
      else
        out.gold = index_field(answer);
      break;
    }
    case TaskKind::ArcEasy:
    case TaskKind::ArcChallenge: {
      out.query = "Question: " + string_field("question") + "\nAnswer:";
      const JsonField choices = doc.at("choices");
      if (!choices.has("text") || !choices.has("label")) choices.refuse("{\"text\": [...], \"label\": [...]}");
      out.choices = string_list(choices.at("text"));
      const std::vector<std::string> labels = string_list(choices.at("label"));
      if (labels.size() != out.choices.size())
        fail_expected(where, "\"choices.label\" and \"choices.text\" differ in length", "one label per choice");
      const std::string& key = string_field("answerKey");
      auto it = std::find(labels.begin(), labels.end(), key);
      if (it == labels.end())
        fail_expected(where, str("\"answerKey\" '", key, "' is not a label"), "one of choices.label");
      out.gold = static_cast<int>(it - labels.begin());
      break;
    }
    case TaskKind::MultipleChoice: {
      out.query = string_field("context");
      out.choices = string_list(doc.at("choices"));
      out.gold = index_field(doc.at("label"));
      break;
    }
  }
  check_gold(out, where);
  out.source = std::move(source);
  return out;
}

std::vector<TaskDoc> load_task_file(TaskKind kind, const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_expected(path.string(), "cannot be opened", "a readable JSONL task file");
  std::vector<TaskDoc> docs;
  std::string line;
  for (std::int64_t n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (python_strip(line).empty()) continue;
    docs.push_back(parse_task_doc(kind, line, str(path.string(), ":", n)));
  }
  if (docs.empty())
    fail_expected(path.string(), "holds no documents", str("JSONL in the ", task_kind_name(kind), " layout"));
  return docs;
}

std::string fewshot_example(TaskKind kind, const TaskDoc& doc) {
  if (kind == TaskKind::Winogrande)  // doc_to_text gives the gold index: the gold option's context
    return doc.query + doc.choices[static_cast<std::size_t>(doc.gold)] + " " + doc.target;
  return doc.query + " " + doc.choices[static_cast<std::size_t>(doc.gold)];
}

std::string fewshot_prefix(TaskKind kind, const std::string& subject, const std::vector<const TaskDoc*>& shots) {
  std::string prefix;
  if (kind == TaskKind::Mmlu)
    prefix =
        "The following are multiple choice questions (with answers) about " + replace_all(subject, "_", " ") + ".\n\n";
  for (const TaskDoc* d : shots) prefix += fewshot_example(kind, *d) + "\n\n";
  return prefix;
}

Question build_question(TaskKind kind, const TaskDoc& doc, const std::string& prefix) {
  Question q;
  q.gold = doc.gold;
  q.subject = doc.subject;
  for (const std::string& choice : doc.choices) {
    if (kind == TaskKind::Winogrande)
      q.requests.push_back({prefix + doc.query + choice, " " + doc.target});
    else
      q.requests.push_back({prefix + doc.query, " " + choice});
    q.choice_lengths.push_back(utf8_length(choice));
  }
  return q;
}

std::int64_t fewshot_draw_count(TaskKind kind, bool pool_is_eval_docs, std::int64_t shots) {
  // fewshot_split == test_split in the harness's yaml: both unset for hellaswag and winogrande.
  const bool same_split = pool_is_eval_docs || kind == TaskKind::HellaSwag || kind == TaskKind::Winogrande;
  return same_split ? shots + 1 : shots;
}

FewshotSampler::FewshotSampler(TaskKind kind, const std::vector<TaskDoc>& pool, bool pool_is_eval_docs,
                               std::int64_t shots, std::int64_t seed)
    : kind_(kind), pool_(pool), shots_(shots), draws_(fewshot_draw_count(kind, pool_is_eval_docs, shots)), rng_(seed) {}

std::vector<const TaskDoc*> FewshotSampler::next(const TaskDoc& doc) {
  if (shots_ <= 0) return {};
  std::vector<const TaskDoc*> drawn;
  if (kind_ == TaskKind::Mmlu) {  // first_n over the subject's documents (one harness task per subject)
    for (const TaskDoc& d : pool_)
      if (d.subject == doc.subject && static_cast<std::int64_t>(drawn.size()) < draws_) drawn.push_back(&d);
    if (static_cast<std::int64_t>(drawn.size()) < draws_)
      fail_expected("--shots",
                    str(shots_, " examples need ", draws_, " few-shot documents of subject '", doc.subject,
                        "', the pool has ", drawn.size()),
                    "a larger few-shot pool (--fewshot-file) or fewer shots");
  } else {
    const auto n = static_cast<std::int64_t>(pool_.size());
    if (draws_ > n)
      fail_expected("--shots", str(shots_, " examples need ", draws_, " few-shot documents, the pool has ", n),
                    "a larger few-shot pool (--fewshot-file) or fewer shots");
    for (std::int64_t i : rng_.sample(n, draws_)) drawn.push_back(&pool_[static_cast<std::size_t>(i)]);
  }
  std::vector<const TaskDoc*> out;
  for (const TaskDoc* d : drawn)
    if (d->source != doc.source && static_cast<std::int64_t>(out.size()) < shots_) out.push_back(d);
  return out;
}

std::int64_t utf8_length(const std::string& text) {
  std::int64_t n = 0;
  for (unsigned char c : text)
    if ((c & 0xC0) != 0x80) ++n;  // count every byte that is not a continuation byte
  return n;
}

}  // namespace minitron
