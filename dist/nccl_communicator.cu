// NCCL collectives for the CUDA engine (see nccl_communicator.h). Compiled in every CUDA build;
// empty unless CMake found NCCL (MINITRON_HAVE_NCCL), so a machine without it still builds.
#if defined(MINITRON_HAVE_NCCL)
#include "dist/nccl_communicator.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>
#include <string>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_context.h"

namespace minitron::cuda {

void fail_nccl(ncclResult_t result, const char* call, const char* file, int line) {
  std::string message = str("NCCL error at ", file, ":", line, ": ", call, ": ", ncclGetErrorString(result));
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
  // The detail NCCL keeps (which rank, which argument); its comm argument is unused.
  const char* detail = ncclGetLastError(nullptr);
  if (detail != nullptr && *detail != '\0') message += str(" (", detail, ")");
#endif
  fail(message);
}

NcclCommunicator::NcclCommunicator(CudaBackend& backend, int rank, int world_size, const ncclUniqueId& id)
    : backend_(backend), rank_(rank), world_size_(world_size) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    fail_expected("NCCL communicator", str("rank ", rank, " of world size ", world_size),
                  "world size >= 1 and 0 <= rank < world size");
  // NCCL binds the communicator to the current device: the backend's, whichever thread this is.
  MINITRON_CUDA_CHECK(cudaSetDevice(backend_.context().device()));
  MINITRON_NCCL_CHECK(ncclCommInitRank(&comm_, world_size, id, rank));
}

NcclCommunicator::~NcclCommunicator() {
  // Destructors must not throw: errors here are reported by the next CUDA call, if any.
  if (std::uncaught_exceptions() > 0) {
    // This rank is failing, and the others may wait in a collective it will never join:
    // ncclCommDestroy (and a stream sync) could then block forever, so the error would never
    // be printed nor the process exit for the launcher to see. Abort does not wait.
    if (comm_) ncclCommAbort(comm_);
  } else {
    if (communication_) cudaStreamSynchronize(communication_);
    cudaStreamSynchronize(backend_.context().stream());
    if (comm_) ncclCommDestroy(comm_);
  }
  for (const auto& [ticket, event] : pending_) cudaEventDestroy(event);
  for (cudaEvent_t event : free_events_) cudaEventDestroy(event);
  if (communication_) cudaStreamDestroy(communication_);
  if (staging_) cudaFree(staging_);
}

void NcclCommunicator::all_reduce_sum(Tensor t) {
  if (t.dtype != DType::F32)
    fail_expected("NCCL all_reduce_sum", str("the tensor has dtype ", dtype_name(t.dtype)), "f32");
  if (t.numel == 0) return;
  if (t.data == nullptr || t.numel < 0)
    fail_expected("NCCL all_reduce_sum", str("a tensor of ", t.numel, " elements at null"), "device memory");
  wait_all_started();
  MINITRON_NCCL_CHECK(ncclAllReduce(t.data, t.data, static_cast<std::size_t>(t.numel), ncclFloat32, ncclSum, comm_,
                                    backend_.context().stream()));
}

namespace {

// c when bounds[r] == r x c for every rank r and the last part holds at least c elements (as
// shard_bounds makes them, c > 0): the parts an equal-count collective plus a tail can move.
// 0 for any other partition.
std::int64_t uniform_part(std::span<const std::int64_t> bounds, int world_size) {
  const std::int64_t c = bounds[1];
  if (c <= 0 || bounds[static_cast<std::size_t>(world_size)] < world_size * c) return 0;
  for (int r = 0; r < world_size; ++r)
    if (bounds[static_cast<std::size_t>(r)] != r * c) return 0;
  return c;
}

void require_device_memory(const char* what, Tensor t) {
  if (t.data == nullptr || t.numel < 0)
    fail_expected(what, str("a tensor of ", t.numel, " elements at null"), "device memory");
}

}  // namespace

void NcclCommunicator::reduce_scatter_sum(Tensor t, std::span<const std::int64_t> bounds) {
  wait_all_started();
  reduce_scatter_on(backend_.context().stream(), t, bounds);
}

