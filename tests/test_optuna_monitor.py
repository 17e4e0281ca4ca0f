"""TrialMonitor: the bound at θ₀, the drift and its prediction, and what reaches the trial."""

from __future__ import annotations

import copy
import json
import math
import warnings

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
            monitor.report(loss, step)


def _monitored_trial(study, template, data, lr, **kw):
    trial = study.ask()
    model = copy.deepcopy(template)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return trial, model, optimizer, TrialMonitor(trial, model, optimizer, data=data, **kw)


def _attrs(study, index=0):
    return study.trials[index].user_attrs


def test_initial_attrs_are_flat_and_record_the_bound_measured_by_lanczos(template, data, eos_lr):
    study = optuna.create_study()
    _trial, *_, monitor = _monitored_trial(study, template, data, 0.1)
    attrs = _attrs(study)
    assert attrs["lradvisor.lr"] == 0.1
    assert attrs["lradvisor.eos_lr"] == pytest.approx(eos_lr, rel=1e-3)
    assert attrs["lradvisor.bound"] == pytest.approx(eos_lr, rel=1e-3)
    assert attrs["lradvisor.bound_kind"] == "gradient descent"
    assert attrs["lradvisor.lambda_max"] == pytest.approx(2.0 / eos_lr, rel=1e-3)
    assert attrs["lradvisor.loss"] == "ce" and attrs["lradvisor.curvature"] == "measured"
    assert json.loads(attrs["lradvisor.laws"]) == ["0->2"]
    assert json.loads(attrs["lradvisor.skipped"]) == []
    assert attrs["lradvisor.identity_holds"] is True
    assert 0.0 <= attrs["lradvisor.outside_fraction"] < 1.0
    assert all(isinstance(v, (int, float, str, bool, type(None))) for v in attrs.values())
    assert "0->2" in monitor.summary() and "gradient descent" in monitor.summary()


@pytest.mark.parametrize(
    ("options", "kind", "factor"),
    [
        ({"momentum": 0.9}, "heavy-ball momentum", 3.8),
        ({"momentum": 0.9, "nesterov": True}, "Nesterov momentum", 3.8 / 2.8),
        ({"momentum": 0.5, "weight_decay": 0.1}, "heavy-ball momentum", None),
    ],
)
def test_the_bound_follows_the_optimizer(template, data, eos_lr, options, kind, factor):
    study = optuna.create_study()
    trial = study.ask()
    model = copy.deepcopy(template)
    with warnings.catch_warnings():  # said once per trial in its attrs, not as a warning
        warnings.simplefilter("error")
        monitor = TrialMonitor(
            trial, model, torch.optim.SGD(model.parameters(), lr=0.1, **options), data=data
        )
    lam = 2.0 / eos_lr
    expected = factor / lam if factor else 3.0 / (lam + 0.1)
    assert monitor.bound_ == pytest.approx(expected, rel=1e-3)
    attrs = _attrs(study)
    assert attrs["lradvisor.bound_kind"] == kind
    assert attrs["lradvisor.identity_holds"] is False  # momentum / weight decay break η²·S


def test_adam_has_no_bound_and_no_prediction_but_its_drift_is_measured(template, data):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    model = copy.deepcopy(template)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = TrialMonitor(trial, model, optimizer, data=data, write_every=1)
    _train(model, optimizer, monitor, data, steps=3)
    attrs = _attrs(study)
    assert attrs["lradvisor.bound"] is None and attrs["lradvisor.bound_kind"].startswith(
        "none (Adam"
    )
    assert attrs["lradvisor.identity_holds"] is False
    assert attrs["lradvisor.drift_predicted"] is None and attrs["lradvisor.drift_ratio"] is None
    assert attrs["lradvisor.drift_observed"] != 0
    assert [entry[2] for entry in monitor.drift_history] == [None, None, None]


def test_prediction_is_exact_after_one_full_batch_step(template, data):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    _trial, model, optimizer, monitor = _monitored_trial(study, template, data, 0.05)
    _train(model, optimizer, monitor, data, steps=1)
    attrs = _attrs(study)
    observed, predicted = attrs["lradvisor.drift_observed"], attrs["lradvisor.drift_predicted"]
    assert observed != 0
    assert predicted == pytest.approx(observed, rel=EXACT_RTOL)
    assert attrs["lradvisor.drift_ratio"] == pytest.approx(1.0, rel=EXACT_RTOL)
    assert monitor.drift_history == [
        [
            0,
            observed,
            pytest.approx(observed),
            {"0->2": observed},
            {"0->2": pytest.approx(observed)},
        ]
    ]


