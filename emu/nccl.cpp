// The NCCL subset the engine's communicator uses (dist/nccl_communicator.cu), defined for
// emulated builds: the ranks of a communicator are host threads of one process (tests start one
// thread per rank, each with its own emulated CUDA backend).
//
// Same header (nccl.h, extern "C") and the library's semantics where the engine relies on them:
// ncclGetUniqueId; ncclCommInitRank blocks until every rank has joined; the collectives
// ncclAllReduce, ncclReduceScatter and ncclReduce with ncclSum on float, double, int32 and int64,
// and ncclAllGather and ncclBroadcast, which only move data, on those and int8, uint8 and
// bfloat16 (any other op or type, or a root out of range: ncclInvalidArgument); in-place calls
// as NCCL defines them (the receive buffer is the send buffer, or for the scatter and the gather
// this rank's part of the other); ncclCommDestroy and ncclCommAbort; ncclCommCount, ncclCommUserRank,
// ncclCommCuDevice; ncclGetErrorString, ncclGetLastError, ncclGetVersion. Like an emulated
// launch, a collective has finished when it returns (the stream is not used).
//
// State: a registry of the live communicators keyed by the unique id's bytes (process-wide, like
// the emulated device memory of cuda_runtime.cpp); every rank's ncclComm shares its Group.
// Collectives of every kind meet in one generation-counted rendezvous: each rank arrives with
// its kind, buffers, count, type, op and root; the last to arrive checks that all ranks agree and
// builds the group's result from every rank's send buffer: the sum in rank order (0 + 1 + ...)
// for the reductions, so every rank receives the same bits on every run, the concatenation of
// the send buffers for ncclAllGather, the root's send buffer for ncclBroadcast. Then each rank
// copies its share of the result into its receive buffer (all of it; its own slice for
// ncclReduceScatter; the root only for ncclReduce) and leaves, and the next collective opens
// once all have left. As the result is complete before anyone copies, receive buffers may
// alias send buffers. Ranks that disagree (kind, count, type, op, root) all get
// ncclInvalidUsage, with ncclGetLastError naming both calls, instead of a hang. A rank that
// waits longer than emu::Options::nccl_timeout_seconds (real NCCL would wait forever) gets
// ncclSystemError and breaks the group, so the other ranks fail too rather than hang; a rank
// that meets a peer which destroyed its communicator gets ncclInvalidUsage and breaks it too.
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

#include "emu/emulator.h"
#include "util/error.h"

namespace minitron::emu::detail {
namespace {

enum class Kind { AllReduce, ReduceScatter, AllGather, Reduce, Broadcast };

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::AllReduce: return "ncclAllReduce";
    case Kind::ReduceScatter: return "ncclReduceScatter";
    case Kind::AllGather: return "ncclAllGather";
    case Kind::Reduce: return "ncclReduce";
    case Kind::Broadcast: return "ncclBroadcast";
  }
  return "?";
}

bool is_reduction(Kind kind) { return kind == Kind::AllReduce || kind == Kind::ReduceScatter || kind == Kind::Reduce; }
bool has_root(Kind kind) { return kind == Kind::Reduce || kind == Kind::Broadcast; }

// One rank's arguments to the current collective. `count` is NCCL's: the receive count of
// ncclReduceScatter and the send count of ncclAllGather (per rank), the whole count otherwise.
// `op` is ncclSum and `root` -1 for the kinds that take none.
struct Call {
  Kind kind = Kind::AllReduce;
  const void* send = nullptr;
  void* receive = nullptr;
  std::size_t count = 0;
  ncclDataType_t type = ncclFloat32;
  ncclRedOp_t op = ncclSum;
  int root = -1;
};

// The ranks of one communicator. Guarded by `mutex`; `result` is written only by the last rank to
// arrive and read by every rank between `complete` and its leaving, when nobody writes it.
struct Group {
  explicit Group(int size)
      : ranks(size),
        joined(static_cast<std::size_t>(size), false),
        departed(static_cast<std::size_t>(size), false),
        calls(static_cast<std::size_t>(size)),
        present(static_cast<std::size_t>(size), false) {}
  std::mutex mutex;
  std::condition_variable changed;
  const int ranks;
  std::vector<bool> joined;
  int joined_count = 0;
  std::vector<bool> departed;  // ranks that destroyed their communicator
  std::vector<Call> calls;     // the current collective's call of each arrived rank
  std::vector<bool> present;   // the ranks that have arrived at the current collective
  int arrived = 0;
  int left = 0;
  bool complete = false;         // the current collective's outcome is known
  std::uint64_t generation = 0;  // collectives completed and left by every rank
  ncclResult_t outcome = ncclSuccess;
  std::string outcome_message;
  std::vector<unsigned char> result;
  std::string broken;  // why no collective can complete any more
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
    case ncclInt8: return 1;
    case ncclUint8: return 1;
    case ncclBfloat16: return 2;
    case ncclFloat32: return 4;
    case ncclFloat64: return 8;
    case ncclInt32: return 4;
    case ncclInt64: return 8;
    default: return 0;  // not emulated
  }
}

