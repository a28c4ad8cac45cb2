// CPython's `random.Random(int)` (Lib/random.py over Modules/_randommodule.c), bit for bit:
// lm-evaluation-harness draws few-shot examples with `random.Random(1234).sample(docs, n)`, so
// matching its prompts means replaying that exact stream. Only what the harness's samplers use
// is here: seeding from an integer, getrandbits, _randbelow and sample.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace minitron {

class PythonRandom {
 public:
  // random.Random(seed): MT19937 init_by_array over the 32-bit words of abs(seed), least
  // significant first (one zero word for 0), as _randommodule.c random_seed does.
  explicit PythonRandom(std::int64_t seed);

  // _randommodule.c genrand_uint32: the next tempered MT19937 output.
  std::uint32_t genrand_uint32();
  // getrandbits(k) for 0 <= k <= 64. k <= 32 takes one word's top k bits; more takes
  // ceil(k / 32) words, least significant first, the last one shifted right to fit.
  std::uint64_t getrandbits(int k);
  // getrandbits(k) for any k >= 0, as 32-bit words, least significant first.
  std::vector<std::uint32_t> getrandbits_words(int k);
  // Random._randbelow_with_getrandbits(n), n > 0: getrandbits(n.bit_length()) until < n.
  std::uint64_t randbelow(std::uint64_t n);
  // Random.sample(range(n), k): indices into a population of n, in selection order. Both of
  // CPython's paths: a pool list when n <= setsize (21, plus 4 ** ceil(log(3k, 4)) when k > 5),
  // else rejection against a set of chosen indices. Fails when k > n.
  std::vector<std::int64_t> sample(std::int64_t n, std::int64_t k);

 private:
  void init_genrand(std::uint32_t s);
  void init_by_array(const std::vector<std::uint32_t>& key);

  static constexpr int kN = 624, kM = 397;
  std::array<std::uint32_t, kN> state_{};
  int index_ = kN + 1;
};

}  // namespace minitron