def test_prediction_grows_like_t_while_no_mode_has_converged(template, data):
    # η λ T ≪ 1: every mode is unconverged, S(t) = Σ c_k t = |δ(0)| t (docs/theory.md §4).
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    _trial, model, optimizer, monitor = _monitored_trial(study, template, data, 1e-5, write_every=1)
    _train(model, optimizer, monitor, data, steps=1)
    first = _attrs(study)["lradvisor.drift_predicted"]
    _train(model, optimizer, monitor, data, steps=9, report_every=9, first_step=1)
    attrs = _attrs(study)
    assert attrs["lradvisor.steps_observed"] == 10
    assert attrs["lradvisor.drift_predicted"] == pytest.approx(10 * first, rel=1e-3)
    assert attrs["lradvisor.drift_ratio"] == pytest.approx(1.0, rel=1e-3)


def test_report_takes_optunas_order_and_refuses_swapped_arguments(template, data):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    _trial, *_, monitor = _monitored_trial(study, template, data, 0.1)
    with pytest.raises(LRAdvisorError, match=r"step must be an integer.*swapped"):
        monitor.report(3, 0.25)  # report(step, value): the old order
    with pytest.raises(LRAdvisorError, match="step must be an integer"):
        monitor.report(0.5, True)
    monitor.report(torch.tensor(0.25), 3)
    assert study.trials[0].intermediate_values == {3: 0.25}


def test_a_second_trial_of_the_configuration_reuses_the_curvature(template, data):
    study = optuna.create_study()
    *_, first = _monitored_trial(study, template, data, 0.1)
    torch.manual_seed(9)
    other_init = nn.Sequential(
        nn.Linear(INPUT_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)
    ).double()
    *_, second = _monitored_trial(study, other_init, data, 0.2)
    assert second.lambda_max_ == first.lambda_max_
    assert _attrs(study, 1)["lradvisor.curvature"].startswith("cached")
    assert second._delta0 != first._delta0  # δ(0) is each trial's own
    # another study measures again
    other = optuna.create_study()
    *_, third = _monitored_trial(other, other_init, data, 0.2)
    assert _attrs(other)["lradvisor.curvature"] == "measured"
    assert third.lambda_max_ != first.lambda_max_


def test_the_worker_cache_dies_with_its_storage(template, data):
    """A freed storage's cache must go: a new storage can get the freed one's id(), and its
    study would then read another study's λ_max (a flaky test once did)."""
    import gc

    from lradvisor.integrations import _curvature

    study = optuna.create_study()
    _monitored_trial(study, template, data, 0.1)
    storage = study._storage
    assert any(key[0] == study._study_id for key in _curvature._MEMORY[storage])
    count = len(_curvature._MEMORY)
    del study, storage
    gc.collect()
    assert len(_curvature._MEMORY) == count - 1


