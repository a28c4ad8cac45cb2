#include "data/bpe_trainer.h"

#include <algorithm>
#include <queue>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "data/tokenizer_bytes.h"
#include "data/tokenizer_regex.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace {

using ordered_json = nlohmann::ordered_json;

const char* kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

std::string mapped(std::string_view bytes) {
  std::string out;
  for (char c : bytes) append_utf8(out, byte_to_codepoint()[static_cast<unsigned char>(c)]);
  return out;
}

ordered_json added_token(std::int64_t id, const std::string& content) {
  return ordered_json{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
                      {"rstrip", false}, {"normalized", false}, {"special", true}};
}

}  // namespace

struct BpeTrainer::Impl {
  BpeTrainOptions options;
  TokenizerRegex regex{kLlama3Pattern, "BPE trainer pre-tokenizer"};
  std::unordered_map<std::string, std::int64_t> word_counts;
  std::vector<std::pair<std::size_t, std::size_t>> matches;
};

BpeTrainer::BpeTrainer(BpeTrainOptions options) : impl_(std::make_unique<Impl>()) {
  if (options.special_tokens.empty()) fail_expected("BPE trainer", "no special tokens", "at least a BOS token");
  std::int64_t floor = 256 + static_cast<std::int64_t>(options.special_tokens.size());
  if (options.vocab_size < floor)
    fail_expected("--vocab-size", str(options.vocab_size, " is too small"),
                  str("at least ", floor, " (256 bytes + special tokens)"));
  for (const std::string& t : options.special_tokens)
    if (t.empty()) fail_expected("--special-tokens", "an empty token", "non-empty strings");
  impl_->options = std::move(options);
}

BpeTrainer::~BpeTrainer() = default;
BpeTrainer::BpeTrainer(BpeTrainer&&) noexcept = default;
BpeTrainer& BpeTrainer::operator=(BpeTrainer&&) noexcept = default;

void BpeTrainer::add_text(std::string_view text) {
  // Special tokens in the corpus are cut out first (as the encoder does), never learned from.
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t cut = std::string_view::npos, cut_len = 0;
    for (const std::string& t : impl_->options.special_tokens) {
      std::size_t hit = text.find(t, start);
      if (hit < cut) cut = hit, cut_len = t.size();
    }
    std::string_view part = text.substr(start, cut == std::string_view::npos ? std::string_view::npos : cut - start);
    impl_->matches.clear();
    impl_->regex.find_all(part, impl_->matches);
    std::size_t pos = 0;
    for (auto [b, e] : impl_->matches) {
      if (b > pos) ++impl_->word_counts[std::string(part.substr(pos, b - pos))];  // invalid UTF-8 gaps
      ++impl_->word_counts[std::string(part.substr(b, e - b))];
      pos = e;
    }
    if (pos < part.size()) ++impl_->word_counts[std::string(part.substr(pos))];
    if (cut == std::string_view::npos) break;
    start = cut + cut_len;
  }
}

