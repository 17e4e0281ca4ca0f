"""The E5 sweep as a plain research script: the baseline `bench_sweep.py` times.

What a researcher writes to reproduce the paper's headline number, with no lradvisor:
10 learning rates × 5 seeds, each trial its own nn.Sequential + torch.optim.SGD loop of
2000 full-batch steps in float32, the conservation law C = ‖W₂‖² − ‖W₁‖² read before and
after in float32 (the direct drift, as the paper measured it), α the least-squares slope of
ln(mean drift over seeds) against ln η. Same model, init and data order as docs/theory.md §3.

    python benchmarks/research_e5_sweep.py          # prints α and R², and the wall time
"""

import math
import time

import numpy as np
import torch
from torch import nn

LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 0.5, 1.0]
SEEDS = [42, 137, 256, 512, 1024]
STEPS = 2000


def mixture(n=200, dim=20, classes=5, separation=2.0):
    centres = torch.randn(classes, dim)
    centres = centres / centres.norm(dim=1, keepdim=True) * separation * math.sqrt(dim)
    y = torch.arange(n) % classes
    X = centres[y] + torch.randn(n, dim)
    order = torch.randperm(n)
    return X[order], y[order]


def conserved(model):
    first, second = model[0].weight, model[2].weight
    return (second**2).sum().item() - (first**2).sum().item()


def trial(lr, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64, bias=False), nn.ReLU(), nn.Linear(64, 5, bias=False))
    X, y = mixture()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        before = conserved(model)
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss_fn(model(X), y).backward()
        optimizer.step()
    with torch.no_grad():
        return abs(conserved(model) - before)


def main():
    started = time.perf_counter()
    drift = np.array([[trial(lr, seed) for seed in SEEDS] for lr in LRS])
    x, y = np.log(LRS), np.log(drift.mean(axis=1))
    alpha, intercept = np.polyfit(x, y, 1)
    r2 = 1 - np.sum((y - (alpha * x + intercept)) ** 2) / np.sum((y - y.mean()) ** 2)
    print(f"alpha = {alpha:.4f}  R2 = {r2:.4f}  ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