cudaEvent_t NcclCommunicator::take_event() {
  if (free_events_.empty()) {
    cudaEvent_t event = nullptr;
    // Timing off: these events only order the two streams.
    MINITRON_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    return event;
  }
  cudaEvent_t event = free_events_.back();
  free_events_.pop_back();
  return event;
}

cudaStream_t NcclCommunicator::communication_stream() {
  if (communication_ == nullptr) MINITRON_CUDA_CHECK(cudaStreamCreateWithFlags(&communication_, cudaStreamNonBlocking));
  // The communication stream starts once the backend's stream has written what the collective
  // reads (a bucket's gradients, this rank's updated parameters); the backend's stream goes on
  // meanwhile.
  cudaEvent_t written = take_event();
  MINITRON_CUDA_CHECK(cudaEventRecord(written, backend_.context().stream()));
  MINITRON_CUDA_CHECK(cudaStreamWaitEvent(communication_, written, 0));
  free_events_.push_back(written);  // the wait took the event's state: it may be recorded again
  return communication_;
}

std::int64_t NcclCommunicator::started() {
  cudaEvent_t done = take_event();
  MINITRON_CUDA_CHECK(cudaEventRecord(done, communication_));
  pending_.emplace_back(next_ticket_, done);
  return next_ticket_++;
}

std::int64_t NcclCommunicator::start_reduce_scatter_sum(Tensor t, std::span<const std::int64_t> bounds) {
  reduce_scatter_on(communication_stream(), t, bounds);
  return started();
}

std::int64_t NcclCommunicator::start_all_gather(Tensor t, std::span<const std::int64_t> bounds) {
  all_gather_on(communication_stream(), t, bounds);
  return started();
}

void NcclCommunicator::wait_collective(std::int64_t ticket) {
  // The communication stream runs its collectives in order: the wait for `ticket` covers the
  // earlier ones, whose events are released with it.
  while (!pending_.empty() && pending_.front().first <= ticket) {
    const auto [done, event] = pending_.front();
    pending_.pop_front();
    if (done == ticket) MINITRON_CUDA_CHECK(cudaStreamWaitEvent(backend_.context().stream(), event, 0));
    free_events_.push_back(event);
  }
}

void NcclCommunicator::wait_all_started() {
  if (!pending_.empty()) wait_collective(pending_.back().first);
}

void NcclCommunicator::reduce_scatter_on(cudaStream_t stream, Tensor t, std::span<const std::int64_t> bounds) {
  const char* what = "NCCL reduce_scatter_sum";
  if (t.dtype != DType::F32) fail_expected(what, str("the tensor has dtype ", dtype_name(t.dtype)), "f32");
  check_shard_bounds(what, bounds, world_size_, t.numel);
  if (world_size_ == 1 || t.numel == 0) return;
  require_device_memory(what, t);
  float* data = static_cast<float*>(t.data);
  const std::int64_t c = uniform_part(bounds, world_size_);
  if (c > 0) {
    // In place as NCCL defines it: this rank's part of the send buffer is its receive buffer.
    MINITRON_NCCL_CHECK(
        ncclReduceScatter(data, data + rank_ * c, static_cast<std::size_t>(c), ncclFloat32, ncclSum, comm_, stream));
    const std::int64_t tail = t.numel - world_size_ * c;
    if (tail > 0)
      MINITRON_NCCL_CHECK(ncclReduce(data + world_size_ * c, data + world_size_ * c, static_cast<std::size_t>(tail),
                                     ncclFloat32, ncclSum, world_size_ - 1, comm_, stream));
    return;
  }
  // Every rank issues the same sequence of reductions, so no group call is needed to match them.
  for (int r = 0; r < world_size_; ++r) {
    const std::int64_t begin = bounds[static_cast<std::size_t>(r)];
    const std::int64_t count = bounds[static_cast<std::size_t>(r) + 1] - begin;
    if (count > 0)
      MINITRON_NCCL_CHECK(ncclReduce(data + begin, data + begin, static_cast<std::size_t>(count), ncclFloat32, ncclSum,
                                     r, comm_, stream));
  }
}

