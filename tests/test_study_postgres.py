"""Studies on a real PostgreSQL server: K workers, exact budgets, heartbeat failure and retry."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from _postgres import postgres_server, postgres_url  # noqa: F401 - fixtures
from lradvisor.studies import run_study
from lradvisor.studies.objective import STEPS_ATTR
from lradvisor.studies.storage import OWNER_ATTR, StorageSpec

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny models: one torch thread (see conftest.one_thread)."""


TINY_MODEL = {
    "model": {"hidden": [8]},
    "data": {"source": "gaussian_mixture", "n": 60, "dim": 6, "classes": 3},
    "training": {"loss": "ce", "dtype": "float64"},
}


def _study_file(tmp_path: Path, *, steps: int, report_every: int, pruner: str) -> Path:
    study = {
        "name": "pg",
        "model": TINY_MODEL,
        "search_space": {
            "lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
            "width": {"type": "categorical", "choices": [4, 8]},
        },
        "metric": "train_loss",
        "budget": {"n_trials": 40, "steps": steps, "report_every": report_every, "seed": 0},
        "sampler": {"type": "random"},
        "pruner": {"type": pruner},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = StorageSpec("rdb", url).open()  # picks the installed driver for postgresql://
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_four_workers_finish_exactly_n_trials(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    study_file = _study_file(tmp_path, steps=40, report_every=10, pruner="median")
    started = time.perf_counter()
    summary = run_study(
        study_file,
        n_trials=40,
        workers=4,
        storage=postgres_url,
        study_name="four-workers",
        progress=False,
        predict=False,
    )
    elapsed = time.perf_counter() - started
    trials = _trials(postgres_url, "four-workers")
    states = [t.state for t in trials]
    numbers = [t.number for t in trials]
    assert summary.finished == 40
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 40
    assert len(trials) == 40, f"{len(trials)} trials stored: none may be lost or extra"
    assert sorted(numbers) == list(range(40)), "trial numbers unique and contiguous"
    assert len({t._trial_id for t in trials}) == 40
    pruned_at = [t.user_attrs[STEPS_ATTR] for t in trials if t.state == TrialState.PRUNED]
    assert all(steps in (0, 10, 20, 30) for steps in pruned_at), pruned_at  # never after 40
    assert summary.steps_saved_by_pruning == sum(40 - steps for steps in pruned_at)
    owners = {t.user_attrs[OWNER_ATTR] for t in trials}
    assert len(owners) >= 2, f"the work was not shared between workers: {owners}"
    print(f"4 workers, 40 trials: {states.count(TrialState.PRUNED)} pruned, {elapsed:.1f} s")


def _run_until_killed(study_file: str, url: str) -> None:
    torch.set_num_threads(1)
    run_study(
        study_file,
        n_trials=3,
        storage=url,
        study_name="killed",
        progress=False,
        predict=False,
        heartbeat_interval=1,
        grace_period=2,
    )


def _running_mid_trial(url: str, deadline: float) -> optuna.trial.FrozenTrial:
    while time.monotonic() < deadline:
        try:
            for trial in _trials(url, "killed"):
                if trial.state == TrialState.RUNNING and trial.user_attrs.get(STEPS_ATTR, 0) > 0:
                    return trial
        except KeyError:  # the study is not created yet
            pass
        time.sleep(0.05)
    raise AssertionError("no trial reached the middle of its training in time")


def test_killed_worker_trial_fails_by_heartbeat_and_is_retried(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811
) -> None:
    study_file = _study_file(tmp_path, steps=3000, report_every=100, pruner="none")
    worker = multiprocessing.get_context("spawn").Process(
        target=_run_until_killed, args=(str(study_file), postgres_url)
    )
    worker.start()
    try:
        victim = _running_mid_trial(postgres_url, time.monotonic() + 60)
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
    finally:
        if worker.is_alive():
            worker.kill()
    killed_at = time.perf_counter()
    stored = {t.number: t for t in _trials(postgres_url, "killed")}
    assert stored[victim.number].state == TrialState.RUNNING, "the killed trial is left RUNNING"

    summary = run_study(
        study_file,
        n_trials=3,
        storage=postgres_url,
        study_name="killed",
        progress=False,
        predict=False,
        heartbeat_interval=1,
        grace_period=2,
    )
    trials = {t.number: t for t in _trials(postgres_url, "killed")}
    assert trials[victim.number].state == TrialState.FAIL, "the stale trial failed by heartbeat"
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, "the failed trial was re-queued once"
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retries[0].params == victim.params, "the retry repeats the same parameters"
    finished = [t for t in trials.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3 == summary.finished
    assert summary.counts["FAIL"] == 1 and summary.retried == 1
    assert summary.counts["RUNNING"] == 0 and summary.counts["WAITING"] == 0
    print(
        f"killed trial {victim.number} retried; resume took {time.perf_counter() - killed_at:.1f} s"
    )