// The types the reductions sum; the others are only moved.
bool is_summed(ncclDataType_t type) {
  return type == ncclFloat32 || type == ncclFloat64 || type == ncclInt32 || type == ncclInt64;
}

const char* type_name(ncclDataType_t type) {
  switch (type) {
    case ncclInt8: return "ncclInt8";
    case ncclUint8: return "ncclUint8";
    case ncclBfloat16: return "ncclBfloat16";
    case ncclFloat32: return "ncclFloat32";
    case ncclFloat64: return "ncclFloat64";
    case ncclInt32: return "ncclInt32";
    case ncclInt64: return "ncclInt64";
    default: return "an unsupported type";
  }
}

// A call's arguments but its kind, as "10 x ncclFloat32 (op 0)" or "8 x ncclUint8 (root 2)".
std::string arguments(const Call& call) {
  std::string text = str(call.count, " x ", type_name(call.type));
  if (is_reduction(call.kind)) text += str(" (op ", static_cast<int>(call.op), ")");
  if (has_root(call.kind)) text += str(" (root ", call.root, ")");
  return text;
}

// The ranks in [0, ranks) for which `pending(rank)` holds, as "1, 3".
template <typename Pending>
std::string rank_list(int ranks, Pending pending) {
  std::string text;
  for (int r = 0; r < ranks; ++r)
    if (pending(r)) text += (text.empty() ? "" : ", ") + std::to_string(r);
  return text;
}

// The elements the result holds: every rank's send buffer has that many, but for ncclAllGather,
// whose result is all of them end to end.
std::size_t result_count(const Call& call, int ranks) {
  const bool per_rank = call.kind == Kind::ReduceScatter || call.kind == Kind::AllGather;
  return per_rank ? call.count * static_cast<std::size_t>(ranks) : call.count;
}

template <typename T>
void sum_in_rank_order(Group& group) {
  const std::size_t count = result_count(group.calls[0], group.ranks);
  group.result.resize(count * sizeof(T));
  if (count == 0) return;  // the buffers may be null
  T* out = reinterpret_cast<T*>(group.result.data());
  std::memcpy(out, group.calls[0].send, count * sizeof(T));
  for (int r = 1; r < group.ranks; ++r) {
    const T* in = static_cast<const T*>(group.calls[static_cast<std::size_t>(r)].send);
    for (std::size_t i = 0; i < count; ++i) out[i] += in[i];
  }
}

// The reason the ranks' calls cannot make one collective, or "" when they agree.
std::string disagreement(const Group& group) {
  const Call& first = group.calls[0];
  for (int r = 1; r < group.ranks; ++r) {
    const Call& call = group.calls[static_cast<std::size_t>(r)];
    if (call.kind != first.kind)
      return str("collective #", group.generation + 1, ": rank 0 called ", kind_name(first.kind), " with ",
                 arguments(first), " but rank ", r, " called ", kind_name(call.kind), " with ", arguments(call),
                 "; every rank must call the same collectives in the same order");
    if (call.count != first.count || call.type != first.type || call.op != first.op || call.root != first.root)
      return str(kind_name(first.kind), " #", group.generation + 1, ": rank 0 passed ", arguments(first), " but rank ",
                 r, " passed ", arguments(call), "; every rank must pass the same");
  }
  return "";
}

