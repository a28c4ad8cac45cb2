// The NCCL subset the engine's communicator uses (kernels/cuda/nccl_communicator.cu), defined for
// emulated builds: the ranks of a communicator are host threads of one process (tests start one
// thread per rank, each with its own emulated CUDA backend).
//
// Same header (nccl.h, extern "C") and the library's semantics where the engine relies on them:
// ncclGetUniqueId; ncclCommInitRank blocks until every rank has joined; ncclAllReduce with ncclSum
// on float, double, int32 and int64 (any other op or type: ncclInvalidArgument); ncclCommDestroy
// and ncclCommAbort; ncclCommCount, ncclCommUserRank, ncclCommCuDevice; ncclGetErrorString,
// ncclGetLastError, ncclGetVersion. Like an emulated launch, a collective has finished when it
// returns (the stream is not used).
//
// State: a registry of the live communicators keyed by the unique id's bytes (process-wide, like
// the emulated device memory of cuda_runtime.cpp); every rank's ncclComm shares its Group.
// Collectives meet in a generation-counted rendezvous: each rank arrives with its buffers, count,
// type and op; the last to arrive checks that all ranks agree and sums the send buffers in rank
// order (0 + 1 + ...) into the group's result, so every rank receives the same bits on every run;
// then each rank copies the result into its receive buffer (which may be its send buffer) and
// leaves, and the next collective opens once all have left. Ranks that disagree (count, type,
// op) all get ncclInvalidUsage, with ncclGetLastError naming the difference, instead of a hang. A
// rank that waits longer than emu::Options::nccl_timeout_seconds (real NCCL would wait forever)
// gets ncclSystemError and breaks the group, so the other ranks fail too rather than hang.
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "kernels/emu/emulator.h"
#include "util/error.h"

namespace minitron::emu::detail {
namespace {

struct Call {
  const void* send = nullptr;
  void* receive = nullptr;
  std::size_t count = 0;
  ncclDataType_t type = ncclFloat32;
  ncclRedOp_t op = ncclSum;
};

// The ranks of one communicator. Guarded by `mutex`; `result` is written only by the last rank to
// arrive and read by every rank between `complete` and its leaving, when nobody writes it.
struct Group {
  explicit Group(int size) : ranks(size), joined(static_cast<std::size_t>(size), false),
                             departed(static_cast<std::size_t>(size), false),
                             calls(static_cast<std::size_t>(size)),
                             present(static_cast<std::size_t>(size), false) {}
  std::mutex mutex;
  std::condition_variable changed;
  const int ranks;
  std::vector<bool> joined;
  int joined_count = 0;
  std::vector<bool> departed;      // ranks that destroyed their communicator
  std::vector<Call> calls;         // the current collective's call of each arrived rank
  std::vector<bool> present;       // the ranks that have arrived at the current collective
  int arrived = 0;
  int left = 0;
  bool complete = false;           // the current collective's outcome is known
  std::uint64_t generation = 0;    // collectives completed and left by every rank
  ncclResult_t outcome = ncclSuccess;
  std::string outcome_message;
  std::vector<unsigned char> result;
  std::string broken;              // why no collective can complete any more
};

// The live groups by unique id. Process-wide like the device state it stands for.
struct Registry {
  std::mutex mutex;
  std::map<std::string, std::weak_ptr<Group>> groups;
};

Registry& registry() {
  static Registry instance;
  return instance;
}

// What ncclGetLastError reports: the message of this host thread's (this rank's) last failure.
thread_local std::string t_last_error;

ncclResult_t failure(ncclResult_t result, std::string message) {
  t_last_error = "emulated NCCL: " + std::move(message);
  return result;
}

std::chrono::steady_clock::time_point deadline() {
  const double seconds = ::minitron::emu::options().nccl_timeout_seconds;
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
}

std::size_t type_size(ncclDataType_t type) {
  switch (type) {
    case ncclFloat32: return 4;
    case ncclFloat64: return 8;
    case ncclInt32: return 4;
    case ncclInt64: return 8;
    default: return 0;  // not emulated
  }
}

const char* type_name(ncclDataType_t type) {
  switch (type) {
    case ncclFloat32: return "ncclFloat32";
    case ncclFloat64: return "ncclFloat64";
    case ncclInt32: return "ncclInt32";
    case ncclInt64: return "ncclInt64";
    default: return "an unsupported type";
  }
}

// The ranks in [0, ranks) for which `pending(rank)` holds, as "1, 3".
template <typename Pending>
std::string rank_list(int ranks, Pending pending) {
  std::string text;
  for (int r = 0; r < ranks; ++r)
    if (pending(r)) text += (text.empty() ? "" : ", ") + std::to_string(r);
  return text;
}

template <typename T>
void sum_in_rank_order(Group& group) {
  const std::size_t count = group.calls[0].count;
  group.result.resize(count * sizeof(T));
  if (count == 0) return;  // the buffers may be null
  T* out = reinterpret_cast<T*>(group.result.data());
  std::memcpy(out, group.calls[0].send, count * sizeof(T));
  for (int r = 1; r < group.ranks; ++r) {
    const T* in = static_cast<const T*>(group.calls[static_cast<std::size_t>(r)].send);
    for (std::size_t i = 0; i < count; ++i) out[i] += in[i];
  }
}

// Run by the last rank to arrive, under the group's lock.
void finish_collective(Group& group) {
  const Call& first = group.calls[0];
  for (int r = 1; r < group.ranks; ++r) {
    const Call& call = group.calls[static_cast<std::size_t>(r)];
    if (call.count != first.count || call.type != first.type || call.op != first.op) {
      group.outcome = ncclInvalidUsage;
      group.outcome_message =
          str("ncclAllReduce #", group.generation + 1, ": rank 0 passed ", first.count, " x ", type_name(first.type),
              " (op ", static_cast<int>(first.op), ") but rank ", r, " passed ", call.count, " x ",
              type_name(call.type), " (op ", static_cast<int>(call.op), "); every rank must pass the same");
      return;
    }
  }
  group.outcome = ncclSuccess;
  group.outcome_message.clear();
  switch (first.type) {
    case ncclFloat32: sum_in_rank_order<float>(group); break;
    case ncclFloat64: sum_in_rank_order<double>(group); break;
    case ncclInt32: sum_in_rank_order<std::int32_t>(group); break;
    case ncclInt64: sum_in_rank_order<std::int64_t>(group); break;
    default: break;  // refused before the rendezvous
  }
}

}  // namespace
}  // namespace minitron::emu::detail

