#!/usr/bin/python3
"""Independent check of a checkpoint directory written by minitron.

Parses the safetensors files itself (json + struct; numpy for the data), with none of
minitron's code, and verifies what Hugging Face tooling relies on:
  - config.json parses, names LlamaForCausalLM/MistralForCausalLM, torch_dtype matches the data;
  - every file: 8-byte little-endian header length, JSON header, __metadata__ {"format": "pt"},
    8 + N a multiple of 8, dtypes BF16/F16/F32, data_offsets contiguous from 0 to the end of file,
    byte counts matching shape x dtype;
  - sharded layout: model.safetensors.index.json with metadata.total_size = sum of tensor bytes,
    weight_map naming existing shards, each tensor in its shard and every shard tensor listed;
  - with torch: torch.frombuffer reads the same values as numpy;
  - with transformers importable: AutoModelForCausalLM.from_pretrained loads it with no missing or
    unexpected keys, every parameter equals the file's values, and a forward pass is finite.

Prints one JSON line per directory to stdout: {"directory", "tensors": {name: {"shape", "dtype", "sum", "first"}}, "checks": [...]}
(sum in float64 over the values as stored), so a caller can compare values with its own.
Exits 1 with "check_hf_checkpoint: <problem>" on stderr on the first failed check.

Usage: /usr/bin/python3 tools/check_hf_checkpoint.py DIR [DIR...] [--require-transformers]
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"BF16": 2, "F16": 2, "F32": 4}
TORCH_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


class CheckFailed(Exception):
    pass


def require(condition, message):
    if not condition:
        raise CheckFailed(message)


def to_float32(raw, dtype):
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return bits.view(np.float32)


def read_safetensors(path, checks):
    with open(path, "rb") as f:
        data = f.read()
    name = os.path.basename(path)
    require(len(data) >= 8, f"{name}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    require(8 + n <= len(data), f"{name}: header length {n} beyond the file")
    require((8 + n) % 8 == 0, f"{name}: 8 + header length {n} is not a multiple of 8")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    require(isinstance(header, dict), f"{name}: header is not an object")
    meta = header.pop("__metadata__", None)
    require(isinstance(meta, dict) and meta.get("format") == "pt",
            f"{name}: __metadata__ must contain format 'pt' (found {meta!r})")
    region = data[8 + n:]
    spans = []
    tensors = {}
    for tname, info in header.items():
        dtype = info["dtype"]
        require(dtype in DTYPES, f"{name}: {tname}: dtype {dtype}")
        shape = info["shape"]
        require(all(isinstance(d, int) and d >= 0 for d in shape), f"{name}: {tname}: shape {shape}")
        begin, end = info["data_offsets"]
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        require(end - begin == numel * DTYPES[dtype], f"{name}: {tname}: {end - begin} bytes for {shape} {dtype}")
        require(0 <= begin <= end <= len(region), f"{name}: {tname}: offsets [{begin}, {end}] out of range")
        spans.append((begin, end, tname))
        raw = region[begin:end]
        values = to_float32(raw, dtype).reshape(shape)
        tensors[tname] = {"shape": shape, "dtype": dtype, "values": values, "raw": raw}
    spans.sort()
    position = 0
    for begin, end, tname in spans:
        require(begin == position, f"{name}: {tname} starts at {begin}, expected {position} (gap or overlap)")
        position = end
    require(position == len(region), f"{name}: data region has {len(region) - position} trailing bytes")
    checks.append(f"{name}: header, alignment, metadata and offsets ok ({len(tensors)} tensors)")
    return tensors


def check_with_torch(tensors, checks):
    try:
        import torch
    except ImportError:
        return
    torch_types = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    for tname, t in tensors.items():
        if len(t["raw"]) == 0:
            continue
        tt = torch.frombuffer(bytearray(t["raw"]), dtype=torch_types[t["dtype"]]).float().numpy()
        require(np.array_equal(tt.reshape(t["shape"]), t["values"], equal_nan=True),
                f"{tname}: torch.frombuffer and numpy disagree")
    checks.append(f"torch {torch.__version__}: frombuffer agrees with numpy")


def check_with_transformers(directory, tensors, checks, required):
    try:
        import torch
        import transformers
    except ImportError:
        require(not required, "transformers is not importable")
        return
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        directory, torch_dtype=torch.float32, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        require(not info.get(key), f"transformers {key}: {info.get(key)}")
    state = model.state_dict()
    for tname, t in tensors.items():
        require(tname in state, f"transformers model has no parameter {tname}")
        got = state[tname].detach().float().numpy()
        require(np.array_equal(got, t["values"]), f"{tname}: transformers loaded different values")
    vocab = model.config.vocab_size
    ids = torch.arange(0, 8).remainder(vocab).unsqueeze(0)
    with torch.no_grad():
        logits = model(ids).logits
    require(tuple(logits.shape) == (1, 8, vocab), f"logits shape {tuple(logits.shape)}")
    require(bool(torch.isfinite(logits).all()), "non-finite logits")
    checks.append(f"transformers {transformers.__version__}: AutoModelForCausalLM loaded it and ran a forward pass")


def check(directory, require_transformers):
    checks = []
    config = json.load(open(os.path.join(directory, "config.json")))
    arch = config.get("architectures", [None])[0]
    require(arch in ("LlamaForCausalLM", "MistralForCausalLM"), f"config.json architectures {arch}")
    index_path = os.path.join(directory, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(index_path):
        index = json.load(open(index_path))
        weight_map = index["weight_map"]
        shards = sorted(set(weight_map.values()))
        total = 0
        for shard in shards:
            require("/" not in shard and os.path.exists(os.path.join(directory, shard)), f"missing shard {shard}")
            found = read_safetensors(os.path.join(directory, shard), checks)
            for tname, t in found.items():
                require(weight_map.get(tname) == shard, f"{tname} in {shard} but weight_map says {weight_map.get(tname)}")
                total += len(t["raw"])
            tensors.update(found)
        missing = sorted(set(weight_map) - set(tensors))
        require(not missing, f"weight_map names tensors no shard holds: {missing[:5]}")
        require(index["metadata"]["total_size"] == total,
                f"metadata.total_size {index['metadata']['total_size']} != {total} bytes of tensors")
        checks.append(f"index: {len(shards)} shards, weight_map and total_size consistent")
    else:
        tensors = read_safetensors(os.path.join(directory, "model.safetensors"), checks)
    dtypes = {t["dtype"] for t in tensors.values()}
    require(len(dtypes) == 1, f"mixed dtypes {dtypes}")
    stored = TORCH_DTYPE_NAMES[dtypes.pop()]
    declared = config.get("torch_dtype", config.get("dtype"))
    require(declared == stored, f"config.json torch_dtype {declared} but tensors are {stored}")
    check_with_torch(tensors, checks)
    check_with_transformers(directory, tensors, checks, require_transformers)
    summary = {
        name: {"shape": t["shape"], "dtype": t["dtype"], "sum": float(t["values"].astype(np.float64).sum()),
               "first": float(t["values"].reshape(-1)[0]) if t["values"].size else None}
        for name, t in tensors.items()
    }
    return {"directory": directory, "tensors": summary, "checks": checks}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directories", nargs="+", metavar="DIR")
    parser.add_argument("--require-transformers", action="store_true",
                        help="fail when transformers is not importable")
    args = parser.parse_args()
    for directory in args.directories:
        try:
            result = check(directory, args.require_transformers)
        except (CheckFailed, KeyError, ValueError, OSError) as e:
            kind = "" if isinstance(e, CheckFailed) else f"{type(e).__name__}: "
            print(f"check_hf_checkpoint: {directory}: {kind}{e}", file=sys.stderr)
            return 1
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
