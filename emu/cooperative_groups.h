// The cooperative_groups subset kernels use, for the emulator: this_thread_block(),
// tiled_partition<N>() (N a power of two up to 32), ranks, sync, shuffles, votes and cg::reduce
// with plus/less/greater. Everything maps onto the emulated built-ins, so masks and barriers are
// checked exactly as for hand-written warp code.
#pragma once

#include "emu/emulator.h"

namespace cooperative_groups {

class thread_block {
 public:
  void sync(const std::source_location& where = std::source_location::current()) const { __syncthreads(where); }
  static unsigned thread_rank() { return (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x; }
  static unsigned size() { return blockDim.x * blockDim.y * blockDim.z; }
  static unsigned num_threads() { return size(); }
  static dim3 group_index() { return dim3(blockIdx.x, blockIdx.y, blockIdx.z); }
  static dim3 thread_index() { return dim3(threadIdx.x, threadIdx.y, threadIdx.z); }
  static dim3 group_dim() { return blockDim; }
  static dim3 dim_threads() { return blockDim; }
};

inline thread_block this_thread_block() { return thread_block(); }

inline void sync(const thread_block& block, const std::source_location& where = std::source_location::current()) {
  block.sync(where);
}

// A tile of Size consecutive threads of the block (within one warp).
template <unsigned Size, typename Parent = void>
class thread_block_tile {
  static_assert(Size >= 1 && Size <= 32 && (Size & (Size - 1)) == 0, "tile sizes are powers of two up to 32");

 public:
  thread_block_tile() : mask_(compute_mask()) {}
  template <typename OtherParent>
  thread_block_tile(const thread_block_tile<Size, OtherParent>& other) : mask_(other.mask()) {}  // NOLINT: as CUDA

  static constexpr unsigned num_threads() { return Size; }
  static constexpr unsigned size() { return Size; }
  static unsigned thread_rank() { return ::minitron::emu::detail::current("thread_rank").lane % Size; }
  // Index of this tile within the block, and the number of tiles.
  static unsigned meta_group_rank() { return thread_block::thread_rank() / Size; }
  static unsigned meta_group_size() { return (thread_block::size() + Size - 1) / Size; }
  unsigned mask() const { return mask_; }

  void sync(const std::source_location& where = std::source_location::current()) const { __syncwarp(mask_, where); }

  template <typename T>
  T shfl(T value, int source, const std::source_location& where = std::source_location::current()) const {
    return __shfl_sync(mask_, value, source, static_cast<int>(Size), where);
  }
  template <typename T>
  T shfl_down(T value, unsigned delta, const std::source_location& where = std::source_location::current()) const {
    return __shfl_down_sync(mask_, value, delta, static_cast<int>(Size), where);
  }
  template <typename T>
  T shfl_up(T value, unsigned delta, const std::source_location& where = std::source_location::current()) const {
    return __shfl_up_sync(mask_, value, delta, static_cast<int>(Size), where);
  }
  template <typename T>
  T shfl_xor(T value, unsigned lane_mask, const std::source_location& where = std::source_location::current()) const {
    return __shfl_xor_sync(mask_, value, static_cast<int>(lane_mask), static_cast<int>(Size), where);
  }
  unsigned ballot(int predicate, const std::source_location& where = std::source_location::current()) const {
    return (__ballot_sync(mask_, predicate, where) & mask_) >> first_lane();
  }
  int any(int predicate, const std::source_location& where = std::source_location::current()) const {
    return __any_sync(mask_, predicate, where);
  }
  int all(int predicate, const std::source_location& where = std::source_location::current()) const {
    return __all_sync(mask_, predicate, where);
  }

 private:
  static unsigned first_lane() { return ::minitron::emu::detail::current("tile").lane / Size * Size; }
  static unsigned compute_mask() {
    const unsigned lanes = Size == 32 ? 0xffffffffu : ((1u << Size) - 1u) << first_lane();
    // A tile at the end of a block that is not a multiple of Size holds only the existing lanes.
    const unsigned warp_base = thread_block::thread_rank() / 32 * 32;
    const unsigned existing = thread_block::size() - warp_base;
    return existing >= 32 ? lanes : lanes & ((1u << existing) - 1u);
  }
  unsigned mask_;
};

template <unsigned Size>
thread_block_tile<Size, thread_block> tiled_partition(const thread_block&) {
  return thread_block_tile<Size, thread_block>();
}

template <unsigned Size, typename Parent>
void sync(const thread_block_tile<Size, Parent>& tile,
          const std::source_location& where = std::source_location::current()) {
  tile.sync(where);
}

template <typename T>
struct plus {
  T operator()(const T& a, const T& b) const { return a + b; }
};
template <typename T>
struct less {
  T operator()(const T& a, const T& b) const { return b < a ? b : a; }
};
template <typename T>
struct greater {
  T operator()(const T& a, const T& b) const { return a < b ? b : a; }
};
template <typename T>
struct bit_and {
  T operator()(const T& a, const T& b) const { return a & b; }
};
template <typename T>
struct bit_or {
  T operator()(const T& a, const T& b) const { return a | b; }
};

// Every lane of the tile gets op over all lanes' values (a butterfly, as CUDA's software path).
template <typename T, typename Op, unsigned Size, typename Parent>
T reduce(const thread_block_tile<Size, Parent>& tile, T value, Op op) {
  for (unsigned offset = Size / 2; offset > 0; offset /= 2) value = op(value, tile.shfl_xor(value, offset));
  return value;
}

}  // namespace cooperative_groups
