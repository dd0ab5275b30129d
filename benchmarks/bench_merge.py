"""PyTorch merges for bench_merge: task arithmetic and TIES the way the
reference implementations write them (f32 accumulation, kthvalue top-k,
sign election, disjoint mean), timed on the identical tensors.
Prints one line per method: `<method> <seconds> <checksum>`."""
import argparse
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_common import make_model, roberta_base_specs  # noqa: E402


def task_arithmetic(base, experts, lam):
    out = {}
    for name, b in base.items():
        bf = b.float()
        acc = torch.zeros_like(bf)
        for e in experts:
            acc.add_(e[name].float()).sub_(bf)
        out[name] = torch.add(bf, acc, alpha=lam).to(b.dtype)
    return out


def ties(base, experts, density, lam):
    out = {}
    for name, b in base.items():
        bf = b.float()
        taus = torch.stack([e[name].float().flatten() - bf.flatten() for e in experts])
        n = taus.shape[1]
        k = int(density * n + 1e-9)
        if k <= 0:
            out[name] = b.clone()
            continue
        mags = taus.abs()
        thr = mags.kthvalue(n - k + 1, dim=1, keepdim=True).values
        taus = taus * (mags >= thr)
        sign = torch.sign(taus.sum(0))
        sign[sign == 0] = 1
        agree = torch.sign(taus) == sign
        num = (taus * agree).sum(0)
        den = agree.sum(0).clamp(min=1)
        out[name] = (bf.flatten() + lam * num / den).view(b.shape).to(b.dtype)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--scaling", type=float, default=0.3)
    ap.add_argument("--density", type=float, default=0.2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dt = torch.float32 if a.dtype == "f32" else torch.bfloat16
    specs = roberta_base_specs(a.layers)
    base = make_model(specs, 0, dt)
    experts = [make_model(specs, m, dt) for m in range(1, a.experts + 1)]
    for method, fn in (("task_arithmetic", lambda: task_arithmetic(base, experts, a.scaling)),
                       ("ties", lambda: ties(base, experts, a.density, a.scaling))):
        best, out = 1e30, None
        for _ in range(a.reps):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        cs = sum(float(t.double().abs().sum()) for t in out.values())
        print(method, best, cs, flush=True)


if __name__ == "__main__":
    main()
