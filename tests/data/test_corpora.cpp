// The embedded corpora exist, decompress, and have the shape data/README.md promises.
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "data/text_input.h"

namespace {

std::string decompress(const std::string& name) {
  const std::string command = "xz -dc '" MINITRON_SOURCE_DIR "/data/corpora/" + name + ".txt.xz'";
  std::FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return {};
  std::string text;
  char buffer[1 << 16];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) text.append(buffer, n);
  EXPECT_EQ(::pclose(pipe), 0) << command;
  return text;
}

bool valid_utf8(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    i += n;
  }
  return true;
}

TEST(Corpora, KingJamesBible) {
  const std::string text = decompress("kjv");
  EXPECT_EQ(text.size(), 4234844u);  // data/README.md
  EXPECT_EQ(text.rfind("Genesis 1\n1 In the beginning God created the heaven and the earth.\n", 0), 0u);
  EXPECT_NE(text.find("Revelation 22\n"), std::string::npos);
  EXPECT_TRUE(valid_utf8(text));
  EXPECT_EQ(minitron::split_blank_line_blocks(text).size(), 1189u);  // chapters of the KJV
}

TEST(Corpora, JaneAusten) {
  const std::string text = decompress("austen");
  EXPECT_EQ(text.size(), 4022322u);  // data/README.md
  EXPECT_EQ(text.rfind("SENSE AND SENSIBILITY\n\n", 0), 0u);
  for (const char* title : {"PRIDE AND PREJUDICE", "MANSFIELD PARK", "EMMA", "NORTHANGER ABBEY", "Persuasion"})
    EXPECT_NE(text.find(std::string(title) + "\n"), std::string::npos) << title;
  EXPECT_EQ(text.find("Gutenberg"), std::string::npos);
  EXPECT_TRUE(valid_utf8(text));
  EXPECT_GT(minitron::split_blank_line_blocks(text).size(), 10000u);
}

}  // namespace
