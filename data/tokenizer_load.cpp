// tokenizer.json -> Tokenizer::Impl: the parts of HF `tokenizers`' format that the BPE
// tokenizers of Llama 2/3, Mistral and GPT-2 use. Anything else fails naming the component.
#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "data/tokenizer_bytes.h"
#include "data/tokenizer_impl.h"
#include "util/error.h"

namespace minitron {

namespace {

using nlohmann::json;

std::string type_of(const json& j) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) return "";
  return j["type"].get<std::string>();
}

bool flag(const json& j, const char* key, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  return j[key].get<bool>();
}

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

const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// pattern: {"String": "..."} or {"Regex": "..."}; returns the regex and, for String, the literal.
std::shared_ptr<TokenizerRegex> parse_pattern(const json& pattern, const std::string& what,
                                              std::string* literal) {
  if (pattern.contains("Regex"))
    return std::make_shared<TokenizerRegex>(pattern["Regex"].get<std::string>(), what);
  if (pattern.contains("String")) {
    std::string s = pattern["String"].get<std::string>();
    if (literal) *literal = s;
    return std::make_shared<TokenizerRegex>(quote_regex(s), what);
  }
  fail_expected(what, str("pattern ", pattern.dump(), " is not understood"),
                "{\"String\": ...} or {\"Regex\": ...}");
}

