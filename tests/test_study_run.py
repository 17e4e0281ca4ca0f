"""`lradvisor study run`: budgets on finished trials, resume, pruning savings, workers, α."""

from __future__ import annotations

import dataclasses
import json
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from lradvisor.cli import main
from lradvisor.studies import alpha_by_architecture, load_study, render_summary, run_study
from lradvisor.studies.objective import (
    ARCHITECTURE_ATTR,
    DRIFT_ATTR,
    STEPS_ATTR,
    StudyObjective,
)
from lradvisor.studies.storage import DEFAULT_JOURNAL, OWNER_ATTR, StorageSpec


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny models: one torch thread (see conftest.one_thread)."""


TINY_MODEL = {
    "model": {"hidden": [8]},
    "data": {"source": "gaussian_mixture", "n": 60, "dim": 6, "classes": 3},
    "training": {"loss": "ce", "dtype": "float64"},
}
LR_RANGE = {"type": "float", "low": 0.01, "high": 0.5, "log": True}


def _study_file(tmp_path: Path, **overrides) -> Path:
    study = {
        "name": "tiny",
        "model": TINY_MODEL,
        "search_space": {"lr": LR_RANGE, "width": {"type": "categorical", "choices": [4, 8]}},
        "metric": "val_loss",
        "budget": {"n_trials": 4, "steps": 20, "report_every": 10, "seed": 0},
        "sampler": {"type": "random"},
        "pruner": {"type": "none"},
        **overrides,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


def _trials(storage: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    kind = "rdb" if "://" in storage else "journal"
    study = optuna.load_study(study_name=name, storage=StorageSpec(kind, storage).open())
    return study.get_trials(deepcopy=False)


def test_run_reaches_the_target_records_attrs_and_resumes(tmp_path: Path) -> None:
    study_file, storage = _study_file(tmp_path), _sqlite(tmp_path)
    first = run_study(study_file, storage=storage, progress=False, predict=True)
    assert first.finished == 4 == first.counts["COMPLETE"]
    assert first.best_value is not None and set(first.best_params) == {"lr", "width"}
    assert isinstance(first.alpha_predicted, float), first.notes
    assert any("validation_fraction" in note for note in first.notes)
    trial = _trials(storage)[0]
    assert trial.user_attrs[STEPS_ATTR] == 20
    assert trial.user_attrs[ARCHITECTURE_ATTR] == f"width={trial.params['width']}"
    assert trial.value == trial.user_attrs["lradvisor.final_val_loss"]
    assert trial.user_attrs["lradvisor.final_train_loss"] > 0
    assert list(json.loads(trial.user_attrs[DRIFT_ATTR])) == ["0->2"]

    resumed = run_study(study_file, n_trials=6, storage=storage, progress=False, predict=False)
    trials = _trials(storage)
    assert resumed.finished == 6 and len(trials) == 6
    assert sorted(t.number for t in trials) == list(range(6))


def test_trials_beyond_the_bound_are_pruned_before_training(tmp_path: Path) -> None:
    study_file = _study_file(
        tmp_path,
        search_space={
            "lr": {"type": "categorical", "choices": [50.0]},
            "loss": {"type": "categorical", "choices": ["mse"]},
        },
        pruner={"type": "lradvisor", "base": "none"},
        budget={"n_trials": 3, "steps": 20, "report_every": 10},
    )
    summary = run_study(study_file, storage=_sqlite(tmp_path), progress=False, predict=False)
    assert summary.counts["PRUNED"] == 3 == summary.finished
    assert summary.pruned_before_training == 3
    assert summary.steps_saved_before_training == 3 * 20 == summary.steps_saved_by_pruning
    assert summary.prune_reasons == {"beyond_stability_bound": 3}
    assert all(t.user_attrs[STEPS_ATTR] == 0 for t in _trials(_sqlite(tmp_path)))
    assert summary.kept_as_contenders == 0
    assert "kept " not in render_summary(summary)
    kept = render_summary(dataclasses.replace(summary, kept_as_contenders=2))
    assert "kept       2 trial(s) the base pruner would have pruned" in kept


def test_dead_local_worker_trial_is_failed_and_retried(tmp_path: Path) -> None:
    """File storages have no heartbeat: a RUNNING trial of a dead local process is retried."""
    journal = str(tmp_path / "studies.journal")
    study = optuna.create_study(study_name="tiny", storage=StorageSpec("journal", journal).open())
    orphan = study.ask()
    orphan.suggest_float("lr", 0.01, 0.5, log=True)
    orphan.suggest_categorical("width", [4, 8])
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    )
    orphan.set_user_attr(OWNER_ATTR, f"{socket.gethostname()}:{int(finished.stdout)}:")

    summary = run_study(
        _study_file(tmp_path), n_trials=2, storage=journal, progress=False, predict=False
    )
    trials = {t.number: t for t in _trials(journal)}
    assert trials[orphan.number].state == TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == orphan.number]
    assert retry.state == TrialState.COMPLETE and retry.params == orphan.params
    assert summary.finished == 2 and summary.retried == 1 and summary.counts["FAIL"] == 1


@pytest.mark.slow
def test_two_workers_share_the_default_journal(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    summary = run_study(_study_file(tmp_path), n_trials=6, workers=2, progress=False, predict=False)
    assert Path(DEFAULT_JOURNAL).is_file()
    trials = _trials(DEFAULT_JOURNAL)
    assert summary.finished == 6 == len(trials), "exactly n_trials, none extra"
    assert {t.state for t in trials} == {TrialState.COMPLETE}


def test_cli_study_run_writes_json_and_errors_in_one_line(tmp_path: Path) -> None:
    study_file, runner = _study_file(tmp_path), CliRunner()
    out = tmp_path / "summary.json"
    args = ["study", "run", str(study_file), "--n-trials", "2", "--no-predict"]
    result = runner.invoke(main, [*args, "--storage", _sqlite(tmp_path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "finished   2 of 2" in result.output
    data = json.loads(out.read_text())
    assert data["finished"] == 2 and data["study_name"] == "tiny"

    bad = _study_file(tmp_path, sampler={"type": "cmaes"})
    result = runner.invoke(main, ["study", "run", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "field 'sampler.type'" in result.output


def test_objective_pickles_without_its_data_cache(tmp_path: Path) -> None:
    objective = StudyObjective(load_study(_study_file(tmp_path)))
    objective._shared["data"] = object()
    clone = pickle.loads(pickle.dumps(objective))
    assert clone.study == objective.study and clone._shared == {}


def _trial(lr: float, architecture: str, drift: float | None) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        params={"lr": lr, "width": 8},
        distributions={
            "lr": FloatDistribution(1e-4, 10.0, log=True),
            "width": CategoricalDistribution([8]),
        },
        value=1.0,
        user_attrs={ARCHITECTURE_ATTR: architecture, DRIFT_ATTR: {"0->2": drift}},
    )


def test_alpha_by_architecture_recovers_a_power_law() -> None:
    lrs = [0.01, 0.03, 0.1, 0.3]
    trials = [_trial(lr, "width=8", -0.7 * lr**1.5) for lr in lrs]
    trials += [_trial(lr, "width=16", lr**2) for lr in lrs[:2]]  # too few distinct lr
    trials.append(_trial(0.05, "width=8", None))  # a diverged drift is left out
    (group,) = alpha_by_architecture(trials)
    assert group.architecture == "width=8" and group.law == "0->2"
    assert group.lrs == tuple(lrs) and group.n_trials == 4
    assert group.alpha == pytest.approx(1.5, abs=1e-9)


def test_mixed_loss_template_trains_on_the_mixed_loss(tmp_path: Path) -> None:
    """loss: mix with ce_weight 1 is cross-entropy: the same trial value to the bit."""
    values = {}
    for name, training in (
        ("ce", {"loss": "ce", "dtype": "float64"}),
        ("mix", {"loss": "mix", "ce_weight": 1.0, "dtype": "float64"}),
    ):
        study_file = _study_file(
            tmp_path,
            name=name,
            model={**TINY_MODEL, "training": training},
            search_space={"lr": {"type": "categorical", "choices": [0.1]}},
            metric="train_loss",
            budget={"n_trials": 1, "steps": 20, "report_every": 10, "seed": 0},
        )
        summary = run_study(
            study_file, storage=_sqlite(tmp_path), progress=False, predict=False, mlflow=False
        )
        values[name] = summary.best_value
    assert values["mix"] == values["ce"]
