"""Stage 1: the sharpness λ_max at θ₀ by Lanczos on Hessian-vector products.

Measured in the model's own dtype on a seeded subsample of the training data (the top
eigenvalue needs a few hundred samples, not all of them), in training mode as the optimizer
sees the loss: BatchNorm uses batch statistics, and dropout draws one fixed mask for every
product so the operator is a fixed symmetric matrix. Attention runs with PyTorch's math
kernel, the one with a double backward. With mini-batches the mean top eigenvalue of single
batches is measured too: the bound for SGD uses it (docs/theory.md §9).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from lradvisor.advisor.problem import Problem
from lradvisor.measure.lanczos import hessian_operator, lanczos
from lradvisor.records import Sharpness

__all__ = ["SHARPNESS_SAMPLES", "curvature_context", "measure_sharpness", "top_eigenvalue"]

SHARPNESS_SAMPLES = 512
BATCHES = 3
MAX_ITER = 30
TOLERANCE = 1e-2  # the bound places a factor-2 bracket: 1 % on λ is plenty


@contextmanager
def curvature_context() -> Iterator[None]:
    """Second derivatives everywhere: the math attention kernel (flash/efficient kernels
    have no double backward on CPU), and the caller's RNG state left untouched."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.random.fork_rng(devices=[]), sdpa_kernel(SDPBackend.MATH):
        yield


def top_eigenvalue(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn: Callable
) -> tuple[float, int, float]:
    """(λ_max, HVPs used, relative residual) of ``loss_fn(model(X), y)`` at ``model``'s weights."""
    model = copy.deepcopy(model).train()  # BatchNorm updates its running stats on a copy
    operator = hessian_operator(model, [(X, y)], loss_fn)

    def matvec(vector: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)  # one dropout mask for every product
        return operator.matvec(vector)

    with curvature_context():
        spectrum = lanczos(
            matvec, operator.dim, k=1, max_iter=MAX_ITER, tol=TOLERANCE, device=X.device
        )
    return spectrum.lambda_max, spectrum.n_hvp, spectrum.tolerance


def measure_sharpness(problem: Problem) -> Sharpness:
    """λ_max(θ₀) of the first seed's model (full batch, and single mini-batches)."""
    model = problem.make_model(problem.seeds[0])
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(problem.n, generator=generator).to(problem.device)
    sample = order[:SHARPNESS_SAMPLES]
    try:
        lam, n_hvp, residual = top_eigenvalue(
            model, problem.X[sample], problem.y[sample], problem.loss_fn
        )
    except Exception as error:  # a module without a double-backward rule, for one
        text = " ".join(str(error).split())[:200]
        return Sharpness(
            None,
            len(sample),
            0,
            float("nan"),
            note=f"sharpness not measured: Hessian-vector products failed ({type(error).__name__}: {text})",
        )
    batch_lam = None
    if not problem.full_batch:
        values = []
        for index in range(BATCHES):
            size = problem.batch_size
            batch = order[torch.arange(index * size, (index + 1) * size) % problem.n]
            value, used, _ = top_eigenvalue(
                model, problem.X[batch], problem.y[batch], problem.loss_fn
            )
            values.append(value)
            n_hvp += used
        batch_lam = float(np.mean(values))
    note = None
    if not lam > 0:
        note = f"λ_max(θ₀) = {lam:.3g} ≤ 0: the loss is not locally convex at θ₀, so no bound"
    return Sharpness(
        lambda_max=float(lam) if lam > 0 else None,
        samples=len(sample),
        n_hvp=n_hvp,
        residual=float(residual),
        batch_lambda_max=batch_lam if batch_lam is not None and batch_lam > 0 else None,
        batch_size=problem.batch_size,
        note=note,
    )