def test_should_prune_before_training_far_beyond_the_bound_costs_no_step(template, data, eos_lr):
    study = optuna.create_study(pruner=ConservationPruner())
    trial, model, _optimizer, monitor = _monitored_trial(study, template, data, 20 * eos_lr)
    before = [p.detach().clone() for p in model.parameters()]
    assert monitor.should_prune()
    study.tell(trial, state=TrialState.PRUNED)
    frozen = study.trials[0]
    assert frozen.intermediate_values == {}
    assert frozen.user_attrs["lradvisor.prune_reason"] == "beyond_stability_bound"
    detail = json.loads(frozen.user_attrs["lradvisor.prune_detail"])
    assert detail["lr_over_bound"] == pytest.approx(20.0, rel=1e-3)
    assert detail["margin"] == 16.0 and "catapult" in detail["why"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_rate_a_few_times_the_bound_is_not_pruned_before_training(template, data, eos_lr):
    study = optuna.create_study(pruner=ConservationPruner())
    _trial, *_, monitor = _monitored_trial(study, template, data, 8 * eos_lr)
    assert not monitor.should_prune()  # cross-entropy: catapults train well up to ~14×


@pytest.mark.parametrize("pruner", [ConservationPruner(), optuna.pruners.NopPruner()])
def test_non_finite_loss_prunes_as_diverged_whatever_the_pruner(template, data, pruner):
    study = optuna.create_study(pruner=pruner)
    trial, *_, monitor = _monitored_trial(study, template, data, 0.1)
    with pytest.raises(optuna.TrialPruned, match="diverged"):
        monitor.report(torch.tensor(float("nan")), 4)
    assert monitor.diverged_
    study.tell(trial, state=TrialState.PRUNED)
    attrs = _attrs(study)
    assert attrs["lradvisor.diverged"] is True
    assert attrs["lradvisor.prune_reason"] == "diverged"
    assert math.isnan(study.trials[0].intermediate_values[4])


def test_drift_far_off_prediction_prunes_on_the_third_report_when_asked(
    template, data, monkeypatch
):
    study = optuna.create_study(pruner=ConservationPruner(drift_factor=10))
    trial, model, optimizer, monitor = _monitored_trial(study, template, data, 0.01)
    # Shrink the predicted drift 100-fold: the observed/predicted ratio becomes ≈ 100.
    shrunk = {name: delta / 100 for name, delta in monitor._delta0.items()}
    monkeypatch.setattr(monitor, "_delta0", shrunk)
    _train(model, optimizer, monitor, data, steps=2)
    assert _attrs(study)["lradvisor.drift_ratio"] == pytest.approx(100, rel=0.05)
    with pytest.raises(optuna.TrialPruned):
        _train(model, optimizer, monitor, data, steps=1, first_step=2)
    study.tell(trial, state=TrialState.PRUNED)
    attrs = _attrs(study)
    assert attrs["lradvisor.prune_reason"] == "drift_off_prediction"
    assert json.loads(attrs["lradvisor.prune_detail"])["steps"] == [0, 1, 2]


def test_the_drift_check_is_off_by_default(template, data, monkeypatch):
    study = optuna.create_study(pruner=ConservationPruner())
    _trial, model, optimizer, monitor = _monitored_trial(study, template, data, 0.01)
    shrunk = {name: delta / 100 for name, delta in monitor._delta0.items()}
    monkeypatch.setattr(monitor, "_delta0", shrunk)
    _train(model, optimizer, monitor, data, steps=6)  # no TrialPruned
    assert _attrs(study)["lradvisor.drift_ratio"] == pytest.approx(100, rel=0.1)


def test_model_without_laws_says_what_it_skipped(data):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(INPUT_DIM, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, CLASSES))
    model = model.double()
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = TrialMonitor(trial, model, optimizer, data=data)
    _train(model, optimizer, monitor, data, steps=2)
    attrs = _attrs(study)
    assert json.loads(attrs["lradvisor.laws"]) == []
    skipped = json.loads(attrs["lradvisor.skipped"])
    assert [name for name, _ in skipped] == ["0", "2"] and "GELU" in skipped[0][1]
    assert attrs["lradvisor.identity_holds"] is False
    assert attrs["lradvisor.drift_observed"] is None and attrs["lradvisor.drift_predicted"] is None
    assert monitor.skipped and "GELU" in monitor.summary()
    assert attrs["lradvisor.eos_lr"] > 0


def test_each_report_writes_a_bounded_amount_and_the_history_comes_back_whole(template, data):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    _trial, model, optimizer, monitor = _monitored_trial(study, template, data, 0.01)
    writes: list[int] = []
    original = monitor.trial.set_user_attr

    def counting(key, value):
        writes.append(len(str(value)))
        original(key, value)

    monitor.trial.set_user_attr = counting
    _train(model, optimizer, monitor, data, steps=100)
    monitor.flush()  # reports 98–100 wait for the next write (every 4th report by default)
    history = monitor.drift_history
    assert [entry[0] for entry in history] == list(range(100))
    assert max(writes) < 2000  # one chunk of 16 entries at most, never the whole history
    recent = json.loads(_attrs(study)["lradvisor.drift_recent"])
    assert [entry[0] for entry in recent] == list(range(92, 100))


