"""α fitted across an Optuna study's trials: |drift| ∝ lr^α within each architecture.

Reads only trial user_attrs (no torch): ``lradvisor.final_drift`` (written by the study-file
objective and by ``TrialMonitor.finish``) or, for objectives that never called it, the last
entry of the reported drift history.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial

from lradvisor.integrations import _attrs

__all__ = ["MIN_DISTINCT_LRS", "AlphaGroup", "alpha_by_architecture", "final_drift"]

MIN_DISTINCT_LRS = 3
ARCHITECTURE_ATTR = "lradvisor.architecture"
DRIFT_ATTR = _attrs.FINAL_DRIFT
PREDICTED_DRIFT_ATTR = _attrs.FINAL_PREDICTED_DRIFT


def final_drift(trial: FrozenTrial) -> tuple[dict, dict]:
    """``({law: observed}, {law: predicted})`` at the trial's last measured step."""
    attrs = trial.user_attrs
    if DRIFT_ATTR in attrs:
        return _attrs.decode(attrs.get(DRIFT_ATTR)) or {}, _attrs.decode(
            attrs.get(PREDICTED_DRIFT_ATTR)
        ) or {}
    history = _attrs.drift_history(attrs)
    if not history:
        return {}, {}
    return history[-1][3] or {}, history[-1][4] or {}


@dataclass(frozen=True)
class AlphaGroup:
    """α fitted on the completed trials of one architecture: |drift of ``law``| vs lr."""

    architecture: str
    law: str
    n_trials: int
    lrs: tuple[float, ...]
    alpha: float
    alpha_ci: tuple[float, float]
    r2: float


def alpha_by_architecture(trials: list[FrozenTrial]) -> list[AlphaGroup]:
    """Fit |drift| ∝ lr^α per architecture over completed trials with ≥ 3 distinct lr.

    The drift is the first law's final drift (``lradvisor.final_drift``); trials of one
    architecture with the same lr are the repeated columns of
    :func:`~lradvisor.theory.fit_power_law`.
    """
    from lradvisor.theory import fit_power_law

    groups: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    laws: dict[str, str] = {}
    for trial in trials:
        drift, _ = final_drift(trial)
        if not drift or "lr" not in trial.params:
            continue
        law, value = next(iter(drift.items()))
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value == 0:
            continue
        key = str(trial.user_attrs.get(ARCHITECTURE_ATTR, ""))
        laws.setdefault(key, law)
        groups[key][float(trial.params["lr"])].append(abs(float(value)))
    fits = []
    for key, by_lr in sorted(groups.items()):
        if len(by_lr) < MIN_DISTINCT_LRS:
            continue
        lrs = np.array(sorted(by_lr))
        width = max(len(v) for v in by_lr.values())
        table = np.full((len(lrs), width), np.nan)
        for row, lr in enumerate(lrs):
            table[row, : len(by_lr[lr])] = by_lr[lr]
        fit = fit_power_law(lrs, table)
        fits.append(
            AlphaGroup(
                architecture=key,
                law=laws[key],
                n_trials=int(np.isfinite(table).sum()),
                lrs=tuple(float(v) for v in lrs),
                alpha=float(fit.alpha),
                alpha_ci=(float(fit.alpha_ci[0]), float(fit.alpha_ci[1])),
                r2=float(fit.r2),
            )
        )
    return fits
