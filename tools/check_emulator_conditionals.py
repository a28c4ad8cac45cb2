#!/usr/bin/env python3
"""Fails when engine source branches on the CUDA emulator outside the emulator's own primitives.

One code path: the emulator (emu/) runs the same device code the GPU runs, so a kernel never needs
`#if defined(MINITRON_EMULATE)`; a device intrinsic the emulator lacks is added to emu/emulator.h
instead. The only files that may branch on it are the few that bridge one hardware feature to
the emulator (ALLOWED, each with its reason). emu/ itself and tests/ are not checked. Prints every
offending line as path:line and exits 1.
"""
import pathlib
import re
import subprocess
import sys

ALLOWED = {
    "kernels/launch.cuh": "the launch itself: a <<<>>> launch on the GPU, fibers under the emulator",
    "kernels/mma.cuh": "tensor-core PTX (mma.sync, ldmatrix) on the GPU, warp operations under the emulator",
    "kernels/async_copy.cuh": "cp.async PTX on the GPU, the emulator's per-thread copy queue",
    "kernels/packed.cuh": "16-byte loads and stores, which the emulator checks for alignment and state space",
    "kernels/cuda/cuda_backend.cu": "host code only: the engine's name() says 'cuda-emulated'",
}
CONDITIONAL = re.compile(r"^\s*#\s*(if|ifdef|ifndef|elif)\b.*\bMINITRON_EMULATE\b")


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    files = subprocess.run(["git", "ls-files", "*.h", "*.cpp", "*.cu", "*.cuh"], cwd=root, check=True,
                           capture_output=True, text=True).stdout.split()
    offences = []
    for name in files:
        if name.split("/", 1)[0] in ("emu", "tests") or name in ALLOWED:
            continue
        for number, line in enumerate((root / name).read_text(encoding="utf-8").splitlines(), 1):
            if CONDITIONAL.match(line):
                offences.append(f"{name}:{number}: branches on MINITRON_EMULATE; give the emulator the "
                                "device function instead (emu/emulator.h)")
    for name in ALLOWED:
        if not (root / name).exists():
            offences.append(f"{name}: listed in ALLOWED but missing; update tools/check_emulator_conditionals.py")
    for offence in offences:
        print(offence)
    return 1 if offences else 0


if __name__ == "__main__":
    sys.exit(main())