void parse_normalizer(const json& j, std::vector<NormalizerStep>& steps, const std::string& what) {
  if (j.is_null()) return;
  std::string type = type_of(j);
  if (type == "Sequence") {
    for (const json& n : j.at("normalizers")) parse_normalizer(n, steps, what);
  } else if (type == "Prepend") {
    steps.push_back({NormalizerStep::Kind::kPrepend, j.at("prepend").get<std::string>(), "", nullptr});
  } else if (type == "Replace") {
    NormalizerStep step{NormalizerStep::Kind::kReplace, "", j.at("content").get<std::string>(), nullptr};
    if (j.at("pattern").contains("String"))
      step.text = j["pattern"]["String"].get<std::string>();
    else
      step.regex = parse_pattern(j["pattern"], what + ": normalizer Replace", nullptr);
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

SplitBehavior parse_behavior(const json& j, const std::string& what) {
  std::string b = j.get<std::string>();
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  fail_expected(what, str("Split behavior '", b, "' is not understood"),
                "Isolated, Removed, MergedWithPrevious, MergedWithNext or Contiguous");
}

void parse_pre_tokenizer(const json& j, std::vector<PreTokenizerStep>& steps, const std::string& what) {
  if (j.is_null()) return;
  std::string type = type_of(j);
  PreTokenizerStep step{};
  if (type == "Sequence") {
    for (const json& p : j.at("pretokenizers")) parse_pre_tokenizer(p, steps, what);
    return;
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    step.regex = parse_pattern(j.at("pattern"), what + ": pre_tokenizer Split", nullptr);
    step.behavior = parse_behavior(j.at("behavior"), what);
    step.invert = flag(j, "invert", false);
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::kMetaspace;
    step.replacement = j.value("replacement", std::string("\xE2\x96\x81"));
    std::string scheme = j.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = flag(j, "add_prefix_space", true) ? "always" : "never";
    if (scheme == "always") step.prepend_scheme = PreTokenizerStep::Prepend::kAlways;
    else if (scheme == "first") step.prepend_scheme = PreTokenizerStep::Prepend::kFirst;
    else if (scheme == "never") step.prepend_scheme = PreTokenizerStep::Prepend::kNever;
    else fail_expected(what, str("Metaspace prepend_scheme '", scheme, "' is not understood"),
                       "always, first or never");
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

void parse_decoder(const json& j, std::vector<DecoderStep>& steps, const std::string& what) {
  std::string type = type_of(j);
  DecoderStep step{};
  if (type == "Sequence") {
    for (const json& d : j.at("decoders")) parse_decoder(d, steps, what);
    return;
  } else if (type == "ByteLevel") {
    step.kind = DecoderStep::Kind::kByteLevel;
  } else if (type == "Replace") {
    step.kind = DecoderStep::Kind::kReplace;
    if (!j.at("pattern").contains("String"))
      fail_expected(what, "decoder Replace with a Regex pattern is not supported", "a String pattern");
    step.pattern = j["pattern"]["String"].get<std::string>();
    step.content = j.at("content").get<std::string>();
  } else if (type == "ByteFallback") {
    step.kind = DecoderStep::Kind::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = DecoderStep::Kind::kFuse;
  } else if (type == "Strip") {
    step.kind = DecoderStep::Kind::kStrip;
    step.content = j.at("content").get<std::string>();
    step.start = j.value("start", 0);
    step.stop = j.value("stop", 0);
  } else if (type == "Metaspace") {
    step.kind = DecoderStep::Kind::kMetaspace;
    step.content = j.value("replacement", std::string("\xE2\x96\x81"));
    std::string scheme = j.value("prepend_scheme", std::string());
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
void parse_post_processor(const json& j, ImplT& impl, const std::string& what) {
  if (j.is_null()) return;
  std::string type = type_of(j);
  if (type == "Sequence") {
    for (const json& p : j.at("processors")) parse_post_processor(p, impl, what);
  } else if (type == "ByteLevel") {
    // Offsets only; ids are unchanged.
  } else if (type == "TemplateProcessing") {
    const json& special = j.at("special_tokens");
    bool after_sequence = false;
    for (const json& piece : j.at("single")) {
      if (piece.contains("Sequence")) {
        after_sequence = true;
      } else if (piece.contains("SpecialToken")) {
        std::string name = piece["SpecialToken"].at("id").get<std::string>();
        if (!special.contains(name))
          fail_expected(what, str("post_processor template names '", name, "' but special_tokens lacks it"),
                        "every template special token listed in special_tokens");
        for (const json& id : special[name].at("ids"))
          (after_sequence ? impl.suffix_ids : impl.prefix_ids).push_back(id.get<std::int32_t>());
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    impl.prefix_ids.push_back(j.at("cls").at(1).get<std::int32_t>());
    impl.suffix_ids.push_back(j.at("sep").at(1).get<std::int32_t>());
  } else {
    fail_expected(what, str("post_processor type '", type, "' is not supported"),
                  "null, ByteLevel, TemplateProcessing, or a Sequence of them");
  }
}

template <typename ImplT>
void parse_model(const json& model, ImplT& impl, const std::string& what) {
  std::string type = type_of(model);
  if (type.empty() && model.contains("merges")) type = "BPE";
  if (type != "BPE")
    fail_expected(what, str("model type '", type, "' is not supported"), "a BPE model");
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() > 0)
    fail_expected(what, "BPE dropout is not supported", "dropout null");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && !model[key].is_null() && !model[key].get<std::string>().empty())
      fail_expected(what, str("BPE ", key, " is not supported"), str(key, " null"));
  impl.fuse_unk = flag(model, "fuse_unk", false);
  impl.byte_fallback = flag(model, "byte_fallback", false);
  impl.ignore_merges = flag(model, "ignore_merges", false);

  const json& vocab = model.at("vocab");
  if (!vocab.is_object()) fail_expected(what, "model.vocab is not an object", "{token: id, ...}");
  impl.vocab.reserve(vocab.size() + 1024);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    std::int32_t id = it.value().get<std::int32_t>();
    if (id < 0) fail_expected(what, str("token '", it.key(), "' has negative id ", id), "ids >= 0");
    impl.vocab.emplace(it.key(), id);
  }
  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    auto it = impl.vocab.find(model["unk_token"].get<std::string>());
    if (it != impl.vocab.end()) impl.unk_id = it->second;
  }

  const json& merges = model.at("merges");
  impl.merges.reserve(merges.size() * 2);
  std::int32_t rank = 0;
  for (const json& m : merges) {
    std::string left, right;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      std::size_t space = s.find(' ', 1);
      if (space == std::string::npos)
        fail_expected(what, str("merge '", s, "' has no space"), "merges like \"a b\" or [\"a\", \"b\"]");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      fail_expected(what, str("merge ", m.dump(), " is not understood"),
                    "merges like \"a b\" or [\"a\", \"b\"]");
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

std::unique_ptr<Tokenizer::Impl> Tokenizer::Impl::from_json_text(const std::string& text,
                                                                 const std::string& what) {
  auto impl = std::make_unique<Impl>();
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {
    fail_expected(what, str("not valid JSON: ", e.what()), "a Hugging Face tokenizer.json");
  }
  try {
    if (!root.is_object() || !root.contains("model"))
      fail_expected(what, "no \"model\" section", "a Hugging Face tokenizer.json");
    parse_model(root["model"], *impl, what);
    // Built before added tokens join `vocab`: ignore_merges looks in the model's vocab only.
    if (root.contains("pre_tokenizer") && root["pre_tokenizer"].dump().find("\"ByteLevel\"") != std::string::npos) {
      impl->byte_vocab.reserve(impl->vocab.size());
      for (const auto& [token, id] : impl->vocab) impl->byte_vocab.emplace(byte_level_bytes(token), id);
    }
    parse_normalizer(root.value("normalizer", json()), impl->normalizer, what);
    parse_pre_tokenizer(root.value("pre_tokenizer", json()), impl->pre_tokenizer, what);
    for (std::size_t i = 0; i < impl->pre_tokenizer.size(); ++i)
      if (impl->pre_tokenizer[i].kind == PreTokenizerStep::Kind::kByteLevel) {
        if (i + 1 != impl->pre_tokenizer.size())
          fail_expected(what, "a ByteLevel pre_tokenizer is followed by other pre-tokenizers",
                        "ByteLevel as the last pre-tokenizer");
        impl->byte_level = true;
      }
    json decoder = root.value("decoder", json());
    if (!decoder.is_null()) {
      impl->has_decoder = true;
      parse_decoder(decoder, impl->decoder, what);
    }

    if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
      for (const json& t : root["added_tokens"]) {
        AddedToken a;
        a.content = t.at("content").get<std::string>();
        a.id = t.at("id").get<std::int32_t>();
        a.special = flag(t, "special", false);
        a.lstrip = flag(t, "lstrip", false);
        a.rstrip = flag(t, "rstrip", false);
        a.single_word = flag(t, "single_word", false);
        a.normalized = flag(t, "normalized", !a.special);
        if (a.content.empty() || a.id < 0)
          fail_expected(what, str("added token ", t.dump(), " is invalid"), "non-empty content, id >= 0");
        impl->vocab[a.content] = a.id;
        impl->added.push_back(a);
      }
    }
    parse_post_processor(root.value("post_processor", json()), *impl, what);
  } catch (const json::exception& e) {
    fail_expected(what, str("unexpected structure: ", e.what()), "a Hugging Face tokenizer.json");
  }

  std::int64_t size = 0;
  for (const auto& [token, id] : impl->vocab) size = std::max<std::int64_t>(size, id + 1);
  impl->id_to_token.assign(static_cast<std::size_t>(size), std::string());
  for (const auto& [token, id] : impl->vocab) impl->id_to_token[id] = token;
  // Added tokens own their id even where the model vocab reuses it.
  impl->is_special.assign(static_cast<std::size_t>(size), false);
  for (const AddedToken& a : impl->added) {
    impl->id_to_token[a.id] = a.content;
    if (a.special) impl->is_special[a.id] = true;
  }
  for (std::int32_t id : impl->prefix_ids)
    if (id < 0 || id >= size) fail_expected(what, str("post_processor id ", id, " is out of range"), "an id in the vocab");
  for (std::int32_t id : impl->suffix_ids)
    if (id < 0 || id >= size) fail_expected(what, str("post_processor id ", id, " is out of range"), "an id in the vocab");

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
  bool pure_byte_level_decoder =
      impl->decoder.size() == 1 && impl->decoder[0].kind == DecoderStep::Kind::kByteLevel;
  if (pure_byte_level_decoder) {
    impl->id_bytes.resize(impl->id_to_token.size());
    for (std::size_t id = 0; id < impl->id_to_token.size(); ++id)
      impl->id_bytes[id] = byte_level_bytes(impl->id_to_token[id]);
  }
  return impl;
}

}  // namespace minitron
