// The CUDA emulator's scheduler: runs each block's threads as fibers on one OS thread.
//
// A Worker (one per OS thread taking part in a launch) runs blocks one after another. For a
// block it prepares one Fiber per CUDA thread and a FIFO ready queue holding them in thread order
// (or reversed). Fibers switch directly to one another: a fiber that must wait (block barrier,
// warp operation) records where it waits and switches to the head of the queue; whoever
// completes the barrier appends the waiters to the queue in arrival order and keeps running.
// When the queue is empty while fibers still wait, nobody can ever continue: a deadlock, reported
// with where every thread waits. Fibers start lazily, on their first switch.
//
// Warp operations meet in a WarpGroup record: each lane of the mask writes its value into the
// record and the record completes when every lane of the mask has arrived (lanes the block lacks
// or that exited are left out of __syncwarp and votes; shuffles reading them abort). Every lane reads what
// it needs right after it resumes and the last reader recycles the record, so a lane that runs
// ahead into the next shuffle can never overwrite values another lane still has to read, and
// disjoint masks of one warp (divergent halves) progress independently.
//
// Sanitizers: under ThreadSanitizer each fiber is a TSan fiber, switches carry no implicit
// synchronisation, and barriers are modelled with release/acquire on per-barrier sync objects, so
// TSan sees exactly the happens-before that CUDA guarantees and reports a missing __syncthreads
// as a data race with source lines. The scheduler itself is not instrumented (its bookkeeping is
// shared by the fibers of a block on purpose). Under AddressSanitizer the stack switches are
// announced with __sanitizer_start/finish_switch_fiber.
#include <cxxabi.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "emu/context_switch.h"
#include "emu/emulator.h"
#include "emu/runtime_state.h"
#include "emu/symbol_name.h"
#include "emu/traffic.h"
#include "util/error.h"

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MINITRON_EMU_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define MINITRON_EMU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define MINITRON_EMU_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#define MINITRON_EMU_ASAN 1
#endif

#if defined(MINITRON_EMU_TSAN)
#include <sanitizer/tsan_interface.h>
#define MINITRON_EMU_NO_TSAN __attribute__((no_sanitize("thread")))
// TSan's dynamic annotations (exported by its runtime; no public header declares them).
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
// An abort report reads the scheduler state of every fiber of the block (where each waits, which
// warp operation it is in). Those fibers are suspended on this OS thread and the process ends
// right after, so the reads are no race; unannotated, TSan reports them and its report replaces
// the emulator's message (halt_on_error), breaking the death tests that expect the message.
#define MINITRON_EMU_TSAN_IGNORE_FOR_REPORT() \
  (AnnotateIgnoreReadsBegin(__FILE__, __LINE__), AnnotateIgnoreWritesBegin(__FILE__, __LINE__))
#else
#define MINITRON_EMU_NO_TSAN
#define MINITRON_EMU_TSAN_IGNORE_FOR_REPORT() ((void)0)
#endif
#if defined(MINITRON_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace minitron::emu {

// ------------------------------------------------------------------------------------------------
// Options: process-wide like a device's configuration; read once per launch.
namespace {

std::size_t env_size(const char* name, std::size_t fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text, &end, 10);
  if (*end != '\0') {
    std::fprintf(stderr, "minitron emulator: ignoring %s=%s (expected a non-negative integer)\n", name, text);
    return fallback;
  }
  return static_cast<std::size_t>(value);
}

Options default_options() {
  Options defaults;
#if defined(MINITRON_EMU_ASAN)
  defaults.stack_bytes = 512 * 1024;  // ASan's redzones make frames several times larger
#elif defined(MINITRON_EMU_TSAN)
  defaults.stack_bytes = 256 * 1024;
#endif
  defaults.os_threads = static_cast<int>(env_size("MINITRON_EMU_THREADS", 2));
  defaults.reverse_order = env_size("MINITRON_EMU_REVERSE", 0) != 0;
  defaults.stack_bytes = env_size("MINITRON_EMU_STACK_KIB", defaults.stack_bytes / 1024) * 1024;
  defaults.nccl_timeout_seconds = static_cast<double>(
      env_size("MINITRON_EMU_NCCL_TIMEOUT_SECONDS", static_cast<std::size_t>(defaults.nccl_timeout_seconds)));
  return defaults;
}

struct OptionsStore {
  std::mutex mutex;
  Options options = default_options();
};

OptionsStore& options_store() {
  static OptionsStore store;
  return store;
}

}  // namespace

Options options() {
  auto& store = options_store();
  std::lock_guard lock(store.mutex);
  return store.options;
}

void set_options(const Options& options) {
  auto& store = options_store();
  std::lock_guard lock(store.mutex);
  store.options = options;
}

namespace detail {

// ------------------------------------------------------------------------------------------------
// Fiber stacks: mmap'd, with a PROT_NONE guard page below so an overflow faults instead of
// silently overwriting a neighbour. Kept in a process-wide pool because mapping hundreds of stacks
// per launch would dominate small launches (not under TSan: see release_stack).
namespace {

struct Stack {
  unsigned char* base = nullptr;  // lowest address, the guard page
  std::size_t bytes = 0;          // including the guard page
  unsigned char* bottom() const { return base + page_size(); }
  unsigned char* top() const { return base + bytes; }
  std::size_t usable() const { return bytes - page_size(); }
  static std::size_t page_size() {
    static const std::size_t size = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    return size;
  }
};

class StackPool {
 public:
  Stack acquire(std::size_t usable_bytes) {
    const std::size_t page = Stack::page_size();
    const std::size_t bytes = (usable_bytes + page - 1) / page * page + page;
    {
      std::lock_guard lock(mutex_);
      for (std::size_t i = 0; i < free_.size(); ++i) {
        if (free_[i].bytes == bytes) {
          const Stack stack = free_[i];
          free_[i] = free_.back();
          free_.pop_back();
          return stack;
        }
      }
    }
    void* memory =
        mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (memory == MAP_FAILED) die("cannot map a fiber stack (lower MINITRON_EMU_STACK_KIB or the block size)");
    if (mprotect(memory, page, PROT_NONE) != 0) die("cannot protect a fiber stack's guard page");
    return Stack{static_cast<unsigned char*>(memory), bytes};
  }

