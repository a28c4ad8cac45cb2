// The CUDA engine's Communicator (dist/communicator.h): NCCL collectives on the backend's stream,
// one rank per GPU. make_nccl_communicator (dist/make_nccl_communicator.h) builds one from a run's
// TCP bootstrap; this constructor takes the unique id directly, so tests can run ranks as threads
// (the emulated NCCL of emu/nccl.cpp) without any network.
//
// Only for builds with NCCL (MINITRON_HAVE_NCCL): it needs <nccl.h>.
#pragma once

#include <nccl.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <utility>
#include <vector>

#include "dist/communicator.h"

namespace minitron::cuda {

class CudaBackend;

[[noreturn]] void fail_nccl(ncclResult_t result, const char* call, const char* file, int line);

// Checks an NCCL call, naming the call site, NCCL's error string and its last error message.
#define MINITRON_NCCL_CHECK(call)                                                    \
  do {                                                                               \
    ncclResult_t minitron_nccl_status_ = (call);                                     \
    if (minitron_nccl_status_ != ncclSuccess)                                        \
      ::minitron::cuda::fail_nccl(minitron_nccl_status_, #call, __FILE__, __LINE__); \
  } while (0)

class NcclCommunicator final : public Communicator {
 public:
  // Joins the communicator `id` names as `rank` of `world_size` on the backend's device
  // (ncclCommInitRank): blocks until every rank has joined. Every rank passes the same id, made
  // by ncclGetUniqueId on one of them. The backend must outlive the communicator.
  NcclCommunicator(CudaBackend& backend, int rank, int world_size, const ncclUniqueId& id);
  // ncclCommDestroy, after the stream's pending collectives (not ncclCommAbort: a normal end).
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  std::int64_t rank() const override { return rank_; }
  std::int64_t world_size() const override { return world_size_; }
  // F32 only (gradients are summed in fp32); queued on the backend's stream like its ops, so the
  // next op on the backend sees the sum without waiting here.
  void all_reduce_sum(Tensor t) override;
  // Through a small device buffer (NCCL moves device memory); returns with the sums in `values`.
  void all_reduce_sum(std::span<double> values) override;
  // Both queued on the backend's stream, like all_reduce_sum. With the parts shard_bounds()
  // makes (every rank but the last c elements, the last c plus a tail), one ncclReduceScatter
  // or ncclAllGather moves world_size x c elements and one ncclReduce or ncclBroadcast rooted at
  // the last rank the tail; any other partition (windows of one, empty parts) takes one rooted
  // ncclReduce or ncclBroadcast per non-empty part. reduce_scatter_sum is F32 only (an Error
  // naming the dtype); all_gather moves bytes, so any dtype comes back bit for bit.
  void reduce_scatter_sum(Tensor t, std::span<const std::int64_t> bounds) override;
  void all_gather(Tensor t, std::span<const std::int64_t> bounds) override;
  // A one-element all-reduce, then waits for the stream: every rank has reached it when it returns.
  void barrier() override;
  // Both on the communication stream, after an event recorded on the backend's stream; an
  // event recorded after it on the communication stream is what wait_collective makes the
  // backend's stream wait for (cudaStreamWaitEvent: the host never blocks).
  std::int64_t start_reduce_scatter_sum(Tensor t, std::span<const std::int64_t> bounds) override;
  std::int64_t start_all_gather(Tensor t, std::span<const std::int64_t> bounds) override;
  void wait_collective(std::int64_t ticket) override;

 private:
  void reduce_scatter_on(cudaStream_t stream, Tensor t, std::span<const std::int64_t> bounds);
  void all_gather_on(cudaStream_t stream, Tensor t, std::span<const std::int64_t> bounds);
  // The communication stream, behind the backend's stream's work so far (made at first use).
  cudaStream_t communication_stream();
  // Records a started collective's completion on the communication stream: its ticket.
  std::int64_t started();
  // Before a collective on the backend's stream: that stream waits for every started one, so
  // each rank's GPU runs the communicator's collectives in the order every rank issued them.
  void wait_all_started();
  cudaEvent_t take_event();
  // Device memory for at least `count` doubles.
  double* staging(std::size_t count);

  CudaBackend& backend_;
  int rank_;
  int world_size_;
  ncclComm_t comm_ = nullptr;
  double* staging_ = nullptr;
  std::size_t staging_count_ = 0;
  // The started collectives' stream (made at its first use) and events: the pending
  // collectives' completion events by ticket, and the events free for reuse.
  cudaStream_t communication_ = nullptr;
  std::int64_t next_ticket_ = 1;
  std::deque<std::pair<std::int64_t, cudaEvent_t>> pending_;
  std::vector<cudaEvent_t> free_events_;
};

}  // namespace minitron::cuda
