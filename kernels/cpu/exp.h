// exp over arrays for the CPU engine's hot loops (softmax, cross-entropy, SwiGLU), four
// floats at a time. A loop calling std::exp stays scalar (glibc's vector exp needs
// -ffast-math), and a scalar formula with range checks is not vectorized by GCC under the
// default -ftrapping-math, so the float version is written with GCC/Clang vector extensions.
// It is the Cephes expf scheme: n = round(x / ln 2), r = x - n ln 2 in two parts, a degree-6
// polynomial, times 2^n through the exponent bits; within 1 ulp of the exact value like
// std::exp (tests/kernels/test_cpu_exp.cpp), so results move by float rounding only. The
// double version is std::exp: the double engine is for gradient checks, not speed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace minitron::cpu {

namespace detail {

typedef float Float4 __attribute__((vector_size(16)));
typedef std::int32_t Int4 __attribute__((vector_size(16)));

inline Float4 exp4(Float4 x) {
  // ln(FLT_MIN) and ln(FLT_MAX): below, the result would be subnormal and is 0 (also for -inf);
  // above, it overflows to +inf like std::exp. NaN is passed through.
  constexpr float kLow = -87.33654f, kHigh = 88.72283f;
  const Float4 low = {kLow, kLow, kLow, kLow}, high = {kHigh, kHigh, kHigh, kHigh};
  Float4 xc = x < low ? low : x;
  xc = xc > high ? high : xc;
  // Round to nearest by the 1.5 * 2^23 trick.
  const float kMagic = 12582912.0f;
  const Float4 n = (xc * 1.44269504088896341f + kMagic) - kMagic;
  Float4 r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  Float4 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const Float4 y = p * (r * r) + r + 1.0f;
  // n is in [-126, 128]; 2^n is applied as 2^(n/2) * 2^(n - n/2) so each factor is a normal.
  const Int4 ni = __builtin_convertvector(n, Int4);
  const Int4 half = ni >> 1;
  const Float4 s1 = reinterpret_cast<Float4>((half + 127) << 23);
  const Float4 s2 = reinterpret_cast<Float4>((ni - half + 127) << 23);
  Float4 result = y * s1 * s2;
  const Float4 zero = {0, 0, 0, 0}, inf = {HUGE_VALF, HUGE_VALF, HUGE_VALF, HUGE_VALF};
  result = x < low ? zero : result;
  result = x > high ? inf : result;
  return x == x ? result : x;
}

}  // namespace detail

// y[i] = exp(sign * x[i] - shift) for i < n, sign +1 or -1 (exact); y may alias x.
inline void exp_affine(float* y, const float* x, float sign, float shift, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    detail::Float4 v;
    std::memcpy(&v, x + i, sizeof v);
    v = detail::exp4(v * sign - shift);
    std::memcpy(y + i, &v, sizeof v);
  }
  if (i < n) {  // the tail through the same formula, so every element rounds alike
    detail::Float4 v = {0, 0, 0, 0};
    std::memcpy(&v, x + i, static_cast<std::size_t>(n - i) * sizeof(float));
    v = detail::exp4(v * sign - shift);
    std::memcpy(y + i, &v, static_cast<std::size_t>(n - i) * sizeof(float));
  }
}

inline void exp_affine(double* y, const double* x, double sign, double shift, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = std::exp(sign * x[i] - shift);
}

// y[i] = exp(x[i] - shift); y may alias x.
template <typename T>
void exp_shifted(T* y, const T* x, T shift, std::int64_t n) {
  exp_affine(y, x, T(1), shift, n);
}

}  // namespace minitron::cpu