  void release(const Stack& stack) {
#if defined(MINITRON_EMU_TSAN)
    // TSan keeps per-address history of the old fibers' stack frames; fresh mappings avoid
    // reports between unrelated fibers that happened to share a stack.
    munmap(stack.base, stack.bytes);
#else
#if defined(MINITRON_EMU_ASAN)
    // The old fiber never unwound its last frames, whose redzones are still poisoned.
    __asan_unpoison_memory_region(stack.bottom(), stack.usable());
#endif
    std::lock_guard lock(mutex_);
    free_.push_back(stack);
#endif
  }

 private:
  std::mutex mutex_;
  std::vector<Stack> free_;
};

StackPool& stack_pool() {
  static StackPool pool;
  return pool;
}

// ------------------------------------------------------------------------------------------------
// Scheduler data.

enum class FiberState : unsigned char { not_started, ready, running, at_barrier, at_warp, done };

struct WarpGroup {
  unsigned mask = 0;
  unsigned required = 0;  // lanes of the mask that must arrive (existing, not exited)
  unsigned arrived = 0;
  int readers = 0;
  WarpOp op = WarpOp::syncwarp;
  unsigned bytes = 0;
  std::source_location where;
  WarpGroup* next_free = nullptr;
  alignas(16) unsigned char values[32][32];  // up to 32 bytes per lane (an mma's A and B fragments)
};

// A pending cp.async: `group` 0 while uncommitted, else the number of the commit that closed it
// (1, 2, ...), so the copies of a fiber are sorted by group with the uncommitted ones last.
struct AsyncCopy {
  unsigned char* dst;
  const unsigned char* src;
  unsigned group;
  bool zero_fill;
};

struct Fiber {
  ThreadView view{};
  void* sp = nullptr;
  Stack stack;
  FiberState state = FiberState::not_started;
  unsigned linear = 0;
  std::source_location where;           // where it waits
  WarpGroup* group = nullptr;           // the warp operation it waits in
  std::vector<AsyncCopy> async_copies;  // pending cp.async copies, in issue order
  unsigned async_commits = 0;           // commit groups closed so far in this block
#if defined(MINITRON_EMU_TSAN)
  void* tsan_fiber = nullptr;
#endif
#if defined(MINITRON_EMU_ASAN)
  void* asan_fake_stack = nullptr;
#endif
};

struct Warp {
  unsigned existing = 0;  // lanes present in the block
  unsigned exited = 0;
  unsigned pending_count = 0;
  WarpGroup* pending[32];
};

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::syncwarp: return "__syncwarp";
    case WarpOp::shfl: return "__shfl_sync";
    case WarpOp::shfl_up: return "__shfl_up_sync";
    case WarpOp::shfl_down: return "__shfl_down_sync";
    case WarpOp::shfl_xor: return "__shfl_xor_sync";
    case WarpOp::ballot: return "__ballot_sync";
    case WarpOp::any: return "__any_sync";
    case WarpOp::all: return "__all_sync";
    case WarpOp::mma: return "a tensor-core warp operation";
  }
  return "a warp operation";
}

// Which lanes of a mask must arrive. CUDA requires every non-exited lane named in a mask to take
// part; lanes the block lacks (a last warp shorter than 32) count as exited. Shuffles and tensor-core
// operations exchange data, so a lane that exited while named is almost surely a bug and aborts;
// __syncwarp and the votes simply go on without it (documented as valid).
bool tolerates_exited_lanes(WarpOp op) {
  return op == WarpOp::syncwarp || op == WarpOp::ballot || op == WarpOp::any || op == WarpOp::all;
}

const char* barrier_name(BarrierKind kind) {
  switch (kind) {
    case BarrierKind::sync: return "__syncthreads";
    case BarrierKind::count: return "__syncthreads_count";
    case BarrierKind::all: return "__syncthreads_and";
    case BarrierKind::any: return "__syncthreads_or";
  }
  return "__syncthreads";
}

std::string location(const std::source_location& where) { return str(where.file_name(), ":", where.line()); }

bool same_location(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}

std::string dim_text(const dim3& d) { return str("(", d.x, ",", d.y, ",", d.z, ")"); }
std::string dim_text(const uint3& d) { return str("(", d.x, ",", d.y, ",", d.z, ")"); }

// The kernel's name (from the symbol tables), or else its signature and address.
std::string kernel_name(const KernelLaunch& launch) {
  std::string name = function_name(launch.kernel_address);
  if (!name.empty()) return str("kernel ", name);
  int status = 0;
  char* demangled = abi::__cxa_demangle(launch.signature, nullptr, nullptr, &status);
  const std::string signature = status == 0 && demangled != nullptr ? demangled : launch.signature;
  std::free(demangled);
  char address[32];
  std::snprintf(address, sizeof address, "%p", launch.kernel_address);
  return str("kernel at ", address, " of type ", signature);
}

class Worker;
constinit thread_local Worker* t_worker = nullptr;

// Turns a fault in a fiber's guard page into a message instead of a bare SIGSEGV: while a worker
// runs, its OS thread has an alternate signal stack (the fiber stack is the one that overflowed)
// and a SIGSEGV handler that recognises the guard page. Other faults go to the previous handler.
// Off under the sanitizers, which install their own handlers and report overflows themselves.
class StackOverflowReporter {
 public:
  explicit StackOverflowReporter(std::size_t stack_bytes);
  ~StackOverflowReporter();
  StackOverflowReporter(const StackOverflowReporter&) = delete;
  StackOverflowReporter& operator=(const StackOverflowReporter&) = delete;

 private:
  void* alternate_ = nullptr;
  std::size_t alternate_bytes_ = 0;
  stack_t previous_{};
};

void fiber_main(void* fiber);

