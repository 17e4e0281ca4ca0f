"""Stage 2: the optimizer-aware stability bound, and the probe bracket it places.

For SGD the bound is the quadratic model's threshold for the optimizer actually used
(:mod:`lradvisor.theory.stability`): 2/λ for plain gradient descent, 2(1 + β)/λ with
heavy-ball momentum, 2(1 + β)/((1 + 2β)λ) with Nesterov, λ + w with coupled weight decay,
and the mini-batch sharpness when training on mini-batches. The bound places the probe's
bracket of candidate rates (factor-2 steps around it) and later labels the regime; it never
is the advice itself, because on real networks the best rate sits anywhere from 25× below it
(noisy mini-batches with momentum) to 10× above it (BatchNorm, cross-entropy catapults).

Adam-type optimizers get no bound at θ₀: their threshold involves the preconditioned sharpness
λ(P⁻¹H), and P is still moving in the first hundreds of steps (a measurement moved by three
orders of magnitude between 30 and 200 warm-up steps). Their bracket is centred on the
optimizer's own default rate, and the adaptive-EoS number is measured after the probe on the
trained state, as a diagnostic (stage 5).
"""

from __future__ import annotations

from torch import nn

from lradvisor.advisor.problem import Problem
from lradvisor.records import Bound, Sharpness
from lradvisor.theory import eos_learning_rate, momentum_threshold

__all__ = ["bracket_multipliers", "stability_bound"]

BRACKET_POWERS = tuple(range(-6, 4))  # 1/64 … 8 × the bound, factor 2
SCALE_INVARIANT_POWERS = tuple(range(-3, 7))  # BatchNorm: 1/8 … 64 × the bound
ADAPTIVE_POWERS = tuple(range(-3, 7))  # 1/8 … 64 × the optimizer's default rate
SGD_FALLBACK_RATE = 0.1


def bracket_multipliers(powers: tuple[int, ...]) -> tuple[float, ...]:
    return tuple(2.0**k for k in powers)


def stability_bound(problem: Problem, sharpness: Sharpness, model: nn.Module) -> Bound:
    """The bound for ``problem``'s optimizer from ``sharpness``, and the probe bracket."""
    spec = problem.optimizer
    eos = eos_learning_rate(sharpness.lambda_max) if sharpness.lambda_max else None
    warnings = _model_warnings(model) + _schedule_warnings(problem)
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if spec.family != "sgd":
        centre = spec.default_lr or 1e-3
        bracket = tuple(centre * m for m in bracket_multipliers(ADAPTIVE_POWERS))
        return Bound(
            kind="none (adaptive optimizer)",
            value=None,
            eos_lr=eos,
            rule=(
                f"{spec.name} rescales every coordinate by its second-moment estimate P: "
                "its stability depends on λ(P⁻¹H), and P is still moving in the first "
                "hundreds of steps, so no bound at θ₀ is trusted to place the probe"
            ),
            bracket=bracket,
            bracket_rule=f"1/8 … 64 × {spec.name}'s default rate {centre:g}, factor 2",
            warnings=tuple(warnings),
        )
    curvature, source = _curvature(problem, sharpness)
    if curvature is None:
        bracket = tuple(SGD_FALLBACK_RATE * m for m in bracket_multipliers(BRACKET_POWERS))
        return Bound(
            kind="none (sharpness not measured)",
            value=None,
            eos_lr=None,
            rule=sharpness.note or "sharpness not measured",
            bracket=bracket,
            bracket_rule=f"1/64 … 8 × {SGD_FALLBACK_RATE:g}, factor 2 (no bound to centre on)",
            warnings=tuple(warnings),
        )
    value = momentum_threshold(
        curvature,
        momentum=spec.momentum,
        nesterov=spec.nesterov,
        dampening=float(spec.hyper.get("dampening", 0.0) or 0.0),
        weight_decay=spec.weight_decay,
    )
    powers = SCALE_INVARIANT_POWERS if batchnorm else BRACKET_POWERS
    return Bound(
        kind=_kind(spec),
        value=value,
        eos_lr=eos,
        rule=f"{_formula(spec)} with {source}",
        bracket=tuple(value * m for m in bracket_multipliers(powers)),
        bracket_rule=f"{_power(powers[0])} … {_power(powers[-1])} × the bound, factor 2",
        warnings=tuple(warnings + _sgd_warnings(problem)),
    )


def _power(k: int) -> str:
    return f"1/{2**-k}" if k < 0 else f"{2**k}"


def _curvature(problem: Problem, sharpness: Sharpness) -> tuple[float | None, str]:
    if not problem.full_batch and sharpness.batch_lambda_max is not None:
        return sharpness.batch_lambda_max, (
            f"the mini-batch sharpness λ_mb = {sharpness.batch_lambda_max:.4g} (mean top "
            f"eigenvalue of single batches of {problem.batch_size})"
        )
    if sharpness.lambda_max is None:
        return None, ""
    return sharpness.lambda_max, (
        f"λ_max(θ₀) = {sharpness.lambda_max:.4g} ({sharpness.samples} training samples)"
    )


def _kind(spec) -> str:
    if spec.nesterov:
        return "Nesterov momentum"
    return "heavy-ball momentum" if spec.momentum else "gradient descent"


def _formula(spec) -> str:
    beta, decay = spec.momentum, spec.weight_decay
    curvature = f"(λ + {decay:g})" if decay else "λ"
    if spec.nesterov:
        return f"η < 2(1 + β)/((1 + 2β)·{curvature}), β = {beta:g} (Nesterov, derived from its companion matrix)"
    if beta:
        dampening = float(spec.hyper.get("dampening", 0.0) or 0.0)
        denominator = f"((1 − {dampening:g})·{curvature})" if dampening else curvature
        return f"η < 2(1 + β)/{denominator}, β = {beta:g} (heavy-ball momentum)"
    return f"η < 2/{curvature} (gradient descent)"


def _model_warnings(model: nn.Module) -> list[str]:
    warnings = []
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        warnings.append(
            "BatchNorm: the loss is scale-invariant in the weights feeding it, so the sharpness "
            "at θ₀ says little about later steps (best rates measured 6–10× above 2/λ); the "
            "bracket reaches 64× the bound and the probe decides"
        )
    elif any(isinstance(m, nn.LayerNorm | nn.GroupNorm) for m in model.modules()):
        warnings.append(
            "normalisation layers (LayerNorm/GroupNorm) make the loss scale-invariant in the "
            "weights before them: the bound at θ₀ is a rough guide only"
        )
    return warnings


def _schedule_warnings(problem: Problem) -> list[str]:
    if problem.schedule_name == "constant":
        return []
    return [
        f"schedule {problem.schedule_name}: the bound limits the peak rate; the probe trains "
        "with the schedule compressed to its own length, so the advice is the peak rate"
    ]


def _sgd_warnings(problem: Problem) -> list[str]:
    if problem.full_batch:
        return []
    return [
        "mini-batch SGD: gradient noise can put the best rate far below the bound "
        "(25× on a small CNN with momentum 0.9); the bracket reaches 1/64 of it"
    ]
