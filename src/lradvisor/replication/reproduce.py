"""`lradvisor reproduce`: run the paper's experiments from their study files and judge them.

:func:`reproduce` loads and validates every chosen study file first (a bad file stops the
run before any training), runs each experiment's kind, checks its published claims and
returns a :class:`ReplicationResult`; :func:`render_table` is the text table the CLI prints.

With ``stability`` every experiment runs twice more — with one torch thread, and in a
child process whose PyTorch CPU kernels use another vector instruction set
(``ATEN_CPU_CAPABILITY``, the rounding another machine would have) — and each claim keeps
the value of every run: a claim whose verdict changes between runs cannot be settled, and
measured values are printed to the digits the runs agree on.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lradvisor.errors import ConfigError, LRAdvisorError
from lradvisor.replication.claims import (
    NULL_MARGIN,
    ClaimResult,
    MissingMetric,
    Verdict,
    format_value,
    judge,
    lookup,
    verdict_of,
)
from lradvisor.replication.kinds import KINDS, VALIDATORS, get_kind
from lradvisor.replication.kinds.sweeps import PROTOCOL, clear_cache
from lradvisor.replication.outcome import Figure, Outcome, Progress
from lradvisor.replication.spec import Experiment, find_experiments

ERROR = "error"  # the kind could not run (a row, not an abort: the other experiments go on)
QUICK_NOTE = "QUICK mode: fewer seeds, steps and grid points than the paper's protocols"
UNITS_PER_EXPERIMENT = 1000  # progress units per experiment
THREADS_RUN = "1 thread"
MARK = {True: "✓", False: "✗", None: "?"}


@dataclass
class ExperimentRow:
    """One experiment run and judged.

    ``runs``: for each stability run (label), each claim's ``{"measured", "holds"}`` there.
    """

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
    runs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def published(self) -> str:
        return "; ".join(result.claim.published for result in self.claims if not result.extra)

    @property
    def measured(self) -> str:
        return "; ".join(self.shown(result) for result in self.claims if not result.extra)

    def values_across_runs(self, claim_id: str) -> list[Any]:
        """The claim's measured value in this run and every stability run."""
        main = next(r.measured for r in self.claims if r.claim.id == claim_id)
        return [main, *(run[claim_id]["measured"] for run in self.runs.values() if claim_id in run)]

    def digits(self, claim_id: str) -> int:
        """Significant digits on which every run agrees (4 without stability runs)."""
        return stable_digits(self.values_across_runs(claim_id))

    def shown(self, result: ClaimResult) -> str:
        """``✓ 1.161 [1.151, 1.171] seeds`` — the mark and the value, to the digits the runs
        agree on, with its spread over seeds and over the stability runs."""
        digits = self.digits(result.claim.id)
        text = f"{MARK[result.holds]} {format_value(result.measured, digits=digits)}"
        seeds = self.seed_spread(result.claim)
        if seeds is not None:
            text += f" [{seeds[0]:.{digits}g}, {seeds[1]:.{digits}g}] seeds"
        spread = self.spread_text(result.claim.id)
        return f"{text} {spread}" if spread else text

    def seed_spread(self, claim) -> list[float] | None:
        """The claim's spread over seeds ([low, high]) when its study file names one."""
        if claim.spread is None or self.outcome is None:
            return None
        try:
            value = lookup(self.outcome.values, claim.spread)
        except MissingMetric:
            return None
        if isinstance(value, (list, tuple)) and len(value) == 2:
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
                return [float(value[0]), float(value[1])]
        return None

    def spread_text(self, claim_id: str) -> str:
        values = self.values_across_runs(claim_id)
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) < 2 or len(numbers) != len(values):
            return ""
        low, high = min(numbers), max(numbers)
        if low == high:
            return "(runs agree)"
        return f"(runs {low:.4g}–{high:.4g})"

    def as_dict(self) -> dict[str, Any]:
        outcome = self.outcome
        claims = []
        for result in self.claims:
            entry = result.as_dict()
            entry["digits"] = self.digits(result.claim.id)
            entry["seed_spread"] = self.seed_spread(result.claim)
            entry["runs"] = {label: run.get(result.claim.id) for label, run in self.runs.items()}
            claims.append(entry)
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
            "claims": claims,
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
    stability: list[str] = field(default_factory=list)

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
                "stability_runs": self.stability,
                "verdicts": self.counts(),
                "experiments": [row.as_dict() for row in self.rows],
            }
        )