// Runs blocks on the calling OS thread.
class Worker {
 public:
  Worker(const KernelLaunch& launch, const Options& options)
      : launch_(launch), options_(options), overflow_reporter_(options.stack_bytes) {
    const unsigned threads = launch.block.x * launch.block.y * launch.block.z;
    fibers_.resize(threads);
    queue_.resize(std::bit_ceil(threads));
    barrier_waiters_.resize(threads);
    warps_.resize((threads + 31) / 32);
    dynamic_shared_.reset(static_cast<unsigned char*>(
        ::operator new (std::max<std::size_t>(launch.shared_bytes, 16), std::align_val_t{128})));
  }

  ~Worker() {
    for (Fiber& fiber : fibers_) {
      if (fiber.stack.base != nullptr) stack_pool().release(fiber.stack);
#if defined(MINITRON_EMU_TSAN)
      if (fiber.tsan_fiber != nullptr) __tsan_destroy_fiber(fiber.tsan_fiber);
#endif
    }
    while (free_groups_ != nullptr) {
      WarpGroup* next = free_groups_->next_free;
      delete free_groups_;
      free_groups_ = next;
    }
  }

  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  MINITRON_EMU_NO_TSAN void run_block(const uint3& block_idx);

  // Called by the running fiber.
  MINITRON_EMU_NO_TSAN int barrier(BarrierKind kind, int predicate, const std::source_location& where);
  MINITRON_EMU_NO_TSAN unsigned warp_exchange(unsigned mask, WarpOp op, const void* value, unsigned bytes,
                                              unsigned source_lane, void* out, const std::source_location& where);
  MINITRON_EMU_NO_TSAN unsigned active_lanes() const {
    const Warp& warp = warps_[current_->view.warp];
    return warp.existing & ~warp.exited;
  }
  MINITRON_EMU_NO_TSAN void run_fiber(Fiber* fiber);
  MINITRON_EMU_NO_TSAN void async_copy(void* shared_dst, const void* global_src, bool zero_fill,
                                       const std::source_location& where);
  MINITRON_EMU_NO_TSAN void async_commit() {
    Fiber* self = current_;
    ++self->async_commits;
    for (auto it = self->async_copies.rbegin(); it != self->async_copies.rend() && it->group == 0; ++it)
      it->group = self->async_commits;
  }
  MINITRON_EMU_NO_TSAN void async_wait(unsigned newest_pending);
  MINITRON_EMU_NO_TSAN void check_store_space(const void* address, std::size_t bytes, Space space,
                                              const char* what) const;
  [[noreturn]] void fail(const std::string& message) const;
  // fail() with the message built out of line, so that hot paths keep small stack frames.
  template <typename MakeMessage>
  [[noreturn, gnu::cold, gnu::noinline]] void fail_cold(MakeMessage make_message) const {
    MINITRON_EMU_TSAN_IGNORE_FOR_REPORT();
    fail(make_message());
  }
  // Whether `address` lies in the running fiber's guard page (a stack overflow).
  bool in_guard_page(const void* address) const {
    if (current_ == nullptr || current_->stack.base == nullptr) return false;
    const auto* byte = static_cast<const unsigned char*>(address);
    return byte >= current_->stack.base && byte < current_->stack.bottom();
  }
  const KernelLaunch& launch() const { return launch_; }
  const uint3& block_idx() const { return block_idx_; }

 private:
  MINITRON_EMU_NO_TSAN void push_ready(Fiber* fiber);
  MINITRON_EMU_NO_TSAN Fiber* pop_ready();
  MINITRON_EMU_NO_TSAN void wait_current();
  MINITRON_EMU_NO_TSAN void switch_to(Fiber* from, Fiber* to, bool from_exits);
  MINITRON_EMU_NO_TSAN void switch_to_scheduler(Fiber* from);
  MINITRON_EMU_NO_TSAN void after_switch(Fiber* self);
  MINITRON_EMU_NO_TSAN void complete_barrier();
  MINITRON_EMU_NO_TSAN void on_exit(Fiber* fiber);
  MINITRON_EMU_NO_TSAN WarpGroup* new_group();
  MINITRON_EMU_NO_TSAN void complete_group(WarpGroup* group, unsigned warp_index, unsigned running_lane);
  [[noreturn]] void deadlock() const;
  std::string describe_wait(const Fiber& fiber) const;
  std::string thread_text(const Fiber& fiber) const { return dim_text(fiber.view.thread_idx); }

  const KernelLaunch& launch_;
  const Options options_;
  StackOverflowReporter overflow_reporter_;
  uint3 block_idx_{};
  std::vector<Fiber> fibers_;
  std::vector<Warp> warps_;
  std::unique_ptr<unsigned char, void (*)(unsigned char*)> dynamic_shared_{
      nullptr, [](unsigned char* p) { ::operator delete (p, std::align_val_t{128}); }};

  // Ready queue: a ring of a power-of-two size >= fibers_.size(); each fiber is in it at most once.
  std::vector<Fiber*> queue_;
  std::size_t queue_head_ = 0;
  std::size_t queue_count_ = 0;

  Fiber* current_ = nullptr;
  void* scheduler_sp_ = nullptr;
  unsigned live_ = 0;  // fibers not yet exited

  // The block barrier being gathered.
  std::vector<Fiber*> barrier_waiters_;
  unsigned barrier_arrived_ = 0;
  BarrierKind barrier_kind_ = BarrierKind::sync;
  std::source_location barrier_where_;
  int barrier_accumulator_ = 0;
  int barrier_result_ = 0;
  unsigned barrier_generation_ = 0;

  WarpGroup* free_groups_ = nullptr;

#if defined(MINITRON_EMU_TSAN)
  void* tsan_scheduler_fiber_ = nullptr;
  char tsan_block_start_ = 0;  // sync objects: their addresses are what matters
  char tsan_block_end_ = 0;
  char tsan_barrier_[2] = {0, 0};
#endif
#if defined(MINITRON_EMU_ASAN)
  const void* asan_scheduler_bottom_ = nullptr;
  std::size_t asan_scheduler_size_ = 0;
  void* asan_scheduler_fake_stack_ = nullptr;
#endif
};

