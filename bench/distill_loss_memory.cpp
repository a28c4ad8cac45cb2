// Peak memory of the distillation loss as vocab x tokens grows: the loss works on chunks of
// rows, so its buffers are rows_per_chunk x vocab (x2: student and teacher) whatever the token
// count, and the full tokens x vocab logits (4 GiB per model in fp32 at 8k tokens x 128k vocab)
// never exist.
//
// Each measurement runs in a forked child so that its peak RSS (ru_maxrss) is its own. The
// loss's own peak is the growth of the peak RSS across the loss call alone: both models have
// run forward (their weights and activations are already resident) before the loss workspace
// is built, so what the workspace and the loss touch is all that can raise the peak. Where the
// full logits of both models fit under --full-logits-limit-mib, the same loss also runs
// unchunked (one chunk = every token) for comparison; above it, the full size is only computed.
//
//   build/bench/distill_loss_memory [--vocab N] [--max-tokens N] [--loss-only]
//                                   [--full-logits-limit-mib N]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/make_backend.h"
#include "model/llama.h"
#include "train/losses.h"

namespace {

using namespace minitron;

constexpr double kMiB = 1024.0 * 1024.0;

// Small models: the loss cost is in the tokens x vocab logits, not in the layers, so narrow
// hidden sizes keep the head GEMMs (tokens x vocab x hidden) from dominating the run time.
ModelConfig config(std::int64_t vocab, std::int64_t hidden) {
  ModelConfig c;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = 2 * hidden;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = hidden / 2;
  c.max_position_embeddings = 8192;
  c.rms_norm_eps = 1e-5;
  return c;
}

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) * 1024.0 / kMiB;  // ru_maxrss is in KiB on Linux
}

struct Measurement {
  std::int64_t chunk_rows = 0;
  double loss_peak_mib = 0, kl = 0, seconds = 0;
};

// One distillation loss over `tokens` tokens (chunk_rows = 0: the default chunk).
Measurement measure(std::int64_t vocab, std::int64_t tokens, std::int64_t chunk_rows, bool with_gradient) {
  auto backend = make_backend("cpu");
  const ModelConfig tc = config(vocab, 32), sc = config(vocab, 16);
  LlamaModel teacher(tc, *backend, 1, tokens, ModelMode::Inference);
  LlamaModel student(sc, *backend, 1, tokens, with_gradient ? ModelMode::Training : ModelMode::Inference);
  std::vector<float> p(static_cast<std::size_t>(teacher.table().total_numel()));
  initialize_parameters(tc, teacher.table(), p, 1);
  teacher.set_parameters(p);
  p.assign(static_cast<std::size_t>(student.table().total_numel()), 0.0f);
  initialize_parameters(sc, student.table(), p, 2);
  student.set_parameters(p);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(tokens));
  for (std::int64_t i = 0; i < tokens; ++i)
    ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919) % vocab);
  teacher.forward(ids, 1, tokens);
  student.forward(ids, 1, tokens);
  if (with_gradient) student.zero_gradients();  // touch the gradient buffer before the baseline

  const double before = peak_rss_mib();
  const auto t0 = std::chrono::steady_clock::now();
  LossWorkspace ws(*backend, vocab, tokens, chunk_rows, /*distillation=*/true);
  Measurement m;
  m.kl = distillation_loss(student, teacher, ws, 1.0f, with_gradient ? 1.0f : 0.0f);
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  m.loss_peak_mib = peak_rss_mib() - before;
  m.chunk_rows = ws.rows_per_chunk();
  return m;
}

