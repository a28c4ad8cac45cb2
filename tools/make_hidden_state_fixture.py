#!/usr/bin/python3
"""Writes tests/fixtures/hidden_state/cosine_fixture.json: the intermediate-state distillation
loss of train/hidden_state_loss.h and its gradients, computed by PyTorch autograd (float64), for
tests/train.

loss = mean over rows r of 1 - cos(u_r, t_r), u = s W^T (s [rows, Ds], W [Dt, Ds], t [rows, Dt]);
the cosine written out as u.t / (|u| |t|). Gradients: d loss / d s and d loss / d W. A second case
has equal widths and no map (u = s). Inputs are rounded to float32 first, so the C++ side (which
uploads floats) sees exactly the values torch used.
Run with /usr/bin/python3 (torch 1.13 CPU): /usr/bin/python3 tools/make_hidden_state_fixture.py
"""
import json
import os

import torch

torch.manual_seed(20240722)


def f32(x):
    return x.to(torch.float32).to(torch.float64)


def case(rows, ds, dt, with_map):
    s = f32(torch.randn(rows, ds, dtype=torch.float64) * 2.0)
    t = f32(torch.randn(rows, dt, dtype=torch.float64) * 0.5 + 0.3)
    w = f32(torch.randn(dt, ds, dtype=torch.float64) / ds ** 0.5) if with_map else None
    if not with_map:
        # One row parallel to the teacher's (cosine 1, loss 0) and one anti-parallel (loss 2).
        s[1] = f32(t[1] * 3.0)
        s[2] = f32(-t[2] * 0.25)
    s.requires_grad_(True)
    if w is not None:
        w.requires_grad_(True)
    u = s @ w.T if w is not None else s
    cos = (u * t).sum(1) / (u.norm(dim=1) * t.norm(dim=1))
    loss = (1.0 - cos).mean()
    loss.backward()
    out = {
        "rows": rows, "student_width": ds, "teacher_width": dt,
        "student": s.detach().flatten().tolist(), "teacher": t.flatten().tolist(),
        "per_row_cosine": cos.detach().tolist(), "loss": loss.item(),
        "dstudent": s.grad.flatten().tolist(),
    }
    if w is not None:
        out["map"] = w.detach().flatten().tolist()
        out["dmap"] = w.grad.flatten().tolist()
    return out


fixture = {"cases": [case(6, 5, 7, True), case(5, 6, 6, False)]}
path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hidden_state", "cosine_fixture.json")
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as f:
    json.dump(fixture, f, indent=1)
    f.write("\n")
print("wrote", os.path.normpath(path))
