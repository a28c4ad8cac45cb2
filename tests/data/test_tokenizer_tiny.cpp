// Tokenizer tests that need no external files: tiny tokenizer.json files built here, with
// expected ids worked out by hand from their vocab and merges.
#include <gtest/gtest.h>

#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "data/tokenizer_bytes.h"
#include "data/tokenizer_regex.h"
#include "util/error.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using Ids = std::vector<std::int32_t>;

const char* kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / ("minitron_tok_test_" + std::to_string(::getpid()))) {
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path write(const std::string& name, const std::string& text) const {
    fs::path p = path_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string byte_char(unsigned char b) {
  std::string s;
  append_utf8(s, byte_to_codepoint()[b]);
  return s;
}

// Byte-level ids in this vocab: bytes ordered by their mapped code point, as GPT-2 does:
// '!'..'~' are 0..93, so 'a' (97) is 64; ' ' maps to 'Ġ' (U+0120) and gets id 220.
json byte_level_tokenizer() {
  json vocab = json::object();
  std::vector<std::pair<std::uint32_t, int>> order;
  for (int b = 0; b < 256; ++b) order.emplace_back(byte_to_codepoint()[b], b);
  std::sort(order.begin(), order.end());
  int id = 0;
  for (auto [cp, b] : order) vocab[byte_char(static_cast<unsigned char>(b))] = id++;
  // 256 he, 257 ll, 258 hell, 259 hello, 260 Ġw, 261 or
  json merges = json::array({"h e", "l l", "he ll", "hell o", "Ġ w", "o r"});
  for (std::string t : {"he", "ll", "hell", "hello", "Ġw", "or"}) vocab[t] = id++;
  auto added = [](int id, const std::string& content, bool special, bool lstrip = false, bool rstrip = false) {
    return json{{"id", id},         {"content", content},  {"single_word", false}, {"lstrip", lstrip},
                {"rstrip", rstrip}, {"normalized", false}, {"special", special}};
  };
  return json{
      {"version", "1.0"},
      {"added_tokens", json::array({added(262, "<|begin_of_text|>", true), added(263, "<|end_of_text|>", true),
                                    added(264, "<mask>", true, true, true), added(265, "[[keep]]", false)})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array(
             {{{"type", "Split"},
               {"pattern", {{"Regex", kLlama3Pattern}}},
               {"behavior", "Isolated"},
               {"invert", false}},
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array()},
        {"special_tokens",
         {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {262}}, {"tokens", {"<|begin_of_text|>"}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}}};
}

// SentencePiece-style (Llama 2 layout): <unk> <s> </s>, <0x00>..<0xFF> at 3..258, then
// 259 ▁, 260 a, 261 b, 262 ▁a, 263 ▁ab; merges in the [a, b] pair form.
json sentencepiece_tokenizer() {
  json vocab = json::object();
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  vocab["\xE2\x96\x81"] = 259;
  vocab["a"] = 260;
  vocab["b"] = 261;
  vocab
      ["\xE2\x96\x81"
       "a"] = 262;
  vocab
      ["\xE2\x96\x81"
       "ab"] = 263;
  auto added = [](int id, const std::string& content) {
    return json{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
                {"rstrip", false}, {"normalized", false}, {"special", true}};
  };
  return json{
      {"version", "1.0"},
      {"added_tokens", json::array({added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")})},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         json::array({{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
                      {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array()},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                                  {{"type", "ByteFallback"}},
                                  {{"type", "Fuse"}},
                                  {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", json::array({json::array({"\xE2\x96\x81", "a"}), json::array({"\xE2\x96\x81"
                                                                                 "a",
                                                                                 "b"})})}}}};
}

Tokenizer load_json(const TempDir& dir, const json& j, const std::string& name = "tokenizer.json") {
  return Tokenizer::load(dir.write(name, j.dump()));
}

TEST(TokenizerTiny, ByteLevelHandCheckedIds) {
  TempDir dir;
  Tokenizer tok = load_json(dir, byte_level_tokenizer());
  EXPECT_EQ(tok.vocab_size(), 266);
  EXPECT_EQ(tok.encode("hello"), (Ids{259}));
  // " world": Ġ w o r l d -> Ġw (rank 4), or (rank 5) -> [Ġw, or, l, d]; 'l' = 75, 'd' = 67.
  EXPECT_EQ(tok.encode("hello world"), (Ids{259, 260, 261, 75, 67}));
  // "hellohello" is one pre-token: h e l l o h e l l o -> he, ll twice, hell twice, hello twice.
  EXPECT_EQ(tok.encode("hellohello"), (Ids{259, 259}));
  EXPECT_EQ(tok.encode(" "), (Ids{220}));
  EXPECT_EQ(tok.encode("a\n"), (Ids{64, 198}));  // '\n' maps to 'Ċ' (U+010A), id 188 + 10
  EXPECT_EQ(tok.decode(Ids{259, 260, 261, 75, 67}), "hello world");
}

TEST(TokenizerTiny, SpecialTokensAreNeverSplit) {
  TempDir dir;
  Tokenizer tok = load_json(dir, byte_level_tokenizer());
  EXPECT_EQ(tok.encode("hello<|end_of_text|>hello"), (Ids{259, 263, 259}));
  EXPECT_EQ(tok.encode("<|begin_of_text|><|end_of_text|>"), (Ids{262, 263}));
  // A near-miss is ordinary text, byte by byte ('<' 27, '|' 91, 'e' 68, ...).
  EXPECT_EQ(tok.encode("<|e").size(), 3u);
  // lstrip/rstrip: the spaces beside <mask> are absorbed into it.
  EXPECT_EQ(tok.encode("a <mask> hello"), (Ids{64, 264, 259}));
  // Non-special added tokens are matched too but survive skip_special_tokens.
  EXPECT_EQ(tok.encode("hello[[keep]]"), (Ids{259, 265}));
  EXPECT_EQ(tok.decode(Ids{262, 259, 265, 263}, true), "hello[[keep]]");
  EXPECT_EQ(tok.decode(Ids{262, 259, 263}), "<|begin_of_text|>hello<|end_of_text|>");
  EXPECT_EQ(tok.token_to_id("<|end_of_text|>"), 263);
  EXPECT_EQ(tok.token_to_id("no such token"), std::nullopt);
}

TEST(TokenizerTiny, AddSpecialTokensFollowsTemplate) {
  TempDir dir;
  Tokenizer tok = load_json(dir, byte_level_tokenizer());
  EXPECT_EQ(tok.encode("hello", true), (Ids{262, 259}));
  EXPECT_EQ(tok.encode("", true), (Ids{262}));
  EXPECT_EQ(tok.bos_id(), 262);
  EXPECT_EQ(tok.eos_id(), 263);  // by name: no tokenizer_config.json and no template suffix
}

TEST(TokenizerTiny, ByteLevelRoundTripsArbitraryBytes) {
  TempDir dir;
  Tokenizer tok = load_json(dir, byte_level_tokenizer());
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  for (const std::string& text :
       {all, std::string("\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 family \xE6\x97\xA5\xE6\x9C\xAC"),
        std::string("\x80\x80 \xC3 \xED\xA0\x80 trailing \xF0\x9F"), std::string("tabs\t\tand\r\n\n  spaces   ")}) {
    EXPECT_EQ(tok.decode(tok.encode(text)), text);
  }
}

TEST(TokenizerTiny, ParallelEncodeMatchesSerial) {
  // The pre-token cache is shared by threads; results must not depend on interleaving.
  TempDir dir;
  Tokenizer tok = load_json(dir, byte_level_tokenizer());
  std::string text;
  for (int i = 0; i < 200; ++i) text += "hello world " + std::to_string(i) + " hellohello or\n";
  Ids serial = tok.encode(text);
  std::vector<Ids> results(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int k = 0; k < 5; ++k) results[t] = tok.encode(text);
    });
  for (auto& th : threads) th.join();
  for (const Ids& r : results) EXPECT_EQ(r, serial);
  EXPECT_EQ(tok.decode(serial), text);
}

