#!/usr/bin/env python3
"""PyTorch peer for bench/gpu/layer_step.cpp: the same Llama-3.1-8B-shaped model (layers,
sequence, vocabulary as given), SDPA causal attention (grouped-query where PyTorch has it),
cross-entropy, gradient clipping at norm 1.0 and fused AdamW with layer_step's settings; timed
eager and under torch.compile. Prints one JSON line per mode (the keys layer_step prints, and
which attention path ran); a torch.compile that is missing or fails prints a line with an
"error" key instead, and the script carries on (exit 0 once eager ran).

Precision, chosen to do the work ours does (the CUDA engine: bf16 parameters and activations,
fp32 parameter gradients, AdamW on fp32 master weights and moments): fp32 parameters, which are
the master weights AdamW updates and give fp32 gradients as ours, under bf16 autocast for the
matmuls; the activations are bf16 as ours by explicit casts, since autocast alone would keep the
embedding output, hence the residual stream, the norms and RoPE (fp32 cos/sin), in fp32. RMSNorm
and the loss compute in fp32 and store bf16 as ours. One difference remains: autocast casts each
fp32 weight to bf16 per step where ours has AdamW write the bf16 copy (about 3 GB more traffic
per step at 2 layers: under a millisecond on an H200).

Usage: torch_layer.py [layers=2] [sequence=4096] [vocab=32000] [peak_tflops=989] [--no-compile]
                      [--tiny-cpu]
--tiny-cpu is for the CPU test only (tests/bench): layers of width 64 on the CPU, so that a
Python error surfaces here, not on the lent GPU machine; the GPU measurement ignores it.
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

args = [a for a in sys.argv[1:] if not a.startswith("--")]
layers = int(args[0]) if len(args) > 0 else 2
T = int(args[1]) if len(args) > 1 else 4096
V = int(args[2]) if len(args) > 2 else 32000
peak = float(args[3]) if len(args) > 3 else 989.0
tiny_cpu = "--tiny-cpu" in sys.argv
if tiny_cpu:
    device = "cpu"
    D, FF, HQ, HKV, HD = 64, 128, 4, 2, 16
else:
    device = "cuda"
    D, FF, HQ, HKV, HD = 4096, 14336, 32, 8, 128
ACTIVATION = torch.bfloat16  # the CUDA engine's activation dtype


def attention_path():
    """SDPA with enable_gqa (PyTorch >= 2.5: K/V heads shared, not copied), SDPA on K/V repeated
    to every query head (PyTorch >= 2.0), or the unfused maths (the CPU test's PyTorch 1.13)."""
    if not hasattr(F, "scaled_dot_product_attention"):
        return "unfused, K/V repeated"
    kv = torch.zeros(1, 1, 2, 8)
    try:
        F.scaled_dot_product_attention(torch.zeros(1, 2, 2, 8), kv, kv, enable_gqa=True)
    except (TypeError, RuntimeError):  # no such argument before 2.5
        return "sdpa, K/V repeated"
    return "sdpa enable_gqa"


ATTENTION = attention_path()


def causal_attention(q, k, v):
    if ATTENTION == "sdpa enable_gqa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    k = k.repeat_interleave(HQ // HKV, dim=1)
    v = v.repeat_interleave(HQ // HKV, dim=1)
    if ATTENTION == "sdpa, K/V repeated":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    scores = (q @ k.transpose(-2, -1)) * HD ** -0.5
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1).to(v.dtype) @ v


def synchronize():
    if device == "cuda":
        torch.cuda.synchronize()


class RMSNorm(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        # fp32 arithmetic, bf16 out (the fp32 weight times a bf16 row would promote it).
        r = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)
        return (x.float() * r * self.weight).to(x.dtype)


def rope(x, cos, sin):
    x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = RMSNorm(D), RMSNorm(D)
        self.q = torch.nn.Linear(D, HQ * HD, bias=False)
        self.k = torch.nn.Linear(D, HKV * HD, bias=False)
        self.v = torch.nn.Linear(D, HKV * HD, bias=False)
        self.o = torch.nn.Linear(HQ * HD, D, bias=False)
        self.gate = torch.nn.Linear(D, FF, bias=False)
        self.up = torch.nn.Linear(D, FF, bias=False)
        self.down = torch.nn.Linear(FF, D, bias=False)

    def forward(self, x, cos, sin):
        B = x.shape[0]
        h = self.n1(x)
        q = self.q(h).view(B, T, HQ, HD).transpose(1, 2)
        k = self.k(h).view(B, T, HKV, HD).transpose(1, 2)
        v = self.v(h).view(B, T, HKV, HD).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = causal_attention(q, k, v)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, HQ * HD))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(V, D)
        self.layers = torch.nn.ModuleList(Layer() for _ in range(layers))
        self.norm = RMSNorm(D)
        self.head = torch.nn.Linear(D, V, bias=False)
        inv = 1.0 / (500000.0 ** (torch.arange(0, HD, 2).float() / HD))
        ang = torch.outer(torch.arange(T).float(), inv)
        emb = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, tokens, targets):
        x = self.embed(tokens).to(ACTIVATION)  # the residual stream in bf16, as ours
        # cos/sin in the activations' dtype (as Hugging Face's Llama does), so RoPE stays bf16.
        cos, sin = self.cos.to(x.dtype), self.sin.to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.float().view(-1, V), targets.view(-1))


def bench(model, compiled):
    # fused AdamW on the GPU; the CPU test's PyTorch 1.13 has no `fused` argument at all.
    fused = {"fused": True} if device == "cuda" else {}
    # layer_step's OptimizerConfig: betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices
    # (embedding and head too), none on the norms; the gradient norm clipped at 1.0 every step.
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, **fused)
    fn = torch.compile(model) if compiled else model
    tokens = torch.randint(0, V, (1, T), device=device)
    targets = torch.randint(0, V, (1, T), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = fn(tokens, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    for _ in range(3):
        step()
    synchronize()
    steps = 5
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    synchronize()
    seconds = (time.perf_counter() - start) / steps
    matmul = layers * (D * (HQ * HD + 2 * HKV * HD) + HQ * HD * D + 3 * D * FF) + V * D
    flops_per_token = 6 * matmul + layers * 3 * 2 * 2 * (T / 2) * HD * HQ
    tps = T / seconds
    print(json.dumps({"engine": "torch.compile" if compiled else "torch eager", "layers": layers,
                      "tokens": T, "vocab": V, "step_ms": round(seconds * 1e3, 2),
                      "tokens_per_second": round(tps, 1),
                      "mfu": round(flops_per_token * tps / (peak * 1e12), 4),
                      "loss": round(float(loss), 4), "attention": ATTENTION}), flush=True)


torch.manual_seed(0)
model = Model().to(device)
bench(model, compiled=False)
if "--no-compile" not in sys.argv:
    # torch.compile needs PyTorch >= 2.0 and, for Inductor, a working Triton and C compiler on
    # the machine; any failure there is reported as a row and does not lose the eager result.
    try:
        if not hasattr(torch, "compile"):
            raise RuntimeError(f"PyTorch {torch.__version__} has no torch.compile")
        bench(model, compiled=True)
    except Exception as e:  # noqa: BLE001 - any compile/runtime failure is a result here
        message = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        print(f"torch_layer: torch.compile failed: {message}", file=sys.stderr, flush=True)
        print(json.dumps({"engine": "torch.compile", "error": message}), flush=True)
