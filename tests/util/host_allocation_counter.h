// Counts the bytes this process holds from operator new, and their high-water mark, by replacing
// the global operator new and delete: a test measures what a piece of code allocates on the host
// at its peak (every std::vector, string and JSON node goes through here). The replacements are
// in host_allocation_counter.cpp: a test binary that reads the counts lists it among its
// sources, and nothing else does (one program, one global operator new). Aligned new and delete
// keep the library's own pair (they bypass these and are not counted); device memory of the
// emulated CUDA engine (aligned_alloc in emu/cuda_runtime.cpp) is not counted either.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace minitron::testing {

// The replaced operators need state outside any object; atomics, since gtest and OpenMP threads
// allocate too.
inline std::atomic<std::int64_t> host_live_bytes{0};
inline std::atomic<std::int64_t> host_peak_bytes{0};

// Restarts the high-water mark at what is held now, so peak - live before = what came on top.
inline void reset_host_peak() { host_peak_bytes.store(host_live_bytes.load()); }
inline std::int64_t host_live() { return host_live_bytes.load(); }
inline std::int64_t host_peak() { return host_peak_bytes.load(); }

// Each block carries its size in front, so the unsized delete can subtract it. 16 bytes keep the
// pointer aligned as operator new must (alignof(std::max_align_t)).
inline constexpr std::size_t kCountedHeader = 16;

inline void* counted_allocate(std::size_t bytes) {
  void* block = std::malloc(bytes + kCountedHeader);
  if (!block) return nullptr;
  *static_cast<std::size_t*>(block) = bytes;
  const std::int64_t live =
      host_live_bytes.fetch_add(static_cast<std::int64_t>(bytes)) + static_cast<std::int64_t>(bytes);
  std::int64_t peak = host_peak_bytes.load();
  while (live > peak && !host_peak_bytes.compare_exchange_weak(peak, live)) {
  }
  return static_cast<char*>(block) + kCountedHeader;
}

inline void counted_free(void* pointer) {
  if (!pointer) return;
  void* block = static_cast<char*>(pointer) - kCountedHeader;
  host_live_bytes.fetch_sub(static_cast<std::int64_t>(*static_cast<std::size_t*>(block)));
  std::free(block);
}

}  // namespace minitron::testing