void NcclCommunicator::all_gather(Tensor t, std::span<const std::int64_t> bounds) {
  wait_all_started();
  all_gather_on(backend_.context().stream(), t, bounds);
}

void NcclCommunicator::all_gather_on(cudaStream_t stream, Tensor t, std::span<const std::int64_t> bounds) {
  const char* what = "NCCL all_gather";
  check_shard_bounds(what, bounds, world_size_, t.numel);
  if (world_size_ == 1 || t.numel == 0) return;
  require_device_memory(what, t);
  // Bytes, whatever the dtype: nothing is computed, and bf16 needs no NCCL type of its own.
  auto* bytes = static_cast<unsigned char*>(t.data);
  const auto size = static_cast<std::int64_t>(dtype_size(t.dtype));
  const std::int64_t c = uniform_part(bounds, world_size_);
  if (c > 0) {
    // In place as NCCL defines it: this rank's part of the receive buffer is its send buffer.
    MINITRON_NCCL_CHECK(
        ncclAllGather(bytes + rank_ * c * size, bytes, static_cast<std::size_t>(c * size), ncclUint8, comm_, stream));
    const std::int64_t tail = t.numel - world_size_ * c;
    if (tail > 0)
      MINITRON_NCCL_CHECK(ncclBroadcast(bytes + world_size_ * c * size, bytes + world_size_ * c * size,
                                        static_cast<std::size_t>(tail * size), ncclUint8, world_size_ - 1, comm_,
                                        stream));
    return;
  }
  for (int r = 0; r < world_size_; ++r) {
    const std::int64_t begin = bounds[static_cast<std::size_t>(r)];
    const std::int64_t count = bounds[static_cast<std::size_t>(r) + 1] - begin;
    if (count > 0)
      MINITRON_NCCL_CHECK(ncclBroadcast(bytes + begin * size, bytes + begin * size,
                                        static_cast<std::size_t>(count * size), ncclUint8, r, comm_, stream));
  }
}

void NcclCommunicator::all_reduce_sum(std::span<double> values) {
  if (values.empty()) return;
  wait_all_started();
  const cudaStream_t stream = backend_.context().stream();
  double* device = staging(values.size());
  MINITRON_CUDA_CHECK(cudaMemcpyAsync(device, values.data(), values.size_bytes(), cudaMemcpyHostToDevice, stream));
  MINITRON_NCCL_CHECK(ncclAllReduce(device, device, values.size(), ncclFloat64, ncclSum, comm_, stream));
  MINITRON_CUDA_CHECK(cudaMemcpyAsync(values.data(), device, values.size_bytes(), cudaMemcpyDeviceToHost, stream));
  MINITRON_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void NcclCommunicator::barrier() {
  wait_all_started();
  const cudaStream_t stream = backend_.context().stream();
  double* device = staging(1);
  MINITRON_NCCL_CHECK(ncclAllReduce(device, device, 1, ncclFloat64, ncclSum, comm_, stream));
  MINITRON_CUDA_CHECK(cudaStreamSynchronize(stream));
}

double* NcclCommunicator::staging(std::size_t count) {
  if (count <= staging_count_) return staging_;
  if (staging_) {
    // Every use of the buffer ends in a stream synchronisation: nothing queued still reads it.
    MINITRON_CUDA_CHECK(cudaFree(staging_));
    staging_ = nullptr;
    staging_count_ = 0;
  }
  const std::size_t wanted = std::max(count, static_cast<std::size_t>(kNcclStagingDoubles));
  MINITRON_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&staging_), wanted * sizeof(double)));
  // barrier() sums whatever is there: defined values (compute-sanitizer's initcheck).
  MINITRON_CUDA_CHECK(cudaMemsetAsync(staging_, 0, wanted * sizeof(double), backend_.context().stream()));
  staging_count_ = wanted;
  return staging_;
}

}  // namespace minitron::cuda
#endif  // MINITRON_HAVE_NCCL