// Run by the last rank to arrive, under the group's lock: every send buffer is read here, before
// any rank writes its receive buffer.
void finish_collective(Group& group) {
  group.outcome_message = disagreement(group);
  if (!group.outcome_message.empty()) {
    group.outcome = ncclInvalidUsage;
    return;
  }
  group.outcome = ncclSuccess;
  const Call& first = group.calls[0];
  const std::size_t bytes = result_count(first, group.ranks) * type_size(first.type);
  switch (first.kind) {
    case Kind::AllReduce:
    case Kind::ReduceScatter:
    case Kind::Reduce:
      switch (first.type) {
        case ncclFloat32: sum_in_rank_order<float>(group); break;
        case ncclFloat64: sum_in_rank_order<double>(group); break;
        case ncclInt32: sum_in_rank_order<std::int32_t>(group); break;
        case ncclInt64: sum_in_rank_order<std::int64_t>(group); break;
        default: break;  // refused before the rendezvous
      }
      break;
    case Kind::AllGather: {
      group.result.resize(bytes);
      const std::size_t part = first.count * type_size(first.type);
      if (part == 0) break;  // the buffers may be null
      for (int r = 0; r < group.ranks; ++r)
        std::memcpy(group.result.data() + static_cast<std::size_t>(r) * part,
                    group.calls[static_cast<std::size_t>(r)].send, part);
      break;
    }
    case Kind::Broadcast:
      group.result.resize(bytes);
      if (bytes > 0) std::memcpy(group.result.data(), group.calls[static_cast<std::size_t>(first.root)].send, bytes);
      break;
  }
}

// Copies rank `rank`'s share of the finished collective's result into its receive buffer.
void receive_share(const Group& group, const Call& call, int rank) {
  const std::size_t size = type_size(call.type);
  switch (call.kind) {
    case Kind::AllReduce:
    case Kind::AllGather:
    case Kind::Broadcast:
      if (!group.result.empty()) std::memcpy(call.receive, group.result.data(), group.result.size());
      break;
    case Kind::ReduceScatter:
      if (call.count > 0)
        std::memcpy(call.receive, group.result.data() + static_cast<std::size_t>(rank) * call.count * size,
                    call.count * size);
      break;
    case Kind::Reduce:
      if (rank == call.root && call.count > 0) std::memcpy(call.receive, group.result.data(), call.count * size);
      break;
  }
}

}  // namespace
}  // namespace minitron::emu::detail

struct ncclComm {
  std::shared_ptr<minitron::emu::detail::Group> group;
  int rank = 0;
  int device = 0;
};

