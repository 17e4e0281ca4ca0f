"""`lradvisor reproduce`: run the paper's experiments from their study files and judge them.

:func:`reproduce` loads and validates every chosen study file first (a bad file stops the
run before any training), runs each experiment's kind, checks its published claims and
returns a :class:`ReplicationResult`; :func:`render_table` is the text table the CLI prints.
"""

from __future__ import annotations

import datetime
import math
import platform
import subprocess
import textwrap
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lradvisor.errors import ConfigError, LRAdvisorError
from lradvisor.replication.claims import ClaimResult, Verdict, format_value, judge
from lradvisor.replication.kinds import KINDS, VALIDATORS, get_kind
from lradvisor.replication.kinds.sweeps import PROTOCOL, clear_cache
from lradvisor.replication.outcome import Figure, Outcome, Progress
from lradvisor.replication.spec import Experiment, find_experiments

ERROR = "error"  # the kind could not run (a row, not an abort: the other experiments go on)
QUICK_NOTE = "QUICK mode: fewer seeds, steps and grid points than the paper's protocols"
UNITS_PER_EXPERIMENT = 1000  # progress units per experiment


@dataclass
class ExperimentRow:
    """One experiment run and judged."""

    id: str
    name: str
    kind: str
    file: str
    notes: str
    verdict: str
    reason: str
    claims: tuple[ClaimResult, ...]
    wall_time: float
    outcome: Outcome | None

    @property
    def published(self) -> str:
        return "; ".join(result.claim.published for result in self.claims)

    @property
    def measured(self) -> str:
        return "; ".join(_measured(result) for result in self.claims)

    def as_dict(self) -> dict[str, Any]:
        outcome = self.outcome
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "file": self.file,
            "published": self.published,
            "measured": self.measured,
            "verdict": self.verdict,
            "reason": self.reason,
            "wall_time_s": round(self.wall_time, 2),
            "claims": [result.as_dict() for result in self.claims],
            "study_notes": self.notes,
            "notes": [] if outcome is None else outcome.notes,
            "values": None if outcome is None else outcome.values,
            "figures": {}
            if outcome is None
            else {k: figure_dict(f) for k, f in outcome.figures.items()},
        }


@dataclass
class ReplicationResult:
    """Every experiment's row, the mode, the total time, and where the code stood."""

    rows: list[ExperimentRow]
    quick: bool
    wall_time: float
    commit: str
    date: str
    machine: str = field(default_factory=lambda: f"{platform.machine()}, {_cpus()} CPUs")

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.verdict] = counts.get(row.verdict, 0) + 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become None)."""
        return json_safe(
            {
                "mode": "quick" if self.quick else "full",
                "commit": self.commit,
                "date": self.date,
                "machine": self.machine,
                "wall_time_s": round(self.wall_time, 2),
                "verdicts": self.counts(),
                "experiments": [row.as_dict() for row in self.rows],
            }
        )


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, tuples as lists, NaN/±inf as None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def _measured(result: ClaimResult) -> str:
    mark = {True: "✓", False: "✗", None: "?"}[result.holds]
    return f"{mark} {format_value(result.measured)}"


def figure_dict(figure: Figure) -> dict[str, Any]:
    """A figure as plain data: the spec :func:`lradvisor.plots.draw` and MLflow take."""
    return {
        "title": figure.title,
        "xlabel": figure.xlabel,
        "ylabel": figure.ylabel,
        "logx": figure.logx,
        "logy": figure.logy,
        "series": [
            {"label": s.label, "style": s.style, "x": list(s.x), "y": list(s.y)}
            for s in figure.series
        ],
    }


def git_commit(where: Path | None = None) -> str:
    """The checkout's commit (with "+ local changes" when the tree differs), or "unknown"."""
    folder = where or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, check=True, timeout=30
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit} + local changes" if dirty else commit


def reproduce(
    ids: Iterable[str] | str = "all",
    *,
    quick: bool = False,
    progress: Progress | None = None,
    studies_dir: str | Path | None = None,
) -> ReplicationResult:
    """Run the chosen experiments (ids like "E5", or "all") and judge their claims.

    ``progress(done, total, label)`` counts 1000 units per experiment.
    """
    experiments = find_experiments(ids, studies_dir=studies_dir, kinds=KINDS)
    for experiment in experiments:
        if experiment.kind in VALIDATORS:
            with _in_file(experiment, quick):
                VALIDATORS[experiment.kind](experiment.protocol_for(quick=quick))
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    clear_cache()
    rows = []
    try:
        for index, experiment in enumerate(experiments):
            rows.append(_run(experiment, quick, index, len(experiments), progress))
    finally:
        clear_cache()
    return ReplicationResult(
        rows=rows,
        quick=quick,
        wall_time=time.perf_counter() - started,
        commit=git_commit(),
        date=date,
    )


