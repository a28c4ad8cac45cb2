// The CUDA runtime API subset the engine uses, defined for the emulator (no libcudart linked).
//
// The declarations are cuda_runtime.h's own (extern "C"), so the CUDA backend's host code
// compiles unchanged. Device memory is host memory (256-byte aligned like cudaMalloc's);
// streams and events are in-order no-ops because launches finish before they return; events
// record host time so cudaEventElapsedTime measures the emulated work. Allocations are tracked
// so that freeing a pointer cudaMalloc never returned is reported as CUDA would
// (cudaErrorInvalidValue) instead of corrupting the heap, and counted per host thread
// (thread_device_memory), so a test can compare what a training rank allocated with the plan.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "emu/emulator.h"
#include "emu/runtime_state.h"
#include "emu/traffic.h"

struct CUstream_st {
  int unused;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point recorded;
};

namespace minitron::emu::detail {
namespace {

constexpr std::size_t default_shared_limit = 48 * 1024;
constexpr std::size_t optin_shared_limit = 227 * 1024;  // sm_90's opt-in maximum per block
constexpr std::size_t emulated_memory = 80ull << 30;    // what cudaMemGetInfo reports

// Process-wide like the device state it stands for.
struct Allocation {
  std::size_t bytes;
  std::thread::id owner;  // the host thread whose account it counts in
};

struct RuntimeState {
  std::mutex mutex;
  std::unordered_map<const void*, Allocation> allocations;
  // Per host thread: the ranks of a multi-rank test are threads sharing the one emulated device.
  std::unordered_map<std::thread::id, DeviceMemoryUse> accounts;
  std::unordered_map<const void*, std::size_t> shared_limits;
  std::size_t allocated_bytes = 0;
};

RuntimeState& state() {
  static RuntimeState runtime;
  return runtime;
}

// The last error of this host thread, as cudaGetLastError reports and clears it.
constinit thread_local cudaError_t t_last_error = cudaSuccess;

cudaError_t record(cudaError_t error) {
  if (error != cudaSuccess) t_last_error = error;
  return error;
}

cudaError_t allocate(void** pointer, std::size_t bytes) {
  if (pointer == nullptr) return record(cudaErrorInvalidValue);
  *pointer = nullptr;
  if (bytes == 0) return cudaSuccess;
  const std::size_t rounded = (bytes + 255) / 256 * 256;
  void* memory = std::aligned_alloc(256, rounded);
  if (memory == nullptr) return record(cudaErrorMemoryAllocation);
  auto& runtime = state();
  std::lock_guard lock(runtime.mutex);
  runtime.allocations.emplace(memory, Allocation{bytes, std::this_thread::get_id()});
  runtime.allocated_bytes += bytes;
  DeviceMemoryUse& account = runtime.accounts[std::this_thread::get_id()];
  account.current += bytes;
  account.peak = std::max(account.peak, account.current);
  *pointer = memory;
  return cudaSuccess;
}

cudaError_t release(void* pointer) {
  if (pointer == nullptr) return cudaSuccess;
  auto& runtime = state();
  {
    std::lock_guard lock(runtime.mutex);
    auto found = runtime.allocations.find(pointer);
    if (found == runtime.allocations.end()) return record(cudaErrorInvalidValue);
    runtime.allocated_bytes -= found->second.bytes;
    runtime.accounts[found->second.owner].current -= found->second.bytes;
    runtime.allocations.erase(found);
  }
  std::free(pointer);
  return cudaSuccess;
}

}  // namespace

std::vector<std::pair<std::uintptr_t, std::uintptr_t>> device_ranges() {
  auto& runtime = state();
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
  {
    std::lock_guard lock(runtime.mutex);
    ranges.reserve(runtime.allocations.size());
    for (const auto& [pointer, allocation] : runtime.allocations) {
      const auto begin = reinterpret_cast<std::uintptr_t>(pointer);
      ranges.emplace_back(begin, begin + allocation.bytes);
    }
  }
  std::sort(ranges.begin(), ranges.end());
  return ranges;
}

std::size_t max_dynamic_shared_bytes(const void* kernel) {
  auto& runtime = state();
  std::lock_guard lock(runtime.mutex);
  auto found = runtime.shared_limits.find(kernel);
  return found == runtime.shared_limits.end() ? default_shared_limit : found->second;
}

}  // namespace minitron::emu::detail

