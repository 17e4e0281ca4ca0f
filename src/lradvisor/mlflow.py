"""MLflow for lradvisor, the public path: ``from lradvisor.mlflow import MLflowCallback``.

The same objects as :mod:`lradvisor.integrations.mlflow` (kept as an alias): the study
callback that logs predicted versus observed drift for every trial, ``sync`` for what could
not be sent, and ``log_replication`` for ``lradvisor reproduce``.
"""

from __future__ import annotations

from lradvisor.integrations.mlflow import (
    MLflowCallback,
    SyncResult,
    log_replication,
    resolve_tracking_uri,
    sync,
)

__all__ = ["MLflowCallback", "SyncResult", "log_replication", "resolve_tracking_uri", "sync"]
