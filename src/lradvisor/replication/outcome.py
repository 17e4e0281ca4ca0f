"""What an experiment kind returns: named measured values, figure data, notes.

Every experiment kind is a function

    run(protocol: dict, *, quick: bool, progress: Progress | None) -> Outcome

registered under its kind name in :mod:`lradvisor.replication.kinds`. ``protocol`` is the
study file's ``protocol`` mapping with the ``quick`` overrides already merged in when
``quick`` is true. The claims of the study file name keys of ``Outcome.values``; the runner,
not the kind, decides verdicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# progress(done, total, label): called as trials/steps of work finish (a tqdm bar in the CLI).
Progress = Callable[[int, int, str], None]


@dataclass
class Series:
    """One plotted line or point set: the report draws it, the JSON keeps it."""

    x: list[float]
    y: list[float]
    label: str = ""
    style: str = "line"  # "line", "points", "fit" (dashed), "prediction" (dotted)


@dataclass
class Figure:
    """Data of one figure of the report (drawn by the report, never by a kind)."""

    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    logx: bool = False
    logy: bool = False


@dataclass
class Outcome:
    """Measured values (JSON-able: numbers, strings, lists, dicts of them), figures, notes."""

    values: dict[str, Any]
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_time: float = 0.0
