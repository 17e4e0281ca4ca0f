"""Learning-rate advice from measurements at initialisation, a short probe, and the theory.

One trip (ARCHITECTURE.md): config → model and data at init → λ_max and top eigenpairs by
Lanczos on Hessian-vector products (and at two other widths) → c_k from the initial gradient
→ S(η), α(η) from the spectral formula → a short batched probe around the stability bound
(loss, 1 − q̄(t), λ_max(t), switch rate) → :class:`~lradvisor.records.Advice`.

Rules (each number in the Advice carries its own line in ``rules``):

* η_EoS = 2/λ_max(θ₀) (full batch); with mini-batches the bound uses the mini-batch
  sharpness, the mean top eigenvalue of the Hessian of single batches, 2/λ_mb — the
  full-batch bound is far too loose for SGD (THEORY.md §8).
* The recommendation is the rate with the lowest probe loss among candidates spaced by √2
  from ¼ to 8 × the bound (the best constant rate sits between 1× and ~4× the initial bound
  for full-batch GD, above it for CE, where the Hessian compresses; THEORY.md §5, §8).
  Candidates whose probe diverged or whose loss rose over the probe are excluded.
* The sweep range spans from a tenth of the recommendation to the largest candidate whose
  probe stayed stable, capped at 4× the recommendation.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import Observables, identity_applies
from lradvisor.engine.data import Dataset, load_shared_dataset
from lradvisor.engine.dispatch import build_model, run_trials
from lradvisor.engine.models import initial_state
from lradvisor.engine.training import loss_function
from lradvisor.errors import LRAdvisorError
from lradvisor.measure.discovery import discover_pairs
from lradvisor.measure.hessian import config_loss_function
from lradvisor.measure.lanczos import hessian_operator, lanczos
from lradvisor.measure.laws import unit_balance
from lradvisor.measure.quadrature import spectral_measure
from lradvisor.prediction import _initial_imbalance as _imbalance_from_flat
from lradvisor.records import Advice, Spectrum
from lradvisor.theory import (
    e_folding_time,
    eos_by_width,
    eos_learning_rate,
    fit_power_law,
    fit_tau,
    fit_width_law,
    gradient_imbalance_sum,
    local_alpha,
    mode_coefficients,
)

ProgressCallback = Callable[[str], None]

PROBE_STEPS = 300
PROBE_MULTIPLIERS = tuple(2.0 ** (k / 2) for k in range(-4, 7))  # ¼ … 8 × the bound, step √2
QUADRATURE_NODES = 60
TAU_MULTIPLIERS = (0.05, 0.1, 0.2)  # sub-EoS rates whose 1 − q̄ decays within the probe
CLIFF_FACTOR = 10.0  # a probe loss this many times the best one marks the stability cliff
PROBE_SEEDS = 3
DENSE_SUGGEST_LIMIT = 2500
WIDTH_FACTORS = (0.5, 1.0, 2.0)
CHUNK = 2048


def _batches(
    data: Dataset, dtype: torch.dtype, size: int = CHUNK
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    X = data.X.to(dtype)
    return [(X[i : i + size], data.y[i : i + size]) for i in range(0, data.n, size)]


def _shared(config: ModelConfig) -> Dataset | None:
    if config.data.source == "gaussian_mixture":
        return None
    return load_shared_dataset(config, dtype=torch.float64)


def _module(config: ModelConfig, seed: int, shared: Dataset | None) -> tuple[nn.Module, Dataset]:
    model, data = build_model(config, seed, shared)
    return model.to(torch.float64), data


def _initial_imbalance(model: nn.Module, operator) -> list[float]:
    """δ_l(0) for every law, from the full-data gradient at θ₀."""
    grads = dict(
        zip(
            (name for name, p in model.named_parameters() if p.requires_grad),
            operator.unflatten(operator.gradient()),
            strict=True,
        )
    )
    discovery = discover_pairs(model)
    values = []
    for pair in discovery.pairs:
        g_in = grads[f"{pair.in_layer_name}.weight"]
        g_out = grads[f"{pair.out_layer_name}.weight"]
        g_bias = grads.get(f"{pair.in_layer_name}.bias") if pair.bias_aware else None
        values.append(float(unit_balance(g_out, g_in, g_bias).sum()))
    return values


@dataclass
class _Curvature:
    """Hessian access at one state: matvec, gradient, laws' δ(0); dense when small."""

    matvec: Callable[[torch.Tensor], torch.Tensor]
    dim: int
    gradient: torch.Tensor
    deltas: list[float]
    dense: Callable[[], Spectrum] | None
    method: str


