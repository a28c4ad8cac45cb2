"""Readable kernel names for the PTX/ptxas reports of bench/gpu (register_report.py,
pack_stores.py). Needs only the Python standard library and c++filt."""
import subprocess


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return out.stdout.splitlines() if out.returncode == 0 else names


def short(name):
    # void minitron::cuda::attention_forward_kernel<__nv_bfloat16, 128>(...) -> attention_forward_kernel<bf16, 128>
    name = name.replace("minitron::cuda::", "").replace("__nv_bfloat16", "bf16")
    if name.startswith("void "):  # c++filt prints a template's return type first
        name = name[len("void "):]
    depth = 0
    for i, ch in enumerate(name):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            return name[:i]
    return name
