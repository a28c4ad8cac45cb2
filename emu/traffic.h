// Global-memory traffic and tensor-core work per kernel launch, counted in an emulated run: the
// figures behind the roofline (bench/roofline_layer.cpp, bench/results/roofline.md).
//
// Loads and stores are counted by instrumentation, not declared: the sources of a counted build
// (minitron_emulated_counted_library in emu/CMakeLists.txt) are compiled with GCC's
// kernel-address sanitizer instrumentation in its call form, so every load and store of kernel
// code calls a hook (emu/traffic_hooks.cpp) with its address and size. While a launch runs, a hook
// adds the access to the launch's bytes read or written when the address lies in device memory
// (a cudaMalloc allocation); shared memory, registers and the fiber stacks are not device memory
// and are not counted. cp.async copies (whose global reads happen in the emulator) add their 16
// bytes, mma.sync adds 2*16*8*16 flops per warp, ldmatrix one instruction per warp. A cuBLASLt
// matmul is not kernel code here (emu/cublaslt.cpp computes it with OpenBLAS): it is recorded as
// a library call with its operands read once and D written once, and 2*m*n*k flops.
//
// The ideal beside each count is measured too: the launch's distinct 32-byte sectors read and
// written (a bitmap per device allocation while recording).
//
// Counts are of the accesses the emulated code makes, i.e. what the kernel asks of the memory
// system before any cache: a kernel that reads its input twice counts it twice even though an
// L2 hit may serve the second read on a GPU. CUDA-core arithmetic (FMA in plain C++) is not
// counted; those kernels are memory-bound and their arithmetic intensity is given in bytes only.
//
// One host thread launches while recording (the counters are per device, as a GPU's would be);
// a launch from a second thread during one fails.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace minitron::emu {

struct LaunchTraffic {
  std::string kernel;               // the kernel's name, or "cublasLtMatmul"
  unsigned long long blocks = 0;    // grid size (0 for a library call)
  std::uint64_t bytes_read = 0;     // global memory read
  std::uint64_t bytes_written = 0;  // global memory written
  // The ideal: the distinct bytes read and written, in the 32-byte sectors that DRAM moves (every
  // input read once, every output written once). Equal to the counts for a library call.
  std::uint64_t distinct_bytes_read = 0;
  std::uint64_t distinct_bytes_written = 0;
  std::uint64_t flops = 0;  // mma.sync, or 2*m*n*k of a matmul
  // ldmatrix instructions (x1, x2 or x4, .trans or not), one per warp: with flops / 4096 (the
  // mma.sync count) the shared-memory fragment loads per tensor-core instruction.
  std::uint64_t ldmatrix = 0;
  bool library_call = false;  // a cuBLASLt matmul: operands counted once, not instrumented
};

// Whether kernel loads and stores are instrumented in this program (the hooks are linked):
// without it a recording holds launches with only cp.async bytes and mma flops.
bool traffic_instrumented();

// Records every launch and cuBLASLt matmul of the process from construction to take().
class TrafficRecording {
 public:
  TrafficRecording();
  ~TrafficRecording();
  TrafficRecording(const TrafficRecording&) = delete;
  TrafficRecording& operator=(const TrafficRecording&) = delete;
  // The launches so far, in order; the recording goes on empty.
  std::vector<LaunchTraffic> take();
};

namespace detail {

// Counted when a launch is running and `address` lies in device memory (the instrumentation
// hooks and cp.async call these).
void count_global_read(const void* address, std::size_t bytes);
void count_global_write(const void* address, std::size_t bytes);
// Tensor-core work of the running launch (mma.sync in kernels/mma.cuh).
void count_tensor_flops(std::uint64_t flops);
// One warp's ldmatrix in the running launch (kernels/mma.cuh).
void count_ldmatrix();
// A cuBLASLt matmul, when recording.
void record_library_call(const char* name, std::uint64_t bytes_read, std::uint64_t bytes_written, std::uint64_t flops);

// The scheduler brackets every launch with these (run_kernel).
void begin_launch_traffic(const void* kernel_address, const char* signature, unsigned long long blocks);
void end_launch_traffic();

// [begin, end) of every live device allocation (cuda_runtime.cpp), sorted by begin.
std::vector<std::pair<std::uintptr_t, std::uintptr_t>> device_ranges();

}  // namespace detail
}  // namespace minitron::emu
