#!/usr/bin/python3
"""Self-checks of tools/llama_reference.py, so that the fixtures it writes can be trusted.

Run: /usr/bin/python3 tools/test_llama_reference.py   (a few seconds, CPU only)

Expected values here come from hand computation (math module), from independent PyTorch
components (autograd's finite differences, nn.MultiheadAttention) or from an equivalent model
built differently — never from the function under test itself.
"""

import json
import math
import os
import sys
import tempfile
import unittest

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import stateless

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402
import make_fixtures  # noqa: E402
import safetensors_io  # noqa: E402

FIXTURE_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")


def tiny_config(**overrides):
    values = dict(vocab_size=7, hidden_size=4, intermediate_size=3, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=4, rope_theta=100.0,
                  rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                  rms_norm_eps=1e-5)
    values.update(overrides)
    return ref.LlamaConfig(**values)


def seeded_model(config, seed=0):
    model = ref.LlamaForCausalLM(config).double()
    make_fixtures.initialize(model, seed)
    return model


class GradientTest(unittest.TestCase):
    def check_gradients(self, config):
        model = seeded_model(config)
        names = [n for n, _ in model.named_parameters()]
        inputs = torch.tensor([[1, 5, 2]])
        targets = torch.tensor([[5, 2, 6]])

        def loss_of(*params):
            # functional_call substitutes the parameters for this call only
            logits, _ = stateless.functional_call(model, dict(zip(names, params)), (inputs,))
            return nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size), targets.reshape(-1))

        params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
        # float64 central differences: gradcheck's default eps 1e-6 / atol 1e-5 hold with margin.
        self.assertTrue(torch.autograd.gradcheck(loss_of, params, eps=1e-6, atol=1e-5, rtol=1e-4))

    def test_gradcheck_untied_gqa_llama3_rope(self):
        self.check_gradients(tiny_config())

    def test_gradcheck_tied_headdim_differs(self):
        self.check_gradients(tiny_config(tie_word_embeddings=True, head_dim=6, rope_scaling=None,
                                         num_key_value_heads=2))


class AttentionTest(unittest.TestCase):
    def test_single_kv_repeat_equals_torch_multihead_attention(self):
        torch.manual_seed(1)
        b, h, t, d = 2, 3, 5, 4
        q, k, v = (torch.randn(b, h, t, d, dtype=torch.float64) for _ in range(3))
        ours = ref.causal_attention(q, ref.repeat_kv(k, 1), ref.repeat_kv(v, 1))

        e = h * d
        mha = nn.MultiheadAttention(e, h, bias=False, batch_first=True).double()
        with torch.no_grad():  # identity projections: MHA then only splits heads and attends
            mha.in_proj_weight.copy_(torch.cat([torch.eye(e, dtype=torch.float64)] * 3))
            mha.out_proj.weight.copy_(torch.eye(e, dtype=torch.float64))
        def flat(x):
            return x.transpose(1, 2).reshape(b, t, e)
        causal = torch.ones(t, t, dtype=torch.bool).triu(1)  # True = may not attend
        theirs, _ = mha(flat(q), flat(k), flat(v), attn_mask=causal, need_weights=False)
        torch.testing.assert_close(flat(ours), theirs, rtol=1e-12, atol=1e-12)  # float64, same sums

    def test_gqa_equals_mha_with_repeated_kv_weights(self):
        gqa_config = tiny_config(num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)
        mha_config = tiny_config(num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2)
        gqa, mha = seeded_model(gqa_config, 3), ref.LlamaForCausalLM(mha_config).double()
        d, n_rep = gqa_config.head_dim, gqa_config.n_rep
        with torch.no_grad():
            for (name, p_mha), p_gqa in zip(mha.named_parameters(), gqa.parameters()):
                if "k_proj" in name or "v_proj" in name:
                    # HF grouping: query head h reads KV head h // n_rep
                    rows = p_gqa.view(-1, d, p_gqa.shape[1])
                    p_mha.copy_(rows.repeat_interleave(n_rep, dim=0).reshape(p_mha.shape))
                else:
                    p_mha.copy_(p_gqa)
        inputs = torch.tensor([[0, 3, 6, 1, 2], [4, 4, 5, 0, 1]])
        torch.testing.assert_close(gqa(inputs)[0], mha(inputs)[0], rtol=1e-12, atol=1e-12)


