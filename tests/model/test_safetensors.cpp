#include "model/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "core/bf16.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::uint16_t bits16(float f) { return float_to_bf16(f); }
float from_bits(std::uint32_t b) { return std::bit_cast<float>(b); }

// ------------------------------------------------------------------------------------- bf16

TEST(Bf16, RoundToNearestEven) {
  EXPECT_EQ(bits16(1.0f), 0x3F80);
  EXPECT_EQ(bits16(from_bits(0x3F807FFF)), 0x3F80);  // just below half: down
  EXPECT_EQ(bits16(from_bits(0x3F808000)), 0x3F80);  // exact half, even below: down
  EXPECT_EQ(bits16(from_bits(0x3F808001)), 0x3F81);  // just above half: up
  EXPECT_EQ(bits16(from_bits(0x3F818000)), 0x3F82);  // exact half, odd below: up to even
  EXPECT_EQ(bits16(from_bits(0xBF818000)), 0xBF82);  // sign does not change the rule
  EXPECT_EQ(bits16(-0.0f), 0x8000);
  EXPECT_EQ(bits16(from_bits(0x00008000)), 0x0000);  // subnormal tie to even
  EXPECT_EQ(bits16(from_bits(0x00018000)), 0x0002);
  EXPECT_EQ(bits16(from_bits(0x7F7FFFFF)), 0x7F80);  // FLT_MAX rounds up to +inf
  EXPECT_EQ(bits16(from_bits(0x7F7F7FFF)), 0x7F7F);  // largest value that stays finite
  EXPECT_EQ(bits16(INFINITY), 0x7F80);
  EXPECT_EQ(bits16(-INFINITY), 0xFF80);
}

