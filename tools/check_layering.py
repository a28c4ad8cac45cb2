#!/usr/bin/env python3
"""Fails when a source file includes a folder above its own in the layering (README, "Architecture").

Each folder may include itself and the folders before it in LAYERS: util < core < emu < kernels <
dist < model < data < train < prune < eval < pipeline < cli. emu/ (the CUDA emulator) sits low
because the emulated builds of kernels/ and dist/ include it; tests/, bench/ and tools/ may include
anything. Prints every offending include as path:line and exits 1.
"""
import pathlib
import re
import subprocess
import sys

LAYERS = ["util", "core", "emu", "kernels", "dist", "model", "data", "train", "prune", "eval", "pipeline", "cli"]
RANK = {folder: rank for rank, folder in enumerate(LAYERS)}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"/]+)/')


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    files = subprocess.run(["git", "ls-files", "*.h", "*.cpp", "*.cu", "*.cuh"], cwd=root, check=True,
                           capture_output=True, text=True).stdout.split()
    layered = [name for name in files if name.split("/", 1)[0] in RANK]
    offences = []
    for name in layered:
        folder = name.split("/", 1)[0]
        for number, line in enumerate((root / name).read_text(encoding="utf-8").splitlines(), 1):
            match = INCLUDE.match(line)
            if match and match.group(1) in RANK and RANK[match.group(1)] > RANK[folder]:
                offences.append(f"{name}:{number}: {folder}/ includes {match.group(1)}/, a layer above it")
    for offence in offences:
        print(offence)
    if offences:
        print(f"layering: {len(offences)} includes reach up (order: {' < '.join(LAYERS)})")
        return 1
    print(f"layering: {len(layered)} files checked, every include reaches down ({' < '.join(LAYERS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
