// Asynchronous global-to-shared copies (cp.async, sm_80 and later) behind one wrapper, so kernels
// that overlap their tile loads with compute also run on the emulator.
//
//   cp_async16(dst, src, fill_zero): cp.async.cg.shared.global [dst], [src], 16, src_size, with
//     src_size 0 when fill_zero (16 zero bytes land, nothing is read): a tile can load rows past
//     the end of a sequence without a branch on the data. Both addresses 16-byte aligned; src
//     must still be a valid global address.
//   cp_async_commit(): cp.async.commit_group, closes this thread's uncommitted copies into a group.
//   cp_async_wait<N>(): cp.async.wait_group N, waits until at most the newest N committed groups
//     of this thread are pending. Copies issued after the last commit are not waited for.
//   cp_async_wait_all(): cp.async.wait_all (= commit, then wait_group 0).
// The wait makes the data visible to the issuing thread only: other threads of the block need a
// __syncthreads after every thread's wait (PTX ISA, "Data Movement and Conversion Instructions:
// cp.async").
//
// Under MINITRON_EMULATE the copies are queued per thread (emu/emulator.h, async_copy):
// the destination holds 0xFF poison (NaN) from the issue until the wait that retires its group,
// misaligned or non-shared destinations abort, and under TSan the data is a write by the issuing
// thread at its wait, so a reader without a barrier after it is reported as a race.
#pragma once

#if defined(MINITRON_EMULATE)
#include <source_location>

#include "emu/emulator.h"
#else
#include <cuda_runtime.h>
#endif

namespace minitron::cuda {

#if defined(MINITRON_EMULATE)

inline void cp_async16(void* shared_dst, const void* global_src, bool fill_zero = false,
                       const std::source_location& where = std::source_location::current()) {
  ::minitron::emu::detail::async_copy(shared_dst, global_src, fill_zero, where);
}
inline void cp_async_commit() { ::minitron::emu::detail::async_commit(); }
template <int N>
void cp_async_wait(const std::source_location& where = std::source_location::current()) {
  static_assert(N >= 0, "wait_group takes a non-negative count of groups left pending");
  ::minitron::emu::detail::async_wait(static_cast<unsigned>(N), where);
}
inline void cp_async_wait_all(const std::source_location& where = std::source_location::current()) {
  ::minitron::emu::detail::async_commit();
  ::minitron::emu::detail::async_wait(0, where);
}

#else  // nvcc: the instructions themselves

__device__ __forceinline__ void cp_async16(void* shared_dst, const void* global_src,
                                           bool fill_zero = false) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
  const int src_size = fill_zero ? 0 : 16;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global_src),
               "r"(src_size)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "wait_group takes a non-negative count of groups left pending");
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

#endif

}  // namespace minitron::cuda