TrainedBpe BpeTrainer::train() const {
  const BpeTrainOptions& options = impl_->options;
  const std::int64_t learn_limit = options.vocab_size - static_cast<std::int64_t>(options.special_tokens.size());

  // Alphabet: all 256 bytes, ordered by their byte-level character (GPT-2's order).
  std::vector<std::pair<std::uint32_t, int>> order;
  for (int b = 0; b < 256; ++b) order.emplace_back(byte_to_codepoint()[b], b);
  std::sort(order.begin(), order.end());
  std::vector<std::string> token_bytes;
  std::array<std::int32_t, 256> byte_id{};
  for (auto [cp, b] : order) {
    byte_id[b] = static_cast<std::int32_t>(token_bytes.size());
    token_bytes.emplace_back(1, static_cast<char>(b));
  }

  // Unique words, sorted so that the result does not depend on hash-map order.
  std::vector<std::pair<std::string, std::int64_t>> sorted(impl_->word_counts.begin(), impl_->word_counts.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::vector<std::int32_t>> words(sorted.size());
  std::vector<std::int64_t> counts(sorted.size());
  std::unordered_map<std::uint64_t, std::int64_t> pair_count;
  std::unordered_map<std::uint64_t, std::vector<std::int32_t>> where;  // may hold stale entries
  for (std::size_t w = 0; w < sorted.size(); ++w) {
    counts[w] = sorted[w].second;
    for (char c : sorted[w].first) words[w].push_back(byte_id[static_cast<unsigned char>(c)]);
    for (std::size_t i = 0; i + 1 < words[w].size(); ++i) {
      std::uint64_t k = pair_key(words[w][i], words[w][i + 1]);
      pair_count[k] += counts[w];
      auto& list = where[k];
      if (list.empty() || list.back() != static_cast<std::int32_t>(w)) list.push_back(static_cast<std::int32_t>(w));
    }
  }

  // Max-heap on (count, then smaller pair ids first); stale entries are re-pushed on pop.
  using Entry = std::pair<std::int64_t, std::uint64_t>;
  auto less = [](const Entry& x, const Entry& y) {
    return x.first != y.first ? x.first < y.first : x.second > y.second;
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(less)> heap(less);
  for (const auto& [k, c] : pair_count) heap.push({c, k});

  std::vector<std::pair<std::int32_t, std::int32_t>> merges;
  std::vector<std::int32_t> merged;
  std::unordered_set<std::uint64_t> touched;
  while (static_cast<std::int64_t>(token_bytes.size()) < learn_limit && !heap.empty()) {
    auto [c, k] = heap.top();
    heap.pop();
    auto it = pair_count.find(k);
    std::int64_t actual = it == pair_count.end() ? 0 : it->second;
    if (actual != c) {
      if (actual > 0) heap.push({actual, k});
      continue;
    }
    if (c < options.min_frequency || c <= 0) break;
    auto a = static_cast<std::int32_t>(k >> 32), b = static_cast<std::int32_t>(k & 0xFFFFFFFFu);
    auto new_id = static_cast<std::int32_t>(token_bytes.size());
    token_bytes.push_back(token_bytes[a] + token_bytes[b]);
    merges.emplace_back(a, b);
    touched.clear();
    std::vector<std::int32_t> affected = std::move(where[k]);
    where.erase(k);
    for (std::int32_t w : affected) {
      std::vector<std::int32_t>& syms = words[w];
      merged.clear();
      bool changed = false;
      for (std::size_t i = 0; i < syms.size();) {
        if (i + 1 < syms.size() && syms[i] == a && syms[i + 1] == b) {
          merged.push_back(new_id);
          i += 2;
          changed = true;
        } else {
          merged.push_back(syms[i++]);
        }
      }
      if (!changed) continue;
      for (std::size_t i = 0; i + 1 < syms.size(); ++i) pair_count[pair_key(syms[i], syms[i + 1])] -= counts[w];
      for (std::size_t i = 0; i + 1 < merged.size(); ++i) {
        std::uint64_t p = pair_key(merged[i], merged[i + 1]);
        pair_count[p] += counts[w];
        if (merged[i] == new_id || merged[i + 1] == new_id) {
          touched.insert(p);
          auto& list = where[p];
          if (list.empty() || list.back() != w) list.push_back(w);
        }
      }
      syms.swap(merged);
    }
    pair_count.erase(k);
    // Sorted so that heap insertion order (and so the tie-breaks) never depends on hashing.
    std::vector<std::uint64_t> fresh(touched.begin(), touched.end());
    std::sort(fresh.begin(), fresh.end());
    for (std::uint64_t p : fresh) heap.push({pair_count[p], p});
  }

  // tokenizer.json in the key order HF `tokenizers` serializes.
  ordered_json vocab = ordered_json::object();
  for (std::size_t id = 0; id < token_bytes.size(); ++id) vocab[mapped(token_bytes[id])] = id;
  ordered_json merge_list = ordered_json::array();
  for (auto [a, b] : merges)
    merge_list.push_back(ordered_json::array({mapped(token_bytes[a]), mapped(token_bytes[b])}));
  ordered_json added = ordered_json::array();
  std::vector<std::int64_t> special_ids;
  for (const std::string& t : options.special_tokens) {
    auto id = static_cast<std::int64_t>(token_bytes.size() + special_ids.size());
    special_ids.push_back(id);
    added.push_back(added_token(id, t));
  }
  const std::string& bos = options.special_tokens[0];
  auto special = [](const std::string& t, int type_id) {
    return ordered_json{{"SpecialToken", {{"id", t}, {"type_id", type_id}}}};
  };
  auto sequence = [](const char* id, int type_id) {
    return ordered_json{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
  };
  ordered_json root;
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  root["added_tokens"] = added;
  root["normalizer"] = nullptr;
  root["pre_tokenizer"] = {{"type", "Sequence"},
                           {"pretokenizers", ordered_json::array({ordered_json{{"type", "Split"},
                                                                               {"pattern", {{"Regex", kLlama3Pattern}}},
                                                                               {"behavior", "Isolated"},
                                                                               {"invert", false}},
                                                                  ordered_json{{"type", "ByteLevel"},
                                                                               {"add_prefix_space", false},
                                                                               {"trim_offsets", true},
                                                                               {"use_regex", false}}})}};
  root["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", ordered_json::array({special(bos, 0), sequence("A", 0)})},
      {"pair", ordered_json::array({special(bos, 0), sequence("A", 0), special(bos, 1), sequence("B", 1)})},
      {"special_tokens",
       {{bos, {{"id", bos}, {"ids", ordered_json::array({special_ids[0]})}, {"tokens", ordered_json::array({bos})}}}}}};
  root["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  root["model"] = {{"type", "BPE"},
                   {"dropout", nullptr},
                   {"unk_token", nullptr},
                   {"continuing_subword_prefix", nullptr},
                   {"end_of_word_suffix", nullptr},
                   {"fuse_unk", false},
                   {"byte_fallback", false},
                   {"ignore_merges", false},
                   {"vocab", vocab},
                   {"merges", merge_list}};

  ordered_json config;
  config["added_tokens_decoder"] = ordered_json::object();
  for (std::size_t i = 0; i < special_ids.size(); ++i)
    config["added_tokens_decoder"][std::to_string(special_ids[i])] = {{"content", options.special_tokens[i]},
                                                                      {"lstrip", false},
                                                                      {"normalized", false},
                                                                      {"rstrip", false},
                                                                      {"single_word", false},
                                                                      {"special", true}};
  config["bos_token"] = bos;
  config["clean_up_tokenization_spaces"] = false;
  config["eos_token"] = options.special_tokens.size() > 1 ? options.special_tokens[1] : bos;
  config["model_input_names"] = ordered_json::array({"input_ids", "attention_mask"});
  config["model_max_length"] = 131072;
  config["tokenizer_class"] = "PreTrainedTokenizerFast";

  TrainedBpe out;
  out.tokenizer_json = root.dump(2) + "\n";
  out.tokenizer_config_json = config.dump(2) + "\n";
  out.vocab_size = static_cast<std::int64_t>(token_bytes.size() + special_ids.size());
  out.merges = static_cast<std::int64_t>(merges.size());
  return out;
}

TrainedBpe train_bpe_files(const std::vector<std::filesystem::path>& inputs, const BpeTrainOptions& options,
                           const std::filesystem::path& dir) {
  if (inputs.empty()) fail_expected("--input", "no files given", "one or more text files");
  BpeTrainer trainer(options);
  for (const auto& path : inputs) {
    MappedFile file(path);
    trainer.add_text(std::string_view(reinterpret_cast<const char*>(file.data()), file.size()));
  }
  TrainedBpe trained = trainer.train();
  std::filesystem::create_directories(dir);
  write_bytes_atomically(dir / "tokenizer.json", trained.tokenizer_json);
  write_bytes_atomically(dir / "tokenizer_config.json", trained.tokenizer_config_json);
  return trained;
}

}  // namespace minitron
