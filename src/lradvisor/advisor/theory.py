"""Stage 5: what the theory says about the chosen rate.

* which conservation laws the model has (``measure.discovery``) and which parts of the theory
  apply to its layers and optimizer;
* for plain gradient descent on a model with laws: the spectral formula for S(η) with c_k from
  the initial gradient (exact eigenpairs for small models, Gauss quadrature of g₀'s spectral
  measure otherwise), the predicted α and the drift curve (docs/theory.md §3–4);
* for cross-entropy with plain SGD: the compression timescale τ(η) = a/η + b from the probe's
  1 − q̄(t), and λ_max(t) along the probe with the schedule η(t) = 0.9·2/λ_max(t) (§5);
* the regime: the recommendation against the optimizer-aware bound, or, for Adam-type
  optimizers, against the adaptive Edge of Stability measured on the recommended trial's
  trained state — λ_max(P⁻¹H) with P from its own second moments (§9).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from lradvisor.advisor.probe import ProbeState
from lradvisor.advisor.problem import Problem
from lradvisor.advisor.sharpness import SHARPNESS_SAMPLES, curvature_context, top_eigenvalue
from lradvisor.measure.discovery import Discovery, discover_pairs
from lradvisor.measure.lanczos import hessian_operator, lanczos
from lradvisor.measure.laws import unit_balance
from lradvisor.measure.quadrature import spectral_measure
from lradvisor.records import Bound, Choice, ProbeResult, Sharpness
from lradvisor.theory import (
    adam_threshold,
    e_folding_time,
    fit_tau,
    gradient_imbalance_sum,
    local_alpha,
    mode_coefficients,
)

__all__ = ["Theory", "theory"]

FORMULA_SAMPLES = 2048
DENSE_LIMIT = 2500
QUADRATURE_NODES = 60
SCHEDULE_FRACTION = 0.9


@dataclass
class Theory:
    """Stage 5's numbers; ``modes`` (eigenvalues, c_k) feed the optional validation sweep."""

    regime: str
    rules: dict[str, str] = field(default_factory=dict)
    applies: tuple[str, ...] = ()
    does_not_apply: tuple[str, ...] = ()
    alpha_predicted: float | None = None
    drift_curve: list[dict] = field(default_factory=list)
    outside_fraction: float | None = None
    tau: dict | None = None
    schedule: list[dict] | None = None
    adaptive: dict | None = None
    modes: tuple[np.ndarray, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)


def theory(
    problem: Problem,
    sharpness: Sharpness,
    bound: Bound,
    probe: ProbeResult,
    state: ProbeState,
    choice: Choice,
) -> Theory:
    model = problem.make_model(problem.seeds[0])
    discovery = discover_pairs(model)
    applies, does_not_apply = _applicability(problem, discovery)
    result = Theory(regime="", applies=applies, does_not_apply=does_not_apply)
    spec = problem.optimizer
    try:
        if discovery.pairs and spec.plain_gradient_descent:
            _spectral(problem, model, discovery, bound, choice, result)
        if problem.cross_entropy and spec.plain_gradient_descent and bound.value is not None:
            result.tau = _tau(probe, bound.value)
            if result.tau is not None:
                result.rules["tau"] = result.tau.pop("rule")
                _trajectory(problem, state, choice, result)
        if spec.family == "adam":
            result.adaptive = _adaptive(problem, state, choice)
    except Exception as error:  # the theory is optional: the probe's advice stands without it
        text = " ".join(str(error).split())[:200]
        result.notes.append(f"theory stage stopped: {type(error).__name__}: {text}")
    _regime(problem, bound, choice, result)
    return result


