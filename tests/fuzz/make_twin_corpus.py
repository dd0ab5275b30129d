#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_twin_model into tests/fuzz/corpus_twin/.

Tiny Twin model files laid out as twin_model_file.hpp documents (low-rank,
sparse, dense and excluded parts; quantized low-rank, low-rank + sparse and
sign modules of format version 2), built by hand from the safetensors spec.
Re-run after changing it; the outputs are committed.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus_twin")
FMT = {"F32": "<f", "F64": "<d", "I64": "<q", "I32": "<i", "F16": "<e", "I8": "<b", "U8": "<B"}


def st(tensors, metadata):
    """tensors: list of (name, dtype, shape, values)."""
    header, data = {"__metadata__": metadata}, b""
    for name, dt, shape, values in tensors:
        blob = b"".join(struct.pack(FMT[dt], v) for v in values)
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def ramp(n, scale=0.25):
    return [((i * 7) % 11 - 5) * scale for i in range(n)]


META = {"format": "twin", "twin.format_version": "1", "twin.tasks": json.dumps(["a", "b"]),
        "twin.build.merge_method": "task_arithmetic", "twin.build.compressor": "svd"}


def low_rank_model():
    t = [("shared.w", "F32", [4, 3], ramp(12))]
    for task in "ab":
        t += [(f"exclusive.{task}.w.A", "F32", [4, 2], ramp(8, 0.1)),
              (f"exclusive.{task}.w.B", "F32", [3, 2], ramp(6, 0.2))]
    t += [("stats.w", "F64", [2, 2], [1.0, 2.0, 0.1, 0.2]),
          ("shared.v", "F32", [4], ramp(4)),
          ("exclusive.a.v.dense", "F32", [4], ramp(4, 0.01)),
          ("exclusive.b.v.dense", "F32", [4], ramp(4, 0.02)),
          ("excluded.a.head", "F32", [2, 3], ramp(6)),
          ("excluded.b.head", "F32", [2, 3], ramp(6, 0.5))]
    return t


def sparse_model():
    t = [("shared.w", "F32", [3, 3], ramp(9))]
    for task, idx in (("a", [0, 4, 8]), ("b", [1, 2, 7])):
        t += [(f"exclusive.{task}.w.indices", "I64", [3], idx),
              (f"exclusive.{task}.w.values", "F32", [3], ramp(3, 0.3))]
    return t


META2 = dict(META, **{"twin.format_version": "2"})


def quantized_model():
    """w [4, 3] rank 2: A codes int4 (group 2), B codes int8 (a second tensor); task b adds a residual."""
    t = [("shared.w", "F32", [4, 3], ramp(12))]
    for task in "ab":
        t += [(f"exclusive.{task}.w.A.codes", "U8", [2, 2], [0x1f, 0x7a, 0x90, 0x03]),
              (f"exclusive.{task}.w.A.scales", "F16", [2, 2], [0.5, 0.25, 0.125, 1.0]),
              (f"exclusive.{task}.w.B.codes", "U8", [2, 2], [0x21, 0xf0, 0x07, 0x88]),
              (f"exclusive.{task}.w.B.scales", "F16", [2, 2], [0.5, 0.5, 0.75, 2.0]),
              (f"exclusive.{task}.w.quant", "I32", [2], [4, 2])]
    t += [("exclusive.b.w.indices", "I32", [2], [1, 10]),
          ("exclusive.b.w.values", "F32", [2], [0.5, -0.25])]
    return t


def sign_model():
    """w [3, 5]: 15 entries in 2 bytes of sign bits; task a masked, per-row α; task b unmasked, one α."""
    t = [("shared.w", "F32", [3, 5], ramp(15)),
         ("exclusive.a.w.signs", "U8", [2], [0xa5, 0x3c]),
         ("exclusive.a.w.mask", "U8", [2], [0x0f, 0x71]),
         ("exclusive.a.w.alpha", "F32", [3], [0.1, 0.2, 0.0]),
         ("exclusive.b.w.signs", "U8", [2], [0x00, 0x7f]),
         ("exclusive.b.w.alpha", "F32", [1], [0.05])]
    return t


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {
        "low_rank": st(low_rank_model(), META),
        "sparse": st(sparse_model(), dict(META, **{"twin.build.compressor": "magnitude"})),
        "newer_version": st(low_rank_model(), dict(META, **{"twin.format_version": "9"})),
        "quantized": st(quantized_model(), META2),
        "sign": st(sign_model(), dict(META2, **{"twin.build.compressor": "sign"})),
        "one_task": st([("shared.w", "F32", [2, 2], ramp(4)), ("exclusive.a.w.dense", "F32", [2, 2], ramp(4))],
                       dict(META, **{"twin.tasks": json.dumps(["a"])})),
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
