"""The trial-monitoring core shared by the framework callbacks (Lightning, Hugging Face).

A framework calls :meth:`DriftRecorder.start` when training starts (the model and its
optimizer exist then), :meth:`observe` between the backward pass and the optimizer step,
:meth:`maybe_record` after each step and :meth:`finish` at the end. With an Optuna trial the
numbers go through :class:`~lradvisor.integrations._optuna_monitor.TrialMonitor` (the same
user_attrs as a hand-written objective, the stability-bound check before training); without
one only the drift is measured and returned as metrics for the framework's loggers.
"""

from __future__ import annotations

from typing import Any

import optuna
import torch

from lradvisor.errors import LRAdvisorError
from lradvisor.integrations._optuna_monitor import TrialMonitor
from lradvisor.measure.monitor import ConservationMonitor

__all__ = ["DriftRecorder", "log_to_active_mlflow_run"]


class DriftRecorder:
    """Drift (and, with a trial, bound and prediction) of one training run, every ``every`` steps."""

    def __init__(self, trial: Any, *, data: Any, loss: Any, every: int, **options: Any) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise LRAdvisorError(f"every_n_steps must be a positive integer, but got {every!r}.")
        self.trial = trial
        self.data = data
        self.loss = loss
        self.every = every
        self.options = options
        self.monitor: TrialMonitor | None = None
        self.conservation: ConservationMonitor | None = None
        self._last_step = -1

    def start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Build the monitor; with a trial, ask the pruner once before any step."""
        optimizer = _unwrapped(optimizer)
        if self.trial is None:
            self.conservation = ConservationMonitor(
                model, optimizer=optimizer, per_unit=False, allow_empty=True
            )
            return
        self.monitor = TrialMonitor(
            self.trial, model, optimizer, data=self.data, loss=self.loss, **self.options
        )
        self.conservation = self.monitor.conservation
        if self.monitor.should_prune():
            raise optuna.TrialPruned("pruned before training (beyond the stability bound)")

    def observe(self) -> None:
        if self.conservation is not None:
            self.conservation.observe()

    def maybe_record(self, step: int) -> dict[str, float] | None:
        """Metrics to log at ``step`` when it is a multiple of ``every`` (once per step)."""
        if self.conservation is None or step <= 0 or step % self.every or step == self._last_step:
            return None
        self._last_step = step
        if self.monitor is not None:
            numbers = self.monitor.record(step)
            observed = numbers["lradvisor.drift_observed"]
            predicted = numbers["lradvisor.drift_predicted"]
            ratio = numbers["lradvisor.drift_ratio"]
        else:
            reports = [r for r in self.conservation.report() if not r.name.endswith(":bias-free")]
            values = [r.drift_identity if r.identity_holds else r.drift_direct for r in reports]
            observed = float(sum(values)) if values else None
            predicted = ratio = None
        metrics = {
            "lradvisor/drift_observed": observed,
            "lradvisor/drift_predicted": predicted,
            "lradvisor/drift_ratio": ratio,
        }
        return {key: float(value) for key, value in metrics.items() if value is not None}

    def finish(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()


def _unwrapped(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (accelerate's AcceleratedOptimizer,
    Lightning's LightningOptimizer): the step hooks and param groups live there."""
    inner = getattr(optimizer, "optimizer", None)
    while isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
        optimizer, inner = inner, getattr(inner, "optimizer", None)
    return optimizer


def log_to_active_mlflow_run(metrics: dict[str, float], step: int) -> bool:
    """Log ``metrics`` to MLflow's active run, if MLflow is imported and a run is active."""
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is None or not metrics or mlflow.active_run() is None:
        return False
    mlflow.log_metrics(metrics, step=step)
    return True
