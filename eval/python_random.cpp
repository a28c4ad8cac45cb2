#include "eval/python_random.h"

#include <cmath>
#include <unordered_set>

#include "util/error.h"

namespace minitron {

PythonRandom::PythonRandom(std::int64_t seed) {
  // abs() without overflow at INT64_MIN.
  std::uint64_t magnitude = seed < 0 ? ~static_cast<std::uint64_t>(seed) + 1 : static_cast<std::uint64_t>(seed);
  std::vector<std::uint32_t> key;
  do {
    key.push_back(static_cast<std::uint32_t>(magnitude & 0xffffffffu));
    magnitude >>= 32;
  } while (magnitude != 0);
  init_by_array(key);
}

// The reference MT19937 seeding (Matsumoto & Nishimura, mt19937ar.c), as _randommodule.c has it.
void PythonRandom::init_genrand(std::uint32_t s) {
  state_[0] = s;
  for (int i = 1; i < kN; ++i)
    state_[static_cast<std::size_t>(i)] =
        1812433253u * (state_[static_cast<std::size_t>(i - 1)] ^ (state_[static_cast<std::size_t>(i - 1)] >> 30)) +
        static_cast<std::uint32_t>(i);
  index_ = kN;
}

void PythonRandom::init_by_array(const std::vector<std::uint32_t>& key) {
  init_genrand(19650218u);
  std::size_t i = 1, j = 0;
  const std::size_t length = key.size();
  for (std::size_t k = std::max<std::size_t>(kN, length); k > 0; --k) {
    state_[i] =
        (state_[i] ^ ((state_[i - 1] ^ (state_[i - 1] >> 30)) * 1664525u)) + key[j] + static_cast<std::uint32_t>(j);
    ++i, ++j;
    if (i >= kN) state_[0] = state_[kN - 1], i = 1;
    if (j >= length) j = 0;
  }
  for (std::size_t k = kN - 1; k > 0; --k) {
    state_[i] = (state_[i] ^ ((state_[i - 1] ^ (state_[i - 1] >> 30)) * 1566083941u)) - static_cast<std::uint32_t>(i);
    ++i;
    if (i >= kN) state_[0] = state_[kN - 1], i = 1;
  }
  state_[0] = 0x80000000u;  // the most significant bit is 1: a non-zero initial state
  index_ = kN;
}

std::uint32_t PythonRandom::genrand_uint32() {
  constexpr std::uint32_t kUpper = 0x80000000u, kLower = 0x7fffffffu, kMatrix = 0x9908b0dfu;
  if (index_ >= kN) {
    auto mag = [](std::uint32_t y) { return (y & 1u) ? kMatrix : 0u; };
    int k = 0;
    for (; k < kN - kM; ++k) {
      const std::uint32_t y =
          (state_[static_cast<std::size_t>(k)] & kUpper) | (state_[static_cast<std::size_t>(k + 1)] & kLower);
      state_[static_cast<std::size_t>(k)] = state_[static_cast<std::size_t>(k + kM)] ^ (y >> 1) ^ mag(y);
    }
    for (; k < kN - 1; ++k) {
      const std::uint32_t y =
          (state_[static_cast<std::size_t>(k)] & kUpper) | (state_[static_cast<std::size_t>(k + 1)] & kLower);
      state_[static_cast<std::size_t>(k)] = state_[static_cast<std::size_t>(k + (kM - kN))] ^ (y >> 1) ^ mag(y);
    }
    const std::uint32_t y = (state_[kN - 1] & kUpper) | (state_[0] & kLower);
    state_[kN - 1] = state_[kM - 1] ^ (y >> 1) ^ mag(y);
    index_ = 0;
  }
  std::uint32_t y = state_[static_cast<std::size_t>(index_++)];
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= (y >> 18);
  return y;
}

std::vector<std::uint32_t> PythonRandom::getrandbits_words(int k) {
  MINITRON_ASSERT(k >= 0, "getrandbits of ", k, " bits");
  if (k == 0) return {};
  if (k <= 32) return {genrand_uint32() >> (32 - k)};
  std::vector<std::uint32_t> words;
  for (int left = k; left > 0; left -= 32) {
    std::uint32_t r = genrand_uint32();
    if (left < 32) r >>= (32 - left);  // the last word keeps its most significant bits
    words.push_back(r);
  }
  return words;
}

std::uint64_t PythonRandom::getrandbits(int k) {
  MINITRON_ASSERT(k >= 0 && k <= 64, "getrandbits of ", k, " bits into 64");
  const std::vector<std::uint32_t> words = getrandbits_words(k);
  std::uint64_t out = 0;
  for (std::size_t i = words.size(); i-- > 0;) out = (out << 32) | words[i];
  return out;
}

std::uint64_t PythonRandom::randbelow(std::uint64_t n) {
  MINITRON_ASSERT(n > 0, "randbelow(0)");
  int bits = 0;
  for (std::uint64_t v = n; v != 0; v >>= 1) ++bits;  // n.bit_length()
  std::uint64_t r = getrandbits(bits);
  while (r >= n) r = getrandbits(bits);
  return r;
}

std::vector<std::int64_t> PythonRandom::sample(std::int64_t n, std::int64_t k) {
  if (k < 0 || k > n) fail_expected("sample", str(k, " of a population of ", n), "0 <= k <= population size");
  std::vector<std::int64_t> result(static_cast<std::size_t>(k));
  std::int64_t setsize = 21;  // "size of a small set minus size of an empty list"
  if (k > 5)
    setsize +=
        static_cast<std::int64_t>(std::pow(4.0, std::ceil(std::log(static_cast<double>(k * 3)) / std::log(4.0))));
  if (n <= setsize) {
    std::vector<std::int64_t> pool(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) pool[static_cast<std::size_t>(i)] = i;
    for (std::int64_t i = 0; i < k; ++i) {
      const auto j = static_cast<std::size_t>(randbelow(static_cast<std::uint64_t>(n - i)));
      result[static_cast<std::size_t>(i)] = pool[j];
      pool[j] = pool[static_cast<std::size_t>(n - i - 1)];  // the unselected tail item fills the vacancy
    }
  } else {
    std::unordered_set<std::int64_t> selected;
    for (std::int64_t i = 0; i < k; ++i) {
      auto j = static_cast<std::int64_t>(randbelow(static_cast<std::uint64_t>(n)));
      while (selected.count(j)) j = static_cast<std::int64_t>(randbelow(static_cast<std::uint64_t>(n)));
      selected.insert(j);
      result[static_cast<std::size_t>(i)] = j;
    }
  }
  return result;
}

}  // namespace minitron
