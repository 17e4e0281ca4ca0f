"""Optuna studies from a study file: schema, objective, storage, runner.

``lradvisor study run STUDY.yaml`` is :func:`run_study`; a study file is validated by
:func:`load_study` before any trial runs.
"""

from __future__ import annotations

from lradvisor.studies.runner import (
    AlphaGroup,
    StudySummary,
    alpha_by_architecture,
    render_summary,
    run_study,
    summarize,
)
from lradvisor.studies.schema import StudySpec, load_study, parse_study

__all__ = [
    "AlphaGroup",
    "StudySpec",
    "StudySummary",
    "alpha_by_architecture",
    "load_study",
    "parse_study",
    "render_summary",
    "run_study",
    "summarize",
]
