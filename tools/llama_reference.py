"""An independent, readable PyTorch Llama/Mistral decoder, written to match Hugging Face
transformers' modeling_llama.py / modeling_mistral.py (eager attention, no biases, no dropout).

It is the oracle for minitron's test fixtures (tools/make_fixtures.py) and the PyTorch side of
bench/torch_train_step.py, so it favours plainness over speed. Parameters carry HF names
(`model.layers.0.self_attn.q_proj.weight`, ...). It runs in any float dtype; fixtures use
float64 so that the expected values carry no error of their own at float32 precision.

Where transformers computes in float32 regardless of the model dtype (RMSNorm, RoPE tables,
softmax), this code computes in the wider of float32 and the model dtype: identical for
float32/bf16 models, and exact-er for float64 fixtures.
"""

import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None  # None or {"rope_type": "llama3", "factor", ...}
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    architecture: str = "LlamaForCausalLM"
    model_type: str = "llama"
    bos_token_id: int = 1
    eos_token_id: int = 2
    extra: Dict = field(default_factory=dict)  # other config.json fields, written back as-is

    @property
    def n_rep(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @staticmethod
    def from_hf_dict(d: dict) -> "LlamaConfig":
        heads = d["num_attention_heads"]
        return LlamaConfig(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads", heads),
            # transformers: head_dim defaults to hidden_size // num_attention_heads
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rope_theta=d.get("rope_theta", 10000.0),
            rope_scaling=d.get("rope_scaling"),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            architecture=d.get("architectures", ["LlamaForCausalLM"])[0],
            model_type=d.get("model_type", "llama"),
            bos_token_id=d.get("bos_token_id", 1),
            eos_token_id=d.get("eos_token_id", 2),
        )

    def to_hf_dict(self) -> dict:
        d = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float32",
        }
        if self.model_type == "llama":
            d["attention_bias"] = False
            d["mlp_bias"] = False
        d.update(self.extra)
        return d


def load_config(path) -> LlamaConfig:
    with open(path) as f:
        return LlamaConfig.from_hf_dict(json.load(f))


# ----------------------------------------------------------------------------- RoPE


def default_inverse_frequencies(head_dim: int, theta: float, dtype=torch.float64) -> torch.Tensor:
    """inv_freq[i] = 1 / theta^(2i / head_dim), i < head_dim / 2
    (transformers' _compute_default_rope_parameters; it evaluates this in float32)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype) / head_dim
    return 1.0 / (theta ** exponents)


def llama3_scaled_frequencies(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """transformers' _compute_llama3_parameters: wavelengths shorter than
    original_max / high_freq_factor are kept, longer than original_max / low_freq_factor are
    divided by `factor`, and the band between is interpolated smoothly."""
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context_len = scaling["original_max_position_embeddings"]

    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor

    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def rope_inverse_frequencies(config: LlamaConfig, dtype=torch.float64) -> torch.Tensor:
    inv_freq = default_inverse_frequencies(config.head_dim, config.rope_theta, dtype)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type == "default":
        return inv_freq
    if rope_type != "llama3":
        raise ValueError(f"rope_scaling type {rope_type!r} is not implemented (expected llama3 or none)")
    return llama3_scaled_frequencies(inv_freq, scaling)


def rope_cos_sin(config: LlamaConfig, seq_len: int, dtype) -> (torch.Tensor, torch.Tensor):
    """cos/sin tables [seq_len, head_dim]: each frequency appears twice, in the first and the
    second half (the rotate-half layout, not interleaved pairs)."""
    table_dtype = torch.promote_types(dtype, torch.float32)
    inv_freq = rope_inverse_frequencies(config, table_dtype)
    positions = torch.arange(seq_len, dtype=table_dtype)
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, head_dim]; cos/sin: [T, head_dim]."""
    return x * cos + rotate_half(x) * sin


# ----------------------------------------------------------------------------- blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        x = x.to(torch.promote_types(input_dtype, torch.float32))
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return self.weight * x.to(input_dtype)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, kv_heads, T, d] -> [B, kv_heads * n_rep, T, d]; query head h reads kv head h // n_rep."""
    if n_rep == 1:
        return x
    b, kv, t, d = x.shape
    return x[:, :, None, :, :].expand(b, kv, n_rep, t, d).reshape(b, kv * n_rep, t, d)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: [B, H, T, d]; k, v: [B, H, T, d] (already repeated). Returns [B, H, T, d]."""
    t = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    softmax_dtype = torch.promote_types(q.dtype, torch.float32)
    probs = F.softmax(scores, dim=-1, dtype=softmax_dtype).to(q.dtype)
    return torch.matmul(probs, v)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        h, kv, d, dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.hidden_size
        if h % kv != 0:
            raise ValueError(f"num_attention_heads {h} is not a multiple of num_key_value_heads {kv}")
        self.q_proj = nn.Linear(dim, h * d, bias=False)
        self.k_proj = nn.Linear(dim, kv * d, bias=False)
        self.v_proj = nn.Linear(dim, kv * d, bias=False)
        self.o_proj = nn.Linear(h * d, dim, bias=False)

    def forward(self, x, cos, sin, record=None, prefix=""):
        b, t, _ = x.shape
        c = self.config
        q = self.q_proj(x).view(b, t, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = causal_attention(q, repeat_kv(k, c.n_rep), repeat_kv(v, c.n_rep))
        out = out.transpose(1, 2).reshape(b, t, c.num_attention_heads * c.head_dim)
        if record is not None:
            record[prefix + "self_attn.o_proj.input"] = out
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x, record=None, prefix=""):
        act = F.silu(self.gate_proj(x)) * self.up_proj(x)
        if record is not None:
            record[prefix + "mlp.down_proj.input"] = act
        return self.down_proj(act)


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, record=None, prefix=""):
        normed = self.input_layernorm(x)
        if record is not None:
            record[prefix + "input_layernorm.output"] = normed
        x = x + self.self_attn(normed, cos, sin, record, prefix)
        normed = self.post_attention_layernorm(x)
        if record is not None:
            record[prefix + "post_attention_layernorm.output"] = normed
        x = x + self.mlp(normed, record, prefix)
        if record is not None:
            record[prefix + "output"] = x
        return x


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """named_parameters() yields exactly the HF checkpoint names; a tied model has no
    lm_head.weight (as HF checkpoints of tied models omit it) and reuses the embedding."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, record: Optional[dict] = None):
        """input_ids: [B, T] int64. Returns (logits [B, T, V], hidden after the final norm
        [B, T, D]). `record`, when given, receives the activations named
        "layers.{i}.<site>" (the sites importance scoring observes) for inspection."""
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(self.config, input_ids.shape[1], x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, record, f"layers.{i}.")
        hidden = self.model.norm(x)
        logits = F.linear(hidden, self.head_weight())
        return logits, hidden

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all B*T positions (no ignore index, no label shift:
        targets are given already shifted)."""
        logits, _ = self(input_ids)
        flat = logits.reshape(-1, logits.shape[-1])
        flat = flat.to(torch.promote_types(flat.dtype, torch.float32))  # as HF: loss in >= fp32
        return F.cross_entropy(flat, targets.reshape(-1))


# ----------------------------------------------------------------------------- training


def weight_decay_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """The nanoGPT/Megatron convention: decay every 2-D tensor (embedding and lm_head
    included), not the 1-D norm weights."""
    decay = [p for _, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def global_grad_norm(model: nn.Module) -> torch.Tensor:
    return torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in model.parameters()))
