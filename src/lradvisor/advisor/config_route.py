"""``lradvisor suggest --model cfg.yaml``: a model file as the arguments of :func:`suggest`.

The YAML route builds the model (built-in MLP or factory), data, loss and optimizer a model
file describes and runs the same five stages. Two extras need the file: the width law
(``--widths``: λ_max(θ₀) at half and twice the width, fitted as C·m^p) and the validation
sweep (``--probe``: the batched engine trains rates over the advised range at the file's
steps and compares the measured drift and α with the spectral formula).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from lradvisor.advisor.pipeline import advise_problem
from lradvisor.advisor.problem import Problem, build_problem
from lradvisor.advisor.sharpness import measure_sharpness
from lradvisor.advisor.theory import predicted_alpha, validation_rates
from lradvisor.config import ModelConfig
from lradvisor.engine.dispatch import build_model, run_trials
from lradvisor.engine.training import loss_function, optimizer_class
from lradvisor.records import Advice
from lradvisor.theory import eos_by_width, fit_power_law, fit_width_law, gradient_imbalance_sum

__all__ = ["advise", "problem_from_config"]

PROBE_SEEDS = 2
WIDTH_FACTORS = (0.5, 1.0, 2.0)


def problem_from_config(config: ModelConfig, *, score: str = "auto") -> Problem:
    """The :class:`Problem` a model file describes (first ``PROBE_SEEDS`` seeds of its sweep)."""
    config.training.require_plain_loss("lradvisor suggest")
    training = config.training
    seeds = [int(s) for s in config.sweep.seeds[:PROBE_SEEDS]]
    _, data = build_model(config, seeds[0])
    val = None if data.X_val is None else (data.X_val, data.y_val)
    return build_problem(
        lambda seed: build_model(config, seed)[0],
        (data.X, data.y),
        loss_function(training),
        optimizer_class(training),
        val_data=val,
        batch_size=training.batch_size,
        steps=training.steps,
        seeds=seeds,
        device=training.device,
        score=score,
        name=config.name,
    )


def advise(
    config: ModelConfig,
    *,
    probe: bool = False,
    widths: bool = False,
    score: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> Advice:
    """Advice for a model file: :func:`~lradvisor.advisor.pipeline.advise_problem` plus the
    opt-in width law (``widths``) and validation sweep (``probe``). ``score``: as in
    :func:`~lradvisor.suggest` (``data.validation_fraction`` makes the validation split)."""
    say = progress or (lambda _message: None)
    problem = problem_from_config(config, score=score)
    advice, theory = advise_problem(problem, loss_name=config.training.loss, progress=say)
    rules, timings, extra = dict(advice.rules), dict(advice.timings), {}
    if widths:
        say("width law: λ_max(θ₀) at half and twice the width")
        by_width, law, rules["eos_lr_by_width"] = _width_law(config, advice.lambda_max)
        extra.update(eos_lr_by_width=by_width, width_law=law)
    if probe and theory.modes is not None:
        say("validation sweep over the advised range")
        eos = advice.eos_lr or float("inf")
        validation = _validate(config, *theory.modes, validation_rates(advice.lr_range, eos))
        extra.update(
            validation=validation,
            alpha_fitted=validation["alpha_fitted"],
            alpha_ci=tuple(validation["alpha_ci"]),
        )
    return replace(advice, rules=rules, timings=timings, **extra)


def _scaled_config(config: ModelConfig, factor: float) -> tuple[ModelConfig, int] | None:
    """The config at another width, and that width; None when the width cannot be set."""
    spec = config.model
    if not spec.is_factory:
        hidden = [max(1, round(h * factor)) for h in spec.hidden]
        model = spec.model_copy(update={"hidden": hidden})
        return config.model_copy(update={"model": model}), hidden[0]
    name = spec.width_kwarg
    if not name or name not in (spec.kwargs or {}):
        return None
    value = spec.kwargs[name]
    if isinstance(value, list):
        scaled = [max(1, round(v * factor)) for v in value]
        width = scaled[0]
    else:
        scaled = width = max(1, round(value * factor))
    model = spec.model_copy(update={"kwargs": {**spec.kwargs, name: scaled}})
    return config.model_copy(update={"model": model}), width


def _width_law(config: ModelConfig, lam: float | None) -> tuple[dict[int, float], dict | None, str]:
    widths, values = [], []
    for factor in WIDTH_FACTORS:
        scaled = _scaled_config(config, factor)
        if scaled is None:
            return {}, None, "width law skipped: the factory names no `width_kwarg`"
        cfg, width = scaled
        value = lam if factor == 1.0 else measure_sharpness(problem_from_config(cfg)).lambda_max
        if value is None:
            return {}, None, "width law skipped: the sharpness could not be measured"
        widths.append(width)
        values.append(value)
    coefficient, exponent, r2 = fit_width_law(np.array(widths, float), np.array(values))
    eos = eos_by_width(np.array(widths, float), coefficient, exponent)
    law = {
        "coefficient": coefficient,
        "exponent": exponent,
        "r2": r2,
        "fitted_eos": [float(e) for e in eos],
    }
    rule = (
        f"λ_max(θ₀) measured at widths {widths}: λ_max ≈ {coefficient:.3g}·m^{exponent:.2f} "
        f"(R² = {r2:.3f}), so η_EoS(m) = 2/λ_max(m)"
    )
    return {w: float(2.0 / v) for w, v in zip(widths, values, strict=True)}, law, rule


def _validate(
    config: ModelConfig, eigenvalues: np.ndarray, coefficients: np.ndarray, rates: np.ndarray
) -> dict:
    """Run the config's steps at ``rates``; compare drift and α with the formula."""
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
        "alpha_predicted": predicted_alpha(eigenvalues, coefficients, lrs, result.steps),
    }