void Worker::fail(const std::string& message) const {
  MINITRON_EMU_TSAN_IGNORE_FOR_REPORT();
  const std::string text =
      str("minitron emulator: ", kernel_name(launch_), ", block ", dim_text(block_idx_),
          current_ != nullptr ? str(", thread ", thread_text(*current_)) : std::string(), ": ", message, "\n");
  std::fputs(text.c_str(), stderr);
  std::fflush(stderr);
  std::abort();
}

#if defined(MINITRON_EMU_ASAN) || defined(MINITRON_EMU_TSAN)
StackOverflowReporter::StackOverflowReporter(std::size_t) {}
StackOverflowReporter::~StackOverflowReporter() {}
#else
struct sigaction g_previous_segv_action;  // written once, before the handler is installed

void on_segv(int signal, siginfo_t* info, void* context) {
  const Worker* worker = t_worker;
  if (worker != nullptr && worker->in_guard_page(info->si_addr)) {
    // Not async-signal-safe, but the process is about to abort anyway.
    const std::string text =
        str("minitron emulator: ", kernel_name(worker->launch()), ", block ", dim_text(worker->block_idx()),
            ": a CUDA thread overflowed its ", ::minitron::emu::options().stack_bytes / 1024,
            " KiB fiber stack (large local arrays?); raise MINITRON_EMU_STACK_KIB or Options::stack_bytes\n");
    if (write(STDERR_FILENO, text.data(), text.size()) < 0) {
    }
    std::abort();
  }
  // Not a fiber overflow: hand the fault to whoever handled it before.
  if ((g_previous_segv_action.sa_flags & SA_SIGINFO) != 0 && g_previous_segv_action.sa_sigaction != nullptr) {
    g_previous_segv_action.sa_sigaction(signal, info, context);
  } else if (g_previous_segv_action.sa_handler != SIG_IGN && g_previous_segv_action.sa_handler != SIG_DFL) {
    g_previous_segv_action.sa_handler(signal);
  } else {
    ::signal(SIGSEGV, SIG_DFL);  // returning re-executes the access, which now kills the process
  }
}

StackOverflowReporter::StackOverflowReporter(std::size_t) {
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction action {};
    action.sa_sigaction = &on_segv;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &g_previous_segv_action);
  });
  alternate_bytes_ = std::max<std::size_t>(SIGSTKSZ, 64 * 1024);
  alternate_ = mmap(nullptr, alternate_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (alternate_ == MAP_FAILED) {
    alternate_ = nullptr;
    return;
  }
  stack_t stack{};
  stack.ss_sp = alternate_;
  stack.ss_size = alternate_bytes_;
  sigaltstack(&stack, &previous_);
}

StackOverflowReporter::~StackOverflowReporter() {
  if (alternate_ == nullptr) return;
  sigaltstack(&previous_, nullptr);
  munmap(alternate_, alternate_bytes_);
}
#endif

void Worker::push_ready(Fiber* fiber) {
  fiber->state = FiberState::ready;
  queue_[(queue_head_ + queue_count_) & (queue_.size() - 1)] = fiber;
  ++queue_count_;
}

Fiber* Worker::pop_ready() {
  if (queue_count_ == 0) return nullptr;
  Fiber* fiber = queue_[queue_head_];
  queue_head_ = (queue_head_ + 1) & (queue_.size() - 1);
  --queue_count_;
  return fiber;
}

void Worker::run_block(const uint3& block_idx) {
  block_idx_ = block_idx;
  const dim3 block = launch_.block;
  const unsigned threads = static_cast<unsigned>(fibers_.size());
  std::memset(dynamic_shared_.get(), 0xFF, launch_.shared_bytes);
  for (unsigned i = 0; i < threads; ++i) {
    Fiber& fiber = fibers_[i];
    fiber.view.thread_idx = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
    fiber.view.block_idx = block_idx;
    fiber.view.block_dim = block;
    fiber.view.grid_dim = launch_.grid;
    fiber.view.lane = i % 32;
    fiber.view.warp = i / 32;
    fiber.view.dynamic_shared = dynamic_shared_.get();
    fiber.view.dynamic_shared_bytes = launch_.shared_bytes;
    fiber.linear = i;
    fiber.group = nullptr;
    fiber.async_copies.clear();
    fiber.async_commits = 0;
    fiber.state = FiberState::not_started;
    // Under TSan too a fiber keeps its stack from block to block: it is the same TSan fiber (see
    // run_block's TSan set-up), so its old frames are its own history, not another thread's.
    // Remapping each stack per block (as once done) spent most of the run in munmap and faults.
    if (fiber.stack.base == nullptr) fiber.stack = stack_pool().acquire(options_.stack_bytes);
#if defined(MINITRON_EMU_ASAN)
    // The previous block's fiber never unwound its last frames, whose redzones are still poisoned.
    else
      __asan_unpoison_memory_region(fiber.stack.bottom(), fiber.stack.usable());
#endif
  }
  for (unsigned w = 0; w < warps_.size(); ++w) {
    const unsigned lanes = std::min(32u, threads - w * 32);
    warps_[w].existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
    warps_[w].exited = 0;
    warps_[w].pending_count = 0;
  }
  queue_head_ = 0;
  queue_count_ = 0;
  for (unsigned i = 0; i < threads; ++i) {
    Fiber* fiber = &fibers_[options_.reverse_order ? threads - 1 - i : i];
    queue_[queue_count_++] = fiber;
    fiber->state = FiberState::not_started;
  }
  live_ = threads;
  barrier_arrived_ = 0;
  barrier_generation_ = 0;

#if defined(MINITRON_EMU_TSAN)
  tsan_scheduler_fiber_ = __tsan_get_current_fiber();
  // TSan fibers are made once per worker, not per block: creating one clears ~0.8 MB of TSan
  // state, which made a launch of many small blocks take minutes. Reuse hides nothing: all of a
  // block's fibers already happen before the next block on this worker (block end -> block start).
  // A fiber keeps its stack for the worker's life for the same reason.
  for (Fiber& fiber : fibers_)
    if (fiber.tsan_fiber == nullptr) fiber.tsan_fiber = __tsan_create_fiber(0);
  __tsan_release(&tsan_block_start_);
#endif
#if defined(MINITRON_EMU_ASAN)
  {
    pthread_attr_t attributes;
    pthread_getattr_np(pthread_self(), &attributes);
    void* stack_address = nullptr;
    std::size_t stack_size = 0;
    pthread_attr_getstack(&attributes, &stack_address, &stack_size);
    pthread_attr_destroy(&attributes);
    asan_scheduler_bottom_ = stack_address;
    asan_scheduler_size_ = stack_size;
  }
#endif

  Worker* saved_worker = t_worker;
  t_worker = this;
  Fiber* first = pop_ready();
  switch_to(nullptr, first, false);
  // Back here once every fiber has exited.
  t_worker = saved_worker;
  current_ = nullptr;
  t_current = nullptr;
#if defined(MINITRON_EMU_TSAN)
  __tsan_acquire(&tsan_block_end_);
#endif
}