TEST(TokenizerTiny, SentencePieceStyle) {
  TempDir dir;
  Tokenizer tok = load_json(dir, sentencepiece_tokenizer());
  // "ab a" -> "▁ab▁a": ▁a merges leftmost first, then ▁a b -> [▁ab, ▁a].
  EXPECT_EQ(tok.encode("ab a"), (Ids{263, 262}));
  EXPECT_EQ(tok.encode("ab a", true), (Ids{1, 263, 262}));
  // é is not in the vocab: byte fallback to <0xC3> <0xA9> (3 + 0xC3 = 198, 3 + 0xA9 = 172).
  EXPECT_EQ(tok.encode("a\xC3\xA9"), (Ids{262, 198, 172}));
  EXPECT_EQ(tok.decode(Ids{262, 198, 172}), "a\xC3\xA9");
  EXPECT_EQ(tok.decode(Ids{1, 263, 262}), "<s> ab a");
  EXPECT_EQ(tok.decode(Ids{1, 263, 262}, true), "ab a");
  // Each segment after an added token gets its own ▁ (legacy Prepend normalizer, as HF).
  EXPECT_EQ(tok.encode("<s>a"), (Ids{1, 262}));
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
}

TEST(TokenizerTiny, MetaspacePrependFirst) {
  TempDir dir;
  json j = sentencepiece_tokenizer();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}, {"split", false}};
  j["decoder"] = {
      {"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}, {"split", false}};
  Tokenizer tok = load_json(dir, j);
  EXPECT_EQ(tok.encode("ab a"), (Ids{263, 262}));
  EXPECT_EQ(tok.encode("<s>a"), (Ids{1, 260}));  // not at the start of the text: no ▁
  EXPECT_EQ(tok.decode(Ids{263, 262}), "ab a");
}

TEST(TokenizerTiny, IgnoreMergesEmitsWholeVocabPreTokens) {
  TempDir dir;
  json j = byte_level_tokenizer();
  // "hel" is in the vocab but no merge makes it: with ignore_merges it is emitted whole.
  j["model"]["vocab"]["hel"] = 266;
  Tokenizer plain = load_json(dir, j, "plain.json");
  EXPECT_EQ(plain.encode("hel"), (Ids{256, 75}));
  j["model"]["ignore_merges"] = true;
  Tokenizer ignoring = load_json(dir, j, "ignoring.json");
  EXPECT_EQ(ignoring.encode("hel"), (Ids{266}));
}

TEST(TokenizerTiny, Gpt2ByteLevelPreTokenizer) {
  TempDir dir;
  json j = byte_level_tokenizer();
  j["pre_tokenizer"] = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  Tokenizer tok = load_json(dir, j);
  EXPECT_EQ(tok.encode("hello world"), (Ids{259, 260, 261, 75, 67}));
  j["pre_tokenizer"]["add_prefix_space"] = true;
  Tokenizer prefixed = load_json(dir, j, "prefixed.json");
  EXPECT_EQ(prefixed.encode("or"), (Ids{220, 261}));  // " or": Ġ o r -> Ġ, or
}

// Pre-token boundaries of the Llama 3 regex, worked out by hand from the pattern.
std::vector<std::string> split(const std::string& pattern, const std::string& text) {
  TokenizerRegex regex(pattern, "test");
  std::vector<std::pair<std::size_t, std::size_t>> m;
  regex.find_all(text, m);
  std::vector<std::string> out;
  for (auto [b, e] : m) out.push_back(text.substr(b, e - b));
  return out;
}

using Strings = std::vector<std::string>;

TEST(TokenizerRegex, Llama3PreTokens) {
  EXPECT_EQ(split(kLlama3Pattern, "I'm here"), (Strings{"I", "'m", " here"}));
  EXPECT_EQ(split(kLlama3Pattern, "IT'S they'RE"), (Strings{"IT", "'S", " they", "'RE"}));
  EXPECT_EQ(split(kLlama3Pattern, "1234567"), (Strings{"123", "456", "7"}));
  EXPECT_EQ(split(kLlama3Pattern, "a  b"), (Strings{"a", " ", " b"}));  // \s+(?!\S) leaves one space
  EXPECT_EQ(split(kLlama3Pattern, "a\n\nb"), (Strings{"a", "\n\n", "b"}));
  EXPECT_EQ(split(kLlama3Pattern, "x   \n y"), (Strings{"x", "   \n", " y"}));
  EXPECT_EQ(split(kLlama3Pattern, "end  "), (Strings{"end", "  "}));
  EXPECT_EQ(split(kLlama3Pattern, "a\tb"), (Strings{"a", "\tb"}));  // [^\r\n\p{L}\p{N}]?\p{L}+
  EXPECT_EQ(split(kLlama3Pattern, "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC"),
            (Strings{"caf\xC3\xA9", " \xE6\x97\xA5\xE6\x9C\xAC"}));
  EXPECT_EQ(split(kLlama3Pattern, "hi!!\n"), (Strings{"hi", "!!\n"}));
  EXPECT_EQ(split(kLlama3Pattern, "a \xF0\x9F\x98\x80"), (Strings{"a", " \xF0\x9F\x98\x80"}));
  // Invalid bytes never match; they fall between matches.
  EXPECT_EQ(split(kLlama3Pattern,
                  "ab\xFF"
                  "cd"),
            (Strings{"ab", "cd"}));
}

// Issue 22: ids that nlohmann's get<int32_t>() wrapped (4294967297 became 1, colliding with
// another token), truncated (7.5 became 7) or converted with undefined behaviour (3.3e37) are
// refused, naming the file, the JSON path and the range.
TEST(TokenizerErrors, VocabularyIdsMustBeInt32Integers) {
  TempDir dir;
  for (const char* id : {"4294967297", "7.5", "3.3e37", "-1", "\"7\""}) {
    json j = byte_level_tokenizer();
    std::string text = j.dump();
    const std::string entry = "\"he\":256";
    ASSERT_NE(text.find(entry), std::string::npos);
    text.replace(text.find(entry), entry.size(), std::string("\"he\":") + id);
    const fs::path path = dir.write("tokenizer.json", text);
    std::string message = "no error";
    try {
      Tokenizer::load(path);
    } catch (const Error& e) {
      message = e.what();
    }
    const std::string printed = std::string(id) == "3.3e37" ? "3.3e+37" : id;
    EXPECT_EQ(message,
              path.string() + ": model.vocab.he is " + printed + " (expected an integer from 0 to 2147483647)");
  }
  json j = byte_level_tokenizer();
  j["model"]["vocab"]["&"] = 4294967297ULL;
  const fs::path path = dir.write("tokenizer.json", j.dump());
  try {
    Tokenizer::load(path);
    ADD_FAILURE() << "a vocabulary id of 2^32 + 1 loaded";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), (path.string() + ": model.vocab[\"&\"] is 4294967297 (expected an integer from 0 to "
                                            "2147483647)")
                               .c_str());
  }
}

