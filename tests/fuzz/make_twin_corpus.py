#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_twin_model into tests/fuzz/corpus_twin/.

Tiny Twin model files laid out as twin_model_file.hpp documents (low-rank,
sparse, dense and excluded parts), built by hand from the safetensors spec.
Re-run after changing it; the outputs are committed.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus_twin")
FMT = {"F32": "<f", "F64": "<d", "I64": "<q"}


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


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {
        "low_rank": st(low_rank_model(), META),
        "sparse": st(sparse_model(), dict(META, **{"twin.build.compressor": "magnitude"})),
        "newer_version": st(low_rank_model(), dict(META, **{"twin.format_version": "9"})),
        "one_task": st([("shared.w", "F32", [2, 2], ramp(4)), ("exclusive.a.w.dense", "F32", [2, 2], ramp(4))],
                       dict(META, **{"twin.tasks": json.dumps(["a"])})),
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
