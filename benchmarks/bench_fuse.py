#!/usr/bin/python3
"""PyTorch side of bench_fuse: the same fusion and SVD done the PyTorch way,
timed in the same run as twin (this script runs the C++ bench_fuse binary for
twin's times) and printed as ratios. Usage:
    /usr/bin/python3 benchmarks/bench_fuse.py [BUILD_DIR/benchmarks/bench_fuse]
(default build/bench/benchmarks/bench_fuse). TWIN_BF16_PAIRS=0 in the
environment runs twin's bf16 fusion on oneDNN's product instead of its
AVX-512 BF16 kernel.
"""
import subprocess
import sys
import time

import torch

torch.set_num_threads(2)
T, R = 8, 16


def best_time(fn, reps):
    # best of reps, as the C++ side does (the cores are shared)
    fn()
    best = float("inf")
    for _ in range(reps):
        a = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - a)
    return best


def roberta_shapes(layers=12):
    s = []
    for l in range(layers):
        p = f"layer.{l}."
        for n in "qkvo":
            s += [(p + n + ".weight", (768, 768)), (p + n + ".bias", (768,))]
        s += [(p + "ln1.weight", (768,)), (p + "ln1.bias", (768,)),
              (p + "fc1.weight", (3072, 768)), (p + "fc1.bias", (3072,)),
              (p + "fc2.weight", (768, 3072)), (p + "fc2.bias", (768,)),
              (p + "ln2.weight", (768,)), (p + "ln2.bias", (768,))]
    return s


def twin_times(binary, mode):
    out = subprocess.run([binary, mode], check=True, capture_output=True, text=True).stdout
    return [line.split() for line in out.strip().splitlines()]


def bench_fuse(binary):
    twin = {row[0]: float(row[1]) for row in twin_times(binary, "fuse-seconds")}
    logits = torch.tensor([0.3, -1.0, 2.0, 0.1, 0.0, -0.5, 1.1, 0.7])
    w = torch.softmax(logits, 0)
    wl = [float(x) for x in w]
    print("1. fuse, RoBERTa-base shape, T=8, r=16: PyTorch time / twin time (higher = twin faster)")
    print(f"   {'dtype':9} {'official (dense)':>18} {'low-rank addmm':>16} {'vs faster':>10}")
    g = torch.Generator().manual_seed(0)
    for name, dt in (("F32", torch.float32), ("BF16", torch.bfloat16)):
        shapes = roberta_shapes()
        shared = {n: torch.randn(s, generator=g).to(dt) for n, s in shapes}
        out = {n: torch.empty(s, dtype=dt) for n, s in shapes}
        # the official way: dense twin vectors, weighted sum, add
        dense = {n: [torch.randn(s, generator=g).mul_(0.01).to(dt) for _ in range(T)] for n, s in shapes}

        def official():
            with torch.no_grad():
                for n, _ in shapes:
                    o = out[n]
                    o.copy_(shared[n])
                    for t in range(T):
                        o.add_(dense[n][t], alpha=wl[t])

        t_off = best_time(official, 3)
        del dense
        # low-rank: W* + (A_cat * w) B_cat^T in one addmm per matrix
        acat = {n: torch.randn(s[0], T * R, generator=g).mul_(0.01).to(dt) for n, s in shapes if len(s) == 2}
        bcat = {n: torch.randn(s[1], T * R, generator=g).mul_(0.05).to(dt) for n, s in shapes if len(s) == 2}
        vecs = {n: torch.randn(T, s[0], generator=g).mul_(0.01).to(dt) for n, s in shapes if len(s) == 1}
        wrep = w.repeat_interleave(R).to(dt)

        def lowrank():
            with torch.no_grad():
                for n, s in shapes:
                    if len(s) == 2:
                        torch.addmm(shared[n], acat[n] * wrep, bcat[n].t(), out=out[n])
                    else:
                        torch.addmv(shared[n], vecs[n].t(), w.to(dt), out=out[n])

        t_lr = best_time(lowrank, 5)
        # F32-BF16F: twin with an f32 θ* and bf16 factor products, against
        # the same f32 PyTorch ways
        for key in (name, name + "-BF16F"):
            if key in twin:
                tw = twin[key]
                print(f"   {key:9} {t_off / tw:18.2f} {t_lr / tw:16.2f} {min(t_off, t_lr) / tw:10.2f}")
    print("   (F32-BF16F: twin's f32 fuse with bf16 factors through bf16 dot products)")


def bench_svd(binary):
    print("\n3. rank-16 compression: time relative to twin's randomized engine, relative error")
    print(f"   {'matrix':10} {'exact/rand':>11} {'torch/rand':>11} {'err rand':>9} {'err exact':>10} {'err torch':>10}")
    for row in twin_times(binary, "svd-seconds"):
        shape, tr, er, te, ee = row[0], *map(float, row[1:])
        m, n = map(int, shape.split("x"))
        g = torch.Generator().manual_seed(5)
        p = 128
        a = (torch.randn(m, p, generator=g) / torch.arange(1, p + 1)) @ torch.randn(p, n, generator=g) / n ** 0.5
        a += 0.01 * torch.randn(m, n, generator=g)
        res = {}

        def svd():
            res["usv"] = torch.linalg.svd(a, full_matrices=False)

        tt = best_time(svd, 3)
        u, s, vh = res["usv"]
        rec = (u[:, :16] * s[:16]) @ vh[:16]
        et = float(torch.linalg.norm(a - rec) / torch.linalg.norm(a))
        print(f"   {shape:10} {te / tr:11.1f} {tt / tr:11.1f} {er:9.4f} {ee:10.4f} {et:10.4f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help")):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) == 2 else 2)
    binary = sys.argv[1] if len(sys.argv) > 1 else "build/bench/benchmarks/bench_fuse"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    bench_fuse(binary)
    bench_svd(binary)