class RopeTest(unittest.TestCase):
    def test_llama3_inverse_frequency_in_each_band(self):
        config = make_fixtures.FIXTURES["llama3_gqa"][0]
        s = config.rope_scaling
        got = ref.rope_inverse_frequencies(config).tolist()
        base = [1.0 / config.rope_theta ** (2 * i / config.head_dim) for i in range(config.head_dim // 2)]
        wavelen = [2 * math.pi / f for f in base]
        high_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]  # 64
        low_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]  # 256
        # band 1: wavelength 6.28 < 64, kept as is
        self.assertLess(wavelen[0], high_wavelen)
        self.assertAlmostEqual(got[0], 1.0, places=14)
        # band 2: wavelength 167.6 in [64, 256], interpolated
        self.assertTrue(high_wavelen <= wavelen[1] <= low_wavelen)
        smooth = (s["original_max_position_embeddings"] / wavelen[1] - 1.0) / (4.0 - 1.0)
        expected = (1 - smooth) * base[1] / 8.0 + smooth * base[1]
        self.assertAlmostEqual(got[1] / expected, 1.0, places=13)
        # band 3: wavelengths > 256, divided by the factor
        for i in (2, 3):
            self.assertGreater(wavelen[i], low_wavelen)
            self.assertAlmostEqual(got[i] / (base[i] / 8.0), 1.0, places=13)

    def test_rotate_half_rotates_pairs_j_and_j_plus_half(self):
        config = tiny_config(rope_scaling=None, head_dim=4, rope_theta=100.0)
        cos, sin = ref.rope_cos_sin(config, 3, torch.float64)
        x = torch.tensor([0.3, -1.2, 0.7, 2.0], dtype=torch.float64)
        pos = 2
        out = ref.apply_rope(x.view(1, 1, 1, 4), cos[pos:pos + 1], sin[pos:pos + 1]).view(4).tolist()
        for j, freq in enumerate([1.0, 100.0 ** -0.5]):
            a = pos * freq
            x1, x2 = x[j].item(), x[j + 2].item()
            self.assertAlmostEqual(out[j], x1 * math.cos(a) - x2 * math.sin(a), places=14)
            self.assertAlmostEqual(out[j + 2], x2 * math.cos(a) + x1 * math.sin(a), places=14)


class BlockTest(unittest.TestCase):
    def test_rmsnorm_by_hand(self):
        norm = ref.RMSNorm(3, eps=1e-5).double()
        with torch.no_grad():
            norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        x = [1.0, -2.0, 3.0]
        rms = math.sqrt(sum(v * v for v in x) / 3 + 1e-5)
        out = norm(torch.tensor(x, dtype=torch.float64)).tolist()
        for o, v, w in zip(out, x, [1.0, 2.0, 0.5]):
            self.assertAlmostEqual(o, w * v / rms, places=14)

    def test_swiglu_by_hand(self):
        config = tiny_config(hidden_size=1, intermediate_size=1)
        mlp = ref.MLP(config).double()
        with torch.no_grad():
            mlp.gate_proj.weight.fill_(0.5)
            mlp.up_proj.weight.fill_(-2.0)
            mlp.down_proj.weight.fill_(3.0)
        x = 1.5
        g = 0.5 * x
        expected = 3.0 * (g / (1 + math.exp(-g))) * (-2.0 * x)
        self.assertAlmostEqual(mlp(torch.tensor([x], dtype=torch.float64)).item(), expected, places=13)