struct ncclComm {
  std::shared_ptr<minitron::emu::detail::Group> group;
  int rank = 0;
  int device = 0;
};

namespace emu = minitron::emu::detail;
using minitron::str;

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
  if (version == nullptr) return emu::failure(ncclInvalidArgument, "ncclGetVersion: version is NULL");
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* unique_id) {
  if (unique_id == nullptr) return emu::failure(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
  // A process-wide sequence number plus random bytes: distinct within the process (the counter)
  // and unlikely to collide with an id another test process made (the random part).
  static std::atomic<std::uint64_t> sequence{0};
  std::memset(unique_id->internal, 0, sizeof unique_id->internal);
  const std::uint64_t n = sequence.fetch_add(1) + 1;
  std::memcpy(unique_id->internal, &n, sizeof n);
  std::random_device entropy;
  for (std::size_t i = sizeof n; i + sizeof(unsigned) <= 32; i += sizeof(unsigned)) {
    const unsigned bits = entropy();
    std::memcpy(unique_id->internal + i, &bits, sizeof bits);
  }
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId comm_id, int rank) {
  if (comm == nullptr) return emu::failure(ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
  *comm = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return emu::failure(ncclInvalidArgument, str("ncclCommInitRank: rank ", rank, " of ", nranks,
                                                 " (expected nranks >= 1 and 0 <= rank < nranks)"));
  std::shared_ptr<emu::Group> group;
  {
    auto& registry = emu::registry();
    std::lock_guard lock(registry.mutex);
    std::erase_if(registry.groups, [](const auto& entry) { return entry.second.expired(); });
    auto& slot = registry.groups[std::string(comm_id.internal, sizeof comm_id.internal)];
    group = slot.lock();
    if (!group) {
      group = std::make_shared<emu::Group>(nranks);
      slot = group;
    }
  }
  std::unique_lock lock(group->mutex);
  if (group->ranks != nranks)
    return emu::failure(ncclInvalidUsage, str("ncclCommInitRank: rank ", rank, " passed nranks ", nranks,
                                              " but the ranks that joined first passed ", group->ranks));
  if (group->joined[static_cast<std::size_t>(rank)])
    return emu::failure(ncclInvalidUsage, str("ncclCommInitRank: rank ", rank, " joined this communicator twice"));
  group->joined[static_cast<std::size_t>(rank)] = true;
  ++group->joined_count;
  group->changed.notify_all();
  const auto until = emu::deadline();
  while (group->joined_count < group->ranks && group->broken.empty()) {
    if (group->changed.wait_until(lock, until) == std::cv_status::timeout &&
        group->joined_count < group->ranks) {
      group->broken = str("ncclCommInitRank: rank ", rank, " waited ", ::minitron::emu::options().nccl_timeout_seconds,
                          " s for ranks ",
                          emu::rank_list(group->ranks, [&](int r) { return !group->joined[static_cast<std::size_t>(r)]; }),
                          " of ", group->ranks, " to join");
      group->changed.notify_all();
    }
  }
  if (!group->broken.empty()) return emu::failure(ncclSystemError, group->broken);
  int device = 0;
  cudaGetDevice(&device);
  *comm = new ncclComm{group, rank, device};
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
  if (comm == nullptr) return emu::failure(ncclInvalidArgument, "ncclAllReduce: comm is NULL");
  if (op != ncclSum)
    return emu::failure(ncclInvalidArgument, str("ncclAllReduce: op ", static_cast<int>(op), " is not emulated (ncclSum is)"));
  if (emu::type_size(datatype) == 0)
    return emu::failure(ncclInvalidArgument, str("ncclAllReduce: datatype ", static_cast<int>(datatype),
                                                 " is not emulated (ncclFloat32, ncclFloat64, ncclInt32, ncclInt64 are)"));
  if (count > 0 && (sendbuff == nullptr || recvbuff == nullptr))
    return emu::failure(ncclInvalidArgument, "ncclAllReduce: a NULL buffer");
  emu::Group& group = *comm->group;
  std::unique_lock lock(group.mutex);
  const auto until = emu::deadline();
  // Waits for `done`; false (and the group broken, naming `what`) after the time-out.
  auto wait_for = [&](auto done, auto what) {
    while (!done() && group.broken.empty()) {
      if (group.changed.wait_until(lock, until) == std::cv_status::timeout && !done() && group.broken.empty()) {
        group.broken = str("ncclAllReduce #", group.generation + 1, ": rank ", comm->rank, " waited ",
                           ::minitron::emu::options().nccl_timeout_seconds, " s for ", what());
        group.changed.notify_all();
      }
    }
    return group.broken.empty();
  };
  // The previous collective may still be read by ranks that have not left it.
  if (!wait_for([&] { return !group.complete; }, [] { return std::string("the previous collective to drain"); }))
    return emu::failure(ncclSystemError, group.broken);
  const std::string gone = emu::rank_list(group.ranks, [&](int r) { return group.departed[static_cast<std::size_t>(r)]; });
  if (!gone.empty()) {
    group.broken = str("ncclAllReduce #", group.generation + 1, ": ranks ", gone,
                       " destroyed their communicator, so this collective can never complete");
    group.changed.notify_all();
    return emu::failure(ncclInvalidUsage, group.broken);
  }
  group.calls[static_cast<std::size_t>(comm->rank)] = emu::Call{sendbuff, recvbuff, count, datatype, op};
  group.present[static_cast<std::size_t>(comm->rank)] = true;
  if (++group.arrived == group.ranks) {
    emu::finish_collective(group);
    group.complete = true;
    group.changed.notify_all();
  } else {
    const std::uint64_t generation = group.generation;
    if (!wait_for([&] { return group.complete && group.generation == generation; },
                  [&] {
                    return str("ranks ", emu::rank_list(group.ranks, [&](int r) {
                                 return !group.present[static_cast<std::size_t>(r)];
                               }),
                               " to call it (", group.arrived, " of ", group.ranks, " ranks arrived)");
                  }))
      return emu::failure(ncclSystemError, group.broken);
  }
  const ncclResult_t outcome = group.outcome;
  const std::string message = group.outcome_message;
  if (outcome == ncclSuccess) {
    // The result stays put until every rank has left; copying outside the lock lets the ranks
    // copy at the same time.
    lock.unlock();
    if (count > 0) std::memcpy(recvbuff, group.result.data(), count * emu::type_size(datatype));
    lock.lock();
  }
  if (++group.left == group.ranks) {
    group.arrived = 0;
    group.left = 0;
    group.complete = false;
    ++group.generation;
    std::fill(group.calls.begin(), group.calls.end(), emu::Call{});
    std::fill(group.present.begin(), group.present.end(), false);
    group.changed.notify_all();
  }
  if (outcome != ncclSuccess) return emu::failure(outcome, message);
  return ncclSuccess;
}

// Not collective, as in NCCL: the rank's handle goes away. A rank that later waits for it in a
// collective is told so instead of waiting.
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  {
    emu::Group& group = *comm->group;
    std::lock_guard lock(group.mutex);
    group.departed[static_cast<std::size_t>(comm->rank)] = true;
    if (group.arrived > 0 && !group.complete && group.broken.empty()) {
      group.broken = str("rank ", comm->rank, " destroyed its communicator while ", group.arrived,
                         " ranks wait in ncclAllReduce #", group.generation + 1);
      group.changed.notify_all();
    }
  }
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) { return ncclCommDestroy(comm); }
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  return comm == nullptr ? emu::failure(ncclInvalidArgument, "ncclCommFinalize: comm is NULL") : ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (comm == nullptr || count == nullptr) return emu::failure(ncclInvalidArgument, "ncclCommCount: a NULL argument");
  *count = comm->group->ranks;
  return ncclSuccess;
}
ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (comm == nullptr || rank == nullptr) return emu::failure(ncclInvalidArgument, "ncclCommUserRank: a NULL argument");
  *rank = comm->rank;
  return ncclSuccess;
}
ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  if (comm == nullptr || device == nullptr) return emu::failure(ncclInvalidArgument, "ncclCommCuDevice: a NULL argument");
  *device = comm->device;
  return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  if (comm == nullptr || async_error == nullptr)
    return emu::failure(ncclInvalidArgument, "ncclCommGetAsyncError: a NULL argument");
  *async_error = ncclSuccess;  // collectives finish before they return: nothing is pending
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t) { return emu::t_last_error.c_str(); }

}  // extern "C"
