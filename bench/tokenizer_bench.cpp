// Tokenizer throughput: MB/s of English text through the real Llama 3 tokenizer, on one
// thread and on all cores (the text split into documents encoded in parallel).
//
//   tools/fetch_tokenizers.sh && build/bench/tokenizer_bench
// Text: $MINITRON_BENCH_TEXT if set (any UTF-8 file), else tests/data/english_sample.txt
// repeated to 4 MB (repetition makes the pre-token cache hit more often than fresh text does).
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <thread>

#include "data/tokenizer.h"
#include "util/files.h"

namespace {

namespace fs = std::filesystem;

fs::path cache_dir() {
  if (const char* d = std::getenv("MINITRON_TOKENIZER_CACHE")) return d;
  const char* home = std::getenv("HOME");
  return fs::path(home ? home : "/nonexistent") / ".cache/minitron/tokenizers";
}

struct Corpus {
  std::unique_ptr<minitron::Tokenizer> tokenizer;
  std::vector<std::string> documents;
  std::size_t bytes = 0;
  std::string skip_reason;
};

const Corpus& corpus() {
  static const Corpus c = [] {
    Corpus c;
    fs::path path = cache_dir() / "llama3" / "tokenizer.json";
    if (!fs::exists(path)) {
      c.skip_reason = "no Llama 3 tokenizer at " + path.string() + " (run tools/fetch_tokenizers.sh)";
      return c;
    }
    c.tokenizer = std::make_unique<minitron::Tokenizer>(minitron::Tokenizer::load(path));
    std::string text;
    if (const char* file = std::getenv("MINITRON_BENCH_TEXT")) {
      text = minitron::read_text_file(file);
    } else {
      std::string sample =
          minitron::read_text_file(fs::path(__FILE__).parent_path().parent_path() / "tests/data/english_sample.txt");
      while (text.size() < (4u << 20)) text += sample;
    }
    // Documents of ~16 KB, cut at a newline where possible.
    for (std::size_t pos = 0; pos < text.size();) {
      std::size_t end = std::min(text.size(), pos + (16u << 10));
      std::size_t nl = text.find('\n', end);
      end = nl == std::string::npos ? text.size() : nl + 1;
      c.documents.push_back(text.substr(pos, end - pos));
      c.bytes += end - pos;
      pos = end;
    }
    return c;
  }();
  return c;
}

void BM_Llama3EncodeOneThread(benchmark::State& state) {
  const Corpus& c = corpus();
  if (!c.tokenizer) {
    state.SkipWithError(c.skip_reason.c_str());
    return;
  }
  std::size_t tokens = 0;
  for (auto _ : state) {
    for (const std::string& doc : c.documents) tokens += c.tokenizer->encode(doc).size();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * c.bytes));
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}

void BM_Llama3EncodeAllCores(benchmark::State& state) {
  const Corpus& c = corpus();
  if (!c.tokenizer) {
    state.SkipWithError(c.skip_reason.c_str());
    return;
  }
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::atomic<std::size_t> tokens{0};
  for (auto _ : state) {
    std::atomic<std::size_t> next{0};
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&] {
        std::size_t local = 0;
        for (std::size_t i; (i = next.fetch_add(1)) < c.documents.size();)
          local += c.tokenizer->encode(c.documents[i]).size();
        tokens += local;
      });
    for (auto& th : pool) th.join();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * c.bytes));
  state.counters["threads"] = threads;
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens.load()), benchmark::Counter::kIsRate);
}

// One thread: CPU time, so that a busy machine does not hide the per-core rate.
BENCHMARK(BM_Llama3EncodeOneThread)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Llama3EncodeAllCores)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