namespace minitron::emu::detail {
namespace {

// Why `call` cannot take part in a collective, checked on the calling rank before it meets the
// others (as NCCL checks its arguments): "" when it can.
std::string refusal(const Call& call, int rank, int ranks) {
  const char* name = kind_name(call.kind);
  if (is_reduction(call.kind)) {
    if (call.op != ncclSum) return str(name, ": op ", static_cast<int>(call.op), " is not emulated (ncclSum is)");
    if (!is_summed(call.type))
      return str(name, ": datatype ", static_cast<int>(call.type),
                 " is not emulated (ncclFloat32, ncclFloat64, ncclInt32, ncclInt64 are)");
  } else if (type_size(call.type) == 0) {
    return str(name, ": datatype ", static_cast<int>(call.type),
               " is not emulated (ncclInt8, ncclUint8, ncclBfloat16, ncclFloat32, ncclFloat64, ncclInt32, ncclInt64 "
               "are)");
  }
  if (has_root(call.kind) && (call.root < 0 || call.root >= ranks))
    return str(name, ": root ", call.root, " (expected 0 <= root < ", ranks, ")");
  if (call.count == 0) return "";
  // NCCL reads the send buffer of every rank but a broadcast's non-roots, and writes the receive
  // buffer of every rank but a reduction's non-roots.
  const bool sends = call.kind != Kind::Broadcast || rank == call.root;
  const bool receives = call.kind != Kind::Reduce || rank == call.root;
  if ((sends && call.send == nullptr) || (receives && call.receive == nullptr)) return str(name, ": a NULL buffer");
  return "";
}

// Meets the other ranks in `call`'s collective and receives this rank's share; see the file's
// comment.
ncclResult_t collective(ncclComm_t comm, const Call& call) {
  if (comm == nullptr) return failure(ncclInvalidArgument, str(kind_name(call.kind), ": comm is NULL"));
  Group& group = *comm->group;
  if (const std::string why = refusal(call, comm->rank, group.ranks); !why.empty())
    return failure(ncclInvalidArgument, why);
  std::unique_lock lock(group.mutex);
  const auto until = deadline();
  // Waits for `done`; false (and the group broken, naming `what`) after the time-out.
  auto wait_for = [&](auto done, auto what) {
    while (!done() && group.broken.empty()) {
      if (group.changed.wait_until(lock, until) == std::cv_status::timeout && !done() && group.broken.empty()) {
        group.broken = str(kind_name(call.kind), " #", group.generation + 1, ": rank ", comm->rank, " waited ",
                           ::minitron::emu::options().nccl_timeout_seconds, " s for ", what());
        group.changed.notify_all();
      }
    }
    return group.broken.empty();
  };
  // The previous collective may still be read by ranks that have not left it.
  if (!wait_for([&] { return !group.complete; }, [] { return std::string("the previous collective to drain"); }))
    return failure(ncclSystemError, group.broken);
  const std::string gone = rank_list(group.ranks, [&](int r) { return group.departed[static_cast<std::size_t>(r)]; });
  if (!gone.empty()) {
    group.broken = str(kind_name(call.kind), " #", group.generation + 1, ": ranks ", gone,
                       " destroyed their communicator, so this collective can never complete");
    group.changed.notify_all();
    return failure(ncclInvalidUsage, group.broken);
  }
  group.calls[static_cast<std::size_t>(comm->rank)] = call;
  group.present[static_cast<std::size_t>(comm->rank)] = true;
  if (++group.arrived == group.ranks) {
    finish_collective(group);
    group.complete = true;
    group.changed.notify_all();
  } else {
    const std::uint64_t generation = group.generation;
    if (!wait_for([&] { return group.complete && group.generation == generation; },
                  [&] {
                    return str(
                        "ranks ",
                        rank_list(group.ranks, [&](int r) { return !group.present[static_cast<std::size_t>(r)]; }),
                        " to call it (", group.arrived, " of ", group.ranks, " ranks arrived)");
                  }))
      return failure(ncclSystemError, group.broken);
  }
  const ncclResult_t outcome = group.outcome;
  const std::string message = group.outcome_message;
  if (outcome == ncclSuccess) {
    // The result stays put until every rank has left; copying outside the lock lets the ranks
    // copy at the same time.
    lock.unlock();
    receive_share(group, call, comm->rank);
    lock.lock();
  }
  if (++group.left == group.ranks) {
    group.arrived = 0;
    group.left = 0;
    group.complete = false;
    ++group.generation;
    std::fill(group.calls.begin(), group.calls.end(), Call{});
    std::fill(group.present.begin(), group.present.end(), false);
    group.changed.notify_all();
  }
  if (outcome != ncclSuccess) return failure(outcome, message);
  return ncclSuccess;
}

}  // namespace
}  // namespace minitron::emu::detail

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
    if (group->changed.wait_until(lock, until) == std::cv_status::timeout && group->joined_count < group->ranks) {
      group->broken = str(
          "ncclCommInitRank: rank ", rank, " waited ", ::minitron::emu::options().nccl_timeout_seconds, " s for ranks ",
          emu::rank_list(group->ranks, [&](int r) { return !group->joined[static_cast<std::size_t>(r)]; }), " of ",
          group->ranks, " to join");
      group->changed.notify_all();
    }
  }
  if (!group->broken.empty()) return emu::failure(ncclSystemError, group->broken);
  int device = 0;
  cudaGetDevice(&device);
  *comm = new ncclComm{group, rank, device};
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t) {
  return emu::collective(comm, emu::Call{emu::Kind::AllReduce, sendbuff, recvbuff, count, datatype, op, -1});
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
  return emu::collective(comm, emu::Call{emu::Kind::ReduceScatter, sendbuff, recvbuff, recvcount, datatype, op, -1});
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t) {
  return emu::collective(comm, emu::Call{emu::Kind::AllGather, sendbuff, recvbuff, sendcount, datatype, ncclSum, -1});
}

ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                        int root, ncclComm_t comm, cudaStream_t) {
  return emu::collective(comm, emu::Call{emu::Kind::Reduce, sendbuff, recvbuff, count, datatype, op, root});
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t) {
  return emu::collective(comm, emu::Call{emu::Kind::Broadcast, sendbuff, recvbuff, count, datatype, ncclSum, root});
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
      const auto waiting = std::find(group.present.begin(), group.present.end(), true) - group.present.begin();
      group.broken =
          str("rank ", comm->rank, " destroyed its communicator while ", group.arrived, " ranks wait in ",
              emu::kind_name(group.calls[static_cast<std::size_t>(waiting)].kind), " #", group.generation + 1);
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
  if (comm == nullptr || device == nullptr)
    return emu::failure(ncclInvalidArgument, "ncclCommCuDevice: a NULL argument");
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
