"""E20/E21 ``ck_validation``: predicted against empirical mode coefficients c_k.

Predicted c_k: the initial gradient projected on the exact Hessian eigenvectors at init,
c_k ∝ (g₀·v_k)² over λ_k > 0, normalised to |δ(0)|. Three empirical spectra:

* **Projection** (per η, per run; the only per-η empirical c_k this protocol defines): from
  a_k(t) = g(t)·v_k at every step of the run at η and B_k(η) = Σ_{t<T} ρ_k^{2t},
  c_k = (S(η)/Σ_j w_j)·w_k/B_k(η) with w_k = Σ_t a_k(t)², so Σ_k c_k B_k(η) = S(η). It
  contains the prediction's ingredients (the same eigenvectors, the same kind of
  projection, the formula's basis): its correlations are compared with nulls, and they
  do not beat them (``nulls_sorted``, ``nulls_matched``).
* **From S(η) alone** (``binned``; one spectrum from many rates, not per η): the measured
  S(η) over ``fit_rates`` rates below the EoS fitted as a non-negative combination of the
  mode basis, S(η) ≈ Σ_b m_b B̄_b(η), over ``bins`` log-spaced bins of λ (B̄_b the mean
  basis function of the bin's modes, plus one bin for the modes too slow to cross over
  within the grid). The masses m_b contain no projection of any gradient; they are
  compared bin by bin with the predicted masses Σ_{k∈b} c_k.
* **First principles** (E20, linear net with MSE): c_k ∝ ‖e_k(0)‖² λ_{x,k}² over the d
  eigen-directions of Σ_x = XᵀX/n, against the d largest projection c_k, sorted.

R is the Pearson correlation over the ``modes`` modes with the largest predicted c_k:
``sorted`` (the paper's metric, each spectrum sorted first) and ``matched`` (mode by
mode). Nulls (:mod:`lradvisor.replication.nulls`), on the same empirical values:
``random_directions`` (c_k ∝ z_k², median over draws, its own top modes),
``other_seed`` (another seed's predicted c_k; sorted only — modes of two nets do not
correspond), ``constant_spectrum`` (every λ_k replaced by λ̄ in the empirical side's B_k,
which removes the eigenvalues from the comparison).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import Observables, run_sweep
from lradvisor.engine.data import Dataset
from lradvisor.measure.hessian import dense_spectrum, flat_gradient
from lradvisor.replication import nulls
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
from lradvisor.replication.kinds.modes import empirical_coefficients, mode_sums
from lradvisor.replication.outcome import Figure, Outcome, Progress, Series
from lradvisor.theory import (
    linear_network_coefficients,
    mode_coefficients,
)

# Gradients of this many parameter vectors are formed at once (vmap) for the c_k projections.
_GRADIENT_CHUNK = 256


def _first_principles(data: Dataset, weights: list[torch.Tensor]) -> np.ndarray:
    """c_k ∝ ‖e_k(0)‖² λ_{x,k}² of a 2-layer linear net with MSE (docs/theory.md §4)."""
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


def _shown(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _sorted_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson R of the two value sets, each sorted descending (the paper's sorted R)."""
    return pearson(np.sort(a)[::-1], np.sort(b)[::-1])


class _Tables:
    """Correlations per (η, seed), by name; aggregated as seed means per η."""

    def __init__(self, n_lrs: int, n_seeds: int) -> None:
        self.shape = (n_lrs, n_seeds)
        self.r: dict[str, np.ndarray] = {}

    def add(self, name: str, i: int, s: int, value: float) -> None:
        self.r.setdefault(name, np.full(self.shape, np.nan))[i, s] = value

    def mean(self, name: str) -> float | None:
        return finite(np.nanmean(self.r[name])) if name in self.r else None

    def min_over_lr(self, name: str) -> float | None:
        if name not in self.r:
            return None
        with np.errstate(invalid="ignore"):
            return finite(np.nanmin(np.nanmean(self.r[name], axis=1)))

    def by_lr(self, name: str, lrs: np.ndarray) -> dict:
        means = np.nanmean(self.r[name], axis=1)
        return {lr_key(lr): finite(r) for lr, r in zip(lrs, means, strict=True)}