def _applicability(
    problem: Problem, discovery: Discovery
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    spec = problem.optimizer
    applies = []
    not_applies = []
    if discovery.pairs:
        names = ", ".join(p.name for p in discovery.pairs)
        bias = any(p.bias_aware for p in discovery.pairs)
        law = (
            "bias-aware laws C = ‖W_{l+1}‖² − ‖W_l‖² − ‖b_l‖²" if bias else "conservation laws C_l"
        )
        applies.append(f"{law} on {names}")
        if spec.plain_gradient_descent:
            applies.append(
                "exact drift identity C(T) − C(0) = η²·S and the spectral formula for S(η)"
            )
        else:
            not_applies.append(
                f"{spec.describe()}: momentum, weight decay and adaptive steps break the η²·S "
                "identity and the spectral formula (drift is measurable directly, not predicted)"
            )
    else:
        not_applies.append(
            "no rescaling-symmetric Linear→activation→Linear pair: no conservation law to predict"
        )
    if spec.family == "sgd":
        applies.append(
            "optimizer-aware stability bound from the sharpness at θ₀ (places and labels the probe)"
        )
    if not problem.full_batch and discovery.pairs and spec.plain_gradient_descent:
        not_applies.append(
            "the spectral formula is derived for full-batch GD; mini-batch noise is not in it"
        )
    for module, reason in discovery.skipped:
        not_applies.append(f"{module}: {reason}")
    applies.append("the probe (your model, data, loss and optimizer) decides the recommendation")
    return tuple(applies), tuple(not_applies)


def _formula_data(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(problem.n, generator=torch.Generator().manual_seed(0))
    keep = order[:FORMULA_SAMPLES].to(problem.device)
    X, y = problem.X[keep], problem.y[keep]
    return (X.double() if X.is_floating_point() else X), (
        y.double() if y.is_floating_point() else y
    )


def _spectral(
    problem: Problem,
    model: nn.Module,
    discovery: Discovery,
    bound: Bound,
    choice: Choice,
    result: Theory,
) -> None:
    """α predicted and the drift curve of the first law, from the Hessian at θ₀ (float64)."""
    model = copy.deepcopy(model).double().train()
    X, y = _formula_data(problem)
    operator = hessian_operator(model, [(X, y)], problem.loss_fn)
    with curvature_context():
        gradient = operator.gradient()
        grads = dict(
            zip(
                (n for n, p in model.named_parameters() if p.requires_grad),
                operator.unflatten(gradient),
                strict=True,
            )
        )
        pair = discovery.pairs[0]
        delta0 = float(
            unit_balance(
                grads[f"{pair.out_layer_name}.weight"],
                grads[f"{pair.in_layer_name}.weight"],
                grads.get(f"{pair.in_layer_name}.bias") if pair.bias_aware else None,
            ).sum()
        )
        eigenvalues, coefficients, outside, method = _modes(
            model, X, y, problem, operator, gradient, delta0
        )
    steps = problem.steps
    eos = bound.eos_lr if bound.eos_lr is not None else math.inf
    low, high = choice.lr_range
    rates = np.geomspace(low / 10, high, 13)
    s = gradient_imbalance_sum(rates, eigenvalues, coefficients, steps=steps)
    alpha = local_alpha(rates, eigenvalues, coefficients, steps=steps)
    result.drift_curve = [
        {
            "lr": float(r),
            "imbalance_sum": float(v),
            "drift": float(r * r * v),
            "alpha_local": float(a),
            "beyond_eos": bool(r >= eos),
        }
        for r, v, a in zip(rates, s, alpha, strict=True)
    ]
    check = validation_rates(choice.lr_range, eos)
    result.alpha_predicted = predicted_alpha(eigenvalues, coefficients, check, steps)
    result.outside_fraction = outside
    result.modes = (eigenvalues, coefficients)
    result.rules["alpha_predicted"] = (
        f"slope of ln(η²·S(η)) over {check[0]:.3g}…{check[-1]:.3g} (advised range below η_EoS/2), law "
        f"{pair.name}; c_k from {method}, {outside:.1%} of ‖g₀‖² on modes with λ ≤ 0 left out"
    )


def _modes(model, X, y, problem, operator, gradient, delta0):
    """Eigenvalues and c_k of the spectral formula, and the share of g₀ left out."""
    if operator.dim <= DENSE_LIMIT:
        hessian = _dense_hessian(model, X, y, problem.loss_fn)
        if hessian is not None:
            values, vectors = torch.linalg.eigh(0.5 * (hessian + hessian.T))
            order = torch.argsort(values, descending=True)
            modes = mode_coefficients(
                gradient.numpy(), vectors[:, order].numpy(), values[order].numpy(), delta0=delta0
            )
            return (
                modes.eigenvalues,
                modes.coefficients,
                modes.outside_fraction,
                "exact Hessian eigenpairs",
            )
    measure = spectral_measure(operator.matvec, gradient, steps=QUADRATURE_NODES)
    keep = measure.nodes > 0
    kept = measure.weights[keep]
    coefficients = abs(delta0) * kept / kept.sum()
    method = f"Lanczos quadrature of g₀'s spectral measure ({measure.n_matvec} nodes)"
    return measure.nodes[keep], coefficients, float(1.0 - kept.sum()), method


def _dense_hessian(model: nn.Module, X, y, loss_fn) -> torch.Tensor | None:
    """The exact Hessian by torch.func (forward-over-reverse), or None if it cannot be traced."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    buffers = dict(model.named_buffers())

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = [t.view(s) for t, s in zip(torch.split(flat, sizes), shapes, strict=True)]
        return loss_fn(
            functional_call(model, {**dict(zip(names, parts, strict=True)), **buffers}, (X,)), y
        )

    try:
        return torch.func.hessian(loss)(torch.cat([p.reshape(-1) for p in params]))
    except Exception:  # a module torch.func cannot trace: the quadrature path needs only HVPs
        return None


def validation_rates(lr_range: tuple[float, float], eos: float) -> np.ndarray:
    """Five rates over the part of the advised range where the formula applies (η ≤ η_EoS/2)."""
    hi = min(lr_range[1], 0.5 * eos)
    lo = min(lr_range[0], hi / 10)
    return np.geomspace(lo, hi, 5)


def predicted_alpha(eigenvalues, coefficients, rates: np.ndarray, steps: int) -> float:
    drift = rates**2 * gradient_imbalance_sum(rates, eigenvalues, coefficients, steps=steps)
    return float(np.polyfit(np.log(rates), np.log(drift), 1)[0])


def _tau(probe: ProbeResult, bound: float) -> dict | None:
    """τ(η) = a/η + b from the e-folding time of the seed-mean 1 − q̄(t), sub-EoS rates."""
    history = probe.concentration
    if history is None:
        return None
    steps = np.array(history["steps"], dtype=float)
    per_rate = {}
    for rate, curve in history["per_rate"].items():
        if rate > 0.5 * bound or not np.all(np.isfinite(curve)):
            continue
        value = e_folding_time(steps, np.array(curve))
        if np.isfinite(value) and value > 0:
            per_rate[float(rate)] = float(value)
    tau = {"per_rate": per_rate, "a": None, "b": None, "r2": None, "concentration": history}
    rates = sorted(per_rate)
    tau["rule"] = (
        f"τ(η): e-folding time of mean(1 − q_i)(t) over the probe's first {int(steps[-1])} steps at "
        f"{len(rates)} sub-EoS rates (η ≤ bound/2), then τ = a/η + b by least squares"
    )
    if len(rates) >= 3:
        fit = fit_tau(np.array(rates), np.array([per_rate[r] for r in rates]))
        tau.update(a=fit.a, b=fit.b, r2=fit.r2)
    return tau


def _trajectory(problem: Problem, state: ProbeState, choice: Choice, result: Theory) -> None:
    """λ_max(t) at the probe's checkpoints, and the schedule 0.9·2/λ_max(t) it implies."""
    if len(state.checkpoints) < 2:
        return
    X, y = problem.X[:SHARPNESS_SAMPLES], problem.y[:SHARPNESS_SAMPLES]
    points = []
    for step, module in state.checkpoints:
        lam, _, _ = top_eigenvalue(module, X, y, problem.loss_fn)
        points.append({"step": int(step), "lambda_max": float(lam)})
    result.tau["lambda_max_trajectory"] = points
    result.tau["trajectory_lr"] = state.trajectory_lr
    t = np.array([p["step"] for p in points], dtype=float)
    log_lam = np.log([max(p["lambda_max"], 1e-12) for p in points])
    cap = choice.lr_range[1]
    steps = problem.steps
    plan = []
    for step in sorted({0, steps // 16, steps // 8, steps // 4, steps // 2, steps}):
        lam = math.exp(float(np.interp(step, t, log_lam)))
        plan.append(
            {
                "step": int(step),
                "lambda_max": lam,
                "lr": float(min(cap, SCHEDULE_FRACTION * 2.0 / lam)),
            }
        )
    result.schedule = plan
    result.rules["schedule"] = (
        f"η(t) = {SCHEDULE_FRACTION}·2/λ_max(t), λ_max(t) measured along the probe at η = "
        f"{state.trajectory_lr:.3g} (held after the last checkpoint, step {int(t[-1])}), capped at the top of the sweep range"
    )


def _adaptive(problem: Problem, state: ProbeState, choice: Choice) -> dict | None:
    """λ_max(P^{-1/2} H P^{-1/2}) on the recommended trial's trained state (first seed)."""
    cohort = state.cohort
    trials = np.flatnonzero((cohort.rates == choice.recommended_lr) & cohort.alive)
    if not len(trials):
        return None
    trial = int(trials[0])
    moments = cohort.second_moment(trial)
    if moments is None:
        return None
    model = cohort.module(trial).train()
    eps = float(problem.optimizer.hyper.get("eps", 1e-8))
    inverse_root = torch.cat([(v.sqrt() + eps).rsqrt().reshape(-1) for v in moments]).double()
    X, y = problem.X[:SHARPNESS_SAMPLES], problem.y[:SHARPNESS_SAMPLES]
    operator = hessian_operator(model, [(X, y)], problem.loss_fn)

    def preconditioned(v: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        v = v.to(torch.float64)
        return inverse_root * operator.matvec(inverse_root * v).double()

    try:
        with curvature_context():
            lam = lanczos(preconditioned, operator.dim, k=1, max_iter=30, tol=1e-3).lambda_max
    except Exception:  # no double backward through some layer: the diagnostic is optional
        return None
    beta1 = problem.optimizer.momentum
    if not lam > 0:
        return None
    threshold = adam_threshold(lam, beta1=beta1)
    return {
        "preconditioned_sharpness": float(lam),
        "threshold_lr": float(threshold),
        "ratio": float(choice.recommended_lr / threshold),
        "steps": int(cohort.step),
        "beta1": beta1,
    }


def _regime(problem: Problem, bound: Bound, choice: Choice, result: Theory) -> None:
    rate = choice.recommended_lr
    if bound.value is not None:
        ratio = rate / bound.value
        below = ratio < 1.0
        result.regime = f"{'sub-EoS' if below else 'EoS'} ({ratio:.2f}× the {bound.kind} bound)"
        formula = problem.optimizer.plain_gradient_descent
        if below:
            meaning = "the local quadratic at θ₀ is stable at this rate" + (
                "; the spectral formula applies with perturbative corrections" if formula else ""
            )
        else:
            meaning = (
                "the local quadratic at θ₀ is unstable at this rate; training first moves to "
                "flatter regions (catapult / Edge of Stability)"
                + ("; the spectral formula does not describe it" if formula else "")
            )
        result.rules["regime"] = f"η_rec / bound = {ratio:.2f}: {meaning}"
        return
    adaptive = result.adaptive
    if adaptive is None:
        result.regime = "not labelled (no stability bound for this optimizer)"
        result.rules["regime"] = "no bound at θ₀ and no adaptive-EoS measurement"
        return
    ratio = adaptive["ratio"]
    result.regime = f"adaptive ({ratio:.2g}× the adaptive EoS)"
    result.rules["regime"] = (
        f"after {adaptive['steps']} probe steps at η_rec, λ_max(P⁻¹H) = {adaptive['preconditioned_sharpness']:.4g}, "
        f"so (2 + 2β₁)/((1 − β₁)·λ) = {adaptive['threshold_lr']:.3g}; Cohen et al. (2022) expect full-batch "
        "Adam to equilibrate near 1× (a diagnostic, not a bound)"
    )
