// A roofline without a GPU: one training step (forward, cross-entropy, backward, AdamW) of one
// Llama-3.1-8B-shaped layer on the emulated CUDA engine, every load and store of its kernels
// counted (emu/traffic.h), and per launch: bytes moved against the ideal (its distinct bytes:
// every input read once, every output written once), flops (mma.sync, cuBLASLt), arithmetic
// intensity, and the time an H100 and an H200 would take if the kernel ran at the roofline,
// max(flops / bf16 dense peak, bytes / memory bandwidth). These are predictions from counts, not
// measurements: real kernels reach neither peak, and a re-read that an L2 hit serves on a GPU
// counts here as DRAM traffic. bench/results/roofline.md holds a run.
//
// Usage: roofline_layer [--sequence 256] [--shape 8b|tiny] [--markdown FILE] [--jsonl FILE]
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cxxopts.hpp>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "emu/traffic.h"
#include "kernels/cuda/cuda_backend_factory.h"
#include "model/llama.h"
#include "train/losses.h"
#include "train/optimizer.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {
namespace {

// Published peaks: H100 SXM and H200 SXM, bf16 dense tensor core, HBM3 / HBM3e.
constexpr double kPeakFlops = 989e12;
constexpr double kH100Bandwidth = 3.35e12, kH200Bandwidth = 4.8e12;
// Memory-bound kernels may move at most this much over their ideal bytes (issue 18).
constexpr double kExcessLimit = 1.15;

// "void minitron::cuda::rmsnorm_forward_kernel<__nv_bfloat16>(...)" -> "rmsnorm_forward_kernel<bf16>".
std::string short_name(std::string name) {
  if (const auto paren = name.find('('); paren != std::string::npos) name.resize(paren);
  if (name.rfind("void ", 0) == 0) name.erase(0, 5);
  for (const std::string prefix : {"minitron::cuda::", "minitron::", "(anonymous namespace)::"}) {
    for (auto at = name.find(prefix); at != std::string::npos; at = name.find(prefix)) name.erase(at, prefix.size());
  }
  for (auto at = name.find("__nv_bfloat16"); at != std::string::npos; at = name.find("__nv_bfloat16"))
    name.replace(at, 13, "bf16");
  return name;
}

struct Shape {
  std::int64_t hidden, intermediate, heads, kv_heads, head_dim, vocab;
};

double seconds_at(double flops, double bytes, double bandwidth) {
  return std::max(flops / kPeakFlops, bytes / bandwidth);
}

std::string report(const Shape& s, std::int64_t T, const std::vector<emu::LaunchTraffic>& launches) {
  // Model FLOPs of the step (bench/gpu/layer_step.cpp's count): 6 per matmul weight per token,
  // causal attention's QK^T and PV over T/2 keys on average, x3 for training.
  const double D = double(s.hidden), F = double(s.intermediate), QD = double(s.heads * s.head_dim),
               KVD = double(s.kv_heads * s.head_dim);
  const double matmul_params = D * (QD + 2 * KVD) + QD * D + 3 * D * F + double(s.vocab) * D;
  const double model_flops =
      double(T) * (6.0 * matmul_params + 3.0 * 2.0 * 2.0 * (double(T) / 2) * double(s.head_dim) * double(s.heads));

  std::ostringstream out;
  char line[512];
  out << "Shape: hidden " << s.hidden << ", " << s.heads << "/" << s.kv_heads << " heads of " << s.head_dim << ", FFN "
      << s.intermediate << ", vocabulary " << s.vocab << ", one layer, sequence " << T
      << ", batch 1, bf16. One training step (forward, cross-entropy, backward, AdamW).\n\n";
  out << "| # | kernel | read MB | written MB | ideal MB | moved/ideal | GFLOP | flop/byte | bound | H100 us | "
         "H200 us |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
  double h100 = 0, h200 = 0, counted_flops = 0, total_bytes = 0, total_ideal = 0;
  std::vector<std::string> excess;
  int index = 0;
  for (const emu::LaunchTraffic& l : launches) {
    const double bytes = double(l.bytes_read + l.bytes_written);
    const double ideal = double(l.distinct_bytes_read + l.distinct_bytes_written);
    const double flops = double(l.flops);
    const double t100 = seconds_at(flops, bytes, kH100Bandwidth), t200 = seconds_at(flops, bytes, kH200Bandwidth);
    const bool memory_bound = flops / kPeakFlops < bytes / kH100Bandwidth;
    const double ratio = ideal > 0 ? bytes / ideal : 0.0;
    const std::string name = l.library_call ? "cublasLtMatmul (operands once)" : short_name(l.kernel);
    std::snprintf(line, sizeof line, "| %d | `%s` | %.2f | %.2f | %.2f | %.2f | %.3f | %.1f | %s | %.1f | %.1f |\n",
                  ++index, name.c_str(), double(l.bytes_read) / 1e6, double(l.bytes_written) / 1e6, ideal / 1e6, ratio,
                  flops / 1e9, bytes > 0 ? flops / bytes : 0.0, memory_bound ? "memory" : "compute", t100 * 1e6,
                  t200 * 1e6);
    out << line;
    if (memory_bound && ratio > kExcessLimit && !l.library_call) {
      std::snprintf(line, sizeof line, "%d `%s` (%.2fx, %.2f MB over)", index, name.c_str(), ratio,
                    (bytes - ideal) / 1e6);
      excess.push_back(line);
    }
    h100 += t100;
    h200 += t200;
    counted_flops += flops;
    total_bytes += bytes;
    total_ideal += ideal;
  }
  std::snprintf(line, sizeof line,
                "\nTotals: %d launches, %.1f MB moved against %.1f MB ideal (%.2fx), %.1f GFLOP counted "
                "(mma.sync + cuBLASLt) against %.1f GFLOP of model FLOPs.\n\n",
                index, total_bytes / 1e6, total_ideal / 1e6, total_ideal > 0 ? total_bytes / total_ideal : 0.0,
                counted_flops / 1e9, model_flops / 1e9);
  out << line;
  std::snprintf(line, sizeof line,
                "Predicted step (sum of the per-launch roofline times, no launch overhead or overlap): "
                "H100 %.1f us, MFU %.1f%%; H200 %.1f us, MFU %.1f%% (model FLOPs / (time x 989 TFLOP/s)).\n\n",
                h100 * 1e6, 100.0 * model_flops / (h100 * kPeakFlops), h200 * 1e6,
                100.0 * model_flops / (h200 * kPeakFlops));
  out << line;
  // Shared-memory fragment loads per tensor-core instruction (one m16n8k16 is 4096 flops): the
  // fewer, the less an mma waits on ldmatrix issue and shared-memory bandwidth.
  out << "ldmatrix per mma.sync: ";
  index = 0;
  bool any_mma = false;
  for (const emu::LaunchTraffic& l : launches) {
    ++index;
    if (l.library_call || l.flops == 0) continue;
    std::snprintf(line, sizeof line, "%s%d `%s` %.3f (%llu / %llu)", any_mma ? "; " : "", index,
                  short_name(l.kernel).c_str(), double(l.ldmatrix) / (double(l.flops) / 4096.0),
                  static_cast<unsigned long long>(l.ldmatrix), static_cast<unsigned long long>(l.flops / 4096));
    out << line;
    any_mma = true;
  }
  out << (any_mma ? ".\n\n" : "none.\n\n");
  out << "Memory-bound launches moving more than " << kExcessLimit << "x their ideal bytes: ";
  if (excess.empty()) out << "none.\n";
  for (std::size_t i = 0; i < excess.size(); ++i) out << (i == 0 ? "" : "; ") << excess[i];
  if (!excess.empty()) out << ".\n";
  return out.str();
}

int run(int argc, char** argv) {
  cxxopts::Options options("roofline_layer", "Counted traffic and predicted roofline times of one layer's step");
  // clang-format off
  options.add_options()
      ("sequence", "tokens in the step (batch 1), 1 to 4096", cxxopts::value<std::int64_t>()->default_value("256"))
      ("shape", "8b (hidden 4096, 32/8 heads of 128, FFN 14336, vocabulary 512) or tiny (hidden 256, "
                "4/2 heads of 64, FFN 512, vocabulary 64; for tests)", cxxopts::value<std::string>()->default_value("8b"))
      ("markdown", "also write the table to this file", cxxopts::value<std::string>())
      ("jsonl", "also write one JSON line per launch (exact counts) to this file", cxxopts::value<std::string>())
      ("help", "this help");
  // clang-format on
  const auto parsed = options.parse(argc, argv);
  if (parsed.count("help")) {
    std::printf("%s\n", options.help().c_str());
    return 0;
  }
  const std::int64_t T = parsed["sequence"].as<std::int64_t>();
  if (T < 1 || T > 4096) fail("--sequence " + std::to_string(T) + " is out of range (expected 1 to 4096)");
  const std::string shape_name = parsed["shape"].as<std::string>();
  Shape shape;
  if (shape_name == "8b") {
    // The vocabulary is small so that the head does not stand in for the layer.
    shape = Shape{4096, 14336, 32, 8, 128, 512};
  } else if (shape_name == "tiny") {
    shape = Shape{256, 512, 4, 2, 64, 64};
  } else {
    fail("--shape '" + shape_name + "' (expected 8b or tiny)");
  }
  if (!emu::traffic_instrumented())
    fail("this build does not count loads and stores (expected a counted build, emu/traffic.h)");

  ModelConfig c;
  c.num_hidden_layers = 1;
  c.hidden_size = shape.hidden;
  c.intermediate_size = shape.intermediate;
  c.num_attention_heads = shape.heads;
  c.num_key_value_heads = shape.kv_heads;
  c.head_dim = shape.head_dim;
  c.vocab_size = shape.vocab;
  c.rope_theta = 500000.0;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = T;
  auto backend = make_cuda_backend();
  LlamaModel model(c, *backend, 1, T, ModelMode::Training, ActivationRecompute::None);
  std::fprintf(stderr, "roofline_layer: %lld parameters, setting them\n",
               static_cast<long long>(model.table().total_numel()));
  std::vector<float> init(static_cast<std::size_t>(model.table().total_numel()));
  std::uint64_t state = 42;  // any finite weights do for counting
  for (float& w : init) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    w = (static_cast<float>(state >> 40) / 16777216.0f - 0.5f) * 0.04f;
  }
  model.set_parameters(init);
  init = {};
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(T)), targets(tokens.size());
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<std::int32_t>((i * 7919) % static_cast<std::size_t>(c.vocab_size));
    targets[i] = static_cast<std::int32_t>((i * 104729 + 1) % static_cast<std::size_t>(c.vocab_size));
  }
  LossWorkspace workspace(*backend, c.vocab_size, T);
  OptimizerConfig oc;
  oc.warmup_steps = 0;
  AdamW optimizer(model, oc);

  std::fprintf(stderr, "roofline_layer: running one step under emulation with every access counted\n");
  emu::TrafficRecording recording;
  model.zero_gradients();
  model.forward(tokens, 1, T);
  std::fprintf(stderr, "roofline_layer: forward done\n");
  const double loss = cross_entropy_loss(model, targets, workspace, 1.0f);
  model.backward();
  std::fprintf(stderr, "roofline_layer: loss and backward done\n");
  optimizer.step(0);
  backend->synchronize();
  std::fprintf(stderr, "roofline_layer: optimizer step done\n");
  if (!std::isfinite(loss))
    fail("the loss is " + std::to_string(loss) + ", not finite (expected finite weights to give a finite loss)");
  const std::vector<emu::LaunchTraffic> launches = recording.take();
  const std::string table =
      "Predictions from counted traffic under emulation, not measurements.\n\n" + report(shape, T, launches);
  std::fputs(table.c_str(), stdout);
  if (parsed.count("markdown")) write_bytes_atomically(parsed["markdown"].as<std::string>(), table);
  if (parsed.count("jsonl")) {
    std::string lines;
    for (const emu::LaunchTraffic& l : launches) {
      const nlohmann::json row = {{"kernel", l.library_call ? "cublasLtMatmul" : short_name(l.kernel)},
                                  {"library_call", l.library_call},
                                  {"blocks", l.blocks},
                                  {"bytes_read", l.bytes_read},
                                  {"bytes_written", l.bytes_written},
                                  {"distinct_bytes_read", l.distinct_bytes_read},
                                  {"distinct_bytes_written", l.distinct_bytes_written},
                                  {"flops", l.flops},
                                  {"ldmatrix", l.ldmatrix}};
      lines += row.dump() + "\n";
    }
    write_bytes_atomically(parsed["jsonl"].as<std::string>(), lines);
  }
  return 0;
}

}  // namespace
}  // namespace minitron

int main(int argc, char** argv) {
  try {
    return minitron::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "roofline_layer: error: %s\n", e.what());
    return 1;
  }
}
