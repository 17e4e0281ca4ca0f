"""E20/E21 ``ck_validation``: predicted against empirical mode coefficients c_k."""

from __future__ import annotations

import time

import numpy as np
import torch

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import Observables, run_sweep
from lradvisor.engine.data import Dataset
from lradvisor.measure.hessian import dense_spectrum, flat_gradient
from lradvisor.replication.kinds.common import (
    LossFunction,
    config_from,
    finite,
    first_law_imbalance,
    flat,
    loss_function,
    lr_key,
    pearson,
    progress_for,
    seed_data,
    trial_index,
)
from lradvisor.replication.kinds.modes import (
    empirical_coefficients,
    mode_sums,
    spectrum_correlations,
)
from lradvisor.replication.outcome import Figure, Outcome, Progress, Series
from lradvisor.theory import (
    linear_network_coefficients,
    mode_coefficients,
    spectrum_correlation,
)

# Gradients of this many parameter vectors are formed at once (vmap) for the c_k projections.
_GRADIENT_CHUNK = 256


def _first_principles(data: Dataset, weights: list[torch.Tensor]) -> np.ndarray:
    """c_k ∝ ‖e_k(0)‖² λ_{x,k}² of a 2-layer linear net with MSE (THEORY.md §4)."""
    X = data.X.to(torch.float64)
    target = torch.nn.functional.one_hot(data.y, data.classes).to(torch.float64)
    covariance = X.T @ X / X.shape[0]
    data_eigenvalues, directions = torch.linalg.eigh(covariance)
    best_map = torch.linalg.solve(covariance, X.T @ target / X.shape[0]).T
    error = (weights[1] @ weights[0] - best_map) @ directions
    return linear_network_coefficients(error.T.numpy(), data_eigenvalues.numpy(), delta0=1.0)


def _imbalance_signs(config: ModelConfig, data: Dataset) -> torch.Tensor:
    """D with δ = gᵀDg for law C1: −1 on W₁'s entries, +1 on W₂'s (2-layer bias-free nets)."""
    hidden = config.model.hidden[0]
    first, second = hidden * data.dim, data.classes * hidden
    return torch.cat([-torch.ones(first), torch.ones(second)]).to(torch.float64)