// Switches from `from` (null: the scheduler's own context) to `to`, starting it if needed.
void Worker::switch_to(Fiber* from, Fiber* to, bool from_exits) {
  if (to->state == FiberState::not_started) {
    // Offsetting stack tops by a few cache lines keeps the fibers' hot frames from aliasing in
    // the cache (halved shuffle cost at 1024 threads in the feasibility study).
    to->sp = prepare_fiber_stack(to->stack.top() - 64 * (to->linear % 61), &fiber_main, to);
  }
  to->state = FiberState::running;
  current_ = to;
  t_current = &to->view;
  void** save = from != nullptr ? &from->sp : &scheduler_sp_;
#if defined(MINITRON_EMU_TSAN)
  __tsan_switch_to_fiber(to->tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(MINITRON_EMU_ASAN)
  void** fake = from_exits ? nullptr : (from != nullptr ? &from->asan_fake_stack : &asan_scheduler_fake_stack_);
  __sanitizer_start_switch_fiber(fake, to->stack.bottom(), to->stack.usable());
#else
  (void)from_exits;
#endif
  minitron_emu_switch(save, to->sp);
  after_switch(from);
}

void Worker::switch_to_scheduler(Fiber* from) {
  current_ = nullptr;
  t_current = nullptr;
#if defined(MINITRON_EMU_TSAN)
  __tsan_switch_to_fiber(tsan_scheduler_fiber_, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(MINITRON_EMU_ASAN)
  __sanitizer_start_switch_fiber(nullptr, asan_scheduler_bottom_, asan_scheduler_size_);
#endif
  minitron_emu_switch(&from->sp, scheduler_sp_);
  __builtin_unreachable();
}

// Runs in the context that was just resumed (`self`, or null for the scheduler).
void Worker::after_switch(Fiber* self) {
#if defined(MINITRON_EMU_ASAN)
  void* fake = self != nullptr ? self->asan_fake_stack : asan_scheduler_fake_stack_;
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)self;
#endif
}

void Worker::wait_current() {
  Fiber* self = current_;
  Fiber* next = pop_ready();
  if (next == nullptr) deadlock();
  switch_to(self, next, false);
}

void Worker::run_fiber(Fiber* fiber) {
  after_switch(fiber);
#if defined(MINITRON_EMU_TSAN)
  __tsan_acquire(&tsan_block_start_);
#endif
  try {
    launch_.entry(launch_.arguments);
  } catch (const std::exception& error) {
    fail_cold([&] { return str("the kernel threw: ", error.what()); });
  } catch (...) {
    fail("the kernel threw an exception");
  }
  on_exit(fiber);
  Fiber* next = pop_ready();
  if (next != nullptr) {
    switch_to(fiber, next, true);
    __builtin_unreachable();
  }
  if (live_ != 0) deadlock();
  switch_to_scheduler(fiber);
}

void Worker::on_exit(Fiber* fiber) {
  // On a GPU the copies would still land, but after the thread's end nothing can order them
  // before another thread's reads (only the issuing thread can wait for them), and the buffer
  // may be reused meanwhile: always a bug or a wasted copy, so it aborts.
  if (!fiber->async_copies.empty())
    fail_cold([&] {
      const std::size_t uncommitted = static_cast<std::size_t>(std::count_if(
          fiber->async_copies.begin(), fiber->async_copies.end(), [](const AsyncCopy& c) { return c.group == 0; }));
      return str("the thread exited with ", fiber->async_copies.size(), " cp.async copies pending (", uncommitted,
                 " of them never committed); wait for them (cp_async_wait<0>, after a commit) before exiting");
    });
  fiber->state = FiberState::done;
  --live_;
#if defined(MINITRON_EMU_TSAN)
  // Writes before exiting are visible after the barrier the others complete next, and to the
  // launching thread once the block has finished.
  __tsan_release(&tsan_barrier_[barrier_generation_ & 1]);
  __tsan_release(&tsan_block_end_);
#endif
  Warp& warp = warps_[fiber->view.warp];
  const unsigned bit = 1u << fiber->view.lane;
  warp.exited |= bit;
  for (unsigned g = 0; g < warp.pending_count;) {
    WarpGroup* group = warp.pending[g];
    if ((group->required & bit) == 0) {
      ++g;
      continue;
    }
    if (!tolerates_exited_lanes(group->op))
      fail_cold([&] {
        return str("lane ", fiber->view.lane, " exited while lanes of its warp wait for it in ", op_name(group->op),
                   " (mask 0x", std::hex, group->mask, std::dec, ") at ", location(group->where));
      });
    // A __syncwarp or vote goes on without the exited lane.
    group->required &= ~bit;
    --group->readers;
    if (group->arrived == group->required)
      complete_group(group, fiber->view.warp, 32);  // removes it
    else
      ++g;
  }
  // Exited threads do not hold a barrier back (as on sm_70 and later).
  if (barrier_arrived_ != 0 && barrier_arrived_ == live_) complete_barrier();
}

void Worker::complete_barrier() {
  barrier_result_ = barrier_accumulator_;
  for (unsigned i = 0; i < barrier_arrived_; ++i) push_ready(barrier_waiters_[i]);
  barrier_arrived_ = 0;
  ++barrier_generation_;
}

int Worker::barrier(BarrierKind kind, int predicate, const std::source_location& where) {
  Fiber* self = current_;
  if (barrier_arrived_ == 0) {
    barrier_kind_ = kind;
    barrier_where_ = where;
    barrier_accumulator_ = kind == BarrierKind::all ? 1 : 0;
  } else if (kind != barrier_kind_ || !same_location(where, barrier_where_)) {
    const Fiber* first = barrier_waiters_[0];
    fail_cold([&] {
      return str("threads wait at different barriers: thread ", thread_text(*first), " at ",
                 barrier_name(barrier_kind_), " (", location(barrier_where_), "), this thread at ", barrier_name(kind),
                 " (", location(where), "); a barrier in divergent code deadlocks or misbehaves on a GPU");
    });
  }
  switch (kind) {
    case BarrierKind::sync: break;
    case BarrierKind::count: barrier_accumulator_ += predicate; break;
    case BarrierKind::all: barrier_accumulator_ &= predicate; break;
    case BarrierKind::any: barrier_accumulator_ |= predicate; break;
  }
#if defined(MINITRON_EMU_TSAN)
  const unsigned generation = barrier_generation_;
  __tsan_release(&tsan_barrier_[generation & 1]);
#endif
  if (barrier_arrived_ + 1 == live_) {
    complete_barrier();
  } else {
    barrier_waiters_[barrier_arrived_++] = self;
    self->state = FiberState::at_barrier;
    self->where = where;
    wait_current();
  }
#if defined(MINITRON_EMU_TSAN)
  __tsan_acquire(&tsan_barrier_[generation & 1]);
#endif
  return barrier_result_;
}

WarpGroup* Worker::new_group() {
  if (free_groups_ != nullptr) {
    WarpGroup* group = free_groups_;
    free_groups_ = group->next_free;
    return group;
  }
  return new WarpGroup;
}

void Worker::complete_group(WarpGroup* group, unsigned warp_index, unsigned running_lane) {
  Warp& warp = warps_[warp_index];
  for (unsigned g = 0; g < warp.pending_count; ++g) {
    if (warp.pending[g] == group) {
      warp.pending[g] = warp.pending[--warp.pending_count];
      break;
    }
  }
  Fiber* lanes = &fibers_[warp_index * 32];
  for (unsigned i = 0; i < 32; ++i) {
    const unsigned l = options_.reverse_order ? 31 - i : i;
    if (l != running_lane && ((group->arrived >> l) & 1u) != 0) push_ready(&lanes[l]);
  }
}

unsigned Worker::warp_exchange(unsigned mask, WarpOp op, const void* value, unsigned bytes, unsigned source_lane,
                               void* out, const std::source_location& where) {
  Fiber* self = current_;
  if (bytes > sizeof(WarpGroup::values[0]))
    fail_cold([&] { return str(op_name(op), " exchanges ", bytes, " bytes per lane, more than 32"); });
  Warp& warp = warps_[self->view.warp];
  const unsigned lane = self->view.lane;
  const unsigned bit = 1u << lane;
  if ((mask & bit) == 0)
    fail_cold([&] {
      return str(op_name(op), " at ", location(where), " with mask 0x", std::hex, mask, std::dec,
                 " that does not include the calling lane ", lane);
    });
  if (!tolerates_exited_lanes(op) && (mask & warp.exited) != 0)
    fail_cold([&] {
      return str(op_name(op), " at ", location(where), " with mask 0x", std::hex, mask, " names lanes that exited (0x",
                 mask & warp.exited, "): their values are undefined on a GPU");
    });

  // Lanes meet in the pending operation with the same mask. Other pending operations may
  // overlap this mask (divergent halves that reconverge into a full-warp vote): masks that never
  // complete end in the deadlock report, which lists every lane's mask and line.
  WarpGroup* group = nullptr;
  for (unsigned g = 0; g < warp.pending_count; ++g) {
    if (warp.pending[g]->mask == mask) {
      group = warp.pending[g];
      break;
    }
  }
  if (group != nullptr && (group->bytes != bytes || (group->op == WarpOp::mma) != (op == WarpOp::mma) ||
                           (group->op == WarpOp::syncwarp) != (op == WarpOp::syncwarp))) {
    fail_cold([&] {
      return str("lanes of one warp disagree: lanes 0x", std::hex, group->arrived, " wait in ", op_name(group->op),
                 " (", std::dec, group->bytes, " bytes) at ", location(group->where), ", lane ", lane, " calls ",
                 op_name(op), " (", bytes, " bytes) with the same mask at ", location(where));
    });
  }
  if (group == nullptr) {
    group = new_group();
    group->mask = mask;
    group->required = mask & warp.existing & ~warp.exited;
    group->arrived = 0;
    group->readers = std::popcount(group->required);
    group->op = op;
    group->bytes = bytes;
    group->where = where;
    warp.pending[warp.pending_count++] = group;
  }
#if defined(MINITRON_EMU_TSAN)
  // The record's memory was last used by other fibers (allocation, earlier readers): their
  // accesses happen before this lane's write. memcpy is intercepted by TSan even here.
  __tsan_acquire(group);
#endif
  if (bytes != 0) std::memcpy(group->values[lane], value, bytes);
  group->arrived |= bit;
#if defined(MINITRON_EMU_TSAN)
  __tsan_release(group);
#endif
  if (group->arrived == group->required) {
    complete_group(group, self->view.warp, lane);
  } else {
    self->state = FiberState::at_warp;
    self->group = group;
    self->where = where;
    wait_current();
    self->group = nullptr;
  }
#if defined(MINITRON_EMU_TSAN)
  __tsan_acquire(group);
#endif
  unsigned result = 0;
  if (out != nullptr) {
    if (source_lane == all_lanes) {
      auto* destination = static_cast<unsigned char*>(out);
      for (unsigned l = 0; l < 32; ++l)
        if (((group->arrived >> l) & 1u) != 0) std::memcpy(destination + l * bytes, group->values[l], bytes);
    } else {
      if (source_lane > 31 || ((mask >> source_lane) & 1u) == 0)
        fail_cold([&] {
          return str(op_name(op), " at ", location(where), " reads lane ", source_lane, ", outside the mask 0x",
                     std::hex, mask);
        });
      if (((group->arrived >> source_lane) & 1u) == 0)
        fail_cold([&] {
          return str(op_name(op), " at ", location(where), " reads lane ", source_lane,
                     ", which does not exist in this block (its value is undefined on a GPU)");
        });
      std::memcpy(out, group->values[source_lane], bytes);
    }
  }
  if (op == WarpOp::ballot || op == WarpOp::any || op == WarpOp::all) {
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; ++l)
      if (((group->arrived >> l) & 1u) != 0 && group->values[l][0] != 0) ballot |= 1u << l;
    result = op == WarpOp::all ? static_cast<unsigned>(ballot == group->arrived) : ballot;
  }
#if defined(MINITRON_EMU_TSAN)
  __tsan_release(group);  // this lane's reads happen before the record's next use
#endif
  if (--group->readers == 0) {
    group->next_free = free_groups_;
    free_groups_ = group;
  }
  return result;
}