def stable_digits(values: list[Any], *, most: int = 4) -> int:
    """The largest number of significant digits (1 … ``most``) at which all values agree.

    Lists agree element by element; values that are not numbers do not limit the digits.
    """
    numbers = [v for v in values if v is not None]
    if len(numbers) < 2:
        return most
    if all(isinstance(v, list) for v in numbers):
        if len({len(v) for v in numbers}) != 1:
            return most
        return min(
            (stable_digits(list(column), most=most) for column in zip(*numbers, strict=True)),
            default=most,
        )
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        return most
    for digits in range(most, 0, -1):
        if len({format_value(v, digits=digits) for v in numbers}) == 1:
            return digits
    return 1


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, tuples as lists, NaN as None and ±inf
    as the strings "inf" / "-inf" (a bound such as "beyond the grid", kept readable)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def json_revive(value: Any) -> Any:
    """The inverse of :func:`json_safe` for infinities ("inf" → math.inf)."""
    if isinstance(value, dict):
        return {k: json_revive(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_revive(v) for v in value]
    if value in ("inf", "-inf"):
        return math.inf if value == "inf" else -math.inf
    return value


def _cpus() -> int:
    return os.cpu_count() or 1


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
    stability: bool = False,
) -> ReplicationResult:
    """Run the chosen experiments (ids like "E5", or "all") and judge their claims.

    ``progress(done, total, label)`` counts 1000 units per experiment. ``stability``: run
    everything twice more (one thread; another CPU vector code) and judge each claim on
    all three runs (module docstring).
    """
    experiments = find_experiments(ids, studies_dir=studies_dir, kinds=KINDS)
    for experiment in experiments:
        if experiment.kind in VALIDATORS:
            with _in_file(experiment, quick):
                VALIDATORS[experiment.kind](experiment.protocol_for(quick=quick))
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = _run_all(experiments, quick, progress)
    labels = []
    if stability:
        ids_text = [e.id for e in experiments]
        alternatives = {THREADS_RUN: _threads_run(experiments, quick)}
        _, other = _vector_code()
        if other is not None:
            alternatives[f"CPU kernels {other}"] = _isa_run(ids_text, quick, studies_dir, other)
        labels = list(alternatives)
        for row in rows:
            apply_stability(
                row, {label: runs.get(row.id, {}) for label, runs in alternatives.items()}
            )
    return ReplicationResult(
        rows=rows,
        quick=quick,
        wall_time=time.perf_counter() - started,
        commit=git_commit(),
        date=date,
        stability=labels,
    )


def _run_all(
    experiments: list[Experiment], quick: bool, progress: Progress | None
) -> list[ExperimentRow]:
    clear_cache()
    try:
        return [
            _run(experiment, quick, index, len(experiments), progress)
            for index, experiment in enumerate(experiments)
        ]
    finally:
        clear_cache()


def _claim_table(row: ExperimentRow) -> dict[str, dict[str, Any]]:
    return {r.claim.id: {"measured": r.measured, "holds": r.holds} for r in row.claims}


def _threads_run(experiments: list[Experiment], quick: bool) -> dict[str, dict]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = _run_all(experiments, quick, None)
    finally:
        torch.set_num_threads(threads)
    return {row.id: _claim_table(row) for row in rows}


def _vector_code() -> tuple[str | None, str | None]:
    """(PyTorch's CPU capability here, another one to compare with), e.g. (AVX512, avx2)."""
    try:
        import torch

        current = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        return None, None
    other = {"AVX512": "avx2", "AVX2": "default"}.get(str(current).upper())
    return current, other


