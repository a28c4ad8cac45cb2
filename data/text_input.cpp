#include "data/text_input.h"

#include "util/checked_json.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace fs = std::filesystem;

bool is_jsonl_path(const fs::path& path) {
  const std::string ext = path.extension().string();
  return ext == ".jsonl" || ext == ".json";
}

static bool is_blank(std::string_view line) { return line.find_first_not_of(" \t\r\f\v") == std::string_view::npos; }

std::vector<std::string> split_blank_line_blocks(std::string_view text) {
  std::vector<std::string> blocks;
  std::size_t block_begin = std::string_view::npos, block_end = 0, pos = 0;
  while (pos < text.size()) {
    std::size_t eol = text.find('\n', pos);
    const std::size_t line_end = eol == std::string_view::npos ? text.size() : eol;
    const std::string_view line = text.substr(pos, line_end - pos);
    if (is_blank(line)) {
      if (block_begin != std::string_view::npos) blocks.emplace_back(text.substr(block_begin, block_end - block_begin));
      block_begin = std::string_view::npos;
    } else {
      if (block_begin == std::string_view::npos) block_begin = pos;
      block_end = line_end;
    }
    pos = eol == std::string_view::npos ? text.size() : eol + 1;
  }
  if (block_begin != std::string_view::npos) blocks.emplace_back(text.substr(block_begin, block_end - block_begin));
  return blocks;
}

std::vector<std::string> parse_jsonl_documents(std::string_view text, const std::string& source) {
  std::vector<std::string> documents;
  std::size_t pos = 0;
  std::int64_t line_number = 0;
  while (pos < text.size()) {
    ++line_number;
    std::size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    const std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (is_blank(line)) continue;
    const std::string where = str(source, ":", line_number);
    const nlohmann::json record = parse_untrusted_json(line, where, "one JSON object per line");
    const JsonField document(record, where);
    if (!document.is_object()) document.refuse("a JSON object");
    documents.push_back(document.at("text").as_string());
  }
  return documents;
}

std::vector<std::string> read_documents(const fs::path& path, const TextInputOptions& options) {
  const std::string text = read_text_file(path);
  std::vector<std::string> documents;
  if (is_jsonl_path(path)) {
    documents = parse_jsonl_documents(text, path.string());
  } else if (options.split_blank_lines) {
    return split_blank_line_blocks(text);
  } else {
    documents.push_back(text);
  }
  std::erase_if(documents,
                [](const std::string& d) { return d.find_first_not_of(" \t\r\n\f\v") == std::string::npos; });
  return documents;
}

}  // namespace minitron