// An id in range for int32 but beyond any vocabulary would size the id tables (64 GB for 2^31).
TEST(TokenizerErrors, AnIdBeyondAnyVocabularyIsRefused) {
  TempDir dir;
  json j = byte_level_tokenizer();
  j["model"]["vocab"]["&"] = 2000000000;
  const fs::path path = dir.write("tokenizer.json", j.dump());
  try {
    Tokenizer::load(path);
    ADD_FAILURE() << "a vocabulary id of 2e9 loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 2000000000 is beyond any vocabulary"), std::string::npos)
        << e.what();
  }
}

// tokenizer_config.json is read with the same reader: a bos_token of the wrong type is refused.
TEST(TokenizerErrors, TokenizerConfigFieldsAreChecked) {
  TempDir dir;
  dir.write("tokenizer.json", byte_level_tokenizer().dump());
  dir.write("tokenizer_config.json", R"({"bos_token": 262})");
  try {
    Tokenizer::load(dir.path());
    ADD_FAILURE() << "a numeric bos_token loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json: bos_token is 262 (expected a string"),
              std::string::npos)
        << e.what();
  }
}

TEST(TokenizerErrors, BadFilesNameTheProblem) {
  TempDir dir;
  auto message_of = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_of([&] { Tokenizer::load(dir.path() / "missing.json"); }).find("no such file"), std::string::npos);
  EXPECT_NE(message_of([&] { Tokenizer::load(dir.path()); }).find("tokenizer.json"), std::string::npos);
  auto bad = dir.write("bad.json", "{\"model\": {\"type\": \"BPE\", ");
  EXPECT_NE(message_of([&] { Tokenizer::load(bad); }).find("not valid JSON"), std::string::npos);
  for (std::string type : {"WordPiece", "Unigram", "WordLevel"}) {
    json j = byte_level_tokenizer();
    j["model"]["type"] = type;
    auto p = dir.write(type + ".json", j.dump());
    std::string msg = message_of([&] { Tokenizer::load(p); });
    EXPECT_NE(msg.find("model type '" + type + "' is not supported"), std::string::npos) << msg;
  }
  json j = byte_level_tokenizer();
  j["model"]["merges"].push_back("x zz");
  auto p = dir.write("merge.json", j.dump());
  EXPECT_NE(message_of([&] { Tokenizer::load(p); }).find("not in the vocab"), std::string::npos);
  j = byte_level_tokenizer();
  j["normalizer"] = {{"type", "NFKC"}};
  p = dir.write("nfkc.json", j.dump());
  EXPECT_NE(message_of([&] { Tokenizer::load(p); }).find("normalizer type 'NFKC'"), std::string::npos);
  j = byte_level_tokenizer();
  j["model"]["vocab"] = json::array();
  p = dir.write("vocab.json", j.dump());
  EXPECT_NE(message_of([&] { Tokenizer::load(p); }).find("model.vocab"), std::string::npos);
  j = byte_level_tokenizer();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  p = dir.write("regex.json", j.dump());
  EXPECT_NE(message_of([&] { Tokenizer::load(p); }).find("regex does not compile"), std::string::npos);

  Tokenizer tok = load_json(dir, byte_level_tokenizer());
  EXPECT_NE(message_of([&] { tok.decode(Ids{5, 266}); }).find("token id: 266 is out of range"), std::string::npos);
  EXPECT_NE(message_of([&] { tok.decode(Ids{-1}); }).find("out of range"), std::string::npos);
}

}  // namespace
}  // namespace minitron