namespace minitron::emu {

DeviceMemoryUse thread_device_memory() {
  auto& runtime = detail::state();
  std::lock_guard lock(runtime.mutex);
  const auto found = runtime.accounts.find(std::this_thread::get_id());
  return found == runtime.accounts.end() ? DeviceMemoryUse{} : found->second;
}

void reset_thread_device_memory_peak() {
  auto& runtime = detail::state();
  std::lock_guard lock(runtime.mutex);
  DeviceMemoryUse& account = runtime.accounts[std::this_thread::get_id()];
  account.peak = account.current;
}

}  // namespace minitron::emu

namespace emu = minitron::emu::detail;

extern "C" {

cudaError_t cudaMalloc(void** pointer, size_t bytes) { return emu::allocate(pointer, bytes); }
cudaError_t cudaMallocHost(void** pointer, size_t bytes) { return emu::allocate(pointer, bytes); }
cudaError_t cudaHostAlloc(void** pointer, size_t bytes, unsigned int) { return emu::allocate(pointer, bytes); }
cudaError_t cudaMallocAsync(void** pointer, size_t bytes, cudaStream_t) { return emu::allocate(pointer, bytes); }
cudaError_t cudaFree(void* pointer) { return emu::release(pointer); }
cudaError_t cudaFreeHost(void* pointer) { return emu::release(pointer); }
cudaError_t cudaFreeAsync(void* pointer, cudaStream_t) { return emu::release(pointer); }

cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, enum cudaMemcpyKind) {
  if (bytes != 0 && (destination == nullptr || source == nullptr)) return emu::record(cudaErrorInvalidValue);
  if (bytes != 0) std::memmove(destination, source, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* destination, const void* source, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t) {
  return cudaMemcpy(destination, source, bytes, kind);
}
cudaError_t cudaMemcpy2D(void* destination, size_t destination_pitch, const void* source, size_t source_pitch,
                         size_t width, size_t height, enum cudaMemcpyKind) {
  if (width > destination_pitch || width > source_pitch) return emu::record(cudaErrorInvalidPitchValue);
  for (size_t row = 0; row < height; ++row)
    std::memmove(static_cast<char*>(destination) + row * destination_pitch,
                 static_cast<const char*>(source) + row * source_pitch, width);
  return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* destination, size_t destination_pitch, const void* source, size_t source_pitch,
                              size_t width, size_t height, enum cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy2D(destination, destination_pitch, source, source_pitch, width, height, kind);
}
cudaError_t cudaMemcpyPeer(void* destination, int, const void* source, int, size_t bytes) {
  return cudaMemcpy(destination, source, bytes, cudaMemcpyDefault);
}
cudaError_t cudaMemset(void* pointer, int value, size_t bytes) {
  if (bytes != 0 && pointer == nullptr) return emu::record(cudaErrorInvalidValue);
  if (bytes != 0) std::memset(pointer, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t) {
  return cudaMemset(pointer, value, bytes);
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  auto& runtime = emu::state();
  std::lock_guard lock(runtime.mutex);
  if (total_bytes != nullptr) *total_bytes = emu::emulated_memory;
  if (free_bytes != nullptr)
    *free_bytes = runtime.allocated_bytes < emu::emulated_memory ? emu::emulated_memory - runtime.allocated_bytes : 0;
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  if (stream == nullptr) return emu::record(cudaErrorInvalidValue);
  *stream = new CUstream_st{0};
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) { return cudaStreamCreate(stream); }
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  if (event == nullptr) return emu::record(cudaErrorInvalidValue);
  *event = new CUevent_st{std::chrono::steady_clock::now()};
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) { return cudaEventCreate(event); }
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  if (event == nullptr) return emu::record(cudaErrorInvalidResourceHandle);
  event->recorded = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* milliseconds, cudaEvent_t start, cudaEvent_t end) {
  if (milliseconds == nullptr || start == nullptr || end == nullptr) return emu::record(cudaErrorInvalidValue);
  *milliseconds = std::chrono::duration<float, std::milli>(end->recorded - start->recorded).count();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t error = emu::t_last_error;
  emu::t_last_error = cudaSuccess;
  return error;
}
cudaError_t cudaPeekAtLastError(void) { return emu::t_last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidPitchValue: return "cudaErrorInvalidPitchValue";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidPitchValue: return "invalid pitch argument";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unknown error (emulator)";
  }
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaDeviceReset(void) { return cudaSuccess; }
cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return emu::record(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : emu::record(cudaErrorInvalidDevice); }
cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return emu::record(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* version) {
  if (version == nullptr) return emu::record(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* version) { return cudaDriverGetVersion(version); }

// An H100-like device (sm_90), so code that sizes its launches from the properties behaves as
// it would on the GPUs the project targets.
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* properties, int device) {
  if (properties == nullptr) return emu::record(cudaErrorInvalidValue);
  if (device != 0) return emu::record(cudaErrorInvalidDevice);
  *properties = cudaDeviceProp{};
  std::strncpy(properties->name, "minitron CUDA emulator (sm_90-like)", sizeof properties->name - 1);
  properties->totalGlobalMem = emu::emulated_memory;
  properties->sharedMemPerBlock = emu::default_shared_limit;
  properties->sharedMemPerBlockOptin = emu::optin_shared_limit;
  properties->sharedMemPerMultiprocessor = 228 * 1024;
  properties->regsPerBlock = 65536;
  properties->regsPerMultiprocessor = 65536;
  properties->warpSize = 32;
  properties->maxThreadsPerBlock = 1024;
  properties->maxThreadsPerMultiProcessor = 2048;
  properties->maxThreadsDim[0] = 1024;
  properties->maxThreadsDim[1] = 1024;
  properties->maxThreadsDim[2] = 64;
  properties->maxGridSize[0] = 2147483647;
  properties->maxGridSize[1] = 65535;
  properties->maxGridSize[2] = 65535;
  properties->totalConstMem = 64 * 1024;
  properties->major = 9;
  properties->minor = 0;
  properties->multiProcessorCount = 132;
  properties->l2CacheSize = 50 * 1024 * 1024;
  properties->maxBlocksPerMultiProcessor = 32;
  properties->memoryBusWidth = 5120;
  properties->concurrentKernels = 1;
  properties->unifiedAddressing = 1;
  properties->managedMemory = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attribute, int device) {
  if (value == nullptr) return emu::record(cudaErrorInvalidValue);
  if (device != 0) return emu::record(cudaErrorInvalidDevice);
  switch (attribute) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxBlockDimY: *value = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *value = 64; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxGridDimY: *value = 65535; break;
    case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(emu::default_shared_limit); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(emu::optin_shared_limit); break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = 228 * 1024; break;
    default: return emu::record(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* kernel, enum cudaFuncAttribute attribute, int value) {
  if (kernel == nullptr) return emu::record(cudaErrorInvalidDeviceFunction);
  if (attribute == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<std::size_t>(value) > emu::optin_shared_limit)
      return emu::record(cudaErrorInvalidValue);
    auto& runtime = emu::state();
    std::lock_guard lock(runtime.mutex);
    runtime.shared_limits[kernel] = std::max<std::size_t>(static_cast<std::size_t>(value), emu::default_shared_limit);
  }
  return cudaSuccess;  // other attributes (carveout, ...) do not change emulated behaviour
}

cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attributes, const void* kernel) {
  if (attributes == nullptr || kernel == nullptr) return emu::record(cudaErrorInvalidValue);
  *attributes = cudaFuncAttributes{};
  attributes->maxThreadsPerBlock = 1024;
  attributes->maxDynamicSharedSizeBytes = static_cast<int>(emu::max_dynamic_shared_bytes(kernel));
  attributes->numRegs = 32;
  attributes->ptxVersion = 90;
  attributes->binaryVersion = 90;
  return cudaSuccess;
}

}  // extern "C"
