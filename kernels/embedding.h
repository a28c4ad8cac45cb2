// Token embedding lookup and its backward, CPU reference.
//
// The backward is a scatter-add (several rows n may share one token). To keep it deterministic
// without atomics, threads split the table's columns and each walks the tokens in order n, so
// every element of dtable receives its additions in the same order whatever the thread count.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/parallel.h"
#include "util/error.h"

namespace minitron::cpu {

// Throws Error naming the first token id outside [0, vocab).
inline void check_token_ids(const std::int32_t* tokens, std::int64_t N, std::int64_t vocab) {
  for (std::int64_t n = 0; n < N; ++n) {
    if (tokens[n] < 0 || tokens[n] >= vocab)
      fail_expected(str("token id ", tokens[n], " at position ", n), "outside the vocabulary",
                    str("0 <= id < ", vocab));
  }
}

// out[n, :] = table[tokens[n], :]; table is [vocab, D], out [N, D].
template <typename T>
void embedding_forward(T* out, const std::int32_t* tokens, const T* table, std::int64_t N,
                       std::int64_t D, std::int64_t vocab) {
  check_token_ids(tokens, N, vocab);
#pragma omp parallel for schedule(static) if (N * D >= kMinParallelWork)
  for (std::int64_t n = 0; n < N; ++n) std::copy_n(table + tokens[n] * D, D, out + n * D);
}

// dtable[tokens[n], :] += dout[n, :] for n = 0 .. N-1, in that order for every element.
template <typename T>
void embedding_backward(T* dtable, const T* dout, const std::int32_t* tokens, std::int64_t N,
                        std::int64_t D, std::int64_t vocab) {
  check_token_ids(tokens, N, vocab);
  constexpr std::int64_t kColumnBlock = 64;  // a cache line or more of columns per task
  const std::int64_t blocks = (D + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (N * D >= kMinParallelWork)
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const std::int64_t c0 = blk * kColumnBlock, c1 = std::min(D, c0 + kColumnBlock);
    for (std::int64_t n = 0; n < N; ++n) {
      T* dst = dtable + tokens[n] * D;
      const T* src = dout + n * D;
      for (std::int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

}  // namespace minitron::cpu
