"""The Optuna plugin as Optuna users meet it: the public import paths, the plain-loop context
manager, n_jobs, RDB and journal storage, trials_dataframe → parquet, optuna.visualization,
optuna-dashboard, copy_study, pickling."""

from __future__ import annotations

import json
import pickle
from io import BytesIO

import optuna
import pytest
import torch
from torch import nn

import lradvisor.mlflow
import lradvisor.optuna
from lradvisor.errors import LRAdvisorError
from lradvisor.optuna import ConservationPruner, TheoryPriorSampler, TrialMonitor, monitor

N, DIM, CLASSES = 64, 6, 3


@pytest.fixture(autouse=True)
def _quiet():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


def _data():
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(N, DIM, generator=generator)
    return X, (X[:, 0] > 0).long() + (X[:, 1] > 0).long()


def _objective(trial: optuna.Trial) -> float:
    X, y = _data()
    torch.manual_seed(trial.number)
    model = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, CLASSES))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=trial.suggest_float("lr", 1e-3, 300.0, log=True)
    )
    with monitor(trial, model, optimizer, data=(X, y), report_every=5) as m:
        for _ in range(20):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(X), y)
            loss.backward()
            m.step(loss)
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(X), y))


def _study(storage=None, **kw) -> optuna.Study:
    pruner = ConservationPruner(optuna.pruners.MedianPruner(n_startup_trials=2))
    kw.setdefault("sampler", optuna.samplers.TPESampler(seed=0))  # the same rates every run
    study = optuna.create_study(storage=storage, pruner=pruner, **kw)
    study.enqueue_trial({"lr": 250.0})  # far beyond the bound: pruned before training
    return study


def test_public_paths_are_the_short_ones_and_the_old_ones_alias_them():
    from lradvisor.integrations.mlflow import MLflowCallback
    from lradvisor.integrations.optuna import ConservationPruner as Old

    assert Old is ConservationPruner and lradvisor.mlflow.MLflowCallback is MLflowCallback
    assert {"ConservationPruner", "TheoryPriorSampler", "TrialMonitor", "monitor"} <= set(
        lradvisor.optuna.__all__
    )
    assert (
        pickle.loads(pickle.dumps(ConservationPruner(optuna.pruners.MedianPruner()))).base
        is not None
    )