std::string Worker::describe_wait(const Fiber& fiber) const {
  switch (fiber.state) {
    case FiberState::at_barrier: return str("wait at ", barrier_name(barrier_kind_), " (", location(fiber.where), ")");
    case FiberState::at_warp:
      return str("wait in ", op_name(fiber.group->op), " (", location(fiber.where), ") with mask 0x", std::hex,
                 fiber.group->mask, ", missing lanes 0x", fiber.group->required & ~fiber.group->arrived);
    case FiberState::running: return "is running";
    case FiberState::done: return "exited";
    default: return "has not started";
  }
}

void Worker::deadlock() const {
  MINITRON_EMU_TSAN_IGNORE_FOR_REPORT();
  std::string report = "deadlock: no thread can continue.";
  unsigned lines = 0;
  for (std::size_t i = 0; i < fibers_.size();) {
    const std::string what = describe_wait(fibers_[i]);
    std::size_t end = i + 1;
    while (end < fibers_.size() && describe_wait(fibers_[end]) == what) ++end;
    if (++lines <= 16)
      report += str("\n  threads ", i, "..", end - 1, " (threadIdx ", thread_text(fibers_[i]), "..",
                    thread_text(fibers_[end - 1]), ") ", what);
    i = end;
  }
  if (lines > 16) report += str("\n  ... ", lines - 16, " more groups");
  // The report is about the block, not the thread that noticed.
  const std::string text =
      str("minitron emulator: ", kernel_name(launch_), ", block ", dim_text(block_idx_), ": ", report, "\n");
  std::fputs(text.c_str(), stderr);
  std::fflush(stderr);
  std::abort();
}

