"""Experiment kinds: name → ``run(protocol, *, quick, progress) -> Outcome``.

One module per kind; ``sweeps`` and ``common`` hold what the sweep kinds and the spectral
kinds share, ``modes`` the per-mode algebra of the spectral formula. A study file names one
kind as its ``kind``.
"""

from __future__ import annotations

from collections.abc import Callable

from lradvisor.errors import LRAdvisorError
from lradvisor.replication.kinds import (
    ck_validation,
    coupling,
    drift,
    grid,
    hessian_evolution,
    hessian_time,
    spectral_prediction,
    tau,
    width_switch,
)
from lradvisor.replication.outcome import Outcome

Kind = Callable[..., Outcome]

KINDS: dict[str, Kind] = {
    "drift_sweep": drift.drift_sweep,
    "grid_sweep": grid.grid_sweep,
    "spectral_prediction": spectral_prediction.spectral_prediction,
    "hessian_time_prediction": hessian_time.hessian_time_prediction,
    "activation_coupling": coupling.activation_coupling,
    "width_switch_rate": width_switch.width_switch_rate,
    "hessian_evolution": hessian_evolution.hessian_evolution,
    "ck_validation": ck_validation.ck_validation,
    "tau_fit": tau.tau_fit,
}

# Kinds whose protocol can be checked before any training (a bad file stops the run early).
VALIDATORS: dict[str, Callable[[dict], None]] = {
    "drift_sweep": drift.validate,
    "grid_sweep": grid.validate,
}


def get_kind(name: str) -> Kind:
    """The kind registered under ``name``."""
    if name not in KINDS:
        raise LRAdvisorError(
            f"no experiment kind {name!r}; registered kinds: {', '.join(sorted(KINDS))}."
        )
    return KINDS[name]