def test_reports_are_written_at_powers_of_two_and_every_fourth_and_at_a_prune_or_finish(
    template, data
):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    _trial, model, optimizer, monitor = _monitored_trial(study, template, data, 0.01)
    _train(model, optimizer, monitor, data, steps=7)  # reports 1–7
    assert _attrs(study)["lradvisor.steps_observed"] == 4  # written at reports 1, 2 and 4
    assert [entry[0] for entry in _history(study)] == [0, 1, 2, 3]
    monitor.finish()
    assert _attrs(study)["lradvisor.steps_observed"] == 7
    assert [entry[0] for entry in _history(study)] == list(range(7))

    pruned = optuna.create_study(pruner=_PruneAtThree())
    _trial, model, optimizer, monitor = _monitored_trial(pruned, template, data, 0.01)
    with pytest.raises(optuna.TrialPruned):
        _train(model, optimizer, monitor, data, steps=3, first_step=1)  # pruned at report 3
    assert _attrs(pruned)["lradvisor.steps_observed"] == 3  # not a cadence write: the prune's


def test_during_the_pruners_grace_period_every_report_is_written(template, data, eos_lr):
    # CE at twice the bound: grace = 10·(τ_a/η + τ_b) steps, read from steps_observed
    study = optuna.create_study(pruner=ConservationPruner(tau=(0.01, 5.0)))
    _trial, model, optimizer, monitor = _monitored_trial(study, template, data, 2 * eos_lr)
    _train(model, optimizer, monitor, data, steps=6)
    assert _attrs(study)["lradvisor.steps_observed"] == 6


class _PruneAtThree(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= 3


def _history(study):
    from lradvisor.integrations import _attrs as attrs

    return attrs.drift_history(study.trials[0].user_attrs)


def test_finish_writes_the_final_drift(template, data):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    _trial, model, optimizer, monitor = _monitored_trial(study, template, data, 0.05)
    _train(model, optimizer, monitor, data, steps=5, report_every=100)
    final = monitor.finish()
    attrs = _attrs(study)
    assert json.loads(attrs["lradvisor.final_drift"]) == final["observed"]
    assert final["predicted"]["0->2"] == pytest.approx(final["observed"]["0->2"], rel=0.05)


def test_learning_rate_change_withdraws_the_prediction(template, data):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    _trial, model, optimizer, monitor = _monitored_trial(study, template, data, 0.01)
    optimizer.param_groups[0]["lr"] = 0.02
    _train(model, optimizer, monitor, data, steps=1)
    assert _attrs(study)["lradvisor.drift_predicted"] is None


def test_curvature_leaves_the_model_as_it_was(data):
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(INPUT_DIM, 12),
        nn.BatchNorm1d(12),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(12, CLASSES),
    ).double()
    model[0].eval()
    stats = model[1].running_mean.clone()
    study = optuna.create_study()
    trial = study.ask()
    monitor = TrialMonitor(trial, model, torch.optim.SGD(model.parameters(), lr=0.1), data=data)
    assert [m.training for m in model] == [False, True, True, True, True]
    assert torch.equal(model[1].running_mean, stats)
    assert monitor.scale_invariant_ and _attrs(study)["lradvisor.scale_invariant"] is True


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
    for factor in (0.1, 40.0, 0.2, 40.0):
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
    with pytest.raises(LRAdvisorError, match="width must be a positive integer"):
        TrialMonitor(trial, model, optimizer, data=data, width=0)


def test_subsample_and_mse_loss(template, data):
    monitors = []
    for rows in (None, 30):
        study = optuna.create_study()  # one study each: the curvature is cached per study
        trial = study.ask()
        model = copy.deepcopy(template)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        options = {} if rows is None else {"max_rows": rows}
        monitors.append(TrialMonitor(trial, model, optimizer, data=data, loss="mse", **options))
        assert study.trials[0].user_attrs["lradvisor.loss"] == "mse"
    full, half = monitors
    assert half.lambda_max_ != pytest.approx(full.lambda_max_, rel=1e-6)
    assert half.lambda_max_ == pytest.approx(full.lambda_max_, rel=0.5)


def test_without_data_the_drift_is_measured_and_nothing_is_guessed(template):
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    model = copy.deepcopy(template)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = TrialMonitor(trial, model, optimizer)
    assert monitor.lambda_max_ is None and monitor.bound_ is None
    assert _attrs(study)["lradvisor.bound_kind"] == "none (λ_max(θ₀) not measured)"
