// Two host threads, each owning an emulated CUDA backend and launching kernels at the same time
// (data-parallel ranks as threads): every thread must get exactly the results a lone thread
// gets. Under ThreadSanitizer this is also the check that the emulator's shared state (device
// memory registry, stack pool, options, cuBLASLt) is safe to use from several host threads.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/backend.h"
#include "kernels/cuda/cuda_backend.h"

namespace minitron {
namespace {

struct Results {
  std::vector<float> product, normed, activated;
};

std::vector<float> random_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A GEMM (cuBLASLt), an RMSNorm (block reduction in shared memory) and SwiGLU on a backend of
// the calling thread's own. Small: under TSan each CUDA thread is an instrumented fiber.
Results run_ops() {
  const std::int64_t M = 4, N = 40, K = 29;
  cuda::CudaBackend backend(0);
  const auto a = random_values(M * K, 1), b = random_values(N * K, 2), w = random_values(N, 3);
  BackendBuffer ta(backend, M * K, DType::BF16), tb(backend, N * K, DType::BF16),
      tw(backend, N, DType::F32);
  backend.upload(ta, a.data());
  backend.upload(tb, b.data());
  backend.upload(tw, w.data());
  BackendBuffer product(backend, M * N, DType::F32), normed(backend, M * N, DType::F32);
  BackendBuffer rstd(backend, M, DType::F32), activated(backend, M * N, DType::F32);
  backend.matmul(product, ta, tb, M, N, K, false, true, 1.0f, 0.0f);
  backend.rmsnorm_forward(normed, rstd, product, tw, M, N, 1e-5f);
  backend.swiglu_forward(activated, product, normed, M * N);
  Results r;
  for (auto [tensor, host] :
       {std::pair{&product, &r.product}, {&normed, &r.normed}, {&activated, &r.activated}}) {
    host->resize(static_cast<std::size_t>(M * N));
    backend.download(host->data(), *tensor);
  }
  return r;
}

TEST(CudaThreads, BackendsOnTwoThreadsMatchALoneThread) {
  const Results alone = run_ops();
  constexpr int kThreads = 2, kRounds = 1;
  std::vector<std::vector<Results>> got(kThreads);
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      try {
        for (int round = 0; round < kRounds; ++round)
          got[static_cast<std::size_t>(t)].push_back(run_ops());
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(t)] = e.what();
      }
    });
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(errors[static_cast<std::size_t>(t)], "") << "thread " << t;
    for (const Results& r : got[static_cast<std::size_t>(t)]) {
      // The same kernels on the same inputs in the same order: identical bits.
      EXPECT_EQ(r.product, alone.product) << "thread " << t;
      EXPECT_EQ(r.normed, alone.normed) << "thread " << t;
      EXPECT_EQ(r.activated, alone.activated) << "thread " << t;
    }
  }
}

}  // namespace
}  // namespace minitron
