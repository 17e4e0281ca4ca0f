"""The former path of :mod:`lradvisor.optuna` (kept as an alias: import from there)."""

from __future__ import annotations

from lradvisor.optuna import (
    ConservationPruner,
    LoopMonitor,
    TheoryPriorSampler,
    TrialMonitor,
    monitor,
)

__all__ = ["ConservationPruner", "LoopMonitor", "TheoryPriorSampler", "TrialMonitor", "monitor"]
