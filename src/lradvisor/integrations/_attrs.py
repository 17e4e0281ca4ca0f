"""The Optuna trial user_attrs lradvisor writes and reads: names, encoding, the drift history.

Every value is a JSON scalar (number, string, bool, None) or a JSON *string* holding a list
or a dict, so ``study.trials_dataframe()`` has plain columns (``to_parquet``, ``nunique``
and ``drop_duplicates`` work) and optuna-dashboard shows them as text. :func:`decode`
reads either form back (studies written by older versions stored dicts and lists).

The drift history is written in chunks of ``CHUNK`` reports (``lradvisor.drift_history.0``,
``.1``, …; the open chunk is rewritten at each report), so a report writes a bounded
amount, not the whole history; :func:`drift_history` joins the chunks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["CHUNK", "RECENT", "decode", "drift_history", "encode", "finite", "set_many"]

# Written once per trial, by the monitor.
LR = "lradvisor.lr"
LAMBDA_MAX = "lradvisor.lambda_max"
EOS_LR = "lradvisor.eos_lr"
BOUND = "lradvisor.bound"
BOUND_KIND = "lradvisor.bound_kind"
OPTIMIZER = "lradvisor.optimizer"
SCALE_INVARIANT = "lradvisor.scale_invariant"
CURVATURE = "lradvisor.curvature"
LOSS = "lradvisor.loss"
LAWS = "lradvisor.laws"
SKIPPED = "lradvisor.skipped"
IDENTITY_HOLDS = "lradvisor.identity_holds"
OUTSIDE_FRACTION = "lradvisor.outside_fraction"
WIDTH = "lradvisor.width"
# Written at each report.
STEPS_OBSERVED = "lradvisor.steps_observed"
DRIFT_OBSERVED = "lradvisor.drift_observed"
DRIFT_PREDICTED = "lradvisor.drift_predicted"
DRIFT_RATIO = "lradvisor.drift_ratio"
DRIFT_RECENT = "lradvisor.drift_recent"
DRIFT_HISTORY = "lradvisor.drift_history"
DIVERGED = "lradvisor.diverged"
# Written at the end of a trial.
FINAL_DRIFT = "lradvisor.final_drift"
FINAL_PREDICTED_DRIFT = "lradvisor.final_predicted_drift"
# Written by the pruner and the sampler.
PRUNE_REASON = "lradvisor.prune_reason"
PRUNE_DETAIL = "lradvisor.prune_detail"
PRUNE_REFUSED = "lradvisor.prune_refused"
PRIOR = "lradvisor.prior"
# Study user_attrs.
STUDY_TAU = "lradvisor.tau"
STUDY_CURVATURE = "lradvisor.curvature_cache"
STUDY_WIDTH_POINTS = "lradvisor.width_points"

CHUNK = 16  # reports per drift-history chunk
RECENT = 8  # [step, observed, predicted] entries kept in lradvisor.drift_recent


def finite(value: object) -> float | None:
    """A float JSON can hold, or None (NaN, ±inf, non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def encode(value: Any) -> Any:
    """Scalars as they are (non-finite floats as None); lists and dicts as a JSON string."""
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(_plain(value), separators=(",", ":"))
    if isinstance(value, float):
        return finite(value)
    return value


def decode(value: Any) -> Any:
    """The list or dict behind an encoded value (old studies stored them as is)."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def drift_history(attrs: Mapping[str, Any]) -> list[list[Any]]:
    """``[step, observed, predicted, {law: observed}, {law: predicted}]`` per report, joined
    from the chunks (or the single list older versions wrote)."""
    if DRIFT_HISTORY in attrs:
        return list(decode(attrs[DRIFT_HISTORY]) or [])
    entries: list[list[Any]] = []
    index = 0
    while f"{DRIFT_HISTORY}.{index}" in attrs:
        entries.extend(decode(attrs[f"{DRIFT_HISTORY}.{index}"]) or [])
        index += 1
    return entries


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float):
        return finite(value)
    return value


def set_many(trial: Any, values: Mapping[str, Any]) -> None:
    """Write several user_attrs of a running ``optuna.Trial`` (values already encoded).

    On SQLite and PostgreSQL they go in one transaction on a plain connection: a check that
    the trial is still running (Optuna's, on its state) and one upsert statement for all the
    rows, instead of a lookup, an upsert and a commit per key through Optuna's ORM session
    (those were most of the plugin's CPU on SQLite). Other RDB dialects get one ORM
    transaction; every other storage one ``set_user_attr`` per value. This uses Optuna's
    private RDB API (``optuna<6`` is pinned); where it is missing, the public path.
    """
    if not values:
        return
    if not _write_rdb(trial, values):
        for key, value in values.items():
            trial.set_user_attr(key, value)
        return
    cached = getattr(trial, "_cached_frozen_trial", None)
    if cached is not None:
        cached.user_attrs.update(values)


def _write_rdb(trial: Any, values: Mapping[str, Any]) -> bool:
    """One transaction on the trial's RDB storage; False where that path is not open (not an
    RDB storage, or Optuna's private API moved)."""
    storage = getattr(trial, "storage", None)
    backend = getattr(storage, "_backend", storage)
    try:
        from optuna.storages import RDBStorage
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
    except ImportError:  # a future Optuna: the public path
        return False
    if not isinstance(backend, RDBStorage):
        return False
    statement = _upsert_statement(backend.engine.name, models.TrialUserAttributeModel)
    if statement is not None:
        _upsert(backend, models, trial._trial_id, values, statement)
        return True
    setter = getattr(backend, "_set_trial_attr_without_commit", None)
    if setter is None:
        return False
    with _create_scoped_session(backend.scoped_session, True) as session:
        for key, value in values.items():
            setter(session, models.TrialUserAttributeModel, trial._trial_id, key, value)
    return True


def _upsert(backend: Any, models: Any, trial_id: int, values: Mapping, statement: Any) -> None:
    """The state check and the upsert of every row, in one transaction.

    The statement is built once per dialect and the check reads the state alone, so
    SQLAlchemy compiles each once (a multi-row VALUES of varying length, Optuna's ORM lookup
    of the whole trial and its session were most of a write's CPU). Errors are Optuna's:
    KeyError for a missing trial, UpdateFinishedTrialError for a finished one,
    StorageInternalError for a database error (the transaction is rolled back)."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    rows = [
        {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
        for key, value in values.items()
    ]
    try:
        with backend.engine.begin() as connection:
            state = connection.execute(
                select(models.TrialModel.state).where(models.TrialModel.trial_id == trial_id)
            ).scalar_one_or_none()
            if state is None:
                raise KeyError(models.NOT_FOUND_MSG)
            backend.check_trial_is_updatable(trial_id, state)
            connection.execute(statement, rows)
    except SQLAlchemyError as error:
        raise StorageInternalError(
            f"writing user_attrs {sorted(values)} of trial {trial_id} failed: {error}"
        ) from error


_STATEMENTS: dict[tuple[str, Any], Any] = {}


def _upsert_statement(dialect: str, table: Any) -> Any:
    """The dialect's upsert of one (trial_id, key, value_json) row, or None without one."""
    import sqlite3

    if (dialect, table) in _STATEMENTS:
        return _STATEMENTS[dialect, table]
    if dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        return None
    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.trial_id, table.key],
        set_={"value_json": statement.excluded.value_json},
    )
    _STATEMENTS[dialect, table] = statement
    return statement
