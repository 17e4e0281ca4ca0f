"""_attrs.set_many on real RDB storages: one multi-row upsert, the same result as Optuna's
per-key set_user_attr, and the same refusal once the trial has finished."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from _postgres import postgres_server, postgres_url  # noqa: F401 - fixtures
from lradvisor.integrations import _attrs
from lradvisor.studies.storage import StorageSpec


def _check(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study(storage=StorageSpec("rdb", url).open())
    trial = study.ask()
    trial.set_user_attr("kept", "as it was")
    backend = getattr(study._storage, "_backend", study._storage)

    def per_key(*args, **kwargs):
        raise AssertionError("set_many went key by key: the multi-row upsert was not used")

    monkeypatch.setattr(backend, "_set_trial_attr_without_commit", per_key)
    _attrs.set_many(trial, {"a": 1, "b": 0.5, "c": '{"x":[1,2]}', "d": None, "e": True})
    _attrs.set_many(trial, {"a": 2, "f": "new"})  # an update and an insert in one statement
    expected = {"kept": "as it was", "a": 2, "b": 0.5, "c": '{"x":[1,2]}', "d": None}
    expected |= {"e": True, "f": "new"}
    assert study._storage.get_trial(trial._trial_id).user_attrs == expected
    other = optuna.load_study(study_name=study.study_name, storage=StorageSpec("rdb", url).open())
    assert other.trials[0].user_attrs == expected  # what another process reads
    study.tell(trial, 1.0)
    with pytest.raises(RuntimeError, match="finished"):
        _attrs.set_many(trial, {"a": 3})
    assert study._storage.get_trial(trial._trial_id).user_attrs["a"] == 2
    missing = optuna.Trial(study, trial._trial_id)
    missing._trial_id = trial._trial_id + 1000
    with pytest.raises(KeyError):  # Optuna's error for a trial that is not there
        _attrs.set_many(missing, {"a": 4})
    # The statement is compiled once per dialect and reused.
    dialect = backend.engine.name
    table = optuna.storages._rdb.models.TrialUserAttributeModel
    assert _attrs._upsert_statement(dialect, table) is _attrs._upsert_statement(dialect, table)


def test_set_many_on_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _check(f"sqlite:///{tmp_path / 'attrs.db'}", monkeypatch)


@pytest.mark.slow
def test_set_many_on_postgresql(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    _check(postgres_url, monkeypatch)  # StorageSpec picks the installed driver for postgresql://