def _isa_run(ids: list[str], quick: bool, studies_dir: str | Path | None, capability: str) -> dict:
    """The same experiments in a child process with ATEN_CPU_CAPABILITY=``capability``."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run.json"
        command = [sys.executable, "-m", "lradvisor.cli", "reproduce", *ids, "--json", str(out)]
        command += ["--no-mlflow"] + (["--quick"] if quick else [])
        if studies_dir is not None:
            command += ["--studies", str(studies_dir)]
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if not out.exists():
            raise LRAdvisorError(
                f"the stability run with ATEN_CPU_CAPABILITY={capability} failed: "
                + (done.stderr.strip().splitlines() or ["no output"])[-1]
            )
        data = json.loads(out.read_text())
    return {
        row["id"]: {
            c["id"]: {"measured": c["measured"], "holds": c["holds"]} for c in row["claims"]
        }
        for row in data["experiments"]
    }


def apply_stability(row: ExperimentRow, runs: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Keep every run's claim values; a claim whose verdict differs between runs is unsettled."""
    row.runs = runs
    if not row.claims:
        return
    results = []
    for result in row.claims:
        others = [run[result.claim.id] for run in runs.values() if result.claim.id in run]
        changed = [o for o in others if o["holds"] != result.holds]
        if changed:
            labels = [label for label, run in runs.items() if run.get(result.claim.id) in changed]
            reason = (
                f"{result.claim.id} is unstable: {MARK[result.holds]} here, "
                + ", ".join(
                    f"{MARK[run[result.claim.id]['holds']]} with {label}"
                    for label, run in runs.items()
                    if label in labels
                )
                + f" ({result.reason})"
            )
            result = ClaimResult(
                result.claim,
                None,
                result.measured,
                reason,
                result.reading_holds,
                result.literal_holds,
                result.nulls,
                result.beaten,
                result.versus,
            )
        results.append(result)
    row.claims = tuple(results)
    counted = [r for r in results if not r.extra]
    if counted:
        row.verdict = verdict_of(counted)
        if any(r.holds is not True for r in counted):
            held = sum(r.holds is True for r in counted)
            row.reason = "; ".join(r.reason for r in counted if r.holds is not True)
            if held:
                row.reason += f" ({held} of {len(counted)} claims hold)"


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

_PUBLISHED_WIDTH = 50
_READING_WIDTH = 26
_MEASURED_WIDTH = 30


def claim_details(row: ExperimentRow, result: ClaimResult) -> list[str]:
    """The lines under a claim: the literal reading beside a relaxed one, the nulls."""
    lines = []
    if result.claim.check == "correlation" and result.literal_holds is not None:
        lines.append(
            f"literal reading ≈ {result.claim.value:g} (± 10 %): {MARK[result.literal_holds]}"
        )
    if result.nulls:
        own = format_value(result.versus if result.versus is not None else result.measured)
        parts = [
            f"{name} {format_value(value)} {'beaten' if result.beaten.get(name) else 'NOT beaten'}"
            for name, value in result.nulls.items()
        ]
        lines.append(
            f"nulls ({result.claim.better} is better; the prediction's {own} must miss "
            f"≤ 1/{NULL_MARGIN:g} as much): " + ", ".join(parts)
        )
    if result.claim.extra:
        lines.append(f"extra row, not in the verdict: {result.claim.extra}")
    return lines


def render_table(result: ReplicationResult) -> str:
    """The table `lradvisor reproduce` prints: one line per claim, a reason per experiment."""
    from lradvisor.replication.claims import expected_text

    mode = QUICK_NOTE if result.quick else "full protocols"
    runs = f"; stability runs: {', '.join(result.stability)}" if result.stability else ""
    lines = [
        f"lradvisor reproduce: {len(result.rows)} experiment(s), {mode}, "
        f"{result.wall_time:.1f} s, commit {result.commit}{runs}",
        "",
        f"{'exp':<5}{'name':<26}{'published claim':<{_PUBLISHED_WIDTH + 2}}"
        f"{'read as':<{_READING_WIDTH + 2}}{'measured':<{_MEASURED_WIDTH + 2}}"
        f"{'verdict':<18}{'time':>7}",
    ]
    indent = " " * 31
    for row in result.rows:
        first = True
        for claim in row.claims or ():
            published = textwrap.wrap(
                ("+ " if claim.extra else "") + claim.claim.published, _PUBLISHED_WIDTH
            ) or [""]
            reading = textwrap.wrap(expected_text(claim.claim), _READING_WIDTH) or [""]
            measured = textwrap.wrap(row.shown(claim), _MEASURED_WIDTH) or [""]
            for i in range(max(len(published), len(reading), len(measured))):
                head = f"{row.id:<5}{_cut(row.name, 24):<26}" if first else indent
                tail = f"{row.verdict:<18}{row.wall_time:>6.1f}s" if first else ""
                lines.append(
                    f"{head}{_at(published, i):<{_PUBLISHED_WIDTH + 2}}"
                    f"{_at(reading, i):<{_READING_WIDTH + 2}}"
                    f"{_at(measured, i):<{_MEASURED_WIDTH + 2}}{tail}".rstrip()
                )
                first = False
            for detail in claim_details(row, claim):
                lines += [f"{indent}  {part}" for part in textwrap.wrap(detail, 110)]
        if not row.claims:
            lines.append(f"{row.id:<5}{_cut(row.name, 24):<26}{row.verdict}")
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