def _projections(
    loss_fn: LossFunction, thetas: torch.Tensor, vectors: torch.Tensor, signs: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """a_k(t) = g(θ_t)·v_k and b_k(t) = (D g(θ_t))·v_k for a stack of parameter vectors."""
    gradient = torch.func.vmap(torch.func.grad(loss_fn))
    energy, imbalance = [], []
    for chunk in torch.split(thetas, _GRADIENT_CHUNK):
        g = gradient(chunk)
        energy.append(g @ vectors)
        imbalance.append((g * signs) @ vectors)
    return torch.cat(energy).numpy(), torch.cat(imbalance).numpy()


class _ModeCheck:
    """Correlations of predicted and empirical c_k, one entry per (η, seed)."""

    NAMES = ("sorted", "matched", "matched_log", "sorted_imbalance", "matched_imbalance")

    def __init__(self, n_lrs: int, n_seeds: int, modes: int) -> None:
        self.modes = modes
        self.r = {name: np.full((n_lrs, n_seeds), np.nan) for name in self.NAMES}

    def add(self, i: int, s: int, predicted: np.ndarray, energy: np.ndarray, share: np.ndarray):
        top = np.argsort(-predicted)[: self.modes]
        self.r["sorted"][i, s], self.r["matched"][i, s] = spectrum_correlations(
            predicted, energy, modes=self.modes
        )
        self.r["matched_log"][i, s] = pearson(
            np.log(predicted[top]), np.log(np.maximum(energy[top], 1e-300))
        )
        self.r["sorted_imbalance"][i, s], self.r["matched_imbalance"][i, s] = spectrum_correlations(
            predicted, share, modes=self.modes
        )

    def values(self, lrs: np.ndarray) -> dict:
        by_lr = {name: np.nanmean(table, axis=1) for name, table in self.r.items()}
        values: dict = {}
        for name in ("sorted", "matched"):
            values[f"r_{name}_by_lr"] = {
                lr_key(lr): finite(r) for lr, r in zip(lrs, by_lr[name], strict=True)
            }
        for name in self.NAMES:
            values[f"r_{name}"] = finite(np.nanmean(self.r[name]))
        values["r_sorted_min"] = finite(np.nanmin(by_lr["sorted"]))
        values["r_matched_min"] = finite(np.nanmin(by_lr["matched"]))
        values["r_sorted_min_trial"] = finite(np.nanmin(self.r["sorted"]))
        return values


def _scatter_figure(pairs: np.ndarray, lr: float) -> Figure:
    low, high = float(pairs.min(initial=1e-12)), float(pairs.max(initial=1.0))
    return Figure(
        f"c_k: predicted (initial gradient) vs empirical (run at η = {lr:g})",
        "predicted c_k",
        "empirical c_k",
        [
            Series(pairs[:, 0].tolist(), pairs[:, 1].tolist(), "modes (all seeds)", "points"),
            Series([low, high], [low, high], "equal", "fit"),
        ],
        logx=True,
        logy=True,
    )


def ck_validation(protocol: dict, *, quick: bool, progress: Progress | None) -> Outcome:
    """E20/E21: predicted (initial-gradient projection) vs empirical c_k at each η.

    Two empirical spectra per run (module docstring): from the per-mode gradient energy
    (``r_sorted``, ``r_matched``, ``r_matched_log``), and from each mode's exact share of the
    measured imbalance sum, S_k = Σ_t a_k(t) b_k(t), as c_k = S_k / B_k(η)
    (``r_*_imbalance``; sign-indefinite, it also tests δ(t) ∝ ‖g(t)‖² mode by mode).
    """
    started = time.perf_counter()
    config = config_from(protocol)
    if config.model.depth != 2 or config.model.bias:
        raise ValueError("ck_validation needs a 2-layer bias-free net (one law, C1)")
    steps = config.training.steps
    lrs = np.asarray(protocol["lrs"], dtype=float)
    seeds = [int(s) for s in protocol["seeds"]]
    modes = int(protocol.get("modes", 20))
    first_principles = bool(protocol.get("first_principles", False))
    result = run_sweep(
        config,
        lrs=lrs,
        seeds=seeds,
        progress=progress_for(progress, "sweep"),
        observe=Observables(checkpoints=tuple(range(steps))),
    )
    measured = np.abs(result.imbalance_sum[:, 0])
    check = _ModeCheck(len(lrs), len(seeds), modes)
    r_principles = np.full((len(lrs), len(seeds)), np.nan)
    scatter_lr = lrs[len(lrs) // 2]
    scatter: list[tuple[float, float]] = []
    outside = []
    for s, seed in enumerate(seeds):
        data, weights = seed_data(config, seed)
        loss_fn = loss_function(config, data)
        theta0 = flat(weights)
        spectrum = dense_spectrum(loss_fn, theta0)
        gradient = flat_gradient(loss_fn, theta0)
        predicted = mode_coefficients(
            gradient.numpy(),
            spectrum.eigenvectors,
            spectrum.eigenvalues,
            delta0=first_law_imbalance(config, data, gradient),
        )
        c_pred = predicted.coefficients
        outside.append(predicted.outside_fraction)
        vectors = torch.from_numpy(spectrum.eigenvectors[:, spectrum.eigenvalues > 0])
        signs = _imbalance_signs(config, data)
        principles = _first_principles(data, weights) if first_principles else None
        for i, lr in enumerate(lrs):
            trial = trial_index(result, lr, seed)
            if result.diverged[trial]:
                continue
            thetas = torch.stack([flat(result.checkpoints[t][0], trial) for t in range(steps)])
            energy, imbalance = _projections(loss_fn, thetas, vectors, signs)
            empirical = empirical_coefficients(
                energy, predicted.eigenvalues, lr, imbalance_sum=measured[trial]
            )
            share = (energy * imbalance).sum(axis=0) / mode_sums(
                lr, predicted.eigenvalues, steps=steps
            )
            check.add(i, s, c_pred, empirical, share)
            if principles is not None:
                largest = np.sort(empirical)[::-1][: principles.size]
                r_principles[i, s] = spectrum_correlation(principles, largest)
            if lr == scatter_lr:
                top = np.argsort(-c_pred)[:modes]
                scatter += list(zip(c_pred[top].tolist(), empirical[top].tolist(), strict=True))
        if progress is not None:
            progress(s + 1, len(seeds), "c_k per seed")
    values = {**check.values(lrs), "modes": modes, "gradient_outside": float(np.mean(outside))}
    notes = [
        "empirical c_k from the gradient at every step of each run projected on the Hessian "
        "eigenvectors at init (λ_k > 0), scaled so that Σ c_k B_k(η) = measured S(η); R over "
        f"the {modes} modes with the largest predicted c_k, per (η, seed), averaged over seeds",
        "r_matched_log: the matched R of ln c_k (every mode counts alike, not only the largest "
        "few that dominate a linear-scale R); r_*_imbalance: empirical c_k = S_k/B_k(η) from "
        "each mode's exact share S_k = Σ_t (g·v_k)(Dg·v_k) of the measured imbalance sum",
        f"{np.mean(outside):.0%} of ‖g₀‖² lies on modes with λ ≤ 0 (left out of both spectra)",
    ]
    if first_principles:
        by_lr = np.nanmean(r_principles, axis=1)
        values["r_first_principles_by_lr"] = {
            lr_key(lr): finite(r) for lr, r in zip(lrs, by_lr, strict=True)
        }
        values["r_first_principles"] = finite(np.nanmean(r_principles))
        notes.append(
            "first principles: c_k ∝ ‖e_k(0)‖²λ_x,k² over the d data eigen-directions vs the d "
            "largest empirical c_k, sorted (data directions are not Hessian modes: no matched R)"
        )
    pairs = np.array(scatter) if scatter else np.zeros((0, 2))
    figures = {"ck_scatter": _scatter_figure(pairs, scatter_lr)}
    return Outcome(values, figures, notes, time.perf_counter() - started)
