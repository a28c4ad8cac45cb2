"""A tiny, dependency-free safetensors reader/writer for tools/ scripts.

The `safetensors` package is not installed here, and fixtures must be byte-for-byte
reproducible, so this writer fixes every choice the format leaves open: tensors are laid out
in sorted-name order, the JSON header has sorted keys and no spaces, and it is padded with
spaces to a multiple of 8 bytes (as the reference implementation does, so data is aligned).

Format: u64 little-endian header length N, N bytes of JSON
{"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
then the raw little-endian data, offsets relative to the end of the header.
"""

import json
import struct

import numpy as np

_NUMPY_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
}


def _bf16_to_f32(raw):
    widened = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return widened.view(np.float32)


def save_file(tensors, path, metadata=None):
    """Writes {name: numpy array or torch tensor} to `path`; float arrays are stored as F32
    unless they are already F16/F64/int (bf16 writing is not needed by the tools)."""
    arrays = {}
    for name, value in tensors.items():
        if hasattr(value, "detach"):  # torch tensor
            value = value.detach().cpu().numpy()
        array = np.ascontiguousarray(value)
        if array.dtype == np.float64:
            raise ValueError(f"{name}: float64 given; convert explicitly (fixtures store F32)")
        arrays[name] = array

    header = {}
    offset = 0
    for name in sorted(arrays):
        array = arrays[name]
        dtype = next((key for key, dt in _NUMPY_DTYPES.items() if dt == array.dtype.newbyteorder("<")), None)
        if dtype is None:
            raise ValueError(f"{name}: unsupported dtype {array.dtype}")
        size = array.nbytes
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}

    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name in sorted(arrays):
            f.write(arrays[name].astype(arrays[name].dtype.newbyteorder("<"), copy=False).tobytes())


def load_file(path):
    """Returns ({name: numpy array}, metadata). BF16 is widened to float32."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise ValueError(f"{path}: header length {header_len} exceeds the file size")
    header = json.loads(data[8:8 + header_len].decode("utf-8"))
    body = data[8 + header_len:]
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        raw = body[begin:end]
        if info["dtype"] == "BF16":
            array = _bf16_to_f32(raw)
        elif info["dtype"] in _NUMPY_DTYPES:
            array = np.frombuffer(raw, dtype=_NUMPY_DTYPES[info["dtype"]])
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        tensors[name] = array.reshape(info["shape"]).copy()
    return tensors, metadata
