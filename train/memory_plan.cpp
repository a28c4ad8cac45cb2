#include "train/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "dist/communicator.h"
#include "kernels/cuda/device_memory.h"
#include "model/gradient_buckets.h"
#include "model/llama.h"
#include "model/parameters.h"
#include "model/tensor_streaming.h"
#include "train/losses.h"
#include "train/optimizer.h"
#include "util/error.h"

namespace minitron {

namespace {

// The CUDA engine's storage (kernels/cuda/cuda_backend.h): bf16 parameters and activations,
// fp32 parameter gradients, fp32 norm statistics and losses.
constexpr DType kActivation = DType::BF16;
constexpr DType kGradient = DType::F32;
constexpr std::int64_t kAct = 2, kF32 = 4;

}  // namespace

const std::vector<std::string>& memory_part_names() {
  static const std::vector<std::string> names = {
      "weights",          "gradients",         "optimizer share", "saved activations",       "recompute workspace",
      "backward buffers", "logits chunk",      "teacher",         "intermediate-state loss", "communication",
      "kernel scratch",   "cuBLASLt workspace"};
  return names;
}

const std::vector<std::string>& host_memory_part_names() {
  static const std::vector<std::string> names = {"load staging", "rank 0 checkpoint"};
  return names;
}

std::int64_t MemoryPlan::peak() const {
  std::int64_t total = 0;
  for (const MemoryPart& part : parts) total += part.bytes;
  return total;
}

std::int64_t MemoryPlan::bytes(const std::string& name) const {
  for (const MemoryPart& part : parts)
    if (part.name == name) return part.bytes;
  return 0;
}

MemoryPlan plan_training_memory(const TrainingShape& s, std::int64_t rank) {
  MINITRON_ASSERT(s.batch_size >= 1 && s.sequence_length >= 1 && s.world_size >= 1 && rank >= 0 && rank < s.world_size,
                  "memory plan of rank ", rank, " of ", s.world_size);
  MINITRON_ASSERT(s.teacher || s.intermediate_pairs == 0, "an intermediate-state loss needs a teacher");
  MINITRON_ASSERT(s.zero_stage == 1 || s.zero_stage == 2, "ZeRO stage ", s.zero_stage);
  const ModelConfig& c = s.model;
  const std::int64_t B = s.batch_size, T = s.sequence_length, N = B * T, V = c.vocab_size;
  const std::int64_t P = ParameterTable(c).total_numel();
  const ModelMemory model = LlamaModel::memory(c, kActivation, kGradient, B, T, ModelMode::Training, s.recompute);

  // AdamW (train/optimizer.cpp): this rank's part of the fp32 moments and master weights.
  const std::vector<std::int64_t> bounds = shard_bounds(P, s.world_size);
  const std::int64_t part = bounds[static_cast<std::size_t>(rank) + 1] - bounds[static_cast<std::size_t>(rank)];
  const std::int64_t optimizer = part * AdamW::state_bytes_per_owned_parameter(kActivation);

  // The objective's loss workspace (distillation keeps the teacher's chunk too; a mixed
  // distillation's cross-entropy reuses it) and rank 0's validation workspace (default chunk rows).
  const bool distillation = s.teacher.has_value();
  const std::int64_t rows = LossWorkspace::chunk_rows(cuda::kLossChunkLogits, V, N, s.loss_chunk_rows);
  std::int64_t logits = LossWorkspace::bytes(kActivation, V, N, rows, distillation);
  if (s.validation && rank == 0)
    logits += LossWorkspace::bytes(kActivation, V, N, LossWorkspace::chunk_rows(cuda::kLossChunkLogits, V, N), false);

  const std::int64_t teacher =
      distillation ? LlamaModel::memory(*s.teacher, kActivation, kGradient, B, T, ModelMode::Inference).total() : 0;

  // HiddenStateDistillation (train/hidden_state_loss.cpp): the recorded states of every pair,
  // CosineDistance's scratch and, when the widths differ, the learned map with its AdamW state.
  std::int64_t intermediate = 0;
  const std::int64_t Ds = c.hidden_size, Dt = distillation ? s.teacher->hidden_size : 0;
  if (s.intermediate_pairs > 0) {
    intermediate = s.intermediate_pairs * N * (Ds + Dt) * kAct;
    intermediate += 3 * N * Dt * kAct + 3 * N * kF32 + Dt * kAct + Dt * kF32;
    if (Ds != Dt) intermediate += Dt * Ds * (kAct + kF32 + 3 * kF32);
  }

  // The gradients (model/gradient_buckets.h): the whole vector for ZeRO-1, this rank's part and
  // the bucket slots for ZeRO-2.
  const GradientBuckets::DeviceBytes gradients = GradientBuckets::device_bytes(
      ParameterTable(c), kGradient, s.zero_stage, kDefaultBucketElements, s.world_size, rank);

  // NCCL's staging of summed host values, and the window the optimizer state is gathered
  // through at each checkpoint (one process needs neither); ZeRO-2's gradient bucket slots.
  const std::int64_t communication =
      (s.world_size > 1 ? cuda::kNcclStagingDoubles * 8 + std::min(AdamW::kGatherWindow, P) * kF32 : 0) +
      gradients.slots;

  // The kernels' scratch grows to the largest request and stays (cuda_context.h): embedding
  // and RMSNorm weight gradients, attention's backward, and the sums of squares of the whole
  // parameter vector (the ranks' agreement check) and of the gradients (clipping).
  std::int64_t scratch =
      std::max({cuda::embedding_workspace_ints(N, V) * 4, cuda::rmsnorm_backward_workspace_floats(N, Ds) * kF32,
                cuda::attention_backward_workspace_floats(B, T, c.num_attention_heads) * kF32,
                cuda::sum_of_squares_workspace_doubles(P) * 8});
  if (s.intermediate_pairs > 0)
    scratch = std::max({scratch, cuda::rmsnorm_backward_workspace_floats(N, Dt) * kF32,
                        Ds != Dt ? cuda::sum_of_squares_workspace_doubles(Dt * Ds) * 8 : 0});

  MemoryPlan plan;
  plan.rank = rank;
  const std::int64_t values[] = {model.weights,
                                 gradients.gradients,
                                 optimizer,
                                 model.saved_activations,
                                 model.recompute_workspace,
                                 model.backward_buffers,
                                 logits,
                                 teacher,
                                 intermediate,
                                 communication,
                                 scratch,
                                 cuda::kCublasWorkspaceBytes};
  const std::vector<std::string>& names = memory_part_names();
  for (std::size_t i = 0; i < names.size(); ++i) plan.parts.push_back({names[i], values[i]});

  // Host: the streamed load's chunk and the engine's bf16 rounding of it (every rank, every
  // model it loads, one at a time); at a resumable checkpoint rank 0 receives the whole fp32
  // weights and both moments (train/trainer.cpp, AdamW::gather_weights and gather_moments).
  const std::int64_t host_values[] = {host_staging_bytes(kActivation), 3 * P * kF32};
  const std::vector<std::string>& host_names = host_memory_part_names();
  for (std::size_t i = 0; i < host_names.size(); ++i) plan.host_parts.push_back({host_names[i], host_values[i]});
  return plan;
}

MemoryPlan plan_training_memory(const TrainingShape& shape) {
  MemoryPlan best = plan_training_memory(shape, 0);
  if (shape.world_size > 1) {
    MemoryPlan last = plan_training_memory(shape, shape.world_size - 1);
    if (last.peak() > best.peak()) best = std::move(last);
  }
  return best;
}

bool fits(const MemoryPlan& plan, std::int64_t device_bytes) {
  return plan.peak() + kDeviceReserveBytes <= device_bytes;
}

std::string fitting_change(const TrainingShape& asked, std::int64_t device_bytes) {
  auto fits_shape = [&](const TrainingShape& s) { return fits(plan_training_memory(s), device_bytes); };
  // ZeRO-2 first: the same results and no recomputation. The changes after it come with it.
  TrainingShape shape = asked;
  std::string zero;
  if (asked.zero_stage == 1 && asked.world_size > 1) {
    shape.zero_stage = 2;
    if (fits_shape(shape)) return "--zero-stage 2";
    zero = "--zero-stage 2 and ";
  }
  for (ActivationRecompute mode : {ActivationRecompute::Selective, ActivationRecompute::Full}) {
    if (static_cast<int>(mode) <= static_cast<int>(shape.recompute)) continue;
    TrainingShape s = shape;
    s.recompute = mode;
    if (fits_shape(s)) return str(zero, "--recompute ", activation_recompute_name(mode));
  }
  // Then more ranks, or a shorter sequence, at the current recompute mode or with more
  // recomputation.
  std::vector<ActivationRecompute> modes;
  for (ActivationRecompute mode :
       {ActivationRecompute::None, ActivationRecompute::Selective, ActivationRecompute::Full})
    if (static_cast<int>(mode) >= static_cast<int>(shape.recompute)) modes.push_back(mode);
  auto with_mode = [&](ActivationRecompute mode) {
    return mode == shape.recompute ? std::string() : str(" with --recompute ", activation_recompute_name(mode));
  };
  // GPUs are the dearer resource: the fewest ranks over the modes, the least recomputation
  // among equals. More ranks shrink only the optimizer share and the gradient part: 1024 leave
  // under 0.1% of them.
  std::int64_t best_world = 0;
  ActivationRecompute best_mode = shape.recompute;
  for (ActivationRecompute mode : modes) {
    const std::int64_t limit = best_world > 0 ? best_world - 1 : 1024;
    for (std::int64_t world = shape.world_size + 1; world <= limit; ++world) {
      TrainingShape s = shape;
      s.recompute = mode;
      s.world_size = world;
      s.zero_stage = 2;  // the default with several ranks
      if (!fits_shape(s)) continue;
      best_world = world;
      best_mode = mode;
      break;
    }
  }
  if (best_world > 0)
    return str(best_world, " ranks (data-parallel, ZeRO-2: optimizer state and gradients sharded over them)",
               with_mode(best_mode));
  // Every part grows with the sequence: the longest that fits in any mode (full recomputation
  // keeps the least per token), by bisection.
  std::int64_t best_length = 0;
  for (ActivationRecompute mode : modes) {
    TrainingShape s = shape;
    s.recompute = mode;
    s.sequence_length = best_length + 1;
    if (shape.sequence_length <= best_length + 1 || !fits_shape(s)) continue;
    std::int64_t lo = best_length + 1, hi = shape.sequence_length - 1;
    while (lo < hi) {
      s.sequence_length = lo + (hi - lo + 1) / 2;
      if (fits_shape(s))
        lo = s.sequence_length;
      else
        hi = s.sequence_length - 1;
    }
    best_length = lo;
    best_mode = mode;
  }
  if (best_length > 0)
    return str(zero, "--sequence-length ", best_length, " (the longest that fits)", with_mode(best_mode));
  return {};
}

std::string format_gib(std::int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GiB", static_cast<double>(bytes) / static_cast<double>(std::int64_t{1} << 30));
  return text;
}

std::string format_size(std::int64_t bytes) {
  if (bytes >= (std::int64_t{1} << 30)) return format_gib(bytes);
  char text[32];
  std::snprintf(text, sizeof text, "%.1f MiB", static_cast<double>(bytes) / static_cast<double>(std::int64_t{1} << 20));
  return text;
}

std::string format_memory_plan(const MemoryPlan& plan, std::int64_t device_bytes) {
  std::string out;
  for (const MemoryPart& part : plan.parts) {
    char line[96];
    std::snprintf(line, sizeof line, "  %-24s %12s\n", part.name.c_str(), format_gib(part.bytes).c_str());
    out += line;
  }
  char line[160];
  std::snprintf(line, sizeof line, "  %-24s %12s (rank %lld)\n  %-24s %12s\n  %-24s %12s: %s\n", "peak",
                format_gib(plan.peak()).c_str(), static_cast<long long>(plan.rank), "reserve",
                format_gib(kDeviceReserveBytes).c_str(), "device", format_gib(device_bytes).c_str(),
                fits(plan, device_bytes) ? "fits" : "does not fit");
  out += line;
  for (const MemoryPart& part : plan.host_parts) {
    char host_line[96];
    std::snprintf(host_line, sizeof host_line, "  host: %-18s %12s\n", part.name.c_str(),
                  format_size(part.bytes).c_str());
    out += host_line;
  }
  return out;
}

nlohmann::ordered_json memory_plan_json(const TrainingShape& shape, const MemoryPlan& plan, std::int64_t device_bytes) {
  nlohmann::ordered_json parts = nlohmann::ordered_json::object();
  for (const MemoryPart& part : plan.parts) parts[part.name] = part.bytes;
  nlohmann::ordered_json out = {{"batch_size", shape.batch_size},
                                {"sequence_length", shape.sequence_length},
                                {"recompute", activation_recompute_name(shape.recompute)},
                                {"zero_stage", shape.zero_stage},
                                {"gpus", shape.world_size},
                                {"rank", plan.rank},
                                {"parts", parts},
                                {"peak", plan.peak()},
                                {"host", nlohmann::ordered_json::object()},
                                {"reserve", kDeviceReserveBytes},
                                {"device", device_bytes},
                                {"fits", fits(plan, device_bytes)}};
  for (const MemoryPart& part : plan.host_parts) out["host"][part.name] = part.bytes;
  if (!fits(plan, device_bytes)) {
    const std::string change = fitting_change(shape, device_bytes);
    out["fitting_change"] = change.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(change);
  }
  return out;
}

void check_training_memory(const TrainingShape& shape, std::int64_t device_bytes, const std::string& what) {
  const MemoryPlan plan = plan_training_memory(shape);
  if (fits(plan, device_bytes)) return;
  std::string parts;
  for (const MemoryPart& part : plan.parts)
    if (part.bytes > 0) parts += str(parts.empty() ? "" : ", ", part.name, " ", format_gib(part.bytes));
  const std::string change = fitting_change(shape, device_bytes);
  fail_expected(what,
                str("rank ", plan.rank, " of ", shape.world_size, " needs ", format_gib(plan.peak()), " (", parts,
                    ") plus ", format_gib(kDeviceReserveBytes),
                    " kept free for the CUDA context and NCCL; the device has ", format_gib(device_bytes)),
                change.empty() ? std::string("a smaller model: no recompute mode, rank count or sequence length fits "
                                             "(minitron plan shows the parts)")
                               : str("a run that fits, e.g. with ", change, " (minitron plan shows the parts)"));
}

void check_training_memory(const TrainingShape& shape, const Backend& backend, const std::string& what) {
  if (const std::optional<std::int64_t> capacity = backend.memory_bytes())
    check_training_memory(shape, *capacity, what);
}

}  // namespace minitron
