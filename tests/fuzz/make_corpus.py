#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_safetensors into tests/fuzz/corpus/.

Small safetensors files (valid, and a few near-misses) and index files, each
a few hundred bytes. Built by hand from the format spec so the seeds do not
depend on twin's writer. Re-run after changing it; the outputs are committed.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def st(tensors, metadata=None, pad=True, raw_header=None):
    """tensors: list of (name, dtype, shape); data is a byte ramp."""
    header, data, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dt, shape in tensors:
        n = SIZES[dt]
        for d in shape:
            n *= d
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        data += bytes((off + i) & 0xFF if dt != "BOOL" else (i & 1) for i in range(n))
        off += n
    text = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":"))
    text = text.encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {
        "all_dtypes": st([(f"t.{dt}", dt, [2]) for dt in SIZES]),
        "metadata": st([("w", "F32", [2, 2])], {"format": "pt", "note": "x"}),
        "scalar_and_empty": st([("s", "F64", []), ("e", "F16", [0, 5]), ("b", "BF16", [3])]),
        "misaligned": st([("u", "U8", [3]), ("f", "F32", [2])], pad=False),
        "rank4": st([("k", "I8", [2, 1, 2, 3])]),
        "overlap": st([], raw_header='{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                     '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}') + bytes(12),
        "size_mismatch": st([], raw_header='{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}') + bytes(8),
        "bad_meta": st([("w", "U8", [1])], {"n": 3}),
        "empty_header": st([]),
        "index": json.dumps({"metadata": {"total_size": 16, "format": "pt"},
                             "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}).encode(),
        "index_escape": json.dumps({"weight_map": {"a": "../x.safetensors"}}).encode(),
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
