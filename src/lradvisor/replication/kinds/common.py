"""Helpers shared by the spectral and observable kinds: protocol models, seeds, Hessians."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import numpy as np
import torch

from lradvisor.config import ModelConfig, parse_config
from lradvisor.engine.batched import SweepResult
from lradvisor.engine.data import Dataset
from lradvisor.engine.models import initial_state
from lradvisor.measure.hessian import config_loss_function
from lradvisor.measure.lanczos import lanczos
from lradvisor.measure.laws import unit_balance
from lradvisor.replication.kinds.sweeps import deep_merge
from lradvisor.replication.outcome import Figure, Progress

LossFunction = Callable[[torch.Tensor], torch.Tensor]


def config_from(protocol: dict, **overrides: dict) -> ModelConfig:
    """The protocol's model file with ``steps`` and section overrides (model=…, data=…)."""
    model = protocol["model"]
    if isinstance(model, ModelConfig):
        model = model.model_dump(exclude_unset=True)
    raw = deep_merge(model, {k: v for k, v in overrides.items() if v})
    if "steps" in protocol:
        raw = deep_merge(raw, {"training": {"steps": int(protocol["steps"])}})
    return parse_config(raw, file="study protocol")


def progress_for(progress: Progress | None, label: str):
    if progress is None:
        return None
    return lambda done, total: progress(done, total, label)


def lr_key(lr: float) -> str:
    return f"{lr:g}"


def trial_index(result: SweepResult, lr: float, seed: int) -> int:
    return int(np.flatnonzero((result.lrs == lr) & (result.seeds == seed))[0])


def mean_imbalance(result: SweepResult) -> tuple[np.ndarray, np.ndarray]:
    """(η, seed-mean |S| of law C1), diverged trials left out."""
    lrs, table = result.grid(np.abs(result.imbalance_sum[:, 0]))
    with np.errstate(invalid="ignore"):
        return lrs, np.nanmean(np.where(np.isfinite(table), table, np.nan), axis=1)


def loss_function(config: ModelConfig, data: Dataset) -> LossFunction:
    widths = [data.dim, *config.model.hidden, data.classes]
    shapes = [torch.Size((out, inp)) for inp, out in pairwise(widths)]
    if config.model.bias:
        shapes += [torch.Size((out,)) for out in widths[1:]]
    return config_loss_function(config, shapes, data)


def flat(weights: list[torch.Tensor], trial: int | None = None) -> torch.Tensor:
    parts = [w if trial is None else w[trial] for w in weights]
    return torch.cat([p.reshape(-1).to(torch.float64) for p in parts])


def first_law_imbalance(config: ModelConfig, data: Dataset, gradient: torch.Tensor) -> float:
    """δ of law C1 (‖G₂‖² − ‖G₁‖²) from a flat gradient (bias-free nets)."""
    hidden = config.model.hidden[0]
    first = hidden * data.dim
    second = data.classes * hidden
    g1 = gradient[:first].reshape(hidden, data.dim)
    g2 = gradient[first : first + second].reshape(data.classes, hidden)
    return float(unit_balance(g2, g1).sum())


def seed_data(config: ModelConfig, seed: int) -> tuple[Dataset, list[torch.Tensor]]:
    state = initial_state(config, seed, None, dtype=torch.float64)
    return state.data, state.weights


def sharpness(loss_fn: LossFunction, theta: torch.Tensor) -> float:
    """λ_max by Lanczos on double-backward Hessian-vector products."""
    theta = theta.detach().clone().requires_grad_(True)
    (graph,) = torch.autograd.grad(loss_fn(theta), theta, create_graph=True)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        (product,) = torch.autograd.grad(graph, theta, v, retain_graph=True)
        return product

    return lanczos(matvec, theta.numel(), k=1, max_iter=60, tol=1e-5).lambda_max


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def finite(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def log_log(figure: Figure) -> Figure:
    figure.logx = figure.logy = True
    return figure


def mean_switch_rate(result: SweepResult) -> tuple[np.ndarray, np.ndarray]:
    """(η, switch rate averaged over the recording grid and seeds)."""
    with np.errstate(invalid="ignore"):
        per_trial = np.nanmean(result.switch_rate, axis=0)
    lrs, table = result.grid(per_trial)
    return lrs, np.nanmean(table, axis=1)
