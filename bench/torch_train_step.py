#!/usr/bin/python3
"""Times one CPU training step (forward + backward + AdamW) of the fixed bench model in
PyTorch fp32: the peer that bench/cpu_train_step.cpp is compared with (bench/run_cpu.sh).

Run with the Debian python that has torch:
  /usr/bin/python3 bench/torch_train_step.py [--batch-size 4] [--threads N]

The model is tools/llama_reference.py (the HF-eager formulation: explicit repeat_kv, masked
softmax, separate q/k/v and gate/up matmuls), so this measures eager PyTorch running the same
math, not a fused or compiled implementation. Prints one JSON line:
{"impl": "pytorch", "tokens_per_second": ..., "step_ms": ..., "threads": ...}
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import llama_reference as ref  # noqa: E402

# The fixed bench model (must match bench/cpu_train_step.cpp).
BENCH_CONFIG = ref.LlamaConfig(
    vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
    num_attention_heads=8, num_key_value_heads=2, head_dim=32, rope_theta=10000.0,
    rope_scaling=None, rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=2048)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main():
    parser = argparse.ArgumentParser(description="PyTorch fp32 CPU training-step benchmark")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--timed-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    for flag in ("batch_size", "sequence_length", "threads", "timed_steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = ref.LlamaForCausalLM(BENCH_CONFIG)  # fp32; nn default init is fine for timing
    optimizer = torch.optim.AdamW(ref.weight_decay_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), eps=1e-8)

    rng = np.random.default_rng(args.seed)
    stream = rng.integers(0, BENCH_CONFIG.vocab_size, size=(args.batch_size, args.sequence_length + 1))
    inputs = torch.from_numpy(stream[:, :-1].copy())
    targets = torch.from_numpy(stream[:, 1:].copy())

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(inputs, targets)
        loss.backward()
        optimizer.step()
        return loss.item()  # forces completion of the step

    for _ in range(args.warmup_steps):
        step()
    times = []
    for _ in range(args.timed_steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)

    step_s = statistics.median(times)
    tokens = args.batch_size * args.sequence_length
    print(json.dumps({"impl": "pytorch", "tokens_per_second": round(tokens / step_s, 1),
                      "step_ms": round(step_s * 1000.0, 3), "threads": args.threads,
                      "batch_size": args.batch_size, "sequence_length": args.sequence_length,
                      "torch_version": torch.__version__}))


if __name__ == "__main__":
    main()
