// Per-launch traffic counters (see traffic.h). The state is process-wide like the device it
// stands for: the running launch's counters behind one atomic pointer, so that the hot path (a
// hook per load and store of instrumented code) is one load and, for device memory, one binary
// search and one relaxed add.
#include "emu/traffic.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <memory>
#include <mutex>

#include "emu/symbol_name.h"
#include "util/error.h"

// Defined by emu/traffic_hooks.cpp, which only counted builds link.
extern "C" void minitron_emu_traffic_hooks_linked() __attribute__((weak));

namespace minitron::emu {
namespace detail {
namespace {

constexpr std::uintptr_t kSectorBytes = 32;  // the DRAM access granularity of NVIDIA GPUs

// One device allocation and the sectors of it the launch read and wrote.
struct Range {
  std::uintptr_t begin = 0, end = 0;
  std::unique_ptr<std::atomic<std::uint64_t>[]> read_sectors, written_sectors;

  static std::size_t words(std::uintptr_t bytes) { return (bytes + kSectorBytes * 64 - 1) / (kSectorBytes * 64); }
  void mark(std::atomic<std::uint64_t>* bits, std::uintptr_t address, std::size_t bytes) const {
    const std::uintptr_t last = std::min(address + (bytes == 0 ? 0 : bytes - 1), end - 1);
    for (std::uintptr_t sector = (address - begin) / kSectorBytes; sector <= (last - begin) / kSectorBytes; ++sector)
      bits[sector / 64].fetch_or(1ull << (sector % 64), std::memory_order_relaxed);
  }
  std::uint64_t distinct_bytes(const std::atomic<std::uint64_t>* bits) const {
    std::uint64_t sectors = 0;
    for (std::size_t w = 0; w < words(end - begin); ++w) sectors += std::popcount(bits[w].load());
    return sectors * kSectorBytes;
  }
};

struct ActiveLaunch {
  std::vector<Range> ranges;  // device memory, sorted by begin
  std::atomic<std::uint64_t> read{0}, written{0}, flops{0}, ldmatrix{0};
  std::string kernel;
  unsigned long long blocks = 0;
};

struct Recorder {
  std::mutex mutex;
  bool recording = false;
  std::vector<LaunchTraffic> launches;
  std::unique_ptr<ActiveLaunch> active;
};

Recorder& recorder() {
  static Recorder state;
  return state;
}

// The running launch while recording, else null: read by every hook.
constinit std::atomic<ActiveLaunch*> g_active{nullptr};

// The device allocation holding `address`, or null.
const Range* device_range(const ActiveLaunch& launch, const void* address) {
  const auto p = reinterpret_cast<std::uintptr_t>(address);
  auto after = std::upper_bound(launch.ranges.begin(), launch.ranges.end(), p,
                                [](std::uintptr_t value, const Range& range) { return value < range.begin; });
  if (after == launch.ranges.begin() || p >= std::prev(after)->end) return nullptr;
  return &*std::prev(after);
}

}  // namespace

void count_global_read(const void* address, std::size_t bytes) {
  ActiveLaunch* launch = g_active.load(std::memory_order_acquire);
  if (launch == nullptr) return;
  if (const Range* range = device_range(*launch, address)) {
    launch->read.fetch_add(bytes, std::memory_order_relaxed);
    range->mark(range->read_sectors.get(), reinterpret_cast<std::uintptr_t>(address), bytes);
  }
}

void count_global_write(const void* address, std::size_t bytes) {
  ActiveLaunch* launch = g_active.load(std::memory_order_acquire);
  if (launch == nullptr) return;
  if (const Range* range = device_range(*launch, address)) {
    launch->written.fetch_add(bytes, std::memory_order_relaxed);
    range->mark(range->written_sectors.get(), reinterpret_cast<std::uintptr_t>(address), bytes);
  }
}

void count_tensor_flops(std::uint64_t flops) {
  ActiveLaunch* launch = g_active.load(std::memory_order_acquire);
  if (launch != nullptr) launch->flops.fetch_add(flops, std::memory_order_relaxed);
}

void count_ldmatrix() {
  ActiveLaunch* launch = g_active.load(std::memory_order_acquire);
  if (launch != nullptr) launch->ldmatrix.fetch_add(1, std::memory_order_relaxed);
}

void record_library_call(const char* name, std::uint64_t bytes_read, std::uint64_t bytes_written, std::uint64_t flops) {
  Recorder& state = recorder();
  std::lock_guard lock(state.mutex);
  if (!state.recording) return;
  LaunchTraffic call;
  call.kernel = name;
  call.bytes_read = bytes_read;
  call.bytes_written = bytes_written;
  call.distinct_bytes_read = bytes_read;
  call.distinct_bytes_written = bytes_written;
  call.flops = flops;
  call.library_call = true;
  state.launches.push_back(std::move(call));
}

void begin_launch_traffic(const void* kernel_address, const char* signature, unsigned long long blocks) {
  Recorder& state = recorder();
  std::lock_guard lock(state.mutex);
  if (!state.recording) return;
  if (state.active != nullptr)
    fail("minitron emulator: a kernel launched while '" + state.active->kernel +
         "' ran under a traffic recording (expected launches from one host thread)");
  auto launch = std::make_unique<ActiveLaunch>();
  for (const auto& [begin, end] : device_ranges()) {
    Range range;
    range.begin = begin;
    range.end = end;
    range.read_sectors.reset(new std::atomic<std::uint64_t>[Range::words(end - begin)]());
    range.written_sectors.reset(new std::atomic<std::uint64_t>[Range::words(end - begin)]());
    launch->ranges.push_back(std::move(range));
  }
  launch->kernel = function_name(kernel_address);
  if (launch->kernel.empty()) launch->kernel = signature;
  launch->blocks = blocks;
  state.active = std::move(launch);
  g_active.store(state.active.get(), std::memory_order_release);
}

void end_launch_traffic() {
  Recorder& state = recorder();
  std::lock_guard lock(state.mutex);
  if (state.active == nullptr) return;
  g_active.store(nullptr, std::memory_order_release);
  LaunchTraffic done;
  done.kernel = std::move(state.active->kernel);
  done.blocks = state.active->blocks;
  done.bytes_read = state.active->read.load();
  done.bytes_written = state.active->written.load();
  done.flops = state.active->flops.load();
  done.ldmatrix = state.active->ldmatrix.load();
  for (const Range& range : state.active->ranges) {
    done.distinct_bytes_read += range.distinct_bytes(range.read_sectors.get());
    done.distinct_bytes_written += range.distinct_bytes(range.written_sectors.get());
  }
  state.launches.push_back(std::move(done));
  state.active.reset();
}

}  // namespace detail

bool traffic_instrumented() { return &minitron_emu_traffic_hooks_linked != nullptr; }

TrafficRecording::TrafficRecording() {
  detail::Recorder& state = detail::recorder();
  std::lock_guard lock(state.mutex);
  if (state.recording) fail("minitron emulator: a second traffic recording (expected one at a time)");
  state.recording = true;
  state.launches.clear();
}

TrafficRecording::~TrafficRecording() {
  detail::Recorder& state = detail::recorder();
  std::lock_guard lock(state.mutex);
  state.recording = false;
  state.launches.clear();
}

std::vector<LaunchTraffic> TrafficRecording::take() {
  detail::Recorder& state = detail::recorder();
  std::lock_guard lock(state.mutex);
  return std::exchange(state.launches, {});
}

}  // namespace minitron::emu