TEST(Bf16, NanStaysNan) {
  for (std::uint32_t nan : {0x7F800001u, 0x7FC00000u, 0xFF800001u, 0x7FFFFFFFu, 0x7F80FFFFu}) {
    std::uint16_t b = bits16(from_bits(nan));
    EXPECT_TRUE(std::isnan(bf16_to_float(b))) << std::hex << nan;
    EXPECT_EQ(b & 0x8000, (nan >> 16) & 0x8000) << "sign kept";
  }
  EXPECT_EQ(bf16_to_float(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_float(0xC040), -3.0f);
  EXPECT_EQ(round_to_bf16(1.0f + 1.0f / 512), 1.0f);  // 2^-9 is half a bf16 ulp at 1: tie to even
}

TEST(Fp16, ToFloat) {
  EXPECT_EQ(fp16_to_float(0x3C00), 1.0f);
  EXPECT_EQ(fp16_to_float(0xC000), -2.0f);
  EXPECT_EQ(fp16_to_float(0x7BFF), 65504.0f);
  EXPECT_EQ(fp16_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_float(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(fp16_to_float(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(fp16_to_float(0x3555), 0.333251953125f);  // 2^-2 * (1 + 0x155 / 1024)
  EXPECT_EQ(fp16_to_float(0x7C00), INFINITY);
  EXPECT_EQ(fp16_to_float(0xFC00), -INFINITY);
  EXPECT_TRUE(std::isnan(fp16_to_float(0x7E00)));
  EXPECT_TRUE(std::isnan(fp16_to_float(0x7C01)));
  EXPECT_TRUE(std::signbit(fp16_to_float(0x8000)));
}

// ------------------------------------------------------------------------------- file tests

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           str("minitron_st_", ::getpid(), "_", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes a file by hand (not with the writer under test): length, header text, data.
  fs::path raw_file(const std::string& name, const std::string& header, const std::string& data,
                    std::int64_t length_override = -1) {
    std::string bytes;
    std::uint64_t n = length_override >= 0 ? static_cast<std::uint64_t>(length_override) : header.size();
    for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    bytes += header + data;
    write_bytes_atomically(dir_ / name, bytes);
    return dir_ / name;
  }

  // Expects opening (and reading every tensor of) the file to throw an Error mentioning needle.
  void expect_error(const fs::path& path, const std::string& needle) {
    try {
      SafetensorsFile f(path);
      for (const auto& t : f.tensors()) {
        std::vector<float> out(static_cast<std::size_t>(t.numel));
        f.read_f32(t, out);
      }
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }

  fs::path dir_;
};

std::vector<float> test_values(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// The nearest bf16 by comparing distances in double: independent of the bit trick in bf16.h.
float independent_bf16(float x) {
  std::uint32_t b = std::bit_cast<std::uint32_t>(x);
  float low = std::bit_cast<float>(b & 0xFFFF0000u);
  float high = std::bit_cast<float>((b & 0xFFFF0000u) + 0x10000u);
  double dl = std::fabs(static_cast<double>(x) - low), dh = std::fabs(static_cast<double>(high) - x);
  if (dl < dh) return low;
  if (dh < dl) return high;
  return ((b >> 16) & 1u) ? high : low;
}

TEST_F(SafetensorsTest, F32RoundTripIsExact) {
  std::vector<float> a = test_values(12, 1), b = test_values(35, 2);
  a[3] = -0.0f;
  a[4] = INFINITY;
  std::vector<SafetensorsEntry> entries = {
      {"a", {3, 4}, a.data()}, {"b.weight", {5, 7}, b.data()}, {"empty", {0, 4}, nullptr}, {"scalar", {}, a.data()}};
  write_safetensors_file(dir_ / "x.safetensors", entries, SafetensorsDType::F32);
  SafetensorsFile f(dir_ / "x.safetensors");
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.at("a").shape, (std::vector<std::int64_t>{3, 4}));
  EXPECT_EQ(f.at("a").dtype, SafetensorsDType::F32);
  EXPECT_EQ(f.at("empty").numel, 0);
  EXPECT_EQ(f.at("scalar").numel, 1);
  std::vector<float> ra(12), rb(35), rs(1);
  f.read_f32("a", ra);
  f.read_f32("b.weight", rb);
  f.read_f32("scalar", rs);
  EXPECT_EQ(0, std::memcmp(ra.data(), a.data(), 12 * 4));
  EXPECT_EQ(0, std::memcmp(rb.data(), b.data(), 35 * 4));
  EXPECT_EQ(rs[0], a[0]);
  EXPECT_EQ(f.raw(f.at("b.weight")).size(), 35u * 4);
  std::vector<float> wrong(11);
  EXPECT_THROW(f.read_f32("a", wrong), Error);
  EXPECT_THROW(f.at("nope"), Error);

  // Layout: 8 + N is a multiple of 8, tensors contiguous in the given order.
  std::string bytes = read_text_file(dir_ / "x.safetensors");
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + (12 + 35 + 1) * 4);
  json header = json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["__metadata__"]["format"], "pt");
  EXPECT_EQ(header["a"]["data_offsets"], json::array({0, 48}));
  EXPECT_EQ(header["b.weight"]["data_offsets"], json::array({48, 188}));
  EXPECT_EQ(header["empty"]["data_offsets"], json::array({188, 188}));
}

// A rank of a sharded optimizer reads its part of each state vector (train/trainer.cpp).
TEST_F(SafetensorsTest, ReadsARangeOfATensor) {
  const std::vector<float> a = test_values(7, 3), b = test_values(40, 4);
  std::vector<SafetensorsEntry> entries = {{"a", {7}, a.data()}, {"b", {5, 8}, b.data()}};
  for (SafetensorsDType dtype : {SafetensorsDType::F32, SafetensorsDType::BF16}) {
    write_safetensors_file(dir_ / "r.safetensors", entries, dtype);
    SafetensorsFile f(dir_ / "r.safetensors");
    std::vector<float> whole(40), part(13);
    f.read_f32("b", whole);
    f.read_f32_range("b", 21, part);  // elements 21..33 of the flattened [5, 8] tensor
    for (std::size_t i = 0; i < part.size(); ++i) EXPECT_EQ(part[i], whole[21 + i]) << i;
    if (dtype == SafetensorsDType::F32) {
      EXPECT_EQ(part[0], b[21]);
    }
    std::vector<float> tail(3), none;
    f.read_f32_range("b", 37, tail);
    EXPECT_EQ(tail[2], whole[39]);
    f.read_f32_range("b", 40, none);                       // an empty range at the end, as an empty rank's part
    EXPECT_THROW(f.read_f32_range("b", 38, tail), Error);  // 38..41 runs past 40
    EXPECT_THROW(f.read_f32_range("b", -1, tail), Error);
    try {
      f.read_f32_range("a", 5, tail);
      ADD_FAILURE() << "a range past the end was read";
    } catch (const Error& e) {
      EXPECT_NE(
          std::string(e.what()).find("tensor 'a': elements 5 to 8 asked of 7 (expected a range inside the tensor)"),
          std::string::npos)
          << e.what();
    }
  }
}

TEST_F(SafetensorsTest, Bf16MatchesIndependentRounding) {
  std::vector<float> v = test_values(4096, 3);
  v[0] = 1.0f + 1.0f / 256 + 1.0f / 512;  // a tie
  v[1] = 3.0e38f;
  v[2] = 1e-40f;  // subnormal
  std::vector<SafetensorsEntry> entries = {{"w", {64, 64}, v.data()}};
  write_safetensors_file(dir_ / "b.safetensors", entries, SafetensorsDType::BF16);
  SafetensorsFile f(dir_ / "b.safetensors");
  EXPECT_EQ(f.at("w").dtype, SafetensorsDType::BF16);
  EXPECT_EQ(f.raw(f.at("w")).size(), 4096u * 2);
  std::vector<float> r(4096);
  f.read_f32("w", r);
  for (std::size_t i = 0; i < v.size(); ++i) ASSERT_EQ(r[i], independent_bf16(v[i])) << i << " " << v[i];
}

TEST_F(SafetensorsTest, ReadsF16AndHandWrittenFiles) {
  // Hand-made file: F16 [1, -2] at offset 0, BF16 [1.5] after it, keys in another order.
  std::string data;
  for (std::uint16_t h : {std::uint16_t{0x3C00}, std::uint16_t{0xC000}, std::uint16_t{0x3FC0}})
    data.append(reinterpret_cast<const char*>(&h), 2);
  auto path = raw_file(
      "h.safetensors",
      R"({"y":{"data_offsets":[4,6],"shape":[1],"dtype":"BF16"},"x":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})",
      data);
  SafetensorsFile f(path);
  std::vector<float> x(2), y(1);
  f.read_f32("x", x);
  f.read_f32("y", y);
  EXPECT_EQ(x, (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ(y[0], 1.5f);
  EXPECT_TRUE(f.metadata().empty());
}

TEST_F(SafetensorsTest, CorruptionGivesErrors) {
  const std::string good = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data(8, '\0');
  expect_error(raw_file("empty", "", ""), "not valid JSON");  // 8 bytes, empty header
  {
    write_bytes_atomically(dir_ / "tiny", "abc");
    expect_error(dir_ / "tiny", "too short");
  }
  expect_error(raw_file("len", good, data, 1'000'000), "beyond the file");
  expect_error(raw_file("huge", good, data, -2 + (std::int64_t{1} << 62)), "beyond the file");
  {
    // Truncated data region: header fine, data cut short. Said as such, with both sizes.
    expect_error(raw_file("trunc", good, data.substr(0, 5)),
                 "file is truncated: its data region holds 5 bytes but the tensors need 8");
  }
  expect_error(raw_file("json", R"({"a":{"dtype":"F32",)", data), "not valid JSON");
  expect_error(raw_file("array", "[1,2]", data), "JSON object");
  expect_error(raw_file("entry", R"({"a":3})", data), "entry is a JSON number");
  expect_error(raw_file("dtype", R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", data), "I64");
  expect_error(raw_file("dtype2", R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,8]}})", data), "dtype");
  expect_error(raw_file("shape", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data), "shape");
  expect_error(raw_file("shape2", R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", data), "shape");
  expect_error(raw_file("shape3", R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", data), "shape");
  expect_error(
      raw_file("shapebig", R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})",
               data),
      "shape");
  expect_error(raw_file("size", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data), "needs 12");
  expect_error(raw_file("size2", R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,8]}})", data), "needs 4");
  expect_error(raw_file("range", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", data), "truncated");
  expect_error(raw_file("neg", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", data), "data_offsets");
  expect_error(raw_file("rev", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", data), "end before");
  expect_error(raw_file("pair", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data), "data_offsets");
  expect_error(
      raw_file("hugeoff", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551615,7]}})", data),
      "data_offsets");
  expect_error(raw_file("overlap",
                        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                            "b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]}})",
                        data),
               "overlap");
  expect_error(raw_file("meta", R"({"__metadata__":{"format":1}})", data), "__metadata__");
  expect_error(raw_file("meta2", R"({"__metadata__":[1]})", data), "__metadata__");
  expect_error(dir_ / "missing.safetensors", "missing.safetensors");
}

// The safetensors reference rejects any data region the tensors do not tile exactly; so do we.
TEST_F(SafetensorsTest, TensorsMustTileTheDataRegion) {
  const std::string data8(8, '\0'), data12(12, '\0');
  // Gap: [0, 4) and [8, 12) leave bytes 4..8 to nobody.
  expect_error(raw_file("gap",
                        R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                            "b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                        data12),
               "bytes [4, 8) of the data region before tensor 'b' belong to no tensor");
  // A gap at the start.
  expect_error(raw_file("gap0", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data8), "bytes [0, 4)");
  // Trailing bytes after the last tensor.
  expect_error(raw_file("trailing", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", data8),
               "4 trailing bytes");
  // A header with no tensors and a non-empty data region.
  expect_error(raw_file("notensors", R"({"__metadata__":{"format":"pt"}})", data8), "8 trailing bytes");
  // Identical ranges overlap too.
  expect_error(raw_file("same",
                        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                            "b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                        data8),
               "overlap");
  // Exact tiling, out of key order and with an empty tensor between two others, opens.
  auto path = raw_file("ok",
                       R"({"c":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},
                           "e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},
                           "a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                       data8);
  EXPECT_EQ(SafetensorsFile(path).tensors().size(), 3u);
  // An empty file body with an empty tensor (offsets [0, 0]) opens too.
  EXPECT_EQ(SafetensorsFile(raw_file("empty0", R"({"e":{"dtype":"BF16","shape":[0],"data_offsets":[0,0]}})", ""))
                .tensors()
                .size(),
            1u);
}

// Our writer's files tile exactly, whatever the mix of sizes (zero-size tensors included).
TEST_F(SafetensorsTest, WriterTilesExactly) {
  std::vector<float> a = test_values(7, 11), b = test_values(3, 12);
  std::vector<SafetensorsEntry> entries = {{"a", {7}, a.data()}, {"z", {0, 4}, nullptr}, {"b", {3, 1}, b.data()}};
  for (SafetensorsDType dtype : {SafetensorsDType::BF16, SafetensorsDType::F32}) {
    write_safetensors_file(dir_ / "w.safetensors", entries, dtype);
    EXPECT_EQ(SafetensorsFile(dir_ / "w.safetensors").tensors().size(), 3u);
  }
}

// Every committed fixture passes the stricter checks.
TEST(SafetensorsFixtures, AllOpen) {
  int found = 0;
  for (const auto& entry : fs::recursive_directory_iterator(fs::path(MINITRON_SOURCE_DIR) / "tests" / "fixtures"))
    if (entry.path().extension() == ".safetensors") {
      EXPECT_NO_THROW(SafetensorsFile{entry.path()}) << entry.path();
      ++found;
    }
  EXPECT_GE(found, 6);
}

TEST_F(SafetensorsTest, MutatedHeadersNeverCrash) {
  // A valid file, then thousands of seeded mutations of its length field and header bytes;
  // each must open cleanly or throw minitron::Error (anything else, or a crash, fails).
  std::vector<float> a = test_values(6, 4), b = test_values(10, 5);
  std::vector<SafetensorsEntry> entries = {{"a", {2, 3}, a.data()}, {"b", {10}, b.data()}};
  write_safetensors_file(dir_ / "base", entries, SafetensorsDType::BF16);
  const std::string base = read_text_file(dir_ / "base");
  std::uint64_t n = 0;
  std::memcpy(&n, base.data(), 8);
  std::mt19937 rng(20241128);
  const std::string interesting = "0123456789-.,:[]{}\"eE \\\xff";
  int opened = 0, refused = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bytes = base;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      std::size_t pos = rng() % (8 + n);
      switch (rng() % 4) {
        case 0: bytes[pos] = static_cast<char>(rng() & 0xff); break;
        case 1: bytes[pos] = interesting[rng() % interesting.size()]; break;
        case 2: bytes[pos] ^= static_cast<char>(1u << (rng() % 8)); break;
        case 3: bytes.resize(rng() % bytes.size()); break;  // truncation anywhere
      }
      if (bytes.size() < 8 + n) break;
    }
    const fs::path path = dir_ / "mutant";
    // Unlink rather than truncate: ext4 flushes a file truncated to zero on close, which
    // would make this test disk-bound.
    fs::remove(path);
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    try {
      SafetensorsFile f(path);
      for (const auto& t : f.tensors()) {
        std::vector<float> out(static_cast<std::size_t>(t.numel));
        f.read_f32(t, out);
      }
      ++opened;
    } catch (const Error&) {
      ++refused;
    }
  }
  EXPECT_EQ(opened + refused, 3000);
  EXPECT_GT(refused, 1000);  // most random edits break the header
}

TEST_F(SafetensorsTest, ShardedRoundTrip) {
  std::vector<float> a = test_values(100, 6), b = test_values(300, 7), c = test_values(50, 8);
  std::vector<SafetensorsEntry> entries = {{"a", {10, 10}, a.data()}, {"b", {300}, b.data()}, {"c", {5, 10}, c.data()}};
  // 450 bytes limit with BF16: a (200 B) + b (600 B) > 450, so a | b (alone, over the limit) | c.
  auto names = write_safetensors_model(dir_, entries, SafetensorsDType::BF16, 450);
  ASSERT_EQ(names.size(), 4u);
  EXPECT_EQ(names[0], "model-00001-of-00003.safetensors");
  EXPECT_EQ(names[2], "model-00003-of-00003.safetensors");
  json index = json::parse(read_text_file(dir_ / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 900);
  EXPECT_EQ(index["weight_map"]["a"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["b"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["c"], "model-00003-of-00003.safetensors");
  EXPECT_FALSE(fs::exists(dir_ / "model.safetensors"));

  SafetensorsCheckpoint ck(dir_);
  EXPECT_TRUE(ck.sharded());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b", "c"}));
  std::vector<float> rb(300);
  ck.read_f32("b", rb);
  for (std::size_t i = 0; i < 300; ++i) ASSERT_EQ(rb[i], independent_bf16(b[i]));
  EXPECT_EQ(ck.file_of("c").path().filename(), "model-00003-of-00003.safetensors");

  // Unsharded when it fits.
  fs::path single = dir_ / "single";
  EXPECT_EQ(write_safetensors_model(single, entries, SafetensorsDType::F32),
            std::vector<std::string>{"model.safetensors"});
  SafetensorsCheckpoint one(single);
  EXPECT_FALSE(one.sharded());
  std::vector<float> rc(50);
  one.read_f32("c", rc);
  EXPECT_EQ(rc, c);
}

// As transformers does: model.safetensors is read when both it and an index exist.
TEST_F(SafetensorsTest, SingleFileWinsOverIndex) {
  std::vector<float> a = test_values(100, 13), b = test_values(100, 14);
  std::vector<SafetensorsEntry> sharded = {{"a", {100}, a.data()}, {"b", {100}, b.data()}};
  write_safetensors_model(dir_, sharded, SafetensorsDType::F32, 400);  // two shards + index
  std::vector<SafetensorsEntry> single = {{"only", {100}, b.data()}};
  write_safetensors_file(dir_ / "model.safetensors", single, SafetensorsDType::F32);
  ASSERT_TRUE(fs::exists(dir_ / "model.safetensors.index.json"));
  SafetensorsCheckpoint ck(dir_);
  EXPECT_EQ(ck.names(), std::vector<std::string>{"only"});
  EXPECT_FALSE(ck.sharded());
  fs::remove(dir_ / "model.safetensors");
  EXPECT_EQ(SafetensorsCheckpoint(dir_).names(), (std::vector<std::string>{"a", "b"}));
}

TEST_F(SafetensorsTest, BadIndexGivesErrors) {
  std::vector<float> a = test_values(100, 9), b = test_values(100, 10);
  std::vector<SafetensorsEntry> entries = {{"a", {100}, a.data()}, {"b", {100}, b.data()}};
  write_safetensors_model(dir_, entries, SafetensorsDType::F32, 400);
  auto expect_index_error = [&](const json& index, const std::string& needle) {
    write_bytes_atomically(dir_ / "model.safetensors.index.json", index.dump());
    try {
      SafetensorsCheckpoint ck(dir_);
      ADD_FAILURE() << "accepted index " << index.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  json index = json::parse(read_text_file(dir_ / "model.safetensors.index.json"));
  json missing_shard = index;
  missing_shard["weight_map"]["a"] = "model-00009-of-00009.safetensors";
  expect_index_error(missing_shard, "does not exist");
  json wrong_shard = index;
  wrong_shard["weight_map"]["a"] = "model-00002-of-00002.safetensors";
  expect_index_error(wrong_shard, "not in its shard");
  json escape = index;
  escape["weight_map"]["a"] = "../model-00001-of-00002.safetensors";
  expect_index_error(escape, "plain file name");
  expect_index_error(json{{"metadata", {}}}, "weight_map");
  json not_string = index;
  not_string["weight_map"]["a"] = 1;
  expect_index_error(not_string, "weight_map");
  write_bytes_atomically(dir_ / "model.safetensors.index.json", "{");
  EXPECT_THROW(SafetensorsCheckpoint{dir_}, Error);
  fs::remove(dir_ / "model.safetensors.index.json");
  EXPECT_FALSE(SafetensorsCheckpoint::present(dir_));
  EXPECT_THROW(SafetensorsCheckpoint{dir_}, Error);
}

}  // namespace
}  // namespace minitron
