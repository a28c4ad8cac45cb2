#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "data/text_input.h"
#include "tests/data/data_test_util.h"
#include "util/error.h"

namespace minitron {
namespace {

using testing::TempDir;
using Docs = std::vector<std::string>;

TEST(TextInput, BlankLineBlocks) {
  EXPECT_EQ(split_blank_line_blocks("a\nb\n\n\nc\n  \t\nd e\n"), (Docs{"a\nb", "c", "d e"}));
  EXPECT_EQ(split_blank_line_blocks("\n\none"), (Docs{"one"}));
  EXPECT_EQ(split_blank_line_blocks("x\r\n\r\ny\r\n"), (Docs{"x\r", "y\r"}));
  EXPECT_EQ(split_blank_line_blocks("  \n\n"), Docs{});
  EXPECT_EQ(split_blank_line_blocks(""), Docs{});
}

TEST(TextInput, PlainFileIsOneDocumentUnlessSplit) {
  TempDir dir;
  testing::write_text(dir / "a.txt", "first para\nline two\n\nsecond para\n");
  EXPECT_EQ(read_documents(dir / "a.txt", {}), (Docs{"first para\nline two\n\nsecond para\n"}));
  EXPECT_EQ(read_documents(dir / "a.txt", {.split_blank_lines = true}), (Docs{"first para\nline two", "second para"}));
  testing::write_text(dir / "empty.txt", " \n\n");
  EXPECT_EQ(read_documents(dir / "empty.txt", {}), Docs{});
}

TEST(TextInput, Jsonl) {
  TempDir dir;
  EXPECT_TRUE(is_jsonl_path("x.jsonl"));
  EXPECT_TRUE(is_jsonl_path("x.json"));
  EXPECT_FALSE(is_jsonl_path("x.txt"));
  testing::write_text(dir / "d.jsonl", "{\"text\": \"one\\ntwo\", \"id\": 1}\n\n{\"text\": \"three\"}\n");
  // split_blank_lines does not apply to JSONL: each record is one document.
  EXPECT_EQ(read_documents(dir / "d.jsonl", {.split_blank_lines = true}), (Docs{"one\ntwo", "three"}));
}

void expect_jsonl_error(const std::string& text, std::initializer_list<std::string> fragments) {
  try {
    parse_jsonl_documents(text, "in.jsonl");
    ADD_FAILURE() << "no error for: " << text;
  } catch (const Error& e) {
    for (const auto& fragment : fragments)
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what() << " lacks " << fragment;
  }
}

TEST(TextInput, JsonlErrorsNameTheLine) {
  expect_jsonl_error("{\"text\": \"ok\"}\n{\"text\": \"broken\n", {"in.jsonl:2", "not valid JSON"});
  expect_jsonl_error("{\"text\": \"ok\"}\n\n{\"body\": \"x\"}\n", {"in.jsonl:3: text is missing (expected a string)"});
  expect_jsonl_error("{\"text\": 5}\n", {"in.jsonl:1: text is 5 (expected a string)"});
  expect_jsonl_error("[1, 2]\n", {"in.jsonl:1 is [1,2] (expected a JSON object)"});
}

}  // namespace
}  // namespace minitron
