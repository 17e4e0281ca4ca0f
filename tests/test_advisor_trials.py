"""Probe trials: the batched optimizer is torch.optim, and a batched cohort trains exactly like
one real module and optimizer per trial (BatchNorm, dropout-free models, every optimizer)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from lradvisor.advisor.optimizers import BatchedOptimizer, optimizer_spec
from lradvisor.advisor.problem import build_problem
from lradvisor.advisor.trials import BatchedCohort, LoopCohort, ProbeData, make_cohort
from lradvisor.errors import LRAdvisorError

OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "momentum-wd": functools.partial(torch.optim.SGD, momentum=0.9, weight_decay=1e-2),
    "dampened": functools.partial(torch.optim.SGD, momentum=0.5, dampening=0.3),
    "nesterov": functools.partial(torch.optim.SGD, momentum=0.9, nesterov=True),
    "adam-l2": functools.partial(torch.optim.Adam, weight_decay=1e-2),
    "adamw": functools.partial(torch.optim.AdamW, weight_decay=0.05),
    "amsgrad": functools.partial(torch.optim.Adam, amsgrad=True),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_batched_optimizer_reproduces_torch_optim_per_trial(name):
    torch.manual_seed(0)
    rates = torch.tensor([0.01, 0.1, 0.3], dtype=torch.float64)
    start = torch.randn(3, 5, 4, dtype=torch.float64)
    stacked = {"w": start.clone()}
    batched = BatchedOptimizer(optimizer_spec(OPTIMIZERS[name]), rates)
    singles = [nn.Parameter(start[k].clone()) for k in range(3)]
    reals = [OPTIMIZERS[name]([p], lr=float(r)) for p, r in zip(singles, rates, strict=True)]
    for step in range(6):
        grads = torch.sin(stacked["w"] * (step + 1))  # any deterministic gradient of the state
        multiplier = 1.0 - 0.1 * step  # a schedule scales every trial's rate
        batched.step(stacked, {"w": grads}, multiplier)
        for k, (param, real) in enumerate(zip(singles, reals, strict=True)):
            param.grad = torch.sin(param.detach() * (step + 1))
            for group in real.param_groups:
                group["lr"] = float(rates[k]) * multiplier
            real.step()
    for k, param in enumerate(singles):
        torch.testing.assert_close(stacked["w"][k], param.detach(), rtol=1e-12, atol=1e-14)


def test_optimizer_spec_reads_names_classes_partials_and_instances():
    assert optimizer_spec("nesterov").nesterov and optimizer_spec("nesterov").momentum == 0.9
    adamw = optimizer_spec(functools.partial(torch.optim.AdamW, weight_decay=0.05))
    assert (adamw.family, adamw.decoupled, adamw.weight_decay) == ("adam", True, 0.05)
    instance = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.3, momentum=0.8)
    assert optimizer_spec(instance).momentum == 0.8
    assert optimizer_spec("RMSprop").family == "adaptive" and not optimizer_spec("RMSprop").batched
    assert optimizer_spec("sgd", momentum=0.7).momentum == 0.7
    assert optimizer_spec(torch.optim.Adam).describe().startswith("Adam(betas=(0.9, 0.999)")


@pytest.mark.parametrize(
    ("optimizer", "match"),
    [
        ("toaster", "optimizer must be one of"),
        (lambda params: torch.optim.SGD(params, lr=0.1), "factory\\(params, lr=...\\)"),
        (42, "optimizer must be a name"),
        (lambda params, lr: "not an optimizer", "expected a torch.optim.Optimizer"),
    ],
    ids=["unknown-name", "no-lr-keyword", "not-callable", "wrong-return"],
)
def test_bad_optimizers_are_one_line_errors(optimizer, match):
    with pytest.raises(LRAdvisorError, match=match):
        optimizer_spec(optimizer)


class _Net(nn.Module):
    def __init__(self, batchnorm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3) if batchnorm else nn.Identity()
        self.head = nn.Linear(3 * 16, 4)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))


def _problem(optimizer, *, batchnorm: bool, batch_size: int | None):
    torch.manual_seed(0)
    X = torch.randn(40, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (40,))
    model = _Net(batchnorm).double()
    return build_problem(
        model,
        (X, y),
        nn.CrossEntropyLoss(),
        optimizer,
        val_data=(X[:10], y[:10]),
        batch_size=batch_size,
        steps=12,
        seeds=(0, 1),
    )


@pytest.mark.parametrize("batchnorm", [False, True], ids=["conv", "conv-batchnorm"])
@pytest.mark.parametrize("optimizer", ["momentum", "adamw", "nesterov"])
def test_batched_cohort_trains_exactly_like_one_module_per_trial(optimizer, batchnorm):
    problem = _problem(optimizer, batchnorm=batchnorm, batch_size=8)
    data = ProbeData(problem, problem.seeds, 12)
    rates = [0.003, 0.03]
    models = {s: problem.make_model(s).train() for s in problem.seeds}
    repeated = np.repeat(rates, 2)
    seeds = np.tile(problem.seeds, 2)
    batched = BatchedCohort(problem, data, repeated, seeds, models)
    loop = LoopCohort(problem, data, repeated, seeds, models)
    for cohort in (batched, loop):
        cohort.advance(6)
        cohort.keep(np.array([True, False, True, True]))  # drop a trial mid-way
        cohort.advance(12)
    np.testing.assert_allclose(batched.losses("val"), loop.losses("val"), rtol=1e-9)
    np.testing.assert_allclose(batched.losses("train"), loop.losses("train"), rtol=1e-9)
    for trial in range(3):
        a, b = batched.module(trial).state_dict(), loop.module(trial).state_dict()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-7, atol=1e-10)


def test_cohorts_merge_at_the_same_step_and_a_diverged_trial_stops():
    problem = _problem("sgd", batchnorm=False, batch_size=None)
    data = ProbeData(problem, problem.seeds, 12)
    cohort = make_cohort(problem, data, [0.01], problem.seeds)
    extra = make_cohort(problem, data, [1e4], problem.seeds)  # far beyond any stable rate
    assert isinstance(cohort, BatchedCohort)
    cohort.advance(3)
    extra.advance(3)
    cohort.merge(extra)
    cohort.advance(12)
    assert list(cohort.rates) == [0.01, 0.01, 1e4, 1e4]
    assert cohort.alive.tolist() == [True, True, False, False]
    assert np.isnan(cohort.losses("train")[2:]).all()


def test_optimizers_without_a_batched_form_train_one_by_one():
    problem = _problem(
        functools.partial(torch.optim.RMSprop, alpha=0.9), batchnorm=False, batch_size=8
    )
    cohort = make_cohort(problem, ProbeData(problem, problem.seeds, 4), [1e-3], problem.seeds)
    assert isinstance(cohort, LoopCohort)
    cohort.advance(4)
    assert np.isfinite(cohort.losses("val")).all()