@dataclass
class _Seed:
    """One seed's modes (λ_k > 0): eigenvalues, vectors, predicted c_k; data and weights."""

    data: Dataset
    weights: list[torch.Tensor]
    eigenvalues: np.ndarray
    vectors: np.ndarray
    predicted: np.ndarray
    delta: float
    outside: float
    principles: np.ndarray | None


def _seed(config: ModelConfig, seed: int, first_principles: bool) -> _Seed:
    data, weights = seed_data(config, seed)
    loss_fn = loss_function(config, data)
    theta0 = flat(weights)
    spectrum = dense_spectrum(loss_fn, theta0)
    gradient = flat_gradient(loss_fn, theta0)
    delta = first_law_imbalance(config, data, gradient)
    modes = mode_coefficients(
        gradient.numpy(), spectrum.eigenvectors, spectrum.eigenvalues, delta0=delta
    )
    kept = spectrum.eigenvalues > 0
    return _Seed(
        data=data,
        weights=weights,
        eigenvalues=modes.eigenvalues,
        vectors=spectrum.eigenvectors[:, kept],
        predicted=modes.coefficients,
        delta=abs(delta),
        outside=modes.outside_fraction,
        principles=_first_principles(data, weights) if first_principles else None,
    )


def _compare(
    tables: _Tables,
    i: int,
    s: int,
    seed: _Seed,
    others: list[_Seed],
    empirical: np.ndarray,
    constant: np.ndarray,
    modes: int,
    rng: np.random.Generator,
) -> None:
    """Every correlation of one run's projection c_k: the prediction's and the nulls'."""
    c = seed.predicted
    top = np.argsort(-c)[:modes]
    tables.add("sorted", i, s, _sorted_r(c[top], empirical[top]))
    tables.add("matched", i, s, pearson(c[top], empirical[top]))
    tables.add("sorted/constant_spectrum", i, s, _sorted_r(c[top], constant[top]))
    tables.add("matched/constant_spectrum", i, s, pearson(c[top], constant[top]))
    sorted_random, matched_random = [], []
    for _ in range(nulls.RANDOM_DRAWS):
        random = nulls.random_coefficients(seed.eigenvalues, c.sum(), rng=rng)
        own = np.argsort(-random)[:modes]
        sorted_random.append(_sorted_r(random[own], empirical[own]))
        matched_random.append(pearson(random[own], empirical[own]))
    tables.add("sorted/random_directions", i, s, float(np.median(sorted_random)))
    tables.add("matched/random_directions", i, s, float(np.median(matched_random)))
    if others:
        other = others[0].predicted
        tables.add(
            "sorted/other_seed", i, s, _sorted_r(np.sort(other)[::-1][:modes], empirical[top])
        )
    if seed.principles is not None:
        largest = np.sort(empirical)[::-1][: seed.principles.size]
        tables.add("first_principles", i, s, _sorted_r(seed.principles, largest))
        draws = [
            _sorted_r(rng.standard_normal(seed.principles.size) ** 2, largest)
            for _ in range(nulls.RANDOM_DRAWS)
        ]
        tables.add("first_principles/random_directions", i, s, float(np.median(draws)))
        if others and others[0].principles is not None:
            tables.add(
                "first_principles/other_seed", i, s, _sorted_r(others[0].principles, largest)
            )


