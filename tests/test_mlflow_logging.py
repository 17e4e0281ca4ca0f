"""MLflow logging with MLflow's local store: the callback on an existing study, idempotent
delivery, the spool when the tracking server cannot be reached, and ``lradvisor mlflow sync``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient
from torch import nn

from lradvisor.cli import main
from lradvisor.integrations._attrs import drift_history
from lradvisor.integrations._mlflow_payloads import (
    COMPLETE_TAG,
    PARENT_KEY_TAG,
    TRIAL_TAG,
    metric_key,
    parent_key,
    trial_payload,
)
from lradvisor.integrations.mlflow import MLflowCallback, resolve_tracking_uri, sync
from lradvisor.integrations.optuna import TrialMonitor

STEPS, REPORT_EVERY = 30, 10


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny models: one torch thread (see conftest.one_thread)."""


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(48, 5, generator=generator, dtype=torch.float64)
    return X, (X[:, 0] > 0).long() + (X[:, 1] > 0).long()


def _objective(trial: optuna.Trial) -> float:
    """An ordinary objective with the TrialMonitor of the Optuna integration."""
    X, y = _data()
    lr = trial.suggest_float("lr", 0.01, 1.0, log=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    model.double()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = TrialMonitor(trial, model, optimizer, data=(X, y), loss="ce")
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        if step % REPORT_EVERY == 0:
            monitor.report(loss, step)
        loss.backward()
        monitor.observe()
        optimizer.step()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(X), y))


def _study(name: str = "existing") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, sampler=optuna.samplers.RandomSampler(seed=1))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_metric_keys_are_valid_mlflow_names() -> None:
    assert metric_key("drift_observed", "0->2") == "drift_observed/0_to_2"
    assert metric_key("S_predicted", "layer[1]->head") == "S_predicted/layer_1__to_head"
    assert parent_key("a'b") == parent_key("a'b") and parent_key("a'b").isalnum()


def test_tracking_uri_resolution(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:1")
    assert resolve_tracking_uri(None) == "http://example:1"


def test_callback_logs_an_existing_study_with_its_monitor(store: str, tmp_path: Path) -> None:
    study = _study()
    callback = MLflowCallback(store, spool=tmp_path / "spool")
    study.optimize(_objective, n_trials=4, callbacks=[callback])
    result = callback.finish(study)
    assert result.pending == 0 and result.errors == []

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("existing")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags["lradvisor.role"] == "study"]
    children = [r for r in runs if r.data.tags["lradvisor.role"] == "trial"]
    assert len(children) == 4
    for run in children:
        trial = study.trials[int(run.data.tags[TRIAL_TAG])]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags[COMPLETE_TAG] == "true"
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert {m.step: m.value for m in losses} == trial.intermediate_values
        # The bare monitor has no final_drift attr: the latest reported drift stands in.
        final = client.get_metric_history(run.info.run_id, "final_drift/0_to_2")
        history = drift_history(trial.user_attrs)
        assert [m.value for m in final] == [history[-1][3]["0->2"]]
        assert run.data.metrics["value"] == trial.value
        assert run.data.tags["lradvisor.regime"] in {"sub-EoS", "beyond EoS"}
    assert parent.data.metrics["trials_complete"] == 4
    assert "alpha_fitted" in parent.data.metrics  # 4 distinct lrs of one architecture
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"figures/drift_vs_lr.png", "figures/predicted_vs_observed.png"} <= artifacts


def test_delivery_is_idempotent_and_replaces_half_sent_runs(store: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    study = _study("idempotent")
    study.optimize(_objective, n_trials=2)
    callback = MLflowCallback(store, spool=spool)
    for trial in study.trials:
        callback(study, trial)
    assert callback.flush().pending == 0
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("idempotent").experiment_id

    def trial_runs() -> list:
        return client.search_runs([experiment], "tags.`lradvisor.role` = 'trial'")

    before = {r.info.run_id for r in trial_runs()}
    # The same trial again (a retry after an unclear failure): no second run.
    payload = trial_payload(study, study.trials[0], tracking_uri=callback.tracking_uri)
    (spool / "1-00000000000000000001-again.json").write_text(json.dumps(payload))
    # A run of trial 1 cut off mid-send (no "logged" tag): deleted and sent again whole.
    (old,) = [r for r in trial_runs() if r.data.tags[TRIAL_TAG] == "1"]
    client.delete_run(old.info.run_id)
    half = client.create_run(
        experiment,
        tags={PARENT_KEY_TAG: parent_key("idempotent"), TRIAL_TAG: "1", "lradvisor.role": "trial"},
    )
    client.log_metric(half.info.run_id, "loss", 123.0, step=0)
    payload = trial_payload(study, study.trials[1], tracking_uri=callback.tracking_uri)
    (spool / "1-00000000000000000002-half.json").write_text(json.dumps(payload))

    result = sync(spool)
    assert (result.sent, result.pending) == (2, 0)
    runs = trial_runs()
    assert len(runs) == 2
    assert {r.info.run_id for r in runs} - before != set()  # trial 1 was re-created
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "loss")
        trial = study.trials[int(run.data.tags[TRIAL_TAG])]
        assert {m.step: m.value for m in history} == trial.intermediate_values