// Runs measure() in a child process; false when the child failed.
bool measure_in_child(std::int64_t vocab, std::int64_t tokens, std::int64_t chunk_rows, bool with_gradient,
                      Measurement& out) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return false;
  std::fflush(stdout);  // or the child's exit would print the parent's buffered lines again
  const pid_t child = fork();
  if (child == 0) {
    close(pipe_fds[0]);
    int code = 0;
    try {
      const Measurement m = measure(vocab, tokens, chunk_rows, with_gradient);
      code = write(pipe_fds[1], &m, sizeof m) == static_cast<ssize_t>(sizeof m) ? 0 : 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      code = 1;
    }
    std::_Exit(code);
  }
  close(pipe_fds[1]);
  const bool got = read(pipe_fds[0], &out, sizeof out) == static_cast<ssize_t>(sizeof out);
  close(pipe_fds[0]);
  int status = 0;
  waitpid(child, &status, 0);
  return got && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::int64_t> vocabs{32768, 65536, 131072};
  std::int64_t max_tokens = 8192;
  double full_limit_mib = 2048;
  bool with_gradient = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--vocab") && i + 1 < argc)
      vocabs = {std::atoll(argv[++i])};
    else if (!std::strcmp(argv[i], "--max-tokens") && i + 1 < argc)
      max_tokens = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--full-logits-limit-mib") && i + 1 < argc)
      full_limit_mib = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--loss-only"))
      with_gradient = false;
    else {
      std::fprintf(stderr, "usage: %s [--vocab N] [--max-tokens N] [--loss-only] [--full-logits-limit-mib N]\n",
                   argv[0]);
      return 2;
    }
  }
  std::printf("distillation loss memory (cpu, fp32; models: 1 layer, hidden 32 teacher / 16 student; %s)\n",
              with_gradient ? "loss and student head gradient, as in training" : "loss only");
  std::printf("loss peak = growth of peak RSS across the loss call; full logits = tokens x vocab x 4 B x 2 models\n");
  std::printf("| %6s | %6s | %14s | %6s | %11s | %11s | %14s | %14s | %8s | %8s | %8s |\n", "vocab", "tokens",
              "tokens x vocab", "chunk", "chunk MiB", "loss peak", "full logits", "unchunked peak", "KL", "KL full",
              "seconds");
  bool all_ok = true;
  for (std::int64_t vocab : vocabs) {
    for (std::int64_t tokens = 1024; tokens <= max_tokens; tokens *= 2) {
      Measurement chunked, full;
      if (!measure_in_child(vocab, tokens, 0, with_gradient, chunked)) {
        std::printf("| %6lld | %6lld | failed (see stderr) |\n", static_cast<long long>(vocab),
                    static_cast<long long>(tokens));
        all_ok = false;
        continue;
      }
      const double chunk_mib = 2.0 * static_cast<double>(chunked.chunk_rows * vocab) * 4 / kMiB;
      const double full_mib = 2.0 * static_cast<double>(tokens) * static_cast<double>(vocab) * 4 / kMiB;
      const bool run_full = full_mib <= full_limit_mib && chunked.chunk_rows < tokens;
      if (run_full && !measure_in_child(vocab, tokens, tokens, with_gradient, full)) all_ok = false;
      char full_peak[32] = "not run", full_kl[32] = "-";
      if (run_full) {
        std::snprintf(full_peak, sizeof full_peak, "%.1f", full.loss_peak_mib);
        std::snprintf(full_kl, sizeof full_kl, "%.5f", full.kl);
      } else if (chunked.chunk_rows >= tokens) {
        std::snprintf(full_peak, sizeof full_peak, "= chunked");
      }
      std::printf("| %6lld | %6lld | %13.0fM | %6lld | %11.1f | %11.1f | %14.1f | %14s | %8.5f | %8s | %8.2f |\n",
                  static_cast<long long>(vocab), static_cast<long long>(tokens),
                  static_cast<double>(tokens * vocab) / 1e6, static_cast<long long>(chunked.chunk_rows), chunk_mib,
                  chunked.loss_peak_mib, full_mib, full_peak, chunked.kl, full_kl, chunked.seconds);
      std::fflush(stdout);
    }
  }
  std::printf("chunk MiB and full logits MiB are computed; loss peak and unchunked peak are measured.\n");
  return all_ok ? 0 : 1;
}
