// GPU-only (nvcc: it reaches the engine's stream through kernels/cuda/cuda_context.h): times
// every CUDA-engine op at Llama-3.1-8B shapes and prints a markdown table with
// each op's bandwidth (GB/s) or math rate (TFLOP/s) beside the device's measured copy bandwidth
// and the cuBLASLt bf16 GEMM rate. Run by bench/gpu_check.sh; writes the table to argv[1] too.
//
// Byte counts are the compulsory traffic (each input read once, each output written once); a
// kernel at 80-90% of the copy bandwidth is as fast as its memory traffic allows.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_backend_factory.h"
#include "kernels/cuda/cuda_context.h"
#include "kernels/reduce.cuh"

namespace minitron {
namespace {

struct Row {
  std::string op, shape, unit;
  double ms, rate, reference;
};

class Timer {
 public:
  explicit Timer(cudaStream_t stream) : stream_(stream) {
    MINITRON_CUDA_CHECK(cudaEventCreate(&start_));
    MINITRON_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~Timer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  // Mean milliseconds per call after two warm-up calls.
  double time(const std::function<void()>& f, int iterations) {
    f();
    f();
    MINITRON_CUDA_CHECK(cudaEventRecord(start_, stream_));
    for (int i = 0; i < iterations; ++i) f();
    MINITRON_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    MINITRON_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    MINITRON_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms / iterations;
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t start_{}, stop_{};
};

int run(const std::string& out_path) {
  auto owned = make_cuda_backend();
  // Ops through the Backend interface (its default arguments), the stream from the engine.
  Backend& b = *owned;
  cudaStream_t stream = static_cast<cuda::CudaBackend&>(*owned).context().stream();
  Timer timer(stream);
  cudaDeviceProp prop{};
  MINITRON_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));

  // Llama-3.1-8B: hidden 4096, FFN 14336, 32 query / 8 KV heads of 128, vocab 128256;
  // one sequence of 4096 tokens per step.
  const std::int64_t N = 4096, D = 4096, F = 14336, Hq = 32, Hkv = 8, hd = 128, V = 128256;
  const std::int64_t QD = Hq * hd, KVD = Hkv * hd, loss_rows = 256;
  const DType bf = DType::BF16, f32 = DType::F32;
  std::vector<Row> rows;
  auto gbs = [](double bytes, double ms) { return bytes / (ms * 1e-3) / 1e9; };
  auto tflops = [](double flops, double ms) { return flops / (ms * 1e-3) / 1e12; };
  // Pseudo-random values in [-0.5, 0.5): tensor cores on zeros draw less power and run faster,
  // which would inflate the GEMM reference the attention rows are compared to.
  auto upload_random = [&](Tensor t, std::uint64_t state) {
    std::vector<float> values(static_cast<std::size_t>(t.numel));
    for (float& value : values) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      value = static_cast<float>(state >> 40) / 16777216.0f - 0.5f;
    }
    b.upload(t, values.data());
  };

  // Reference 1: device-to-device copy of 1 GiB (read + write).
  const std::int64_t copy_elems = std::int64_t{1} << 28;
  BackendBuffer src(b, copy_elems, f32), dst(b, copy_elems, f32);
  b.zero(src);
  const double copy_ms = timer.time([&] { b.copy(dst, src); }, 10);
  const double copy_bw = gbs(2.0 * copy_elems * 4, copy_ms);
  rows.push_back({"copy (cudaMemcpyAsync)", "1 GiB f32", "GB/s", copy_ms, copy_bw, copy_bw});
  src.reset();
  dst.reset();