def _mlp_theta(weights: list[torch.Tensor], biases: list[torch.Tensor] | None) -> torch.Tensor:
    tensors = weights + (biases or [])
    return torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])


def _mlp_curvature(
    config: ModelConfig, theta: torch.Tensor, shapes: list, data: Dataset
) -> _Curvature:
    """Flat-parameter functional loss of a built-in MLP: HVPs by double backward."""
    loss_fn = config_loss_function(config, shapes, data)
    # One first-order graph, kept: each HVP is then a single backward pass through it.
    theta = theta.detach().clone().requires_grad_(True)
    (graph,) = torch.autograd.grad(loss_fn(theta), theta, create_graph=True)
    gradient = graph.detach()

    def matvec(v: torch.Tensor) -> torch.Tensor:
        (product,) = torch.autograd.grad(graph, theta, v.to(torch.float64), retain_graph=True)
        return product

    def dense() -> Spectrum:
        basis = torch.eye(theta.numel(), dtype=torch.float64)
        hessian = torch.stack([matvec(e) for e in basis])
        values, vectors = torch.linalg.eigh(0.5 * (hessian + hessian.T))
        order = torch.argsort(values, descending=True)
        return Spectrum(values[order].numpy(), vectors[:, order].numpy(), "dense", theta.numel())

    deltas = list(_imbalance_from_flat(config, shapes, gradient)) if config.model.depth > 1 else []
    small = theta.numel() <= DENSE_SUGGEST_LIMIT
    return _Curvature(
        matvec, theta.numel(), gradient, deltas, dense if small else None, "double-backward HVP"
    )


def _module_curvature(config: ModelConfig, model: nn.Module, data: Dataset) -> _Curvature:
    operator = hessian_operator(
        model, _batches(data, torch.float64), loss_function(config.training)
    )
    return _Curvature(
        operator.matvec,
        operator.dim,
        operator.gradient(),
        _initial_imbalance(model, operator),
        None,
        "double-backward HVP on the module",
    )


def _curvature_for(
    config: ModelConfig, model: nn.Module, data: Dataset, theta: torch.Tensor | None
) -> _Curvature:
    """Curvature of ``model`` (factory) or of the MLP at flat parameters ``theta``, on ``data``."""
    if theta is None:
        return _module_curvature(config, model, data)
    shapes = [p.shape for p in model.parameters()]
    if config.model.bias:
        shapes = shapes[0::2] + shapes[1::2]  # nn.Sequential order is W1, b1, W2, b2 …
    return _mlp_curvature(config, theta, shapes, data)


def _curvature(
    config: ModelConfig, seed: int, shared: Dataset | None
) -> tuple[_Curvature, nn.Module, Dataset, torch.Tensor | None]:
    model, data = _module(config, seed, shared)
    if getattr(config.model, "is_factory", False):
        return _module_curvature(config, model, data), model, data, None
    state = initial_state(config, seed, shared, dtype=torch.float64)
    theta = _mlp_theta(state.weights, state.biases)
    return _curvature_for(config, model, data, theta), model, data, theta


def _lambda_max(curvature: _Curvature) -> Spectrum:
    return lanczos(curvature.matvec, curvature.dim, k=1, max_iter=40, tol=1e-4)