class OptimizerSemanticsTest(unittest.TestCase):
    """The README states torch's AdamW and clip_grad_norm_ formulas; check torch 1.13 obeys."""

    def test_adamw_two_steps_by_hand(self):
        p = torch.tensor([[0.5, -0.25]], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.AdamW([p], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        grads = [[0.3, -0.1], [-0.2, 0.4]]
        theta, m, v = [0.5, -0.25], [0.0, 0.0], [0.0, 0.0]
        for step, g in enumerate(grads, start=1):
            p.grad = torch.tensor([g], dtype=torch.float64)
            opt.step()
            for i in range(2):
                theta[i] *= 1 - 1e-2 * 0.1  # decoupled decay first, on the old value
                m[i] = 0.9 * m[i] + 0.1 * g[i]
                v[i] = 0.95 * v[i] + 0.05 * g[i] ** 2
                denom = math.sqrt(v[i]) / math.sqrt(1 - 0.95 ** step) + 1e-8
                theta[i] -= 1e-2 / (1 - 0.9 ** step) * m[i] / denom
        for got, want in zip(p.detach().view(-1).tolist(), theta):
            self.assertAlmostEqual(got, want, places=14)

    def test_clip_grad_norm_coefficient(self):
        a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        a.grad, b.grad = torch.tensor([3.0, 0.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)
        norm = torch.nn.utils.clip_grad_norm_([a, b], 0.5).item()
        self.assertAlmostEqual(norm, 5.0, places=14)
        coef = 0.5 / (5.0 + 1e-6)
        self.assertAlmostEqual(a.grad[0].item(), 3.0 * coef, places=14)
        self.assertAlmostEqual(b.grad[0].item(), 4.0 * coef, places=14)


class SafetensorsTest(unittest.TestCase):
    def test_round_trip_and_bf16(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "t.safetensors")
            a = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
            safetensors_io.save_file({"b": a, "a": np.array([1.5], dtype=np.float32)}, path, {"k": "v"})
            tensors, meta = safetensors_io.load_file(path)
            np.testing.assert_array_equal(tensors["b"], a)
            self.assertEqual(meta, {"k": "v"})
            with open(path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
            self.assertEqual(header_len % 8, 0)
            # bf16 1.5 is 0x3FC0: the top 16 bits of float32 1.5
            raw = json.dumps({"x": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}).encode()
            raw += b" " * (-len(raw) % 8)
            with open(path, "wb") as f:
                f.write(len(raw).to_bytes(8, "little") + raw + bytes([0xC0, 0x3F]))
            self.assertEqual(safetensors_io.load_file(path)[0]["x"].tolist(), [1.5])


class FixtureConsistencyTest(unittest.TestCase):
    """The committed fixtures agree with this reference run now (catches stale fixtures)."""

    def test_committed_fixtures_match_reference(self):
        for name, (config, *_rest) in make_fixtures.FIXTURES.items():
            directory = os.path.join(FIXTURE_ROOT, name)
            with self.subTest(fixture=name):
                with open(os.path.join(directory, "config.json")) as f:
                    self.assertEqual(json.load(f), config.to_hf_dict())
                weights, _ = safetensors_io.load_file(os.path.join(directory, "model.safetensors"))
                expected, _ = safetensors_io.load_file(os.path.join(directory, "expected.safetensors"))
                with open(os.path.join(directory, "tokens.json")) as f:
                    tokens = json.load(f)
                model = ref.LlamaForCausalLM(config).double()
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        p.copy_(torch.from_numpy(weights[n].astype(np.float64)))
                self.assertEqual(set(weights), {n for n, _ in model.named_parameters()})
                inputs, targets = torch.tensor(tokens["inputs"]), torch.tensor(tokens["targets"])
                logits, _ = model(inputs)
                loss = model.loss(inputs, targets)
                loss.backward()
                # stored values are float64 results rounded to float32: 2^-24 relative, plus
                # CPU-kernel differences in float64 (far smaller)
                np.testing.assert_allclose(expected["logits"], logits.detach().numpy(), rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(expected["loss"][0], loss.item(), rtol=1e-6)
                for n, p in model.named_parameters():
                    np.testing.assert_allclose(expected["grad." + n], p.grad.numpy(), rtol=1e-6, atol=1e-9)


if __name__ == "__main__":
    torch.set_num_threads(1)
    unittest.main(verbosity=2)
