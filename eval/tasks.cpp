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
    {TaskKind::Gsm8k, "gsm8k"},
    {TaskKind::Gsm8kCot, "gsm8k_cot"},
    {TaskKind::TruthfulQaMc1, "truthfulqa_mc1"},
    {TaskKind::TruthfulQaMc2, "truthfulqa_mc2"},
};
constexpr const char* kKindNames =
    "hellaswag, winogrande, mmlu, arc_easy, arc_challenge, multiple_choice, gsm8k, gsm8k_cot, truthfulqa_mc1 or "
    "truthfulqa_mc2";

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
  fail_expected("--task", str("'", name, "' is not a known task"), kKindNames);
}

const char* task_kind_names() { return kKindNames; }

const char* task_kind_name(TaskKind kind) {
  for (const KindName& k : kKinds)
    if (k.kind == kind) return k.name;
  return "?";
}

bool task_reports_acc_norm(TaskKind kind) {
  switch (kind) {
    case TaskKind::HellaSwag:
    case TaskKind::ArcEasy:
    case TaskKind::ArcChallenge:
    case TaskKind::MultipleChoice: return true;
    default: return false;
  }
}

bool task_is_generative(TaskKind kind) { return kind == TaskKind::Gsm8k || kind == TaskKind::Gsm8kCot; }

std::int64_t task_default_shots(TaskKind kind) {
  if (kind == TaskKind::Gsm8k) return 5;
  if (kind == TaskKind::Gsm8kCot) return 8;
  return 0;
}

double task_version(TaskKind kind) {
  switch (kind) {
    case TaskKind::Gsm8k:  // gsm8k.yaml metadata.version
    case TaskKind::Gsm8kCot: return 3.0;
    case TaskKind::TruthfulQaMc1:
    case TaskKind::TruthfulQaMc2: return 2.0;
    case TaskKind::MultipleChoice: return 0.0;  // this project's layout, no harness yaml
    default:  // hellaswag.yaml, winogrande/default.yaml, arc_easy.yaml, mmlu _default_template_yaml
      return 1.0;
  }
}

const char* const kTruthfulQaPreamble =
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain.";

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
    case TaskKind::Gsm8k:
    case TaskKind::Gsm8kCot: {
      const std::string& answer = string_field("answer");
      if (kind == TaskKind::Gsm8k) {
        out.query = "Question: " + string_field("question") + "\nAnswer:";
        out.target = answer;
      } else {
        out.query = "Q: " + string_field("question") + "\nA:";
        const std::size_t mark = answer.rfind("####");  // answer.split('####')[-1].strip()
        out.target = python_strip(mark == std::string::npos ? answer : answer.substr(mark + 4));
      }
      out.source = std::move(source);
      return out;
    }
    case TaskKind::TruthfulQaMc1:
    case TaskKind::TruthfulQaMc2: {
      const char* field = kind == TaskKind::TruthfulQaMc1 ? "mc1_targets" : "mc2_targets";
      out.query = std::string(kTruthfulQaPreamble) + "\n\nQ: " + string_field("question") + "\nA:";
      const JsonField targets = doc.at(field);
      if (!targets.has("choices") || !targets.has("labels")) targets.refuse("{\"choices\": [...], \"labels\": [...]}");
      out.choices = string_list(targets.at("choices"));
      const JsonField labels = targets.at("labels");
      if (!labels.is_array() || labels.size() != out.choices.size())
        labels.refuse(str("a list of ", out.choices.size(), " 0/1 labels, one per choice"));
      const std::vector<int> values = labels.as_int_array<int>(0, 1);
      const auto first_false = std::find(values.begin(), values.end(), 0);
      if (kind == TaskKind::TruthfulQaMc2 && first_false == values.end())
        labels.refuse("at least one 0 (process_results_mc2 splits the choices at the first false answer)");
      out.true_count = first_false - values.begin();
      out.gold = 0;  // doc_to_target: 0
      break;
    }
  }
  check_gold(out, where);
  out.source = std::move(source);
  return out;
}

