// Host-side conversions between float and the 16-bit storage types of checkpoints: bfloat16
// (round to nearest even, NaN kept a NaN) and IEEE half (read only). No CUDA headers, so any
// host file can include this.
#pragma once

#include <bit>
#include <cstdint>

namespace minitron {

inline float bf16_to_float(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

inline std::uint16_t float_to_bf16(float value) {
  std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    // Truncating could clear every payload bit left in the top half and turn a NaN into an
    // infinity; force the quiet bit so it stays a NaN with its sign.
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  }
  // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit. Overflow past the
  // largest finite value carries into the exponent and gives infinity, as it should.
  std::uint32_t lsb = (bits >> 16) & 1u;
  bits += 0x7fffu + lsb;
  return static_cast<std::uint16_t>(bits >> 16);
}

// Rounds a float to the nearest bfloat16 and back: what a value becomes when stored as bf16.
inline float round_to_bf16(float value) { return bf16_to_float(float_to_bf16(value)); }

inline float fp16_to_float(std::uint16_t half) {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  const std::uint32_t exponent = (half >> 10) & 0x1fu;
  std::uint32_t mantissa = half & 0x3ffu;
  std::uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, or NaN with its payload
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else if (mantissa == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal half: value = mantissa * 2^-24, exact in float.
    float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    bits = sign | std::bit_cast<std::uint32_t>(magnitude);
  }
  return std::bit_cast<float>(bits);
}

}  // namespace minitron