  // Reference 2: cuBLASLt bf16 GEMM, the MLP's up projection.
  BackendBuffer x(b, N * D, bf), w_up(b, F * D, bf), h(b, N * F, bf), g_up(b, F * D, f32);
  upload_random(x, 1);
  upload_random(w_up, 2);
  b.zero(h);
  b.zero(g_up);
  const double gemm_ms = timer.time([&] { b.matmul(h, x, w_up, N, F, D, false, true); }, 10);
  const double gemm_rate = tflops(2.0 * N * F * D, gemm_ms);
  rows.push_back({"matmul bf16 -> bf16", "4096x14336x4096 (x W^T)", "TFLOP/s", gemm_ms, gemm_rate, gemm_rate});
  const double wgrad_ms = timer.time([&] { b.matmul(g_up, h, x, F, D, N, true, false, 1.0f, 1.0f); }, 10);
  rows.push_back({"matmul bf16 -> f32 += (weight grad)", "14336x4096x4096 (h^T x)", "TFLOP/s", wgrad_ms,
                  tflops(2.0 * N * F * D, wgrad_ms), gemm_rate});
  g_up.reset();
  w_up.reset();

  // Elementwise and row ops.
  BackendBuffer y(b, N * D, bf), wn(b, D, bf), rstd(b, N, f32), dwn(b, D, f32), dy(b, N * D, bf);
  b.zero(y);
  b.zero(dy);
  b.zero(dwn);
  std::vector<float> ones(D, 1.0f);
  b.upload(wn, ones.data());
  double ms = timer.time([&] { b.rmsnorm_forward(y, rstd, x, wn, N, D, 1e-5f); }, 20);
  rows.push_back({"rmsnorm_forward", "4096x4096 bf16", "GB/s", ms, gbs(2.0 * N * D * 2, ms), copy_bw});
  ms = timer.time([&] { b.rmsnorm_backward(dy, dwn, y, x, wn, rstd, N, D); }, 20);
  rows.push_back({"rmsnorm_backward", "4096x4096 bf16", "GB/s", ms, gbs(4.0 * N * D * 2, ms), copy_bw});

  BackendBuffer gate(b, N * F, bf), up(b, N * F, bf), dgate(b, N * F, bf), dup(b, N * F, bf);
  b.zero(gate);
  b.zero(up);
  ms = timer.time([&] { b.swiglu_forward(h, gate, up, N * F); }, 20);
  rows.push_back({"swiglu_forward", "4096x14336 bf16", "GB/s", ms, gbs(3.0 * N * F * 2, ms), copy_bw});
  ms = timer.time([&] { b.swiglu_backward(dgate, dup, h, gate, up, N * F); }, 20);
  rows.push_back({"swiglu_backward", "4096x14336 bf16", "GB/s", ms, gbs(5.0 * N * F * 2, ms), copy_bw});
  dgate.reset();
  dup.reset();
  up.reset();

  BackendBuffer q(b, N * QD, bf), k(b, N * KVD, bf), v(b, N * KVD, bf), att(b, N * QD, bf);
  BackendBuffer lse(b, Hq * N, f32), dq(b, N * QD, bf), dk(b, N * KVD, bf), dv(b, N * KVD, bf);
  BackendBuffer inv_freq(b, hd / 2, f32);
  std::vector<float> freqs(hd / 2);
  for (std::int64_t i = 0; i < hd / 2; ++i) freqs[i] = static_cast<float>(std::pow(500000.0, -2.0 * i / hd));
  b.upload(inv_freq, freqs.data());
  b.copy(q, x.tensor().slice(0, N * QD));
  b.copy(k, x.tensor().slice(0, N * KVD));
  b.copy(v, x.tensor().slice(N * KVD, N * KVD));
  ms = timer.time([&] { b.rope_forward(q, inv_freq, 1, N, Hq, hd, 0); }, 20);
  rows.push_back({"rope_forward", "4096 x 32 heads x 128", "GB/s", ms, gbs(2.0 * N * QD * 2, ms), copy_bw});

