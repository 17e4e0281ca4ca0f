"""TrialMonitor: the bound at θ₀, the drift and its prediction, and what reaches the trial."""

from __future__ import annotations

import copy
import json
import math

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from lradvisor.errors import LRAdvisorError
from lradvisor.integrations.optuna import ConservationPruner, TrialMonitor

N_SAMPLES, INPUT_DIM, HIDDEN, CLASSES = 60, 8, 16, 3
EXACT_RTOL = 1e-9  # float64 throughout: the prediction is exact at t = 1 up to round-off


@pytest.fixture(autouse=True)
def _quiet_optuna():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models gain nothing from intra-op threads, and on a shared, busy machine
    # OpenMP's spinning threads cost tens of seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(N_SAMPLES, INPUT_DIM, generator=generator, dtype=torch.float64)
    return inputs, torch.randint(0, CLASSES, (N_SAMPLES,), generator=generator)


@pytest.fixture(scope="module")
def template() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(INPUT_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)]
    return nn.Sequential(*layers).double()


def _dense_lambda_max(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """λ_max of the exact Hessian (195 × 195), an outside reference for Lanczos."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = [part.view(shape) for part, shape in zip(theta.split(sizes), shapes, strict=True)]
        outputs = torch.func.functional_call(model, dict(zip(names, parts, strict=True)), inputs)
        return nn.functional.cross_entropy(outputs, labels)

    hessian = torch.autograd.functional.hessian(loss, flat)
    return float(torch.linalg.eigvalsh(hessian).max())


@pytest.fixture(scope="module")
def eos_lr(template, data) -> float:
    return 2.0 / _dense_lambda_max(template, *data)


def _train(model, optimizer, monitor, data, *, steps, report_every=1, first_step=0):
    inputs, labels = data
    for step in range(first_step, first_step + steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        monitor.observe()
        optimizer.step()
        if step % report_every == 0:
            monitor.report(step, loss)


def _monitored_trial(study, template, data, lr, **kw):
    trial = study.ask()
    model = copy.deepcopy(template)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return trial, model, optimizer, TrialMonitor(trial, model, optimizer, data=data, **kw)


def test_initial_attrs_record_the_bound_measured_by_lanczos(template, data, eos_lr):
    study = optuna.create_study()
    _trial, *_, monitor = _monitored_trial(study, template, data, 0.1)
    attrs = study.trials[0].user_attrs
    assert attrs["lradvisor.lr"] == 0.1
    assert attrs["lradvisor.eos_lr"] == pytest.approx(eos_lr, rel=1e-3)
    assert attrs["lradvisor.lambda_max"] == pytest.approx(2.0 / eos_lr, rel=1e-3)
    assert attrs["lradvisor.loss"] == "ce"
    assert attrs["lradvisor.laws"] == ["0->2"]
    assert attrs["lradvisor.skipped"] == []
    assert attrs["lradvisor.identity_holds"] is True
    assert 0.0 <= attrs["lradvisor.outside_fraction"] < 1.0
    json.dumps(attrs, allow_nan=False)
    assert "0->2" in monitor.summary() and "η_EoS" in monitor.summary()


def test_prediction_is_exact_after_one_full_batch_step(template, data):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    _trial, model, optimizer, monitor = _monitored_trial(study, template, data, 0.05)
    _train(model, optimizer, monitor, data, steps=1)
    attrs = study.trials[0].user_attrs
    observed = attrs["lradvisor.drift"]["0->2"]
    predicted = attrs["lradvisor.predicted_drift"]["0->2"]
    assert observed != 0
    assert predicted == pytest.approx(observed, rel=EXACT_RTOL)
    assert attrs["lradvisor.drift_ratio"] == pytest.approx(1.0, rel=EXACT_RTOL)
    assert attrs["lradvisor.drift_history"] == [
        [
            0,
            observed,
            pytest.approx(observed),
            {"0->2": observed},
            {"0->2": pytest.approx(observed)},
        ]
    ]


def test_prediction_grows_like_t_while_no_mode_has_converged(template, data):
    # η λ T ≪ 1: every mode is unconverged, S(t) = Σ c_k t = |δ(0)| t (THEORY.md §4).
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    _trial, model, optimizer, monitor = _monitored_trial(study, template, data, 1e-5)
    _train(model, optimizer, monitor, data, steps=1)
    first = study.trials[0].user_attrs["lradvisor.drift"]["0->2"]
    _train(model, optimizer, monitor, data, steps=9, report_every=9, first_step=1)
    attrs = study.trials[0].user_attrs
    assert attrs["lradvisor.steps_observed"] == 10
    assert attrs["lradvisor.predicted_drift"]["0->2"] == pytest.approx(10 * first, rel=1e-3)
    assert attrs["lradvisor.drift_ratio"] == pytest.approx(1.0, rel=1e-3)


def test_should_prune_before_training_costs_no_step(template, data, eos_lr):
    study = optuna.create_study(pruner=ConservationPruner())
    trial, model, _optimizer, monitor = _monitored_trial(study, template, data, 10 * eos_lr)
    before = [p.detach().clone() for p in model.parameters()]
    assert monitor.should_prune()
    study.tell(trial, state=TrialState.PRUNED)
    frozen = study.trials[0]
    assert frozen.intermediate_values == {}
    assert frozen.user_attrs["lradvisor.prune_reason"] == "beyond_stability_bound"
    assert frozen.user_attrs["lradvisor.prune_detail"]["lr_over_eos_lr"] == pytest.approx(
        10.0, rel=1e-3
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_report_at_step_zero_applies_the_bound(template, data, eos_lr):
    study = optuna.create_study(pruner=ConservationPruner())
    trial, model, optimizer, monitor = _monitored_trial(study, template, data, 10 * eos_lr)
    with pytest.raises(optuna.TrialPruned):
        _train(model, optimizer, monitor, data, steps=1)
    study.tell(trial, state=TrialState.PRUNED)
    frozen = study.trials[0]
    assert list(frozen.intermediate_values) == [0]
    assert frozen.user_attrs["lradvisor.prune_reason"] == "beyond_stability_bound"


@pytest.mark.parametrize("pruner", [ConservationPruner(), optuna.pruners.NopPruner()])
def test_non_finite_loss_prunes_as_diverged_whatever_the_pruner(template, data, pruner):
    study = optuna.create_study(pruner=pruner)
    trial, *_, monitor = _monitored_trial(study, template, data, 0.1)
    with pytest.raises(optuna.TrialPruned, match="diverged"):
        monitor.report(4, torch.tensor(float("nan")))
    assert monitor.diverged_
    study.tell(trial, state=TrialState.PRUNED)
    attrs = study.trials[0].user_attrs
    assert attrs["lradvisor.diverged"] is True
    assert attrs["lradvisor.prune_reason"] == "diverged"
    assert math.isnan(study.trials[0].intermediate_values[4])
    json.dumps(attrs, allow_nan=False)


def test_drift_far_off_prediction_prunes_on_the_third_report(template, data, monkeypatch):
    study = optuna.create_study(pruner=ConservationPruner())
    trial, model, optimizer, monitor = _monitored_trial(study, template, data, 0.01)
    # Shrink the predicted drift 100-fold: the observed/predicted ratio becomes ≈ 100.
    shrunk = {name: delta / 100 for name, delta in monitor._delta0.items()}
    monkeypatch.setattr(monitor, "_delta0", shrunk)
    _train(model, optimizer, monitor, data, steps=2)
    assert study.trials[0].user_attrs["lradvisor.drift_ratio"] == pytest.approx(100, rel=0.05)
    with pytest.raises(optuna.TrialPruned):
        _train(model, optimizer, monitor, data, steps=1, first_step=2)
    study.tell(trial, state=TrialState.PRUNED)
    attrs = study.trials[0].user_attrs
    assert attrs["lradvisor.prune_reason"] == "drift_off_prediction"
    assert attrs["lradvisor.prune_detail"]["steps"] == [0, 1, 2]


def test_adam_is_measured_directly_without_prediction(template, data):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    model = copy.deepcopy(template)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.warns(UserWarning, match="breaks the η²·S identity"):
        monitor = TrialMonitor(trial, model, optimizer, data=data)
    _train(model, optimizer, monitor, data, steps=3)
    attrs = study.trials[0].user_attrs
    assert attrs["lradvisor.identity_holds"] is False
    assert attrs["lradvisor.predicted_drift"] is None
    assert attrs["lradvisor.drift_ratio"] is None
    assert attrs["lradvisor.drift"]["0->2"] != 0
    assert [entry[2] for entry in attrs["lradvisor.drift_history"]] == [None, None, None]


def test_model_without_laws_says_what_it_skipped(data):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(INPUT_DIM, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, CLASSES))
    model = model.double()
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = TrialMonitor(trial, model, optimizer, data=data)
    _train(model, optimizer, monitor, data, steps=2)
    attrs = study.trials[0].user_attrs
    assert attrs["lradvisor.laws"] == []
    assert [name for name, _ in attrs["lradvisor.skipped"]] == ["0", "2"]
    assert "GELU" in attrs["lradvisor.skipped"][0][1]
    assert attrs["lradvisor.identity_holds"] is False
    assert attrs["lradvisor.drift"] == {} and attrs["lradvisor.predicted_drift"] is None
    assert monitor.skipped and "GELU" in monitor.summary()
    assert attrs["lradvisor.eos_lr"] > 0


def test_drift_history_is_thinned_but_keeps_its_newest_entries_exact(template, data):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    _trial, model, optimizer, monitor = _monitored_trial(study, template, data, 0.01)
    _train(model, optimizer, monitor, data, steps=300)
    history = study.trials[0].user_attrs["lradvisor.drift_history"]
    steps = [entry[0] for entry in history]
    assert len(history) <= 200
    assert steps[0] == 0 and steps == sorted(steps)
    assert steps[-50:] == list(range(250, 300))


def test_learning_rate_change_withdraws_the_prediction(template, data):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    _trial, model, optimizer, monitor = _monitored_trial(study, template, data, 0.01)
    optimizer.param_groups[0]["lr"] = 0.02
    _train(model, optimizer, monitor, data, steps=1)
    assert study.trials[0].user_attrs["lradvisor.predicted_drift"] is None


def test_curvature_leaves_training_mode_as_it_was(data):
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(INPUT_DIM, HIDDEN), nn.ReLU(), nn.Dropout(0.5), nn.Linear(HIDDEN, CLASSES)
    ).double()
    model[0].eval()
    study = optuna.create_study()
    trial = study.ask()
    TrialMonitor(trial, model, torch.optim.SGD(model.parameters(), lr=0.1), data=data)
    assert [m.training for m in model] == [False, True, True, True]


def test_monitored_objective_with_two_workers(template, data, eos_lr):
    def objective(trial: optuna.Trial) -> float:
        model = copy.deepcopy(template)
        optimizer = torch.optim.SGD(model.parameters(), lr=trial.suggest_float("lr", 1e-3, 1e2))
        monitor = TrialMonitor(trial, model, optimizer, data=data, loss="ce")
        if monitor.should_prune():
            raise optuna.TrialPruned()
        _train(model, optimizer, monitor, data, steps=6, report_every=2)
        return monitor.trial.user_attrs["lradvisor.drift_ratio"]

    study = optuna.create_study(pruner=ConservationPruner(optuna.pruners.MedianPruner()))
    for factor in (0.1, 20.0, 0.2, 20.0):
        study.enqueue_trial({"lr": factor * eos_lr})
    study.optimize(objective, n_trials=4, n_jobs=2)
    frame = study.trials_dataframe()
    for trial, reason in zip(study.trials, frame["user_attrs_lradvisor.prune_reason"], strict=True):
        if trial.params["lr"] > eos_lr:
            assert trial.state == TrialState.PRUNED
            assert trial.intermediate_values == {}
            assert reason == "beyond_stability_bound"
        else:
            assert trial.state == TrialState.COMPLETE
            assert 0.5 < trial.value < 2.0  # observed/predicted drift after 5 steps


def test_bad_arguments_name_the_limit(template, data):
    study = optuna.create_study()
    trial = study.ask()
    model = copy.deepcopy(template)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs, labels = data
    with pytest.raises(LRAdvisorError, match="as many targets as inputs"):
        TrialMonitor(trial, model, optimizer, data=(inputs, labels[:10]))
    with pytest.raises(LRAdvisorError, match="loss must be 'ce', 'mse' or a callable"):
        TrialMonitor(trial, model, optimizer, data=data, loss="hinge")
    with pytest.raises(LRAdvisorError, match="max_rows must be at least 1, but got 0"):
        TrialMonitor(trial, model, optimizer, data=data, max_rows=0)


def test_subsample_and_mse_loss(template, data):
    study = optuna.create_study()
    trial = study.ask()
    model = copy.deepcopy(template)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    full = TrialMonitor(trial, model, optimizer, data=data, loss="mse")
    half = TrialMonitor(trial, model, optimizer, data=data, loss="mse", max_rows=30)
    assert study.trials[0].user_attrs["lradvisor.loss"] == "mse"
    assert half.lambda_max_ != pytest.approx(full.lambda_max_, rel=1e-6)
    assert half.lambda_max_ == pytest.approx(full.lambda_max_, rel=0.5)
