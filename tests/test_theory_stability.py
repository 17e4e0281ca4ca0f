"""Optimizer stability thresholds: closed forms against the companion matrix, and real
torch.optim optimizers on a quadratic diverging just above each threshold, not just below."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lradvisor.errors import LRAdvisorError
from lradvisor.theory import adam_threshold, mode_spectral_radius, momentum_threshold

CURVATURES = torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64)  # λ_max = 3
STEPS = 4000
WARM = 100_000


def _final_norm(optimizer_factory, lr: float, *, adam_preconditioner=None) -> float:
    """|x_T| of an optimizer on f(x) = ½ Σ λ_i x_i², from x_0 = 1 (float64)."""
    x = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    optimizer = optimizer_factory([x], lr)
    for step in range(1, STEPS + 1):
        optimizer.zero_grad()
        (0.5 * (CURVATURES * x * x).sum()).backward()
        if adam_preconditioner is not None:
            _freeze_second_moment(optimizer, x, adam_preconditioner, step)
        optimizer.step()
        if not torch.isfinite(x).all() or x.abs().max() > 1e6:
            return float("inf")
    return float(x.detach().abs().max())


def _freeze_second_moment(optimizer, x, preconditioner, step: int) -> None:
    """Set Adam's v before its step so that the step's v̂ = v_t / (1 − β₂^t) equals P²:
    the update is then m̂ / (P + ε), the frozen-preconditioner iteration of the threshold.

    The state starts at step ``WARM`` (bias corrections ≈ 1): the threshold is asymptotic,
    and Adam's first bias-corrected steps (m̂₁ = g₁) would otherwise throw x far out before
    the average settles."""
    beta2 = optimizer.param_groups[0]["betas"][1]
    state = optimizer.state[x]
    if not state:
        state["step"] = torch.tensor(float(WARM), dtype=torch.float64)
        state["exp_avg"] = torch.zeros_like(x)
        state["exp_avg_sq"] = torch.zeros_like(x)
    target = preconditioner**2 * (1 - beta2 ** (WARM + step))
    state["exp_avg_sq"].copy_((target - (1 - beta2) * x.grad**2) / beta2)


def _sgd(**options):
    return lambda params, lr: torch.optim.SGD(params, lr=lr, **options)


@pytest.mark.parametrize(
    ("options", "threshold"),
    [
        ({}, momentum_threshold(3.0)),
        ({"momentum": 0.9}, momentum_threshold(3.0, momentum=0.9)),
        ({"momentum": 0.5, "dampening": 0.3}, momentum_threshold(3.0, momentum=0.5, dampening=0.3)),
        ({"momentum": 0.9, "nesterov": True}, momentum_threshold(3.0, momentum=0.9, nesterov=True)),
        ({"momentum": 0.5, "nesterov": True}, momentum_threshold(3.0, momentum=0.5, nesterov=True)),
        (
            {"momentum": 0.9, "weight_decay": 0.5},
            momentum_threshold(3.0, momentum=0.9, weight_decay=0.5),
        ),
    ],
    ids=["gd", "heavy-ball", "dampened", "nesterov-0.9", "nesterov-0.5", "weight-decay"],
)
def test_torch_sgd_diverges_just_above_its_threshold_and_not_just_below(options, threshold):
    assert _final_norm(_sgd(**options), 0.99 * threshold) < 1.0
    assert _final_norm(_sgd(**options), 1.01 * threshold) == float("inf")


def test_nesterov_is_stricter_than_heavy_ball_and_both_reduce_to_gd_without_momentum():
    assert momentum_threshold(3.0, momentum=0.9) == pytest.approx(2 * 1.9 / 3.0)
    assert momentum_threshold(3.0, momentum=0.9, nesterov=True) == pytest.approx(3.8 / (2.8 * 3))
    assert momentum_threshold(3.0, nesterov=True) == momentum_threshold(3.0) == 2 / 3.0


def test_adam_with_a_frozen_preconditioner_diverges_just_above_the_adaptive_threshold():
    preconditioner = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    sharpness = float((CURVATURES / preconditioner).max())  # P⁻¹H is diagonal here
    threshold = adam_threshold(sharpness, beta1=0.9)
    assert threshold == pytest.approx(38.0 / sharpness)

    def adam(params, lr):
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=0.0)

    assert _final_norm(adam, 0.99 * threshold, adam_preconditioner=preconditioner) < 1.0
    assert _final_norm(adam, 1.01 * threshold, adam_preconditioner=preconditioner) == float("inf")


@settings(max_examples=60, deadline=None)
@given(
    beta=st.floats(0.0, 0.98),
    nesterov=st.booleans(),
    side=st.sampled_from([0.97, 1.03]),
)
def test_closed_form_threshold_is_where_the_companion_radius_crosses_one(beta, nesterov, side):
    threshold = momentum_threshold(1.0, momentum=beta, nesterov=nesterov)
    radius = mode_spectral_radius(side * threshold, momentum=beta, nesterov=nesterov)
    assert (radius < 1.0) == (side < 1.0)


@settings(max_examples=40, deadline=None)
@given(beta1=st.floats(0.0, 0.98), side=st.sampled_from([0.97, 1.03]))
def test_adam_threshold_is_where_the_ema_companion_radius_crosses_one(beta1, side):
    threshold = adam_threshold(1.0, beta1=beta1)
    assert (mode_spectral_radius(side * threshold, momentum=beta1, ema=True) < 1.0) == (side < 1)


def test_thresholds_grow_with_momentum_and_shrink_with_curvature():
    betas = np.linspace(0.0, 0.95, 20)
    heavy = [momentum_threshold(2.0, momentum=b) for b in betas]
    assert np.all(np.diff(heavy) > 0)
    nesterov = [momentum_threshold(2.0, momentum=b, nesterov=True) for b in betas]
    assert np.all(np.diff(nesterov) < 0)  # 2(1+β)/(1+2β) falls from 2 towards 4/3
    assert momentum_threshold(4.0, momentum=0.9) == pytest.approx(
        0.5 * momentum_threshold(2.0, momentum=0.9)
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: momentum_threshold(0.0), "lambda_max must be a positive"),
        (lambda: momentum_threshold(1.0, momentum=1.0), "momentum must be in"),
        (lambda: momentum_threshold(1.0, weight_decay=-1.0), "weight_decay must be"),
        (lambda: momentum_threshold(1.0, momentum=0.9, nesterov=True, dampening=0.1), "dampening"),
        (lambda: adam_threshold(-1.0), "preconditioned_sharpness must be"),
    ],
)
def test_bad_arguments_name_the_limit(call, match):
    with pytest.raises(LRAdvisorError, match=match):
        call()
