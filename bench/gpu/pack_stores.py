#!/usr/bin/env python3
"""Global stores per kernel in nvcc's PTX, and a check that the pack-storing kernels store packs.

Usage: pack_stores.py [--table] PTX_FILE
The PTX is kernels/cuda/cuda_backend.cu compiled by nvcc for sm_90 (bench/gpu/register_report.sh
keeps it from its build; the ctest cuda_pack_stores_ptx, tests/kernels/cuda/test_pack_stores_ptx.sh,
compiles it). nvcc may split a 16-byte store of a Packed128 into narrow ones (it did:
6 st.global.u16 + 1 st.global.u32 per pack), which costs a memory-bound kernel its bandwidth and
shows in no test; kernels/packed.cuh's store128 now emits st.global.v4 itself. This exits 1 when
a kernel that must store whole packs has no st.global.v4 at all, or fills a 16-byte window (from
offset 0 mod 16 of one base register, in one basic block) with narrower stores: a split pack.
The checked kernels' scalar heads, tails and unpacked fallbacks never fill one; elsewhere a
fallback that writes 4 floats one by one to a possibly misaligned address does, so other kernels
are only counted. --table prints, per kernel, its st.global.v4 count, its split packs and its
narrower global stores. Needs only the Python standard library and c++filt.
"""
import collections
import re
import sys

from kernel_names import demangle, short

# Kernels whose bulk output goes through store128 (Packed128 copies, not store_floats).
MUST_STORE_PACKS = [
    "attention_forward_mma_kernel<",
    "attention_backward_dq_mma_kernel<",
    "attention_backward_dkv_mma_kernel<",
    "embedding_forward_kernel<",
    "rmsnorm_forward_kernel<",
    "residual_rmsnorm_forward_kernel<",
]

entry_re = re.compile(r"^\.(?:visible |weak )*\.entry (\S+)\(")
func_re = re.compile(r"^\.(?:visible |weak |extern )*\.func\b")
store_re = re.compile(r"\bst\.global(?:\.[a-z]+)*?\.(v[24]\.)?([a-z]\d+)\b")
# A narrow store's operands: vector width, element bits, base register, byte offset.
narrow_re = re.compile(r"^\s*st\.global(?:\.[a-z]+)*?\.(v2\.)?[a-z](\d+)\s+\[(%rd\d+)(?:\+(\d+))?\]")
# What ends a run of stores: a label, a branch, a return (the stores of one split pack sit in
# one basic block, between the conversions or moves that make their registers).
block_end_re = re.compile(r"^\s*(?:\$?[\w$]+:|(?:@!?%p\d+\s+)?bra|ret\b|\}\s*$)")


def split_packs(run):
    """Aligned 16-byte windows (offsets from the run's base register) the run's bytes cover."""
    covered = set()
    for offset, size in run:
        covered.update(range(offset, offset + size))
    first, last = min(covered) // 16 * 16, max(covered)
    return sum(all(b in covered for b in range(w, w + 16)) for w in range(first, last + 1, 16))


def count_stores(path):
    kernels = collections.OrderedDict()
    current = None
    run, run_base = [], None  # consecutive narrow stores to one base register

    def end_run():
        nonlocal run, run_base
        if current is not None and run:
            current["split"] += split_packs(run)
        run, run_base = [], None

    with open(path, encoding="utf-8", errors="replace") as ptx:
        for line in ptx:
            n = narrow_re.match(line)
            if n and current is not None:
                if n.group(3) != run_base:
                    end_run()
                    run_base = n.group(3)
                run.append((int(n.group(4) or 0), int(n.group(2)) // 8 * (2 if n.group(1) else 1)))
            elif block_end_re.match(line) or entry_re.match(line):
                end_run()
            m = entry_re.match(line)
            if m:
                current = kernels.setdefault(m.group(1), collections.Counter())
                continue
            if func_re.match(line):  # a called function's stores belong to no one kernel
                current = None
                continue
            if current is None:
                continue
            for vector, kind in store_re.findall(line):
                # v4 of 32-bit words (u32/b32/f32/s32) is the 16-byte pack; the rest by width.
                current["v4" if vector == "v4." and kind[1:] == "32" else f"{vector}{kind}"] += 1
        end_run()
    names = demangle(list(kernels))
    return {short(n): c for n, c in zip(names, kernels.values())}


def main(argv):
    table = "--table" in argv
    paths = [a for a in argv if a != "--table"]
    if len(paths) != 1:
        sys.exit(__doc__)
    kernels = count_stores(paths[0])
    if table:
        print("| kernel | st.global.v4 | split packs | other st.global |")
        print("|---|---|---|---|")
        for name in sorted(kernels):
            c = kernels[name]
            if not c:
                continue
            other = ", ".join(f"{n} {k}" for k, n in sorted(c.items()) if k not in ("v4", "split"))
            print(f"| `{name}` | {c['v4']} | {c['split']} | {other or '-'} |")
    checked = [n for n in kernels if any(n.startswith(p) for p in MUST_STORE_PACKS)]
    missing = [p for p in MUST_STORE_PACKS if not any(n.startswith(p) for n in checked)]
    bad = [n for n in checked if kernels[n]["v4"] == 0]
    split = [n for n in checked if kernels[n]["split"] > 0]
    for p in missing:
        print(f"pack stores: no kernel {p}...> in {paths[0]} (renamed? update MUST_STORE_PACKS)",
              file=sys.stderr)
    for n in bad:
        print(f"pack stores: {n} has no st.global.v4 (its 16-byte pack stores were split)",
              file=sys.stderr)
    for n in split:
        print(f"pack stores: {n} writes {kernels[n]['split']} 16-byte packs as runs of narrower "
              "stores", file=sys.stderr)
    if missing or bad or split:
        return 1
    print(f"pack stores: {len(checked)} pack-storing kernels all emit st.global.v4", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
