// When the CPU references go parallel. Starting an OpenMP team costs microseconds (far more on a
// loaded machine, where idle threads spin against busy ones), so loops with less work than this
// many elements run on the calling thread. Results do not depend on it: every reference sums in
// an order fixed by the data layout, never by the thread count.
#pragma once

#include <cstdint>

namespace minitron::cpu {

inline constexpr std::int64_t kMinParallelWork = std::int64_t{1} << 15;

}  // namespace minitron::cpu