def test_the_context_manager_steps_reports_and_writes_the_final_drift():
    study = _study()
    study.optimize(_objective, n_trials=4)
    pruned_first, *others = study.trials
    assert pruned_first.user_attrs["lradvisor.prune_reason"] == "beyond_stability_bound"
    assert pruned_first.intermediate_values == {}
    complete = [t for t in others if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for trial in complete:
        assert trial.user_attrs["lradvisor.steps_observed"] == 20  # the last report
        assert sorted(trial.intermediate_values) == [5, 10, 15, 20]
        assert "0->2" in json.loads(trial.user_attrs["lradvisor.final_drift"])
    for trial in others:
        if trial.intermediate_values:  # trained, then pruned: the final drift is still written
            assert "lradvisor.final_drift" in trial.user_attrs


def test_the_context_manager_refuses_a_bad_cadence():
    study = optuna.create_study()
    model = nn.Linear(2, 2)
    with (
        pytest.raises(LRAdvisorError, match="report_every must be a positive integer"),
        monitor(study.ask(), model, torch.optim.SGD(model.parameters(), lr=0.1), report_every=0),
    ):
        pass


def test_two_workers_on_rdb_storage_and_a_plain_dataframe(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = _study(storage, study_name="rdb")
    # The enqueued trial first, alone: on SQLite two threads can both pop one waiting trial
    # (Optuna's WAITING → RUNNING update is not atomic there) and run it twice.
    study.optimize(_objective, n_trials=1)
    study.optimize(_objective, n_trials=5, n_jobs=2)
    assert len(study.trials) == 6
    frame = study.trials_dataframe()
    for column in [c for c in frame.columns if c.startswith("user_attrs_")]:
        values = frame[column].dropna().tolist()
        assert not any(isinstance(v, dict | list) for v in values), column
    frame.to_parquet(tmp_path / "trials.parquet")
    ours = frame[[c for c in frame.columns if c.startswith("user_attrs_lradvisor")]]
    assert ours.drop_duplicates().shape[0] == 6 and ours.nunique().min() >= 1
    reloaded = optuna.load_study(study_name="rdb", storage=storage)
    assert reloaded.user_attrs  # the curvature cached for other workers
    assert any(key.startswith("lradvisor.curvature_cache") for key in reloaded.user_attrs)


def test_journal_storage_and_copy_study(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
    study = _study(journal, study_name="journal")
    study.optimize(_objective, n_trials=3)
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    optuna.copy_study(from_study_name="journal", from_storage=journal, to_storage=target)
    copied = optuna.load_study(study_name="journal", storage=target)
    assert [t.user_attrs for t in copied.trials] == [t.user_attrs for t in study.trials]


def test_optuna_visualization_draws_a_monitored_study():
    pytest.importorskip("plotly")
    study = _study()
    study.optimize(_objective, n_trials=4)
    for plot in (
        optuna.visualization.plot_optimization_history,
        optuna.visualization.plot_intermediate_values,
        optuna.visualization.plot_slice,
    ):
        assert plot(study).to_json()


def test_optuna_dashboard_serves_a_monitored_study(tmp_path):
    dashboard = pytest.importorskip("optuna_dashboard")
    storage = f"sqlite:///{tmp_path / 'dash.db'}"
    study = _study(storage, study_name="dash")
    study.optimize(_objective, n_trials=3)
    app = dashboard.wsgi(storage)
    responses = {}

    def start_response(status, headers, exc_info=None):
        responses["status"] = status

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": f"/api/studies/{study._study_id}",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.input": BytesIO(),
        "wsgi.errors": BytesIO(),
        "wsgi.url_scheme": "http",
    }
    body = b"".join(app(environ, start_response))
    assert responses["status"].startswith("200")
    detail = json.loads(body)
    attrs = {a["key"]: a["value"] for t in detail["trials"] for a in t["user_attrs"]}
    assert "lradvisor.bound" in attrs and "lradvisor.prune_reason" in attrs


def test_theory_prior_sampler_follows_the_bound_per_width():
    study = optuna.create_study()
    # measured λ ∝ m^0.5: the bound, and the prior, fall as m^-0.5
    study.set_user_attr(
        "lradvisor.width_points", json.dumps([[16, 1.0, None], [64, 2.0, None], [256, 4.0, None]])
    )
    sampler = TheoryPriorSampler(
        center=0.1, low=0.01, high=1.0, sigma=1e-6, width_param="width", reference_width=64, seed=0
    )
    study.sampler = sampler
    trial = study.ask({"width": optuna.distributions.IntDistribution(4, 1024)})
    frozen = study._storage.get_trial(trial._trial_id)
    width = frozen.params["width"]
    rate = trial.suggest_float("lr", 1e-4, 10.0, log=True)
    assert rate == pytest.approx(0.1 * (width / 64) ** -0.5, rel=1e-3)


def test_trial_monitor_names_the_curvature_source_for_each_width():
    study = optuna.create_study()
    X, y = _data()
    sources = []
    for width in (8, 16, 32, 64, 128):
        trial = study.ask()
        model = nn.Sequential(nn.Linear(DIM, width), nn.ReLU(), nn.Linear(width, CLASSES))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        TrialMonitor(trial, model, optimizer, data=(X, y), width=width)
        sources.append(
            trial.user_attrs["lradvisor.curvature"]
            if False
            else study.trials[-1].user_attrs["lradvisor.curvature"]
        )
    assert sources[:3] == ["measured"] * 3
    assert sources[3] == "width law a·m^b"
    points = json.loads(study.user_attrs["lradvisor.width_points"])
    assert [p[0] for p in points] == [8, 16, 32, 64, 128]
    assert points[3][1] is None and points[3][2] > 0  # predicted only
