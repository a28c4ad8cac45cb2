// Documents from text inputs, for tokenizing into shards.
//
// Plain text: a file is one document, or with split_blank_lines each block of lines between
// blank (whitespace-only) lines is one. JSONL (.jsonl or .json): one JSON object per line whose
// string field "text" is a document; blank lines are skipped.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace minitron {

struct TextInputOptions {
  bool split_blank_lines = false;
};

bool is_jsonl_path(const std::filesystem::path& path);

// Blocks separated by one or more blank lines; each block keeps its inner line breaks but not
// the line break that ends its last line. Whitespace-only text gives no block.
std::vector<std::string> split_blank_line_blocks(std::string_view text);

// `source` names the input in errors ("data.jsonl:12: ...").
std::vector<std::string> parse_jsonl_documents(std::string_view text, const std::string& source);

// Reads one input file as documents, choosing JSONL or plain text by extension. Documents that
// are empty or whitespace-only are dropped.
std::vector<std::string> read_documents(const std::filesystem::path& path, const TextInputOptions& options);

}  // namespace minitron