def _bin_masses(eigenvalues: np.ndarray, coefficients: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Σ c_k per bin: bin 0 holds λ ≤ edges[0] (too slow to cross over), then the edges."""
    index = np.digitize(eigenvalues, edges)
    return np.array([coefficients[index == b].sum() for b in range(len(edges))])


def _bin_basis(
    eigenvalues: np.ndarray, edges: np.ndarray, rates: np.ndarray, steps: int
) -> np.ndarray:
    """B̄_b(η): the mean basis function of each bin's modes, shape (η, bins)."""
    index = np.digitize(eigenvalues, edges)
    columns = []
    for b in range(len(edges)):
        members = eigenvalues[index == b]
        if members.size == 0:
            columns.append(np.zeros(len(rates)))
            continue
        columns.append(np.array([mode_sums(lr, members, steps=steps).mean() for lr in rates]))
    return np.stack(columns, axis=1)


def _binned(
    config: ModelConfig,
    seeds: list[int],
    spectra: list[_Seed],
    protocol: dict,
    progress: Progress | None,
    rng: np.random.Generator,
) -> tuple[dict, list[str]]:
    """One empirical spectrum per seed from the measured S(η) alone (binned NNLS)."""
    steps = config.training.steps
    lambda_max = max(float(seed.eigenvalues.max()) for seed in spectra)
    count = int(protocol.get("fit_rates", 16))
    rates = np.geomspace(min(protocol["lrs"]) / 5, 0.9 * 2.0 / lambda_max, count)
    sweep = run_sweep(config, lrs=rates, seeds=seeds, progress=progress_for(progress, "S(η) fit"))
    _, table = sweep.grid(np.abs(sweep.imbalance_sum[:, 0]))
    slowest = 1.0 / (rates.max() * steps) / 2
    edges = np.geomspace(slowest, lambda_max * (1 + 1e-9), int(protocol.get("bins", 7)))
    r = {"binned": [], "constant_spectrum": [], "random_directions": [], "other_seed": []}
    residuals = []
    for s, seed in enumerate(spectra):
        usable = np.isfinite(table[:, s]) & (table[:, s] > 0)  # diverged rates leave the fit
        if usable.sum() < 3:
            continue
        measured = table[usable, s]
        basis = _bin_basis(seed.eigenvalues, edges, rates[usable], steps)
        masses, _ = optimize.nnls(basis / measured[:, None], np.ones_like(measured))
        residuals.append(float(np.max(np.abs(basis @ masses / measured - 1))))
        predicted = _bin_masses(seed.eigenvalues, seed.predicted, edges)
        r["binned"].append(pearson(predicted, masses))
        lam_bar = nulls.mean_eigenvalue(seed.eigenvalues, seed.predicted)
        constant = _bin_masses(np.array([lam_bar]), np.array([seed.predicted.sum()]), edges)
        r["constant_spectrum"].append(pearson(constant, masses))
        draws = [
            pearson(
                _bin_masses(
                    seed.eigenvalues,
                    nulls.random_coefficients(seed.eigenvalues, seed.predicted.sum(), rng=rng),
                    edges,
                ),
                masses,
            )
            for _ in range(nulls.RANDOM_DRAWS)
        ]
        r["random_directions"].append(float(np.median(draws)))
        if len(spectra) > 1:
            other = spectra[(s + 1) % len(spectra)]
            r["other_seed"].append(
                pearson(_bin_masses(other.eigenvalues, other.predicted, edges), masses)
            )
    mean = {k: finite(np.nanmean(v)) if v else None for k, v in r.items()}
    values = {
        "r_binned": mean.pop("binned"),
        "nulls_binned": {k: v for k, v in mean.items() if v is not None},
        "binned_rates": [float(v) for v in rates],
        "binned_edges": [float(v) for v in edges],
        "binned_fit_residual": finite(max(residuals)) if residuals else None,
    }
    note = (
        f"from S(η) alone: {count} rates {rates[0]:.2g}–{rates[-1]:.2g} (below 2/λ_max), "
        f"{len(edges)} bins of λ from {edges[0]:.2g} to {edges[-1]:.3g}; NNLS fit of S(η) within "
        f"{_shown(values['binned_fit_residual'], '.1%')} (largest relative residual); R over bins "
        f"{_shown(values['r_binned'])} against the nulls' "
        + ", ".join(f"{k} {v:.4f}" for k, v in values["nulls_binned"].items())
    )
    return values, [note]


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


def _null_table(tables: _Tables, metric: str, aggregate: str) -> dict:
    names = [n.split("/", 1)[1] for n in tables.r if n.startswith(f"{metric}/")]
    read = tables.mean if aggregate == "mean" else tables.min_over_lr
    return {
        name: read(f"{metric}/{name}") for name in names if read(f"{metric}/{name}") is not None
    }


def ck_validation(protocol: dict, *, quick: bool, progress: Progress | None) -> Outcome:
    """E20/E21: predicted c_k against three empirical spectra, each with its nulls."""
    started = time.perf_counter()
    config = config_from(protocol)
    if config.model.depth != 2 or config.model.bias:
        raise ValueError("ck_validation needs a 2-layer bias-free net (one law, C1)")
    steps = config.training.steps
    lrs = np.asarray(protocol["lrs"], dtype=float)
    seeds = [int(s) for s in protocol["seeds"]]
    modes = int(protocol.get("modes", 20))
    first_principles = bool(protocol.get("first_principles", False))
    rng = np.random.default_rng(0)
    spectra = [_seed(config, seed, first_principles) for seed in seeds]
    result = run_sweep(
        config,
        lrs=lrs,
        seeds=seeds,
        progress=progress_for(progress, "sweep"),
        observe=Observables(checkpoints=tuple(range(steps))),
    )
    measured = np.abs(result.imbalance_sum[:, 0])
    tables = _Tables(len(lrs), len(seeds))
    scatter_lr = lrs[len(lrs) // 2]
    scatter: list[tuple[float, float]] = []
    for s, seed in enumerate(seeds):
        own = spectra[s]
        others = [spectra[(s + k) % len(seeds)] for k in range(1, len(seeds))]
        loss_fn = loss_function(config, own.data)
        vectors = torch.from_numpy(own.vectors)
        signs = _imbalance_signs(config, own.data)
        for i, lr in enumerate(lrs):
            trial = trial_index(result, lr, seed)
            if result.diverged[trial]:
                continue
            thetas = torch.stack([flat(result.checkpoints[t][0], trial) for t in range(steps)])
            energy, _ = _projections(loss_fn, thetas, vectors, signs)
            empirical = empirical_coefficients(
                energy, own.eigenvalues, lr, imbalance_sum=measured[trial]
            )
            weights = (energy**2).sum(axis=0)
            constant = abs(measured[trial]) * weights / weights.sum()
            _compare(tables, i, s, own, others, empirical, constant, modes, rng)
            if lr == scatter_lr:
                top = np.argsort(-own.predicted)[:modes]
                pairs = zip(own.predicted[top].tolist(), empirical[top].tolist(), strict=True)
                scatter += list(pairs)
        if progress is not None:
            progress(s + 1, len(seeds), "c_k per seed")
    values: dict = {
        "r_sorted": tables.mean("sorted"),
        "r_matched": tables.mean("matched"),
        "r_sorted_min": tables.min_over_lr("sorted"),
        "r_matched_min": tables.min_over_lr("matched"),
        "r_sorted_by_lr": tables.by_lr("sorted", lrs),
        "r_matched_by_lr": tables.by_lr("matched", lrs),
        "nulls_sorted": _null_table(tables, "sorted", "mean"),
        "nulls_matched": _null_table(tables, "matched", "mean"),
        "nulls_sorted_min": _null_table(tables, "sorted", "min"),
        "nulls_matched_min": _null_table(tables, "matched", "min"),
        "modes": modes,
        "gradient_outside": float(np.mean([seed.outside for seed in spectra])),
    }
    binned, binned_notes = _binned(config, seeds, spectra, protocol, progress, rng)
    values.update(binned)
    notes = [
        "projection c_k (per η): R over the "
        f"{modes} modes with the largest predicted c_k, per (η, seed), averaged over seeds: "
        f"sorted {_shown(values['r_sorted'])}, matched {_shown(values['r_matched'])}; nulls sorted "
        + ", ".join(f"{k} {v:.4f}" for k, v in values["nulls_sorted"].items())
        + "; matched "
        + ", ".join(f"{k} {v:.4f}" for k, v in values["nulls_matched"].items()),
        *binned_notes,
        f"{values['gradient_outside']:.0%} of ‖g₀‖² lies on modes with λ ≤ 0 (left out of every "
        "spectrum)",
    ]
    if first_principles:
        values["r_first_principles"] = tables.mean("first_principles")
        values["r_first_principles_by_lr"] = tables.by_lr("first_principles", lrs)
        values["nulls_first_principles"] = _null_table(tables, "first_principles", "mean")
        notes.append(
            "first principles: c_k ∝ ‖e_k(0)‖²λ_x,k² over the d data eigen-directions vs the d "
            f"largest projection c_k, sorted: {_shown(values['r_first_principles'])}; nulls against "
            "the same empirical values (another seed's first-principles c_k; d random "
            "directions): "
            + ", ".join(f"{k} {v:.4f}" for k, v in values["nulls_first_principles"].items())
        )
    pairs = np.array(scatter) if scatter else np.zeros((0, 2))
    figures = {"ck_scatter": _scatter_figure(pairs, scatter_lr)}
    return Outcome(values, figures, notes, time.perf_counter() - started)
