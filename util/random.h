// Random numbers with fixed definitions: splitmix64 (Steele, Lea, Flood 2014), xoshiro256**
// (Blackman, Vigna 2018), both bit-exact with the reference C code, and Box-Muller normals.
//
// Why not <random>: its engines are fixed, but std::uniform_real_distribution,
// std::normal_distribution and std::shuffle are implementation-defined, so the same seed would
// give other initial weights, another data order or another random-pruning baseline under
// another standard library. With these, a seed means the same numbers on every machine.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

#include "util/error.h"

namespace minitron {

// A counter passed through a mixing function: each state gives an independent-looking output,
// so nearby seeds (0, 1, 2, ...) still start unrelated streams.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}

  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  // Uniform in (0, 1]: the top 53 bits plus one half, scaled, so never 0 and Box-Muller's log
  // stays finite (1 only when all 53 bits are ones and the half rounds up to 2^53).
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }

 private:
  std::uint64_t state_;
};

// The generator of longer streams (data order, sampling, random scores): a 256-bit state drawn
// from splitmix64(seed), as its authors recommend.
class Xoshiro256 {
 public:
  explicit Xoshiro256(std::uint64_t seed) {
    SplitMix64 seeder(seed);
    for (std::uint64_t& word : s_) word = seeder.next();
  }

  std::uint64_t next() {
    const std::uint64_t result = rotate_left(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotate_left(s_[3], 45);
    return result;
  }

  // Uniform in [0, bound), bound > 0. Rejects the lowest 2^64 mod bound values so that every
  // residue is equally likely.
  std::uint64_t below(std::uint64_t bound) {
    MINITRON_ASSERT(bound > 0);
    const std::uint64_t threshold = (0 - bound) % bound;
    for (;;) {
      const std::uint64_t r = next();
      if (r >= threshold) return r % bound;
    }
  }

 private:
  static std::uint64_t rotate_left(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

struct NormalPair {
  double first, second;
};

// Box-Muller: two independent normals of mean 0 and the given standard deviation from two
// uniforms in (0, 1]. The standard deviation scales the radius before the cosine and sine are
// applied, the order the initial weights have always been computed in (they stay bit-identical).
inline NormalPair box_muller(double radius_uniform, double angle_uniform, double standard_deviation) {
  const double radius = standard_deviation * std::sqrt(-2.0 * std::log(radius_uniform));
  const double angle = 2.0 * std::numbers::pi * angle_uniform;
  return {radius * std::cos(angle), radius * std::sin(angle)};
}

// The next two normals of `generator`: the radius's uniform is drawn first, then the angle's
// (written out because the order of a call's arguments is unspecified).
inline NormalPair normal_pair(SplitMix64& generator, double standard_deviation) {
  const double radius_uniform = generator.uniform();
  const double angle_uniform = generator.uniform();
  return box_muller(radius_uniform, angle_uniform, standard_deviation);
}

}  // namespace minitron