def _scaled_config(config: ModelConfig, factor: float) -> tuple[ModelConfig, int] | None:
    """The config at another width, and that width; None when the width cannot be set."""
    spec = config.model
    if not getattr(spec, "is_factory", False):
        hidden = [max(1, round(h * factor)) for h in spec.hidden]
        return config.model_copy(
            update={"model": spec.model_copy(update={"hidden": hidden})}
        ), hidden[0]
    name = getattr(spec, "width_kwarg", None)
    if not name or name not in (spec.kwargs or {}):
        return None
    value = spec.kwargs[name]
    scaled = (
        [max(1, round(v * factor)) for v in value]
        if isinstance(value, list)
        else max(1, round(value * factor))
    )
    kwargs = {**spec.kwargs, name: scaled}
    width = scaled[0] if isinstance(scaled, list) else scaled
    return config.model_copy(update={"model": spec.model_copy(update={"kwargs": kwargs})}), width


def _width_law(
    config: ModelConfig, seed: int, shared: Dataset | None, lam: float
) -> tuple[dict[int, float], dict | None, str]:
    widths, values = [], []
    for factor in WIDTH_FACTORS:
        scaled = _scaled_config(config, factor)
        if scaled is None:
            return {}, None, "width law skipped: the factory names no `width_kwarg`"
        cfg, width = scaled
        value = lam if factor == 1.0 else _lambda_max(_curvature(cfg, seed, shared)[0]).lambda_max
        widths.append(width)
        values.append(value)
    coefficient, exponent, r2 = fit_width_law(np.array(widths, float), np.array(values))
    eos = eos_by_width(np.array(widths, float), coefficient, exponent)
    by_width = {w: float(2.0 / v) for w, v in zip(widths, values, strict=True)}
    law = {
        "coefficient": coefficient,
        "exponent": exponent,
        "r2": r2,
        "fitted_eos": [float(e) for e in eos],
    }
    rule = f"λ_max(θ₀) measured at widths {widths}: λ_max ≈ {coefficient:.3g}·m^{exponent:.2f} (R² = {r2:.3f}), so η_EoS(m) = 2/λ_max(m)"
    return by_width, law, rule


def _batch_sharpness(
    config: ModelConfig,
    model: nn.Module,
    theta: torch.Tensor | None,
    data: Dataset,
    *,
    batches: int = 4,
) -> float:
    """Mean top Hessian eigenvalue over single mini-batches of the config's size."""
    size = config.training.batch_size or data.n
    generator = torch.Generator().manual_seed(0)
    values = []
    for _ in range(batches):
        idx = torch.randperm(data.n, generator=generator)[:size]
        batch = Dataset(data.X[idx], data.y[idx], data.classes, data.name)
        values.append(_lambda_max(_curvature_for(config, model, batch, theta)).lambda_max)
    return float(np.mean(values))


