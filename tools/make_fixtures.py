#!/usr/bin/python3
"""Writes the model fixtures under tests/fixtures/<name>/ from tools/llama_reference.py.

Run with the Debian python that has torch: `/usr/bin/python3 tools/make_fixtures.py`.
Deterministic (numpy PCG64 seeds, one torch thread, fixed file layout): rerunning rewrites
byte-identical files. Everything is computed in float64 and stored as float32; see
tests/fixtures/README.md for what each file holds.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402
import safetensors_io  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LEARNING_RATE = 1e-2
BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
WEIGHT_DECAY = 0.1
ADAM_STEPS = 3

# Optimizer runs stored per fixture: (key prefix, clip max_norm or None). AdamW is elementwise
# and shape-agnostic, so nemo_headdim carries none. The tied fixture adds a run clipped at 0.5
# (every step clips; Adam cancels a constant factor, but the coefficient here changes from step
# to step, 0.107 -> 0.187, which moves the final parameters by ~10% of the update size).
PLAIN = [("adamw3", None)]

# name -> (config, batch, seq, seed, optimizer runs)
FIXTURES = {
    # Llama-3.1 shape: GQA (2 query heads per KV head) and llama3 RoPE scaling. The original
    # context (256) is chosen so that head_dim 8 at theta 5e5 has one frequency in each band:
    # wavelengths 6.3 (< 256/4: kept), 167 (between: smoothed), 4443 and 1.2e5 (> 256: / 8).
    "llama3_gqa": (
        ref.LlamaConfig(
            vocab_size=67, hidden_size=32, intermediate_size=88, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
            rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=2048,
            architecture="LlamaForCausalLM", model_type="llama", bos_token_id=1,
            extra={"eos_token_id": [2, 3]}),  # Llama 3.1 lists several EOS ids
        2, 7, 1001, PLAIN),
    # Mistral NeMo shape: head_dim (16) is not hidden / heads (24 / 4 = 6), so q_dim 64 != 24.
    "nemo_headdim": (
        ref.LlamaConfig(
            vocab_size=53, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1000000.0,
            rope_scaling=None, rms_norm_eps=1e-5, tie_word_embeddings=False,
            max_position_embeddings=1024, architecture="MistralForCausalLM", model_type="mistral",
            bos_token_id=1, eos_token_id=2, extra={"sliding_window": None}),
        2, 5, 2002, []),
    # Llama-3.2 shape: tied embeddings, 2 query heads per KV head, llama3 scaling (factor 32).
    "llama32_tied": (
        ref.LlamaConfig(
            vocab_size=71, hidden_size=24, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=6, num_key_value_heads=3, head_dim=4, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
            rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=2048,
            architecture="LlamaForCausalLM", model_type="llama", bos_token_id=1, eos_token_id=2),
        1, 9, 3003, PLAIN + [("adamw3_clip", 0.5)]),
}


def init_std(name: str) -> float:
    """Moderate scales so that logits and attention are not flat (HF's 0.02 everywhere would
    make every softmax near-uniform and hide indexing bugs)."""
    if name.endswith("embed_tokens.weight"):
        return 0.3
    if name == "lm_head.weight":
        return 0.2  # logits of order 1 on a unit-RMS hidden state
    if "q_proj" in name or "k_proj" in name:
        return 0.2  # attention scores of order 1: peaked, but not one-hot
    return 0.1


def initialize(model: torch.nn.Module, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.from_numpy(rng.standard_normal(tuple(p.shape)))
            if p.dim() == 1:  # norm weights: around 1, so that a wrong weight shows
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(init_std(name) * noise)


def make_tokens(config: ref.LlamaConfig, batch: int, seq: int, seed: int):
    """One stream of seq + 1 tokens per row: inputs are the first seq, targets the next seq
    (as a window of an llm.c shard is read)."""
    rng = np.random.default_rng(seed + 7)
    stream = rng.integers(0, config.vocab_size, size=(batch, seq + 1), dtype=np.int64)
    return stream[:, :-1].copy(), stream[:, 1:].copy()


def f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy().astype(np.float32)


def check_rope_bands(config: ref.LlamaConfig):
    """The scaled fixture must exercise the bands it claims to (see FIXTURES)."""
    if config.rope_scaling is None:
        return
    base = ref.default_inverse_frequencies(config.head_dim, config.rope_theta)
    scaled = ref.rope_inverse_frequencies(config)
    s = config.rope_scaling
    wavelen = 2 * math.pi / base
    high = (wavelen < s["original_max_position_embeddings"] / s["high_freq_factor"]).sum().item()
    low = (wavelen > s["original_max_position_embeddings"] / s["low_freq_factor"]).sum().item()
    assert not torch.equal(base, scaled), "llama3 scaling left every frequency unchanged"
    assert high >= 1 and low >= 1, f"rope bands: {high} kept, {low} divided"
    return high, len(base) - high - low, low


def make_fixture(name, config, batch, seq, seed, runs, out_root):
    torch.manual_seed(0)  # nothing random should come from torch; pinned anyway
    directory = os.path.join(out_root, name)
    os.makedirs(directory, exist_ok=True)
    bands = check_rope_bands(config)

    model = ref.LlamaForCausalLM(config).double()
    initialize(model, seed)
    inputs_np, targets_np = make_tokens(config, batch, seq, seed)
    inputs, targets = torch.from_numpy(inputs_np), torch.from_numpy(targets_np)

    # The checkpoint is what an fp32 engine loads: the float64 init rounded to float32. The
    # expected values are computed from those same rounded weights, in float64.
    weights = {n: f32(p) for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.from_numpy(weights[n].astype(np.float64)))
    rounded_init = {n: torch.from_numpy(w.astype(np.float64)) for n, w in weights.items()}

    record = {}
    logits, hidden = model(inputs, record)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size), targets.reshape(-1))
    loss.backward()

    expected = {
        "logits": f32(logits),
        "loss": f32(loss.reshape(1)),
        "hidden_final": f32(hidden),
        "grad_norm": f32(ref.global_grad_norm(model).reshape(1)),
        "rope.inv_freq": f32(ref.rope_inverse_frequencies(config)),
    }
    for site, value in record.items():
        expected["act." + site] = f32(value)
    for n, p in model.named_parameters():
        expected["grad." + n] = f32(p.grad)

    summary = {}
    for prefix, clip in runs:
        params, losses, norms = adamw_run_from(config, rounded_init, inputs, targets, clip)
        for n, p in params.items():
            expected[f"{prefix}.{n}"] = f32(p)
        expected[f"{prefix}_losses"] = np.array(losses, dtype=np.float32)
        expected[f"{prefix}_grad_norms"] = np.array(norms, dtype=np.float32)
        summary[prefix] = (losses, norms)

    hf = config.to_hf_dict()
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(directory, "tokens.json"), "w") as f:
        json.dump({"batch": batch, "seq": seq, "inputs": inputs_np.tolist(),
                   "targets": targets_np.tolist()}, f)
        f.write("\n")
    safetensors_io.save_file(weights, os.path.join(directory, "model.safetensors"), {"format": "pt"})
    safetensors_io.save_file(expected, os.path.join(directory, "expected.safetensors"),
                             {"format": "pt", "generator": "tools/make_fixtures.py",
                              "precision": "float64 results rounded to float32"})

    probs = torch.softmax(logits.detach(), -1)
    print(f"{name}: loss {loss.item():.6f} (uniform {math.log(config.vocab_size):.4f}), "
          f"max prob mean {probs.max(-1).values.mean().item():.3f}, grad norm {expected['grad_norm'][0]:.4f}, "
          f"rope bands kept/smoothed/divided {bands}")
    for prefix, (losses, norms) in summary.items():
        print(f"  {prefix}: losses {[round(v, 5) for v in losses]}, grad norms {[round(v, 4) for v in norms]}")


def adamw_run_from(config, initial, inputs, targets, clip_norm):
    """adamw_run, starting from the given (float32-rounded) initial parameters."""
    model = ref.LlamaForCausalLM(config).double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(initial[n])
    optimizer = torch.optim.AdamW(ref.weight_decay_groups(model, WEIGHT_DECAY), lr=LEARNING_RATE,
                                  betas=BETAS, eps=ADAM_EPS)
    losses, norms = [], []
    for _ in range(ADAM_STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(inputs, targets)
        loss.backward()
        losses.append(loss.item())
        if clip_norm is not None:
            # clip_grad_norm_: total 2-norm over all gradients, scale by
            # min(1, max_norm / (total + 1e-6)); returns the pre-clip norm.
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm).item())
        else:
            norms.append(ref.global_grad_norm(model).item())
        optimizer.step()
    with torch.no_grad():
        losses.append(model.loss(inputs, targets).item())
    return dict(model.named_parameters()), losses, norms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=os.path.join(REPO_ROOT, "tests", "fixtures"))
    parser.add_argument("--only", default=None, help="generate one fixture by name")
    args = parser.parse_args()
    torch.set_num_threads(1)  # fixed reduction order: byte-identical reruns
    for name, (config, batch, seq, seed, runs) in FIXTURES.items():
        if args.only and name != args.only:
            continue
        make_fixture(name, config, batch, seq, seed, runs, args.output_dir)


if __name__ == "__main__":
    main()
