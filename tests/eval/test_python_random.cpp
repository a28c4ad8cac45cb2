// PythonRandom against numbers CPython itself produced, and FewshotSampler against a Python
// re-implementation of lm-evaluation-harness's few-shot selection: both in
// tests/eval/data/python_random.json, written by tools/make_python_random_fixture.py.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "eval/python_random.h"
#include "eval/tasks.h"
#include "util/error.h"

namespace minitron {
namespace {

using json = nlohmann::json;

const json& fixture() {
  static const json j = [] {
    std::ifstream in(std::filesystem::path(MINITRON_SOURCE_DIR) / "tests/eval/data/python_random.json");
    return json::parse(in);
  }();
  return j;
}

// Python's hex() of a non-negative int, from 32-bit words least significant first.
std::string hex_of(const std::vector<std::uint32_t>& words) {
  std::string out;
  static const char* digits = "0123456789abcdef";
  for (std::size_t i = words.size(); i-- > 0;)
    for (int shift = 28; shift >= 0; shift -= 4) out += digits[(words[i] >> shift) & 0xf];
  const std::size_t first = out.find_first_not_of('0');
  return "0x" + (first == std::string::npos ? std::string("0") : out.substr(first));
}

TEST(PythonRandom, StreamsMatchCPython) {
  for (const json& s : fixture()["streams"]) {
    // Each list below continues the same generator, as the script drew them in this order.
    const std::int64_t seed = s["seed"];
    SCOPED_TRACE(str("seed ", seed));
    PythonRandom r(seed);
    for (const json& v : s["genrand_uint32"]) EXPECT_EQ(r.genrand_uint32(), v.get<std::uint32_t>());
    for (const json& g : s["getrandbits"]) {
      const int k = g["k"];
      EXPECT_EQ(hex_of(r.getrandbits_words(k)), g["value"].get<std::string>()) << "getrandbits(" << k << ")";
    }
    for (const json& b : s["randbelow"]) {
      const std::uint64_t n = std::stoull(b["n"].get<std::string>());
      EXPECT_EQ(r.randbelow(n), std::stoull(b["value"].get<std::string>())) << "_randbelow(" << n << ")";
    }
    for (const json& x : s["sample"]) {
      const std::int64_t n = x["n"], k = x["k"];
      EXPECT_EQ(r.sample(n, k), x["value"].get<std::vector<std::int64_t>>())
          << "sample(range(" << n << "), " << k << "), " << x["path"].get<std::string>() << " path";
    }
  }
}

TEST(PythonRandom, GetrandbitsUpTo64MatchesTheWordForm) {
  PythonRandom a(1234), b(1234);
  for (int k : {1, 31, 32, 33, 64}) {
    const std::vector<std::uint32_t> words = b.getrandbits_words(k);
    std::uint64_t want = 0;
    for (std::size_t i = words.size(); i-- > 0;) want = (want << 32) | words[i];
    EXPECT_EQ(a.getrandbits(k), want) << k;
  }
}

TEST(PythonRandom, SampleRefusesMoreThanThePopulation) {
  PythonRandom r(1);
  EXPECT_THROW(r.sample(3, 4), Error);
}

std::vector<TaskDoc> parse_docs(TaskKind kind, const json& docs) {
  std::vector<TaskDoc> out;
  for (std::size_t i = 0; i < docs.size(); ++i) out.push_back(parse_task_doc(kind, docs[i].dump(), str("doc ", i)));
  return out;
}

TEST(FewshotSampler, PicksWhatTheHarnessPicks) {
  for (const json& c : fixture()["fewshot"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const TaskKind kind = parse_task_kind(c["task"]);
    const std::vector<TaskDoc> pool = parse_docs(kind, c["pool"]);
    const bool same = c["pool_is_eval_docs"];
    const std::vector<TaskDoc> separate = same ? std::vector<TaskDoc>{} : parse_docs(kind, c["docs"]);
    const std::vector<TaskDoc>& docs = same ? pool : separate;
    FewshotSampler sampler(kind, pool, same, c["shots"]);
    ASSERT_EQ(docs.size(), c["expected"].size());
    for (std::size_t i = 0; i < docs.size(); ++i) {
      std::vector<std::int64_t> got;
      for (const TaskDoc* d : sampler.next(docs[i])) got.push_back(d - pool.data());
      EXPECT_EQ(got, c["expected"][i].get<std::vector<std::int64_t>>()) << "document " << i;
    }
  }
}

TEST(FewshotSampler, ZeroShotsDrawNothing) {
  const std::vector<TaskDoc> pool = parse_docs(
      TaskKind::MultipleChoice,
      json::parse(
          R"([{"context": "a", "choices": ["x", "y"], "label": 0}, {"context": "b", "choices": ["x", "y"], "label": 1}])"));
  FewshotSampler sampler(TaskKind::MultipleChoice, pool, true, 0);
  EXPECT_TRUE(sampler.next(pool[0]).empty());
  // Two shots from the file itself need three documents.
  FewshotSampler two(TaskKind::MultipleChoice, pool, true, 2);
  EXPECT_THROW(two.next(pool[0]), Error);
}

}  // namespace
}  // namespace minitron
