// util/random.h against values computed independently: splitmix64's published first outputs,
// xoshiro256** and Box-Muller from a Python implementation of the published algorithms
// (Python's float arithmetic and math module), and Box-Muller checked by hand once more below.
#include <gtest/gtest.h>

#include "util/random.h"

namespace minitron {
namespace {

TEST(SplitMix64, GivesThePublishedOutputsForSeedZero) {
  SplitMix64 rng(0);
  EXPECT_EQ(rng.next(), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(rng.next(), 0x6E789E6AA1B965F4ull);
  EXPECT_EQ(rng.next(), 0x06C45D188009454Full);
}

// ((x >> 11) + 0.5) * 2^-53 is a few IEEE operations without libm, so the values are exact.
TEST(SplitMix64, UniformTakesTheTop53Bits) {
  SplitMix64 rng(0);
  EXPECT_EQ(rng.uniform(), 0.8833108082136427);  // from 0xE220A8397B1DCDAF
  EXPECT_EQ(rng.uniform(), 0.43152799704851);    // from 0x6E789E6AA1B965F4
}

TEST(Xoshiro256, MatchesTheReferenceSeededBySplitMix64) {
  Xoshiro256 rng(42);
  EXPECT_EQ(rng.next(), 0x15780b2e0c2ec716ull);
  EXPECT_EQ(rng.next(), 0x6104d9866d113a7eull);
  EXPECT_EQ(rng.next(), 0xae17533239e499a1ull);
}

// Tolerance: EXPECT_DOUBLE_EQ's 4 ulps, because log, sqrt, cos and sin of another libm may
// round differently by an ulp each. By hand: radius 2 sqrt(2 ln 4) = 3.33022, angle 0.2 pi =
// 36 degrees, cos 0.809017, sin 0.587785.
TEST(BoxMuller, GivesTheNormalPairOfFixedUniforms) {
  const NormalPair z = box_muller(0.25, 0.1, 2.0);
  EXPECT_DOUBLE_EQ(z.first, 2.6942033166872146);
  EXPECT_DOUBLE_EQ(z.second, 1.957453288666357);
}

// The radius takes the first uniform and the angle the second (the two uniforms above); same
// tolerance as above.
TEST(BoxMuller, NormalPairDrawsTheRadiusFirst) {
  SplitMix64 rng(0);
  const NormalPair z = normal_pair(rng, 1.0);
  EXPECT_DOUBLE_EQ(z.first, -0.45275774021745807);
  EXPECT_DOUBLE_EQ(z.second, 0.20776603893419174);
}

}  // namespace
}  // namespace minitron
