"""PyTorch side of twin's benchmarks: rebuilds bit for bit the tensors that
bench_common.hpp builds (same hash, same float32 arithmetic), so both sides
time the same work without exchanging files."""
import numpy as np
import torch


def _mix32(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    x = x ^ (x >> np.uint32(16))
    return x


def hashed_uniform(seed, n):
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint32)
        u = _mix32(i * np.uint32(2654435761) + np.uint32((seed * 0x9E3779B9) & 0xFFFFFFFF))
    return (u >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -23) - np.float32(1.0)


def roberta_base_specs(layers=12):
    specs = []
    for l in range(layers):
        p = f"encoder.layer.{l}."
        for m in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            specs.append((p + m + ".weight", (768, 768)))
            specs.append((p + m + ".bias", (768,)))
        specs += [(p + "attention.output.LayerNorm.weight", (768,)), (p + "attention.output.LayerNorm.bias", (768,)),
                  (p + "intermediate.dense.weight", (3072, 768)), (p + "intermediate.dense.bias", (3072,)),
                  (p + "output.dense.weight", (768, 3072)), (p + "output.dense.bias", (768,)),
                  (p + "output.LayerNorm.weight", (768,)), (p + "output.LayerNorm.bias", (768,))]
    return specs


def make_model(specs, m, dtype):
    sd = {}
    for k, (name, shape) in enumerate(specs):
        n = int(np.prod(shape))
        b = np.float32(0.05) * hashed_uniform(k * 131 + 1, n)
        if m > 0:
            b = b + np.float32(0.01) * hashed_uniform(k * 131 + 1 + m * 7919, n)
        sd[name] = torch.from_numpy(b.reshape(shape)).to(dtype)
    return sd
