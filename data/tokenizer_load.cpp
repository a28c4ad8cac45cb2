// tokenizer.json -> Tokenizer::Impl: the parts of HF `tokenizers`' format that the BPE
// tokenizers of Llama 2/3, Mistral and GPT-2 use. Anything else fails naming the component.
#include <algorithm>
#include <cstdio>

#include "data/tokenizer_bytes.h"
#include "data/tokenizer_impl.h"
#include "util/checked_json.h"
#include "util/error.h"

namespace minitron {

namespace {

std::string type_of(const JsonField& j) {
  if (!j.is_object() || !j.at("type").is_string()) return "";
  return j.at("type").as_string();
}

bool flag(const JsonField& j, const char* key, bool fallback) {
  std::optional<JsonField> value = j.optional(key);
  return value ? value->as_bool() : fallback;
}

std::string string_or(const JsonField& j, const char* key, const std::string& fallback) {
  std::optional<JsonField> value = j.optional(key);
  return value ? value->as_string() : fallback;
}

// Token ids are int32 everywhere (shards hold them as such).
std::int32_t token_id(const JsonField& j) { return j.as_int<std::int32_t>(0); }

// Escapes a literal for use inside a PCRE2 pattern.
std::string quote_regex(const std::string& literal) {
  std::string out = "\\Q";
  for (std::size_t i = 0; i < literal.size(); ++i) {
    if (literal.compare(i, 2, "\\E") == 0) {
      out += "\\E\\\\E\\Q";
      ++i;
    } else {
      out += literal[i];
    }
  }
  return out + "\\E";
}

const char* kGpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// pattern: {"String": "..."} or {"Regex": "..."}; returns the regex and, for String, the literal.
std::shared_ptr<TokenizerRegex> parse_pattern(const JsonField& pattern, const std::string& what, std::string* literal) {
  if (pattern.has("Regex")) return std::make_shared<TokenizerRegex>(pattern.at("Regex").as_string(), what);
  if (pattern.has("String")) {
    std::string s = pattern.at("String").as_string();
    if (literal) *literal = s;
    return std::make_shared<TokenizerRegex>(quote_regex(s), what);
  }
  pattern.refuse("{\"String\": ...} or {\"Regex\": ...}");
}

void parse_normalizer(const JsonField& j, std::vector<NormalizerStep>& steps, const std::string& what) {
  if (j.is_null()) return;
  std::string type = type_of(j);
  if (type == "Sequence") {
    for (const JsonField& n : j.at("normalizers").as_array()) parse_normalizer(n, steps, what);
  } else if (type == "Prepend") {
    steps.push_back({NormalizerStep::Kind::kPrepend, j.at("prepend").as_string(), "", nullptr});
  } else if (type == "Replace") {
    NormalizerStep step{NormalizerStep::Kind::kReplace, "", j.at("content").as_string(), nullptr};
    if (j.at("pattern").has("String"))
      step.text = j.at("pattern").at("String").as_string();
    else
      step.regex = parse_pattern(j.at("pattern"), what + ": normalizer Replace", nullptr);
    steps.push_back(step);
  } else if (type == "Strip") {
    NormalizerStep step{NormalizerStep::Kind::kStrip, "", "", nullptr};
    step.strip_left = flag(j, "strip_left", false);
    step.strip_right = flag(j, "strip_right", false);
    steps.push_back(step);
  } else {
    fail_expected(what, str("normalizer type '", type, "' is not supported"),
                  "null or Sequence of Prepend, Replace, Strip");
  }
}

SplitBehavior parse_behavior(const JsonField& j, const std::string& what) {
  const std::string& b = j.as_string();
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  fail_expected(what, str("Split behavior '", b, "' is not understood"),
                "Isolated, Removed, MergedWithPrevious, MergedWithNext or Contiguous");
}

void parse_pre_tokenizer(const JsonField& j, std::vector<PreTokenizerStep>& steps, const std::string& what) {
  if (j.is_null()) return;
  std::string type = type_of(j);
  PreTokenizerStep step{};
  if (type == "Sequence") {
    for (const JsonField& p : j.at("pretokenizers").as_array()) parse_pre_tokenizer(p, steps, what);
    return;
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    step.regex = parse_pattern(j.at("pattern"), what + ": pre_tokenizer Split", nullptr);
    step.behavior = parse_behavior(j.at("behavior"), what);
    step.invert = flag(j, "invert", false);
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::kMetaspace;
    step.replacement = string_or(j, "replacement", "\xE2\x96\x81");
    std::string scheme = string_or(j, "prepend_scheme", "");
    if (scheme.empty()) scheme = flag(j, "add_prefix_space", true) ? "always" : "never";
    if (scheme == "always")
      step.prepend_scheme = PreTokenizerStep::Prepend::kAlways;
    else if (scheme == "first")
      step.prepend_scheme = PreTokenizerStep::Prepend::kFirst;
    else if (scheme == "never")
      step.prepend_scheme = PreTokenizerStep::Prepend::kNever;
    else
      fail_expected(what, str("Metaspace prepend_scheme '", scheme, "' is not understood"), "always, first or never");
    step.split = flag(j, "split", true);
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    step.add_prefix_space = flag(j, "add_prefix_space", true);
    if (flag(j, "use_regex", true))
      step.regex = std::make_shared<TokenizerRegex>(kGpt2Pattern, what + ": ByteLevel regex");
  } else {
    fail_expected(what, str("pre_tokenizer type '", type, "' is not supported"),
                  "null, or a Sequence of Split, Metaspace, ByteLevel");
  }
  steps.push_back(step);
}

void parse_decoder(const JsonField& j, std::vector<DecoderStep>& steps, const std::string& what) {
  std::string type = type_of(j);
  DecoderStep step{};
  if (type == "Sequence") {
    for (const JsonField& d : j.at("decoders").as_array()) parse_decoder(d, steps, what);
    return;
  } else if (type == "ByteLevel") {
    step.kind = DecoderStep::Kind::kByteLevel;
  } else if (type == "Replace") {
    step.kind = DecoderStep::Kind::kReplace;
    if (!j.at("pattern").has("String"))
      fail_expected(what, "decoder Replace with a Regex pattern is not supported", "a String pattern");
    step.pattern = j.at("pattern").at("String").as_string();
    step.content = j.at("content").as_string();
  } else if (type == "ByteFallback") {
    step.kind = DecoderStep::Kind::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = DecoderStep::Kind::kFuse;
  } else if (type == "Strip") {
    step.kind = DecoderStep::Kind::kStrip;
    // HF's content is one char; an empty one would strip nothing `start` times over.
    step.content = j.at("content").as_string();
    if (step.content.empty()) j.at("content").refuse("one character");
    step.start = j.optional("start") ? j.at("start").as_int<int>(0) : 0;
    step.stop = j.optional("stop") ? j.at("stop").as_int<int>(0) : 0;
  } else if (type == "Metaspace") {
    step.kind = DecoderStep::Kind::kMetaspace;
    step.content = string_or(j, "replacement", "\xE2\x96\x81");
    std::string scheme = string_or(j, "prepend_scheme", "");
    step.prepend = scheme.empty() ? flag(j, "add_prefix_space", true) : scheme != "never";
  } else {
    fail_expected(what, str("decoder type '", type, "' is not supported"),
                  "a Sequence of ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace");
  }
  steps.push_back(step);
}

// Post-processor -> the ids added before and after a single sequence.
// ImplT is Tokenizer::Impl (a template so that these helpers may fill the private Impl).
template <typename ImplT>
void parse_post_processor(const JsonField& j, ImplT& impl, const std::string& what) {
  if (j.is_null()) return;
  std::string type = type_of(j);
  if (type == "Sequence") {
    for (const JsonField& p : j.at("processors").as_array()) parse_post_processor(p, impl, what);
  } else if (type == "ByteLevel") {
    // Offsets only; ids are unchanged.
  } else if (type == "TemplateProcessing") {
    const JsonField special = j.at("special_tokens");
    bool after_sequence = false;
    for (const JsonField& piece : j.at("single").as_array()) {
      if (piece.is_object() && piece.raw().contains("Sequence")) {
        after_sequence = true;
      } else if (piece.is_object() && piece.raw().contains("SpecialToken")) {
        const std::string& name = piece.at("SpecialToken").at("id").as_string();
        if (!special.has(name))
          fail_expected(what, str("post_processor template names '", name, "' but special_tokens lacks it"),
                        "every template special token listed in special_tokens");
        for (const JsonField& id : special.at(name).at("ids").as_array())
          (after_sequence ? impl.suffix_ids : impl.prefix_ids).push_back(token_id(id));
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    impl.prefix_ids.push_back(token_id(j.at("cls")[1]));
    impl.suffix_ids.push_back(token_id(j.at("sep")[1]));
  } else {
    fail_expected(what, str("post_processor type '", type, "' is not supported"),
                  "null, ByteLevel, TemplateProcessing, or a Sequence of them");
  }
}

template <typename ImplT>
void parse_model(const JsonField& model, ImplT& impl, const std::string& what) {
  std::string type = type_of(model);
  if (type.empty() && model.is_object() && model.raw().contains("merges")) type = "BPE";
  if (type != "BPE") fail_expected(what, str("model type '", type, "' is not supported"), "a BPE model");
  if (model.has("dropout") && model.at("dropout").as_float() > 0)
    fail_expected(what, "BPE dropout is not supported", "dropout null");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!string_or(model, key, "").empty())
      fail_expected(what, str("BPE ", key, " is not supported"), str(key, " null"));
  impl.fuse_unk = flag(model, "fuse_unk", false);
  impl.byte_fallback = flag(model, "byte_fallback", false);
  impl.ignore_merges = flag(model, "ignore_merges", false);

  const JsonField vocab = model.at("vocab");
  if (!vocab.is_object()) vocab.refuse("{token: id, ...}");
  impl.vocab.reserve(vocab.raw().size() + 1024);
  for (const auto& [token, id] : vocab.as_object()) impl.vocab.emplace(token, token_id(id));
  if (std::optional<JsonField> unk_token = model.optional("unk_token")) {
    auto it = impl.vocab.find(unk_token->as_string());
    if (it != impl.vocab.end()) impl.unk_id = it->second;
  }

  const std::vector<JsonField> merges = model.at("merges").as_array();
  impl.merges.reserve(merges.size() * 2);
  std::int32_t rank = 0;
  for (const JsonField& m : merges) {
    std::string left, right;
    if (m.is_string()) {
      const std::string& s = m.as_string();
      std::size_t space = s.find(' ', 1);
      if (space == std::string::npos)
        fail_expected(what, str("merge '", s, "' has no space"), "merges like \"a b\" or [\"a\", \"b\"]");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2) {
      left = m[0].as_string();
      right = m[1].as_string();
    } else {
      m.refuse("merges like \"a b\" or [\"a\", \"b\"]");
    }
    auto l = impl.vocab.find(left), r = impl.vocab.find(right), merged = impl.vocab.find(left + right);
    if (l == impl.vocab.end() || r == impl.vocab.end() || merged == impl.vocab.end())
      fail_expected(what, str("merge '", left, " ", right, "' uses a token that is not in the vocab"),
                    "both parts and their concatenation in model.vocab");
    std::uint64_t key = (static_cast<std::uint64_t>(l->second) << 32) | static_cast<std::uint32_t>(r->second);
    impl.merges.try_emplace(key, MergeRule{rank, merged->second});  // first (lowest) rank wins
    ++rank;
  }
}

// The bytes that the ByteLevel decoder turns a token into: each char mapped back through the
// GPT-2 table, or the token's own UTF-8 when any char is outside it (as HF does).
std::string byte_level_bytes(const std::string& token) {
  static const auto inverse = [] {
    std::unordered_map<std::uint32_t, std::uint8_t> m;
    for (int b = 0; b < 256; ++b) m[byte_to_codepoint()[b]] = static_cast<std::uint8_t>(b);
    return m;
  }();
  std::string out;
  for (std::size_t i = 0; i < token.size();) {
    std::size_t n = utf8_char_length(token.data(), token.size(), i);
    auto c = static_cast<unsigned char>(token[i]);
    std::uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (std::size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(token[i + k]) & 0x3F);
    auto it = inverse.find(cp);
    if (n == 1 && c >= 0x80) it = inverse.end();
    if (it == inverse.end()) return token;
    out += static_cast<char>(it->second);
    i += n;
  }
  return out;
}

}  // namespace

std::string tokenizer_byte_level_bytes(const std::string& token) { return byte_level_bytes(token); }

std::unique_ptr<Tokenizer::Impl> Tokenizer::Impl::from_json_text(const std::string& text, const std::string& what) {
  auto impl = std::make_unique<Impl>();
  const nlohmann::json document = parse_untrusted_json(text, what, "a Hugging Face tokenizer.json");
  const JsonField root(document, what);
  if (!root.has("model")) fail_expected(what, "no \"model\" section", "a Hugging Face tokenizer.json");
  parse_model(root.at("model"), *impl, what);
  // Built before added tokens join `vocab`: ignore_merges looks in the model's vocab only.
  if (root.has("pre_tokenizer") && root.at("pre_tokenizer").raw().dump().find("\"ByteLevel\"") != std::string::npos) {
    impl->byte_vocab.reserve(impl->vocab.size());
    for (const auto& [token, id] : impl->vocab) impl->byte_vocab.emplace(byte_level_bytes(token), id);
  }
  parse_normalizer(root.at("normalizer"), impl->normalizer, what);
  parse_pre_tokenizer(root.at("pre_tokenizer"), impl->pre_tokenizer, what);
  for (std::size_t i = 0; i < impl->pre_tokenizer.size(); ++i)
    if (impl->pre_tokenizer[i].kind == PreTokenizerStep::Kind::kByteLevel) {
      if (i + 1 != impl->pre_tokenizer.size())
        fail_expected(what, "a ByteLevel pre_tokenizer is followed by other pre-tokenizers",
                      "ByteLevel as the last pre-tokenizer");
      impl->byte_level = true;
    }
  if (!root.at("decoder").is_null()) {
    impl->has_decoder = true;
    parse_decoder(root.at("decoder"), impl->decoder, what);
  }

  if (std::optional<JsonField> added_tokens = root.optional("added_tokens")) {
    for (const JsonField& t : added_tokens->as_array()) {
      AddedToken a;
      a.content = t.at("content").as_string();
      a.id = token_id(t.at("id"));
      a.special = flag(t, "special", false);
      a.lstrip = flag(t, "lstrip", false);
      a.rstrip = flag(t, "rstrip", false);
      a.single_word = flag(t, "single_word", false);
      a.normalized = flag(t, "normalized", !a.special);
      if (a.content.empty()) t.at("content").refuse("a non-empty string");
      impl->vocab[a.content] = a.id;
      impl->added.push_back(a);
    }
  }
  parse_post_processor(root.at("post_processor"), *impl, what);

  std::int64_t size = 0;
  for (const auto& [token, id] : impl->vocab) size = std::max<std::int64_t>(size, id + 1);
  // The id tables below are as long as the largest id: a stray 2000000000 must not allocate 64 GB.
  constexpr std::int64_t kLargestVocabulary = std::int64_t{1} << 24;
  if (size > kLargestVocabulary)
    fail_expected(what, str("token id ", size - 1, " is beyond any vocabulary"),
                  str("token ids below ", kLargestVocabulary));
  impl->id_to_token.assign(static_cast<std::size_t>(size), std::string());
  for (const auto& [token, id] : impl->vocab) impl->id_to_token[id] = token;
  // Added tokens own their id even where the model vocab reuses it.
  impl->is_special.assign(static_cast<std::size_t>(size), false);
  for (const AddedToken& a : impl->added) {
    impl->id_to_token[a.id] = a.content;
    if (a.special) impl->is_special[a.id] = true;
  }
  for (std::int32_t id : impl->prefix_ids)
    if (id < 0 || id >= size)
      fail_expected(what, str("post_processor id ", id, " is out of range"), "an id in the vocab");
  for (std::int32_t id : impl->suffix_ids)
    if (id < 0 || id >= size)
      fail_expected(what, str("post_processor id ", id, " is out of range"), "an id in the vocab");

  std::stable_sort(impl->added.begin(), impl->added.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  for (const AddedToken& a : impl->added) impl->added_first_byte[static_cast<unsigned char>(a.content[0])] = true;

  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = impl->vocab.find(std::string_view(name));
    impl->byte_fallback_ids[b] = it == impl->vocab.end() ? -1 : it->second;
  }
  if (impl->byte_level) {
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      append_utf8(ch, byte_to_codepoint()[b]);
      auto it = impl->vocab.find(ch);
      if (it == impl->vocab.end())
        fail_expected(what, str("byte-level vocab lacks the token for byte ", b, " ('", ch, "')"),
                      "all 256 byte tokens in a ByteLevel vocab");
      impl->byte_ids[b] = it->second;
    }
  }
  bool pure_byte_level_decoder = impl->decoder.size() == 1 && impl->decoder[0].kind == DecoderStep::Kind::kByteLevel;
  if (pure_byte_level_decoder) {
    impl->id_bytes.resize(impl->id_to_token.size());
    for (std::size_t id = 0; id < impl->id_to_token.size(); ++id)
      impl->id_bytes[id] = byte_level_bytes(impl->id_to_token[id]);
  }
  return impl;
}

}  // namespace minitron
