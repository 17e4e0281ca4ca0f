"""Experiment kinds: name → ``run(protocol, *, quick, progress) -> Outcome``.

``sweeps`` holds the kinds built on batched drift sweeps, ``spectral`` those built on
Hessian spectra and training observables. A study file names one of them as its ``kind``.
"""

from __future__ import annotations

from collections.abc import Callable

from lradvisor.errors import LRAdvisorError
from lradvisor.studies.paper.kinds import spectral, sweeps
from lradvisor.studies.paper.outcome import Outcome

Kind = Callable[..., Outcome]

KINDS: dict[str, Kind] = {**sweeps.KINDS, **spectral.KINDS}


def get_kind(name: str) -> Kind:
    """The kind registered under ``name``."""
    if name not in KINDS:
        raise LRAdvisorError(
            f"no experiment kind {name!r}; registered kinds: {', '.join(sorted(KINDS))}."
        )
    return KINDS[name]
