// Helpers for the emulated CUDA tests: host data in and out of the CUDA backend, rounding to the
// storage dtype (what the reference must see), NaN-poisoned outputs and tolerance checks.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/bf16.h"
#include "kernels/cuda/cuda_backend_factory.h"

namespace minitron::test {

// bf16 keeps 8 significant bits: one rounding is off by at most half an ulp, 2^-9 relative;
// a result the reference rounds once and the kernel rounds once (from fp32 values that agree
// to a few fp32 ulps) can land one ulp apart: 2^-8 relative.
constexpr double kBf16Ulp = 1.0 / 256;

inline std::vector<float> random_floats(std::size_t n, std::uint64_t seed, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// The values a tensor of `dtype` holds after upload(): what the reference must compute on.
inline std::vector<float> stored(std::vector<float> v, DType dtype) {
  if (dtype == DType::BF16)
    for (float& x : v) x = round_to_bf16(x);
  return v;
}

class Device {
 public:
  Device() : backend_(make_cuda_backend()) {}
  Backend& backend() { return *backend_; }

  // A tensor holding `host` (rounded to dtype).
  BackendBuffer put(const std::vector<float>& host, DType dtype) {
    BackendBuffer b(*backend_, static_cast<std::int64_t>(host.size()), dtype);
    backend_->upload(b, host.data());
    return b;
  }
  BackendBuffer put_i32(const std::vector<std::int32_t>& host) {
    BackendBuffer b(*backend_, static_cast<std::int64_t>(host.size()), DType::I32);
    backend_->upload_i32(b, host.data());
    return b;
  }
  // An output tensor filled with NaN, so an element the kernel never writes fails the check.
  BackendBuffer poisoned(std::size_t n, DType dtype) {
    return put(std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()), dtype);
  }
  std::vector<float> get(const Tensor& t) {
    std::vector<float> host(static_cast<std::size_t>(t.numel));
    backend_->download(host.data(), t);
    return host;
  }

 private:
  std::unique_ptr<Backend> backend_;
};

// Every element within abs + rel * |want| (NaN never is); reports the first few misses.
inline void expect_near_all(const std::string& what, const std::vector<float>& got,
                            const std::vector<float>& want, double rel, double abs) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int misses = 0;
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    const double bound = abs + rel * std::abs(static_cast<double>(want[i]));
    if (!(err <= bound)) {
      if (++misses <= 5)
        ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i]
                      << " (bound " << bound << ")";
    } else {
      worst = std::max(worst, err / bound);
    }
  }
  EXPECT_EQ(misses, 0) << what << ": " << misses << " of " << got.size() << " out of tolerance";
}

// Elementwise bounds given per element (for results whose error scales with their inputs).
inline void expect_within(const std::string& what, const std::vector<float>& got,
                          const std::vector<float>& want, const std::vector<double>& bound) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int misses = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= bound[i]) && ++misses <= 5)
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i] << " (bound "
                    << bound[i] << ")";
  }
  EXPECT_EQ(misses, 0) << what << ": " << misses << " of " << got.size() << " out of tolerance";
}

// Rotation of pairs (a, b): the output's error scales with |a| + |b| (cancellation in a c - b s).
inline void expect_rope(const std::string& what, const std::vector<float>& got,
                        const std::vector<float>& want, const std::vector<float>& input,
                        std::int64_t head_dim, double rel) {
  std::vector<double> bound(got.size());
  const std::int64_t half = head_dim / 2;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const std::int64_t in_head = static_cast<std::int64_t>(i) % head_dim;
    const std::size_t partner = in_head < half ? i + half : i - half;
    bound[i] = rel * (std::abs(input[i]) + std::abs(input[partner])) + 1e-30;
  }
  expect_within(what, got, want, bound);
}

inline const char* dtype_label(DType t) { return t == DType::BF16 ? "bf16" : "f32"; }

}  // namespace minitron::test
