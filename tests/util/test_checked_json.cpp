// util/checked_json.h: every reader accepts exactly its type, in range, and every refusal is one
// line naming the file, the JSON path and what was expected.
#include "util/checked_json.h"

#include <gtest/gtest.h>

#include "tests/util/error_test_util.h"

namespace minitron {
namespace {

using nlohmann::json;
using testing::error_of;

TEST(CheckedJson, IntegersMustFitTheirDestination) {
  const json document = json::parse(R"({"a": 4294967297, "b": 7.5, "c": 3.3e37, "d": 4096.0, "e": -3, "f": 2147483647,
                                        "g": 18446744073709551615, "h": -9223372036854775808, "i": true})");
  const JsonField root(document, "f.json");
  EXPECT_EQ(error_of([&] { root.at("a").as_int<std::int32_t>(); }),
            "f.json: a is 4294967297 (expected an integer from -2147483648 to 2147483647)");
  EXPECT_EQ(root.at("a").as_int<std::int64_t>(), 4294967297);
  EXPECT_EQ(error_of([&] { root.at("b").as_int<std::int64_t>(); }),
            "f.json: b is 7.5 (expected an integer from -9223372036854775808 to 9223372036854775807)");
  EXPECT_EQ(error_of([&] { root.at("c").as_int<std::int32_t>(0); }),
            "f.json: c is 3.3e+37 (expected an integer from 0 to 2147483647)");
  EXPECT_EQ(error_of([&] { root.at("c").as_int<std::uint64_t>(); }),
            "f.json: c is 3.3e+37 (expected an integer from 0 to 18446744073709551615)");
  EXPECT_EQ(root.at("d").as_int<int>(), 4096);  // some exporters write sizes as floats
  EXPECT_EQ(root.at("e").as_int<int>(), -3);
  EXPECT_EQ(error_of([&] { root.at("e").as_int<std::uint32_t>(); }),
            "f.json: e is -3 (expected an integer from 0 to 4294967295)");
  EXPECT_EQ(error_of([&] { root.at("e").as_int<int>(0, 10); }), "f.json: e is -3 (expected an integer from 0 to 10)");
  EXPECT_EQ(root.at("f").as_int<std::int32_t>(), 2147483647);
  EXPECT_EQ(root.at("g").as_int<std::uint64_t>(), 18446744073709551615ULL);
  EXPECT_NE(error_of([&] { root.at("g").as_int<std::int64_t>(); }), "");
  EXPECT_EQ(root.at("h").as_int<std::int64_t>(), INT64_MIN);
  EXPECT_EQ(error_of([&] { root.at("i").as_int<int>(); }),
            "f.json: i is true (expected an integer from -2147483648 to 2147483647)");
}

TEST(CheckedJson, ScalarsAreTheirOwnType) {
  const json document = json::parse(R"({"s": "x", "n": 1.5, "b": false, "z": null})");
  const JsonField root(document, "f.json");
  EXPECT_EQ(root.at("s").as_string(), "x");
  EXPECT_EQ(root.at("n").as_float(), 1.5);
  EXPECT_FALSE(root.at("b").as_bool());
  EXPECT_EQ(error_of([&] { root.at("n").as_string(); }), "f.json: n is 1.5 (expected a string)");
  EXPECT_EQ(error_of([&] { root.at("s").as_float(); }), "f.json: s is \"x\" (expected a number)");
  EXPECT_EQ(error_of([&] { root.at("s").as_bool(); }), "f.json: s is \"x\" (expected true or false)");
  EXPECT_EQ(error_of([&] { root.at("z").as_string(); }), "f.json: z is null (expected a string)");
  EXPECT_EQ(error_of([&] { root.at("absent").as_bool(); }), "f.json: absent is missing (expected true or false)");
  EXPECT_FALSE(root.optional("z"));
  EXPECT_FALSE(root.optional("absent"));
  EXPECT_TRUE(root.optional("b"));
  EXPECT_TRUE(root.has("s"));
  EXPECT_FALSE(root.has("z"));
}

TEST(CheckedJson, PathsNameEveryStepDown) {
  const json document = json::parse(R"({"model": {"vocab": {"&": "x", "a_1": 2}, "merges": [["a", 3]]}})");
  const JsonField root(document, "tokenizer.json");
  EXPECT_EQ(error_of([&] { root.at("model").at("vocab").at("&").as_int<int>(); }),
            "tokenizer.json: model.vocab[\"&\"] is \"x\" (expected an integer from -2147483648 to 2147483647)");
  EXPECT_EQ(root.at("model").at("vocab").at("a_1").path(), "model.vocab.a_1");
  EXPECT_EQ(error_of([&] { root.at("model").at("merges")[0][1].as_string(); }),
            "tokenizer.json: model.merges[0][1] is 3 (expected a string)");
  EXPECT_EQ(error_of([&] { root.at("model").at("merges")[1]; }),
            "tokenizer.json: model.merges is [[\"a\",3]] (expected an array of more than 1 elements)");
  EXPECT_EQ(error_of([&] { root.at("model").at("vocab").at("&").at("x"); }),
            "tokenizer.json: model.vocab[\"&\"] is \"x\" (expected an object with \"x\")");
  EXPECT_EQ(error_of([&] { root.at("model").as_array(); }).substr(0, 34), "tokenizer.json: model is {\"merges\"");
  std::vector<std::string> keys;
  for (const auto& [key, value] : root.at("model").at("vocab").as_object()) keys.push_back(value.path());
  EXPECT_EQ(keys, (std::vector<std::string>{"model.vocab[\"&\"]", "model.vocab.a_1"}));
  const JsonField document_itself(document, "f.json");
  EXPECT_EQ(error_of([&] { document_itself.as_array(); }).substr(0, 12), "f.json is {\"");
  EXPECT_EQ(error_of([&] { root.at("model").refuse("3 layers", "4"); }),
            "tokenizer.json: model: 3 layers (expected 4)");
}

TEST(CheckedJson, ExcerptsAreShortAndOneLine) {
  const json document = {{"long", std::string(500, 'x') + "\n"}};
  const std::string message = error_of([&] { JsonField(document, "f.json").at("long").as_int<int>(); });
  EXPECT_LT(message.size(), 160u) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

TEST(CheckedJson, ArraysOfScalars) {
  const json document = json::parse(R"({"ids": [1, 2, 3], "scores": [0.5, 1], "names": ["a", 2]})");
  const JsonField root(document, "f.json");
  EXPECT_EQ(root.at("ids").as_int_array<int>(), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(root.at("scores").as_float_array(), (std::vector<double>{0.5, 1.0}));
  EXPECT_EQ(error_of([&] { root.at("ids").as_int_array<int>(0, 2); }),
            "f.json: ids[2] is 3 (expected an integer from 0 to 2)");
  EXPECT_EQ(error_of([&] { root.at("names").as_string_array(); }), "f.json: names[1] is 2 (expected a string)");
  EXPECT_EQ(root.at("ids").size(), 3u);
}

TEST(CheckedJson, ParsingRefusesBadTextAndDeepNesting) {
  EXPECT_EQ(parse_untrusted_json(R"({"a": [1]})", "f.json", "an object"), json::parse(R"({"a": [1]})"));
  EXPECT_NE(error_of([] { parse_untrusted_json("{\"a\": ", "f.json", "an object"); }).find("f.json: not valid JSON"),
            std::string::npos);
  const std::string deep = std::string(kMaxJsonDepth + 1, '[') + std::string(kMaxJsonDepth + 1, ']');
  EXPECT_EQ(error_of([&] { parse_untrusted_json(deep, "f.json", "an object"); }),
            "f.json: not valid JSON: nested deeper than 256 levels (expected an object)");
  const std::string allowed = std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  EXPECT_NO_THROW(parse_untrusted_json(allowed, "f.json", "an object"));
  // Brackets inside strings are text, not nesting.
  EXPECT_NO_THROW(parse_untrusted_json("[\"" + std::string(1000, '[') + "\\\"\"]", "f.json", "an array"));
}

}  // namespace
}  // namespace minitron