  // Causal attention FLOPs: QK^T and PV, 2 * T^2 * hd each per head, halved by the mask.
  const double attention_flops = 2.0 * 2.0 * N * N * hd * Hq / 2;
  ms = timer.time([&] { b.attention_forward(att, lse, q, k, v, 1, N, N, Hq, Hkv, hd); }, 3);
  rows.push_back(
      {"attention_forward", "T=4096, 32/8 heads, hd 128", "TFLOP/s", ms, tflops(attention_flops, ms), gemm_rate});
  ms = timer.time([&] { b.attention_backward(dq, dk, dv, att, att, lse, q, k, v, 1, N, Hq, Hkv, hd); }, 2);
  // The backward's model FLOPs are 2.5x the forward's (dV, dP, dQ, dK; S recomputed not counted).
  rows.push_back({"attention_backward", "T=4096, 32/8 heads, hd 128", "TFLOP/s", ms, tflops(2.5 * attention_flops, ms),
                  gemm_rate});
  // The same with RoPE inside attention (the model's calls): the forward adds the pass over K and
  // Q's rotation and write-back, the backward dQ's and dK's rotation back; against the rows above
  // plus rope_forward's that is what fusing saved (q and k are rotated again each repetition).
  ms = timer.time([&] { b.attention_forward(att, lse, q, k, v, 1, N, N, Hq, Hkv, hd, {}, {}, inv_freq); }, 3);
  rows.push_back({"attention_forward with RoPE", "T=4096, 32/8 heads, hd 128", "TFLOP/s", ms,
                  tflops(attention_flops, ms), gemm_rate});
  ms = timer.time(
      [&] { b.attention_backward(dq, dk, dv, att, att, lse, q, k, v, 1, N, Hq, Hkv, hd, {}, {}, inv_freq); }, 2);
  rows.push_back({"attention_backward with RoPE", "T=4096, 32/8 heads, hd 128", "TFLOP/s", ms,
                  tflops(2.5 * attention_flops, ms), gemm_rate});
  // The same window packed with 8 documents of 512 tokens (--document-boundaries): the kernels skip
  // the tiles of other documents, so only the documents' own causal FLOPs count, 1/8 of the above.
  {
    constexpr std::int64_t kDocument = 512;
    std::vector<std::int32_t> host_positions(static_cast<std::size_t>(N));
    for (std::int64_t t = 0; t < N; ++t)
      host_positions[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(t % kDocument);
    BackendBuffer positions(b, N, DType::I32);
    b.upload_i32(positions, host_positions.data());
    const double packed_flops = attention_flops * kDocument / N;
    ms = timer.time([&] { b.attention_forward(att, lse, q, k, v, 1, N, N, Hq, Hkv, hd, positions); }, 3);
    rows.push_back({"attention_forward packed", "T=4096 as 8 x 512, 32/8 heads", "TFLOP/s", ms,
                    tflops(packed_flops, ms), gemm_rate});
    ms = timer.time([&] { b.attention_backward(dq, dk, dv, att, att, lse, q, k, v, 1, N, Hq, Hkv, hd, positions); }, 2);
    rows.push_back({"attention_backward packed", "T=4096 as 8 x 512, 32/8 heads", "TFLOP/s", ms,
                    tflops(2.5 * packed_flops, ms), gemm_rate});
  }
  q.reset();
  k.reset();
  v.reset();
  att.reset();
  lse.reset();
  dq.reset();
  dk.reset();
  dv.reset();

  // Embedding with the real vocabulary.
  BackendBuffer table(b, V * D, bf), dtable(b, V * D, f32), tokens(b, N, DType::I32);
  std::vector<std::int32_t> ids(N);
  for (std::int64_t i = 0; i < N; ++i) ids[i] = static_cast<std::int32_t>((i * 7919) % V);
  b.upload_i32(tokens, ids.data());
  b.zero(table);
  b.zero(dtable);
  ms = timer.time([&] { b.embedding_forward(y, tokens, table, N, D); }, 20);
  rows.push_back({"embedding_forward", "4096 tokens x 4096", "GB/s", ms, gbs(2.0 * N * D * 2, ms), copy_bw});
  ms = timer.time([&] { b.embedding_backward(dtable, dy, tokens, N, D); }, 20);
  rows.push_back(
      {"embedding_backward", "4096 tokens x 4096, vocab 128256", "GB/s", ms, gbs(N * D * (2.0 + 8.0), ms), copy_bw});
  table.reset();
  dtable.reset();

  // Losses over a chunk of logits.
  BackendBuffer logits(b, loss_rows * V, bf), teacher(b, loss_rows * V, bf), losses(b, loss_rows, f32),
      targets(b, loss_rows, DType::I32);
  b.zero(logits);
  b.zero(teacher);
  b.upload_i32(targets, ids.data());
  ms = timer.time([&] { b.cross_entropy(losses, logits, targets, loss_rows, V, 1.0f); }, 20);
  rows.push_back({"cross_entropy (+grad)", "256 x 128256 bf16", "GB/s", ms, gbs(2.0 * loss_rows * V * 2, ms), copy_bw});
  ms = timer.time([&] { b.kl_divergence(losses, logits, teacher, loss_rows, V, 1.0f, 1.0f); }, 20);
  rows.push_back({"kl_divergence (+grad)", "256 x 128256 bf16", "GB/s", ms, gbs(3.0 * loss_rows * V * 2, ms), copy_bw});
  logits.reset();
  teacher.reset();

  // Optimizer and gradient norm over one 8B layer's parameters (~218M).
  const std::int64_t P = D * (QD + 2 * KVD) + QD * D + 3 * D * F + 2 * D;
  BackendBuffer params(b, P, bf), master(b, P, f32), grads(b, P, f32), m(b, P, f32), vv(b, P, f32);
  b.zero(params);
  b.zero(master);
  b.zero(grads);
  b.zero(m);
  b.zero(vv);
  AdamWStep step;
  step.learning_rate = 1e-4f;
  ms = timer.time([&] { b.adamw_update(params, master, grads, m, vv, step); }, 10);
  // With master weights the kernel reads master, grads, m, v (fp32) and writes m, v, master
  // (fp32) and the bf16 parameters (never read): 16 + 12 + 2 bytes per parameter.
  rows.push_back({"adamw_update", "218M params (one layer)", "GB/s", ms, gbs(30.0 * P, ms), copy_bw});
  // The launcher itself, on the stream like every other row: CudaBackend::sum_of_squares also
  // downloads the result and waits for it on every call.
  const std::int64_t squares_doubles = cuda::sum_of_squares_workspace_doubles(P);
  double* squares_workspace = nullptr;
  MINITRON_CUDA_CHECK(cudaMalloc(&squares_workspace, static_cast<std::size_t>(squares_doubles) * sizeof(double)));
  ms = timer.time(
      [&] {
        cuda::sum_of_squares<float>(squares_workspace + squares_doubles - 1,
                                    static_cast<const float*>(grads.tensor().data), P, squares_workspace, stream);
      },
      10);
  MINITRON_CUDA_CHECK(cudaFree(squares_workspace));
  rows.push_back({"sum_of_squares", "218M f32", "GB/s", ms, gbs(4.0 * P, ms), copy_bw});

  std::string table_md = "| op | shape | ms | rate | unit | % of reference |\n|---|---|---|---|---|---|\n";
  for (const Row& r : rows) {
    char line[512];
    std::snprintf(line, sizeof line, "| %s | %s | %.3f | %.1f | %s | %.0f%% |\n", r.op.c_str(), r.shape.c_str(), r.ms,
                  r.rate, r.unit.c_str(), 100.0 * r.rate / r.reference);
    table_md += line;
  }
  std::string header = std::string("# CUDA kernels on ") + prop.name + "\n\nReference rates measured here: copy " +
                       std::to_string(static_cast<int>(copy_bw)) + " GB/s, cuBLASLt bf16 GEMM " +
                       std::to_string(static_cast<int>(gemm_rate)) + " TFLOP/s. GB/s rows compare to the copy, " +
                       "TFLOP/s rows to the GEMM.\n\n";
  std::printf("%s%s", header.c_str(), table_md.c_str());
  if (!out_path.empty()) std::ofstream(out_path) << header << table_md;
  return 0;
}

}  // namespace
}  // namespace minitron

int main(int argc, char** argv) {
  try {
    return minitron::run(argc > 1 ? argv[1] : "");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_bench: error: %s\n", e.what());
    return 1;
  }
}