def _run(
    experiment: Experiment, quick: bool, index: int, count: int, progress: Progress | None
) -> ExperimentRow:
    total = count * UNITS_PER_EXPERIMENT

    def report(done: int, of: int, label: str) -> None:
        if progress is not None:
            share = min(done / of, 1.0) if of else 0.0
            progress(
                index * UNITS_PER_EXPERIMENT + int(UNITS_PER_EXPERIMENT * share),
                total,
                f"{experiment.id} {label}",
            )

    report(0, 1, experiment.kind)
    kind = get_kind(experiment.kind)
    started = time.perf_counter()
    try:
        with _in_file(experiment, quick):
            outcome = kind(experiment.protocol_for(quick=quick), quick=quick, progress=report)
    except ConfigError:
        raise
    except LRAdvisorError as exc:
        wall = time.perf_counter() - started
        verdict = Verdict(ERROR, f"the experiment could not run: {exc}", ())
        return _row(experiment, verdict, wall, None)
    wall = time.perf_counter() - started
    outcome.wall_time = wall
    report(1, 1, "done")
    return _row(experiment, judge(experiment.claims, outcome.values), wall, outcome)


@contextmanager
def _in_file(experiment: Experiment, quick: bool) -> Iterator[None]:
    """A kind's protocol error, re-raised naming the study file and its protocol field."""
    try:
        yield
    except ConfigError as exc:
        if exc.file != PROTOCOL:
            raise
        field_name = f"{'quick/' if quick else ''}protocol.{exc.field}"
        raise ConfigError(experiment.file, field_name, exc.expected, exc.got) from None


def _row(
    experiment: Experiment, verdict: Verdict, wall: float, outcome: Outcome | None
) -> ExperimentRow:
    return ExperimentRow(
        id=experiment.id,
        name=experiment.name,
        kind=experiment.kind,
        file=experiment.file,
        notes=experiment.notes,
        verdict=verdict.verdict,
        reason=verdict.reason,
        claims=verdict.results,
        wall_time=wall,
        outcome=outcome,
    )


# ----------------------------------------------------------------------------- text table

_PUBLISHED_WIDTH = 52
_MEASURED_WIDTH = 36


def render_table(result: ReplicationResult) -> str:
    """The table `lradvisor reproduce` prints: one line per claim, a reason per experiment."""
    mode = QUICK_NOTE if result.quick else "full protocols"
    lines = [
        f"lradvisor reproduce: {len(result.rows)} experiment(s), {mode}, "
        f"{result.wall_time:.1f} s, commit {result.commit}",
        "",
        f"{'exp':<5}{'name':<30}{'published claim':<{_PUBLISHED_WIDTH + 2}}"
        f"{'measured':<{_MEASURED_WIDTH + 2}}{'verdict':<16}{'time':>7}",
    ]
    for row in result.rows:
        claims = row.claims or ()
        first = True
        for claim in claims:
            published = textwrap.wrap(claim.claim.published, _PUBLISHED_WIDTH) or [""]
            measured = textwrap.wrap(_measured(claim), _MEASURED_WIDTH) or [""]
            for i in range(max(len(published), len(measured))):
                head = f"{row.id:<5}{_cut(row.name, 28):<30}" if first else " " * 35
                tail = f"{row.verdict:<16}{row.wall_time:>6.1f}s" if first else ""
                lines.append(
                    f"{head}{_at(published, i):<{_PUBLISHED_WIDTH + 2}}"
                    f"{_at(measured, i):<{_MEASURED_WIDTH + 2}}{tail}".rstrip()
                )
                first = False
        if not claims:
            lines.append(
                f"{row.id:<5}{_cut(row.name, 28):<30}{'':<{_PUBLISHED_WIDTH + _MEASURED_WIDTH + 4}}{row.verdict:<16}{row.wall_time:>6.1f}s"
            )
        lines.append(f"{'':<5}→ {row.reason}")
    counts = ", ".join(f"{count} {verdict}" for verdict, count in result.counts().items())
    lines += ["", f"verdicts: {counts}"]
    if result.quick:
        lines.append(f"({QUICK_NOTE}; run without --quick for the published protocols)")
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _at(parts: list[str], index: int) -> str:
    return parts[index] if index < len(parts) else ""