// The static TLS block of this OS thread, where the emulator's __shared__ variables (static
// thread_local) live: on x86-64 it lies just below the thread pointer (%fs:0) and holds the
// PT_TLS segments of the executable and the libraries loaded at start (a sum over all loaded
// modules, with alignment, is an upper bound).
bool in_static_tls(const void* address, std::size_t size = 16) {
  static const std::uintptr_t bytes = [] {
    std::uintptr_t total = 0;
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* data) {
          for (int i = 0; i < info->dlpi_phnum; ++i)
            if (info->dlpi_phdr[i].p_type == PT_TLS)
              *static_cast<std::uintptr_t*>(data) += info->dlpi_phdr[i].p_memsz + info->dlpi_phdr[i].p_align;
          return 0;
        },
        &total);
    return total;
  }();
  std::uintptr_t thread_pointer;
  asm("mov %%fs:0, %0" : "=r"(thread_pointer));
  const auto a = reinterpret_cast<std::uintptr_t>(address);
  return a < thread_pointer && a + size <= thread_pointer && thread_pointer - a <= bytes;
}

void Worker::check_store_space(const void* address, std::size_t bytes, Space space, const char* what) const {
  const auto* a = static_cast<const unsigned char*>(address);
  const unsigned char* shared = dynamic_shared_.get();
  const bool in_shared = (a >= shared && a + bytes <= shared + launch_.shared_bytes) || in_static_tls(a, bytes);
  if (in_shared == (space == Space::shared)) return;
  fail_cold([&] {
    return str(what, ": ", bytes, "-byte store to ", address,
               space == Space::shared ? ", not shared memory" : ", shared memory", " (st.",
               space == Space::shared ? "shared" : "global", " faults here on a GPU)");
  });
}

// The two memory accesses of a cp.async, kept out of the uninstrumented scheduler code: under TSan
// they are the issuing fiber's writes (the poison at issue, the data at its wait) and its read of
// the source, so a thread reading the data without a barrier after the issuer's wait is a race.
[[gnu::noinline]] void poison_async_destination(unsigned char* dst) { std::memset(dst, 0xFF, 16); }
[[gnu::noinline]] void perform_async_copy(const AsyncCopy& copy) {
  if (copy.zero_fill)
    std::memset(copy.dst, 0, 16);
  else
    std::memcpy(copy.dst, copy.src, 16);
}