namespace {
// gsm8k-cot.yaml's fewshot_config.samples (YAML plain scalars: each line break folds to a space).
const std::vector<TaskDoc>& gsm8k_cot_exemplars() {
  static const std::vector<TaskDoc> exemplars = [] {
    const std::pair<const char*, const char*> samples[] = {
        {"There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
         "there will be 21 trees. How many trees did the grove workers plant today?",
         "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
         "been 21 - 15 = 6. The answer is 6."},
        {"If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
         "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."},
        {"Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
         "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
         "they had 74 - 35 = 39. The answer is 39."},
        {"Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
         "Jason give to Denny?",
         "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
         "The answer is 8."},
        {"Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
         "now?",
         "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
         "The answer is 9."},
        {"There were nine computers in the server room. Five more computers were installed each day, from monday to "
         "thursday. How many computers are now in the server room?",
         "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
         "were added. 9 + 20 is 29. The answer is 29."},
        {"Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
         "balls did he have at the end of wednesday?",
         "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
         "he had 35 - 2 = 33 golf balls. The answer is 33."},
        {"Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
         "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
         "left. 23 - 15 is 8. The answer is 8."},
    };
    std::vector<TaskDoc> docs;
    for (const auto& [question, target] : samples) {
      TaskDoc d;
      d.query = std::string("Q: ") + question + "\nA:";
      d.target = target;
      d.source = {{"question", question}, {"target", target}};
      docs.push_back(std::move(d));
    }
    return docs;
  }();
  return exemplars;
}
}  // namespace

const std::vector<TaskDoc>* builtin_fewshot_pool(TaskKind kind) {
  return kind == TaskKind::Gsm8kCot ? &gsm8k_cot_exemplars() : nullptr;
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

std::string fewshot_question(TaskKind kind, const TaskDoc& doc) {
  if (kind == TaskKind::Winogrande)  // doc_to_text gives the gold index: the gold option's context
    return doc.query + doc.choices[static_cast<std::size_t>(doc.gold)];
  return doc.query;
}

std::string fewshot_answer(TaskKind kind, const TaskDoc& doc) {
  if (kind == TaskKind::Winogrande || task_is_generative(kind)) return doc.target;
  return doc.choices[static_cast<std::size_t>(doc.gold)];
}

std::string fewshot_example(TaskKind kind, const TaskDoc& doc) {
  return fewshot_question(kind, doc) + " " + fewshot_answer(kind, doc);
}

std::string task_description(TaskKind kind, const std::string& subject) {
  if (kind != TaskKind::Mmlu) return {};
  return "The following are multiple choice questions (with answers) about " + replace_all(subject, "_", " ") + ".\n\n";
}

std::string fewshot_prefix(TaskKind kind, const std::string& subject, const std::vector<const TaskDoc*>& shots) {
  std::string prefix = task_description(kind, subject);
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
  // fewshot_split == test_split in the harness's yaml: both unset for hellaswag, winogrande and
  // truthfulqa.
  const bool same_split = pool_is_eval_docs || kind == TaskKind::HellaSwag || kind == TaskKind::Winogrande ||
                          kind == TaskKind::TruthfulQaMc1 || kind == TaskKind::TruthfulQaMc2;
  return same_split ? shots + 1 : shots;
}

FewshotSampler::FewshotSampler(TaskKind kind, const std::vector<TaskDoc>& pool, bool pool_is_eval_docs,
                               std::int64_t shots, std::int64_t seed)
    : kind_(kind), pool_(pool), shots_(shots), draws_(fewshot_draw_count(kind, pool_is_eval_docs, shots)), rng_(seed) {}

std::vector<const TaskDoc*> FewshotSampler::next(const TaskDoc& doc) {
  if (shots_ <= 0) return {};
  std::vector<const TaskDoc*> drawn;
  if (kind_ == TaskKind::Mmlu || kind_ == TaskKind::Gsm8kCot) {
    // first_n; mmlu over the subject's documents (one harness task per subject)
    for (const TaskDoc& d : pool_)
      if (d.subject == doc.subject && static_cast<std::int64_t>(drawn.size()) < draws_) drawn.push_back(&d);
    if (static_cast<std::int64_t>(drawn.size()) < draws_)
      fail_expected("--shots",
                    kind_ == TaskKind::Mmlu ? str(shots_, " examples need ", draws_, " few-shot documents of subject '",
                                                  doc.subject, "', the pool has ", drawn.size())
                                            : str(shots_, " examples need ", draws_, " few-shot documents, ",
                                                  task_kind_name(kind_), " has ", drawn.size(), " fixed exemplars"),
                    kind_ == TaskKind::Mmlu ? "a larger few-shot pool (--fewshot-file) or fewer shots"
                                            : "at most 8 shots (gsm8k-cot.yaml's fewshot_config.samples)");
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