def test_unreachable_server_keeps_payloads_and_sync_sends_them(
    store: str, tmp_path: Path, monkeypatch
) -> None:
    spool = tmp_path / "spool"
    monkeypatch.setenv("LRADVISOR_MLFLOW_SPOOL", str(spool))
    warnings: list[str] = []
    study = _study("offline")
    callback = MLflowCallback(f"http://127.0.0.1:{_closed_port()}", warn=warnings.append)
    study.optimize(_objective, n_trials=3, callbacks=[callback])
    result = callback.finish(study, timeout=30)
    assert len(study.trials) == 3, "the study finished although MLflow was away"
    assert result.pending == 5 == len(list(spool.glob("*.json")))  # parent, 3 trials, summary
    assert len(warnings) == 1 and "lradvisor mlflow sync" in warnings[0]

    outcome = CliRunner().invoke(main, ["mlflow", "sync", "--json"])
    assert outcome.exit_code == 1
    assert json.loads(outcome.output)["pending"] == 5

    outcome = CliRunner().invoke(main, ["mlflow", "sync", "--tracking-uri", store])
    assert outcome.exit_code == 0, outcome.output
    assert "sent 5 payload(s)" in outcome.output
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("offline").experiment_id])
    assert len(runs) == 4


def test_study_run_without_mlflow_logs_nothing(tmp_path: Path, monkeypatch) -> None:
    spool = tmp_path / "spool"
    monkeypatch.setenv("LRADVISOR_MLFLOW_SPOOL", str(spool))
    study = {
        "name": "quiet",
        "model": {
            "model": {"hidden": [4]},
            "data": {"n": 40, "dim": 4, "classes": 2},
            "training": {"dtype": "float64"},
        },
        "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
        "metric": "train_loss",
        "budget": {"n_trials": 2, "steps": 10, "report_every": 5, "seed": 0},
        "sampler": {"type": "random"},
        "pruner": {"type": "none"},
    }
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(study))
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    outcome = CliRunner().invoke(
        main, ["study", "run", str(path), "--storage", storage, "--no-predict", "--no-mlflow"]
    )
    assert outcome.exit_code == 0, outcome.output
    assert "MLflow" not in outcome.output and not spool.exists()


def test_replication_result_is_logged_as_one_experiment_per_paper_experiment(
    store: str, tmp_path: Path
) -> None:
    from lradvisor.integrations.mlflow import log_replication

    figure = {
        "title": "drift vs η",
        "xlabel": "η",
        "ylabel": "drift",
        "logx": True,
        "logy": True,
        "series": [{"x": [0.1, 1.0], "y": [1e-3, 1e-2], "label": "E5", "style": "points"}],
    }
    result = {
        "mode": "quick",
        "commit": "abc",
        "date": "2026-11-29 05:00 UTC",
        "experiments": [
            {
                "id": "E5",
                "name": "drift scaling law",
                "kind": "drift_sweep",
                "file": "studies/E05.yaml",
                "published": "α = 1.16",
                "verdict": "reproduced",
                "reason": "all claims hold",
                "wall_time_s": 1.5,
                "values": {"alpha": 1.161, "per_lr": [{"lr": 0.1, "drift": 2e-3}], "note": "x"},
                "claims": [
                    {
                        "id": "alpha",
                        "published": "α = 1.16",
                        "metric": "alpha",
                        "check": "approx",
                        "holds": True,
                        "measured": 1.161,
                        "reason": "within",
                    },
                ],
                "figures": {"drift_vs_lr": figure},
            }
        ],
    }
    outcome = log_replication(result, tracking_uri=store, spool=tmp_path / "spool")
    assert (outcome.sent, outcome.pending) == (3, 0)  # the run, its rate and its claim
    # Logging the same result again sends nothing twice.
    log_replication(result, tracking_uri=store, spool=tmp_path / "spool")
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("paper E5 drift scaling law")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3
    (rate,) = [r for r in runs if r.data.tags["lradvisor.role"] == "rate"]
    assert rate.data.metrics == {"lr": 0.1, "drift": 2e-3}
    (parent,) = [r for r in runs if r.data.tags["lradvisor.role"] == "replication"]
    (claim,) = [r for r in runs if r.data.tags["lradvisor.role"] == "claim"]
    assert parent.data.metrics["alpha"] == 1.161
    assert parent.data.metrics["per_lr/0/drift"] == 2e-3
    assert parent.data.tags["lradvisor.verdict"] == "reproduced"
    assert claim.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert claim.data.metrics["measured"] == 1.161
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "figures")] == [
        "figures/drift_vs_lr.png"
    ]
    assert "verdicts.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