void Worker::async_copy(void* shared_dst, const void* global_src, bool zero_fill, const std::source_location& where) {
  auto* dst = static_cast<unsigned char*>(shared_dst);
  const auto* src = static_cast<const unsigned char*>(global_src);
  for (const void* address : {static_cast<const void*>(dst), static_cast<const void*>(src)})
    if (reinterpret_cast<std::uintptr_t>(address) % 16 != 0)
      fail_cold([&] {
        return str("cp.async at ", location(where), ": misaligned 16-byte ", address == dst ? "destination" : "source",
                   " at ", address, " (a GPU faults here)");
      });
  const unsigned char* shared = dynamic_shared_.get();
  const bool in_dynamic = dst >= shared && dst + 16 <= shared + launch_.shared_bytes;
  if (!in_dynamic && !in_static_tls(dst))
    fail_cold([&] {
      return str("cp.async at ", location(where), ": destination ", static_cast<const void*>(dst),
                 " is not shared memory (neither the block's dynamic shared memory nor a __shared__ variable)");
    });
  if (src >= shared && src < shared + launch_.shared_bytes)
    fail_cold([&] {
      return str("cp.async at ", location(where), ": source ", static_cast<const void*>(src),
                 " is shared memory (cp.async copies global to shared)");
    });
  poison_async_destination(dst);
  current_->async_copies.push_back(AsyncCopy{dst, src, 0, zero_fill});
  if (!zero_fill) count_global_read(src, 16);  // the global read happens here, not in kernel code
}

void Worker::async_wait(unsigned newest_pending) {
  Fiber* self = current_;
  // Groups 1..async_commits exist; all up to `last` must complete.
  if (self->async_commits <= newest_pending) return;
  const unsigned last = self->async_commits - newest_pending;
  std::size_t done = 0;
  auto& copies = self->async_copies;
  while (done < copies.size() && copies[done].group != 0 && copies[done].group <= last)
    perform_async_copy(copies[done++]);
  copies.erase(copies.begin(), copies.begin() + static_cast<std::ptrdiff_t>(done));
}

void fiber_main(void* fiber) {
  t_worker->run_fiber(static_cast<Fiber*>(fiber));
  __builtin_unreachable();
}

Worker& running_worker(const char* what) {
  Worker* worker = t_worker;
  if (worker == nullptr) outside_kernel(what);
  return *worker;
}

void check_configuration(const KernelLaunch& launch) {
  const std::string name = kernel_name(launch);
  const dim3 b = launch.block;
  const dim3 g = launch.grid;
  const unsigned long long threads = 1ull * b.x * b.y * b.z;
  if (threads == 0 || threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64)
    fail_expected(str("launch of ", name), str("block ", dim_text(b), " is not a valid block shape"),
                  "1 to 1024 threads, x and y at most 1024, z at most 64");
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    fail_expected(str("launch of ", name), str("grid ", dim_text(g), " is not a valid grid shape"),
                  "x in 1..2^31-1, y and z in 1..65535");
  const std::size_t limit = max_dynamic_shared_bytes(launch.kernel_address);
  if (launch.shared_bytes > limit)
    fail_expected(str("launch of ", name), str(launch.shared_bytes, " bytes of dynamic shared memory requested"),
                  str("at most ", limit,
                      " (above 48 KiB, raise cudaFuncAttributeMaxDynamicSharedMemorySize first, up to 227 KiB)"));
}

}  // namespace

void outside_kernel(const char* what) {
  std::fprintf(stderr, "minitron emulator: %s used outside a running kernel\n", what);
  std::abort();
}

void die(const char* message) {
  if (t_worker != nullptr) t_worker->fail(message);
  std::fprintf(stderr, "minitron emulator: %s\n", message);
  std::abort();
}

int block_barrier(BarrierKind kind, int predicate, const std::source_location& where) {
  return running_worker(barrier_name(kind)).barrier(kind, predicate, where);
}

unsigned warp_exchange(unsigned mask, WarpOp op, const void* value, unsigned bytes, unsigned source_lane, void* out,
                       const std::source_location& where) {
  return running_worker(op_name(op)).warp_exchange(mask, op, value, bytes, source_lane, out, where);
}

unsigned active_lanes() { return running_worker("__activemask").active_lanes(); }

void async_copy(void* shared_dst, const void* global_src, bool zero_fill, const std::source_location& where) {
  running_worker("cp.async").async_copy(shared_dst, global_src, zero_fill, where);
}
void async_commit() { running_worker("cp.async.commit_group").async_commit(); }
void check_store_space(const void* address, std::size_t bytes, Space space, const char* what) {
  running_worker(what).check_store_space(address, bytes, space, what);
}
void async_wait(unsigned newest_pending, const std::source_location&) {
  running_worker("cp.async.wait_group").async_wait(newest_pending);
}

void run_kernel(const KernelLaunch& launch) {
  if (t_worker != nullptr)
    fail("minitron emulator: a kernel launched another kernel (dynamic parallelism is not emulated)");
  check_configuration(launch);
  const Options options = ::minitron::emu::options();
  const unsigned long long blocks = 1ull * launch.grid.x * launch.grid.y * launch.grid.z;
  unsigned os_threads = static_cast<unsigned>(std::max(options.os_threads, 1));
  if (blocks < os_threads) os_threads = static_cast<unsigned>(blocks);
  std::atomic<unsigned long long> next_block{0};
  auto work = [&]() {
    Worker worker(launch, options);
    for (;;) {
      const unsigned long long b = next_block.fetch_add(1, std::memory_order_relaxed);
      if (b >= blocks) break;
      const uint3 block_idx{static_cast<unsigned>(b % launch.grid.x),
                            static_cast<unsigned>((b / launch.grid.x) % launch.grid.y),
                            static_cast<unsigned>(b / (1ull * launch.grid.x * launch.grid.y))};
      worker.run_block(block_idx);
    }
  };
  begin_launch_traffic(launch.kernel_address, launch.signature, blocks);
  std::vector<std::thread> helpers;
  helpers.reserve(os_threads - 1);
  for (unsigned t = 1; t < os_threads; ++t) helpers.emplace_back(work);
  work();
  for (std::thread& helper : helpers) helper.join();
  end_launch_traffic();
}

}  // namespace detail
}  // namespace minitron::emu
