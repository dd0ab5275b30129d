#!/usr/bin/python3
"""PyTorch side of bench_router: trains the official Twin-Merging router
(Linear-BatchNorm-LeakyReLU-Dropout x2, Linear) with the same settings as the
C++ run on the data bench_router wrote, and prints one RESULT line.

Reads the safetensors file with json + numpy (no safetensors package needed).
"""
import argparse
import json
import struct
import time

import numpy as np
import torch


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    body = memoryview(raw)[8 + n:]
    types = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}
    out = {}
    for name, h in header.items():
        lo, hi = h["data_offsets"]
        out[name] = np.frombuffer(body[lo:hi], dtype=types[h["dtype"]]).reshape(h["shape"]).copy()
    return out, meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--slope", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t, _ = load_safetensors(a.data)
    xt, yt, xh, yh = t["train_x"], t["train_y"], t["heldout_x"], t["heldout_y"]
    num_tasks = int(max(yt.max(), yh.max()) + 1)
    d = xt.shape[1]
    h = 2 * d

    # Same standardization as twin::Router: population std fitted on the
    # training split, in double; constant features keep scale 1.
    mean = xt.astype(np.float64).mean(axis=0)
    sd = xt.astype(np.float64).std(axis=0)
    sd = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mean)), sd, 1.0)
    mean32, sd32 = mean.astype(np.float32), sd.astype(np.float32)
    xt = torch.from_numpy((xt - mean32) * (1.0 / sd32))
    xh = torch.from_numpy((xh - mean32) * (1.0 / sd32))
    yt = torch.from_numpy(yt.astype(np.int64))
    yh = torch.from_numpy(yh.astype(np.int64))

    model = torch.nn.Sequential(
        torch.nn.Linear(d, h), torch.nn.BatchNorm1d(h), torch.nn.LeakyReLU(a.slope), torch.nn.Dropout(a.dropout),
        torch.nn.Linear(h, h), torch.nn.BatchNorm1d(h), torch.nn.LeakyReLU(a.slope), torch.nn.Dropout(a.dropout),
        torch.nn.Linear(h, num_tasks))
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(a.seed)

    n = xt.shape[0]
    epoch_times, accs = [], []
    best = (-1.0, float("inf"))
    best_epoch = 0
    for epoch in range(1, a.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for b0 in range(0, n, a.batch_size):
            idx = perm[b0:b0 + a.batch_size]
            if idx.numel() < 2:  # BatchNorm needs two rows (as in the C++ trainer)
                continue
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        model.eval()
        with torch.no_grad():
            z = model(xh)
            acc = (z.argmax(dim=1) == yh).float().mean().item()
            hloss = loss_fn(z, yh).item()
        epoch_times.append(time.perf_counter() - t0)
        accs.append(acc)
        if acc > best[0] or (acc == best[0] and hloss < best[1]):
            best = (acc, hloss)
            best_epoch = epoch

    print("RESULT median_epoch_s=%.6f mean_epoch_s=%.6f best_acc=%.6f best_epoch=%d last_acc=%.6f threads=%d torch=%s"
          % (float(np.median(epoch_times)), float(np.mean(epoch_times)), best[0], best_epoch, accs[-1],
             torch.get_num_threads(), torch.__version__), flush=True)


if __name__ == "__main__":
    main()