def _probe_choice(result, candidates: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Index of the best candidate: lowest mean probe loss, stable and making progress."""
    lrs, final = result.grid(result.final_loss)
    _, initial = result.grid(result.initial_loss)
    rows = np.isin(lrs, candidates)
    lrs, final, initial = lrs[rows], final[rows], initial[rows]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        seed_mean = np.nanmean(np.where(np.isfinite(final), final, np.nan), axis=1)
    mean_final = np.where(np.isfinite(final).all(axis=1), seed_mean, np.inf)
    progressed = np.nanmean(initial, axis=1) > mean_final
    score = np.where(progressed, mean_final, np.inf)
    if not np.isfinite(score).any():
        raise LRAdvisorError(
            "every probe rate diverged or made no progress in the probe; check the data and model (is the loss finite at init?)"
        )
    return int(np.argmin(score)), lrs, score


def _tau(result, lrs: np.ndarray) -> dict:
    """τ(η) = a/η + b from the e-folding time of the seed-mean 1 − q̄(t) at each rate."""
    taus, rates, curves = [], [], {}
    for lr in lrs:
        cols = result.lrs == lr
        if result.concentration is None or result.diverged[cols].any():
            continue
        series = np.nanmean(result.concentration[:, cols], axis=1)
        curves[float(lr)] = [float(v) for v in series]
        tau = e_folding_time(result.history_steps, series)
        if np.isfinite(tau) and tau > 0:
            taus.append(tau)
            rates.append(float(lr))
    per_rate = {r: float(t) for r, t in zip(rates, taus, strict=True)}
    # The seed-mean 1 − q̄(t) behind each τ, for plots (MLflow, reports).
    concentration = {"steps": [int(s) for s in result.history_steps], "per_rate": curves}
    if len(rates) < 3:
        return {
            "per_rate": per_rate,
            "a": None,
            "b": None,
            "r2": None,
            "concentration": concentration,
        }
    fit = fit_tau(np.array(rates), np.array(taus))
    return {
        "per_rate": per_rate,
        "a": fit.a,
        "b": fit.b,
        "r2": fit.r2,
        "concentration": concentration,
    }


def _lambda_trajectory(
    config: ModelConfig, model: nn.Module, data: Dataset, result, lr: float
) -> list[dict]:
    """λ_max(t) at the probe's checkpoints for the trial at ``lr`` (first seed)."""
    trial = int(np.flatnonzero(result.lrs == lr)[0])
    points = []
    for step in sorted(result.checkpoints):
        weights, biases = result.checkpoints[step]
        theta = _mlp_theta(
            [w[trial] for w in weights], None if biases is None else [b[trial] for b in biases]
        )
        curvature = _curvature_for(config, model, data, theta)
        points.append({"step": int(step), "lambda_max": _lambda_max(curvature).lambda_max})
    return points


def _schedule(trajectory: list[dict], *, steps: int, cap: float) -> list[dict]:
    """η(t) = 0.9 · 2/λ_max(t), λ_max(t) interpolated log-linearly between the probe's checkpoints.

    Past the last checkpoint λ_max is held at its last value (the Hessian keeps compressing
    under CE, so holding it is the cautious side); η(t) is capped at ``cap``.
    """
    t = np.array([p["step"] for p in trajectory], float)
    log_lam = np.log([p["lambda_max"] for p in trajectory])
    plan = []
    for step in sorted({0, steps // 16, steps // 8, steps // 4, steps // 2, steps}):
        lam = math.exp(float(np.interp(step, t, log_lam)))
        plan.append({"step": int(step), "lambda_max": lam, "lr": float(min(cap, 0.9 * 2.0 / lam))})
    return plan


def _drift_curve(
    eigenvalues: np.ndarray,
    coefficients: np.ndarray,
    *,
    lo: float,
    hi: float,
    steps: int,
    eos: float,
) -> list[dict]:
    rates = np.geomspace(lo, hi, 13)
    s = gradient_imbalance_sum(rates, eigenvalues, coefficients, steps=steps)
    alpha = local_alpha(rates, eigenvalues, coefficients, steps=steps)
    return [
        {
            "lr": float(r),
            "imbalance_sum": float(v),
            "drift": float(r * r * v),
            "alpha_local": float(a),
            "beyond_eos": bool(r >= eos),
        }
        for r, v, a in zip(rates, s, alpha, strict=True)
    ]


def _predicted_alpha(eigenvalues, coefficients, rates: np.ndarray, steps: int) -> float:
    drift = rates**2 * gradient_imbalance_sum(rates, eigenvalues, coefficients, steps=steps)
    return float(np.polyfit(np.log(rates), np.log(drift), 1)[0])


def _validation_rates(lr_range: tuple[float, float], eos: float) -> np.ndarray:
    """Five rates over the part of the advised range where the formula applies (η ≤ η_EoS/2)."""
    hi = min(lr_range[1], 0.5 * eos)
    lo = min(lr_range[0], hi / 10)
    return np.geomspace(lo, hi, 5)


def _applicability(
    config: ModelConfig, model: nn.Module
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    discovery = discover_pairs(model)
    applies, not_applies = [], []
    names = ", ".join(p.name for p in discovery.pairs)
    if discovery.pairs:
        bias = any(p.bias_aware for p in discovery.pairs)
        law = (
            "bias-aware laws C = ‖W_{l+1}‖² − ‖W_l‖² − ‖b_l‖²" if bias else "conservation laws C_l"
        )
        applies.append(f"{law} on {names}")
    else:
        not_applies.append(
            "no rescaling-symmetric Linear→activation→Linear pair: no conservation law to predict"
        )
    applies.append(
        "stability bound 2/λ_max and its width dependence (any twice-differentiable loss)"
    )
    if discovery.pairs and identity_applies(config):
        applies.append("exact drift identity C(T) − C(0) = η²·S and the spectral formula for S(η)")
    elif discovery.pairs:
        not_applies.append(
            f"{config.training.optimizer} with momentum={config.training.momentum}, weight_decay={config.training.weight_decay}: the η²·S identity and the spectral formula do not hold (drift is measured directly); the probe still uses your optimizer"
        )
    if config.training.batch_size is not None:
        not_applies.append(
            "the spectral formula is derived for full-batch GD; mini-batch noise is not in it (bound uses mini-batch sharpness)"
        )
    for module, reason in discovery.skipped:
        not_applies.append(f"{module}: {reason}")
    return tuple(applies), tuple(not_applies)


def _modes(curvature: _Curvature, delta0: float) -> tuple[np.ndarray, np.ndarray, float, str]:
    """Eigenvalues and c_k for the spectral formula, and the share of g₀ left out.

    Small models: the exact Hessian and c_k ∝ (g₀·v_k)² (THEORY.md §4). Larger ones: Gauss
    quadrature of g₀'s spectral measure from Lanczos started at g₀ (``measure/quadrature``).
    Either way modes with λ ≤ 0 are dropped and c_k renormalised to Σ c_k = |δ(0)|, as in the
    paper's recipe; the dropped share of ‖g₀‖² is returned.
    """
    if curvature.dense is not None:
        spectrum = curvature.dense()
        modes = mode_coefficients(
            curvature.gradient.numpy(), spectrum.eigenvectors, spectrum.eigenvalues, delta0=delta0
        )
        return (
            modes.eigenvalues,
            modes.coefficients,
            modes.outside_fraction,
            "exact Hessian eigenpairs",
        )
    measure = spectral_measure(curvature.matvec, curvature.gradient, steps=QUADRATURE_NODES)
    keep = measure.nodes > 0
    kept = measure.weights[keep]
    coefficients = abs(delta0) * kept / kept.sum()
    method = f"Lanczos quadrature of g₀'s spectral measure ({measure.n_matvec} nodes)"
    return measure.nodes[keep], coefficients, float(1.0 - kept.sum()), method


def advise(
    config: ModelConfig, *, probe: bool = False, progress: ProgressCallback | None = None
) -> Advice:
    """Measure the model at init, probe briefly around the stability bound, and advise."""
    config.training.require_plain_loss("lradvisor suggest")
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    seed = int(config.sweep.seeds[0])
    loss = config.training.loss
    steps = config.training.steps
    full_batch = config.training.batch_size is None
    factory = bool(getattr(config.model, "is_factory", False))
    shared = _shared(config)
    rules: dict[str, str] = {}

    say("sharpness at θ₀ (Lanczos on Hessian-vector products)")
    curvature, model, data, theta = _curvature(config, seed, shared)
    spectrum = _lambda_max(curvature)
    lam = spectrum.lambda_max
    if not lam > 0:
        raise LRAdvisorError(
            f"λ_max(θ₀) = {lam:.3g} ≤ 0: the loss is not locally convex at init, so there is no stability bound to advise from"
        )
    eos = eos_learning_rate(lam)
    rules["lambda_max"] = (
        f"top Hessian eigenvalue at θ₀ (seed {seed}, full data) by Lanczos: {spectrum.n_hvp} HVPs, "
        f"relative residual {spectrum.tolerance:.1e}"
    )
    rules["eos_lr"] = "2/λ_max(θ₀): gradient descent on the local quadratic diverges above it"
    lap("sharpness")

    say("sharpness at other widths")
    by_width, width_law, rules["eos_lr_by_width"] = _width_law(config, seed, shared, lam)
    lap("width_law")

    bound, batch_lam = eos, None
    if not full_batch:
        batch_lam = _batch_sharpness(config, model, theta, data)
        bound = 2.0 / batch_lam
        rules["batch_eos_lr"] = (
            f"2/λ_mb, λ_mb = {batch_lam:.4g} the mean top eigenvalue over single batches of "
            f"{config.training.batch_size} samples (the full-batch bound {eos:.3g} is too loose for SGD)"
        )
    lap("batch_sharpness")

    say("probe around the stability bound")
    candidates = bound * np.array(PROBE_MULTIPLIERS)
    tau_rates = bound * np.array(TAU_MULTIPLIERS) if loss == "ce" else np.array([])
    probe_steps = min(steps, PROBE_STEPS)
    probe_seeds = [int(s) for s in config.sweep.seeds[:PROBE_SEEDS]]
    observe = None
    if not factory:
        checkpoints = tuple(
            sorted({0, probe_steps // 6, probe_steps // 3, probe_steps // 2, probe_steps})
        )
        observe = Observables(concentration=loss == "ce", switch_rate=True, checkpoints=checkpoints)
    rates = np.concatenate([tau_rates, candidates])
    result = run_trials(config, lrs=rates, seeds=probe_seeds, steps=probe_steps, observe=observe)
    best, lrs, score = _probe_choice(result, candidates)
    stable = lrs[np.isfinite(score)]
    # The best probe rate often sits right below a cliff (the next rate diverges or stalls);
    # over the full run, and on other seeds, it can fall off it: step back one √2 notch.
    edge = best + 1 < len(lrs) and not score[best + 1] < CLIFF_FACTOR * score[best]
    if edge and best > 0 and np.isfinite(score[best - 1]):
        best -= 1
    recommended = float(lrs[best])
    lr_range = (recommended / 10.0, float(min(stable.max(), 4.0 * recommended)))
    rules["recommended_lr"] = (
        f"lowest mean loss after a {probe_steps}-step probe of {len(candidates)} rates "
        f"(¼…8 × the bound {bound:.3g}, step √2, seeds {probe_seeds}): {recommended / bound:.2f} × bound"
        + (", one step below the best because the next rate diverged or stalled" if edge else "")
    )
    rules["lr_range"] = (
        "a tenth of the recommendation up to the largest probe rate that stayed stable and "
        "made progress (at most 4× the recommendation)"
    )
    lap("probe")

    tau, schedule = None, None
    if loss == "ce" and not factory:
        say("CE compression: τ(η) and λ_max(t)")
        tau = _tau(result, tau_rates)
        trajectory = _lambda_trajectory(config, model, data, result, float(tau_rates[-1]))
        tau["lambda_max_trajectory"] = trajectory
        tau["trajectory_lr"] = float(tau_rates[-1])
        schedule = _schedule(trajectory, steps=steps, cap=float(stable.max()))
        rules["tau"] = (
            f"τ(η): e-folding time of mean(1 − q_i)(t) at {len(tau_rates)} sub-EoS probe rates "
            "({:.3g}…{:.3g}), then τ = a/η + b by least squares".format(tau_rates[0], tau_rates[-1])
        )
        rules["schedule"] = (
            f"η(t) = 0.9 · 2/λ_max(t), λ_max(t) measured along the probe at η = {tau_rates[-1]:.3g} "
            "(held after the probe), capped at the largest stable probe rate"
        )
    lap("compression")

    switch_rate = None
    if result.switch_rate is not None:
        switch_rate = float(np.nanmean(result.switch_rate[:, result.lrs == recommended]))
    sub_eos = recommended * lam < 2.0
    width = None if factory else config.model.hidden[0]
    regime = "perturbative (sub-EoS)" if sub_eos else "edge of stability (non-perturbative)"
    rules["regime"] = (
        f"η_rec·λ_max(θ₀) = {recommended * lam:.2f} {'<' if sub_eos else '≥'} 2"
        + (
            ""
            if switch_rate is None
            else f"; activation-switch rate {switch_rate:.2e} per unit per step"
        )
        + (
            f" (√m·rate = {math.sqrt(width) * switch_rate:.3f})"
            if width and switch_rate is not None
            else ""
        )
        + (
            "; the spectral formula applies with perturbative corrections"
            if sub_eos
            else "; modes couple at O(m) there, so the spectral formula does not describe training at this rate"
        )
    )

    say("spectral formula")
    curve, alpha_predicted, outside = [], None, None
    eigenvalues = coefficients = None
    if curvature.deltas:
        eigenvalues, coefficients, outside, method = _modes(curvature, curvature.deltas[0])
        curve = _drift_curve(
            eigenvalues, coefficients, lo=lr_range[0] / 10, hi=lr_range[1], steps=steps, eos=eos
        )
        check = _validation_rates(lr_range, eos)
        alpha_predicted = _predicted_alpha(eigenvalues, coefficients, check, steps)
        rules["alpha_predicted"] = (
            f"slope of ln(η²·S(η)) over {check[0]:.3g}…{check[-1]:.3g} (advised range below η_EoS/2); "
            f"c_k from {method}, {outside:.1%} of ‖g₀‖² on modes with λ ≤ 0 left out"
        )
    lap("formula")

    applies, not_applies = _applicability(config, model)
    probe_info = {
        "steps": probe_steps,
        "seeds": probe_seeds,
        "lrs": [float(v) for v in lrs],
        "mean_final_loss": [float(v) if np.isfinite(v) else None for v in score],
    }
    alpha_fitted = alpha_ci = validation = None
    if probe and eigenvalues is not None:
        say("validation sweep over the advised range")
        validation = _validate(config, eigenvalues, coefficients, _validation_rates(lr_range, eos))
        alpha_fitted, alpha_ci = validation["alpha_fitted"], tuple(validation["alpha_ci"])
        lap("validation")
    return Advice(
        model=config.name,
        loss=loss,
        full_batch=full_batch,
        lambda_max=lam,
        lambda_max_method=f"lanczos ({spectrum.n_hvp} HVPs, residual {spectrum.tolerance:.1e})",
        eos_lr=eos,
        eos_lr_by_width=by_width,
        width_law=width_law,
        batch_lambda_max=batch_lam,
        batch_eos_lr=None if batch_lam is None else bound,
        recommended_lr=recommended,
        lr_range=lr_range,
        alpha_predicted=alpha_predicted,
        drift_curve=curve,
        outside_fraction=outside,
        regime=regime,
        switch_rate=switch_rate,
        tau=tau,
        schedule=schedule,
        probe=probe_info,
        rules=rules,
        applies=applies,
        does_not_apply=not_applies,
        alpha_fitted=alpha_fitted,
        alpha_ci=alpha_ci,
        validation=validation,
        timings=timings,
    )


def _validate(
    config: ModelConfig, eigenvalues: np.ndarray, coefficients: np.ndarray, rates: np.ndarray
) -> dict:
    """Run the config's steps at rates over the advised range; compare drift and α with the formula."""
    seeds = [int(s) for s in config.sweep.seeds[:3]]
    result = run_trials(config, lrs=rates, seeds=seeds)
    lrs, table = result.grid(np.abs(result.drift(0)))
    fit = fit_power_law(lrs, table)
    predicted = lrs**2 * gradient_imbalance_sum(lrs, eigenvalues, coefficients, steps=result.steps)
    observed = np.nanmean(table, axis=1)
    return {
        "lrs": [float(v) for v in lrs],
        "seeds": seeds,
        "observed_drift": [float(v) for v in observed],
        "predicted_drift": [float(v) for v in predicted],
        "relative_error": [float(abs(p - o) / o) for p, o in zip(predicted, observed, strict=True)],
        "alpha_fitted": fit.alpha,
        "alpha_ci": list(fit.alpha_ci),
        "alpha_r2": fit.r2,
        "alpha_predicted": _predicted_alpha(eigenvalues, coefficients, lrs, result.steps),
    }
