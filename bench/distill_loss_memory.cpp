// Peak memory of the distillation loss as vocab x tokens grows: the loss works on chunks of
// rows, so its buffers are rows_per_chunk x vocab (x2: student and teacher) whatever the token
// count, and the full tokens x vocab logits (4 GiB in fp32 at 8k tokens x 128k vocab) never
// exist. Each configuration runs in a forked child so that its peak RSS (ru_maxrss) is its own.
//
//   build/bench/distill_loss_memory [--vocab 131072] [--with-gradient]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/llama.h"
#include "train/losses.h"

namespace {

using namespace minitron;

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

// Runs one distillation loss over `tokens` tokens; returns 0 on success.
int run_one(std::int64_t vocab, std::int64_t tokens, std::int64_t chunk_rows, bool with_gradient) {
  auto backend = make_backend("cpu");
  const ModelConfig tc = config(vocab, 64), sc = config(vocab, 32);
  LlamaModel teacher(tc, *backend, 1, tokens, ModelMode::Inference);
  LlamaModel student(sc, *backend, 1, tokens, with_gradient ? ModelMode::Training : ModelMode::Inference);
  std::vector<float> p(static_cast<std::size_t>(teacher.table().total_numel()));
  initialize_parameters(tc, teacher.table(), p, 1);
  teacher.set_parameters(p);
  p.assign(static_cast<std::size_t>(student.table().total_numel()), 0.0f);
  initialize_parameters(sc, student.table(), p, 2);
  student.set_parameters(p);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(tokens));
  for (std::int64_t i = 0; i < tokens; ++i) ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919) % vocab);
  LossWorkspace ws(*backend, vocab, tokens, chunk_rows, /*distillation=*/true);
  const auto t0 = std::chrono::steady_clock::now();
  teacher.forward(ids, 1, tokens);
  student.forward(ids, 1, tokens);
  const double loss = distillation_loss(student, teacher, ws, 1.0f, with_gradient ? 1.0f : 0.0f);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double workspace_mib = 2.0 * static_cast<double>(ws.rows_per_chunk() * vocab) * 4 / (1 << 20);
  const double full_mib = static_cast<double>(tokens) * static_cast<double>(vocab) * 4 / (1 << 20);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf("%8lld %8lld %10lld %14.1f %16.1f %14.1f %10.4f %8.2f\n", static_cast<long long>(vocab),
              static_cast<long long>(tokens), static_cast<long long>(ws.rows_per_chunk()), workspace_mib, full_mib,
              static_cast<double>(usage.ru_maxrss) / 1024.0, loss, seconds);
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t vocab = 131072;
  bool with_gradient = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--vocab") && i + 1 < argc) vocab = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--with-gradient")) with_gradient = true;
    else {
      std::fprintf(stderr, "usage: %s [--vocab N] [--with-gradient]\n", argv[0]);
      return 2;
    }
  }
  std::printf("distillation loss memory (cpu, fp32; models: 1 layer, hidden 64/32; loss %s)\n",
              with_gradient ? "and head gradient" : "only");
  std::printf("%8s %8s %10s %14s %16s %14s %10s %8s\n", "vocab", "tokens", "chunk rows", "loss bufs MiB",
              "full logits MiB", "peak RSS MiB", "KL", "seconds");
  for (std::int64_t tokens : {1024, 2048, 4096, 8192}) {
    const pid_t child = fork();
    if (child == 0) {
      try {
        std::_Exit(run_one(vocab, tokens, 0, with_gradient));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        std::_Exit(1);
      }
    }
    int status = 0;
    waitpid(child, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
  }
  std::printf("peak RSS grows with the models' activations (tokens x hidden), not with tokens x vocab.\n");
  return 0;
}
