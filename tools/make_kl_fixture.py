#!/usr/bin/python3
"""Writes tests/fixtures/kl/kl_fixture.json: the distillation loss and its gradient computed by
PyTorch autograd (float64), for tests/train.

loss = mean over rows of sum_v p_t(v) (log p_t(v) - log p_s(v)), p = softmax(logits / tau),
the forward KL of DESIGN.md (no tau^2 factor). dlogits = d loss / d student_logits.
Run with /usr/bin/python3 (torch 1.13 CPU): /usr/bin/python3 tools/make_kl_fixture.py
"""
import json
import os

import torch

torch.manual_seed(20240801)
ROWS, VOCAB = 7, 37
# Spread-out logits (std 3) so the distributions are far from uniform, one row identical in
# both models (KL exactly 0) to pin the zero.
student = torch.randn(ROWS, VOCAB, dtype=torch.float64) * 3.0
teacher = torch.randn(ROWS, VOCAB, dtype=torch.float64) * 3.0
teacher[3] = student[3]

cases = []
for tau in (1.0, 2.0):
    s = student.clone().requires_grad_(True)
    log_ps = torch.log_softmax(s / tau, dim=-1)
    log_pt = torch.log_softmax(teacher / tau, dim=-1)
    per_row = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    loss = per_row.mean()
    loss.backward()
    cases.append({
        "temperature": tau,
        "per_row": per_row.detach().tolist(),
        "loss": loss.item(),
        "dlogits": s.grad.reshape(-1).tolist(),
    })

out = {
    "rows": ROWS,
    "vocab": VOCAB,
    "student_logits": student.reshape(-1).tolist(),
    "teacher_logits": teacher.reshape(-1).tolist(),
    "cases": cases,
    "generator": "tools/make_kl_fixture.py (torch %s, float64 autograd)" % torch.__version__,
}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "kl", "kl_fixture.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print("wrote", os.path.normpath(path))
