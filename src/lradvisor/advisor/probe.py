"""Stage 3: the probe — short runs of candidate rates that decide the advice.

Successive halving over a factor-2 bracket (stage 2), all seeds of a rate training together:

1. every bracket rate trains to the rung (a quarter of the probe's steps) and is scored:
   validation loss when validation data were given, else training loss on a fixed subsample;
2. while the best rate sits at an edge of what was probed, two more rates beyond that edge
   are trained to the rung (factor 2 each, at most ``MAX_EXTENSIONS`` times);
3. the finalists are the rates from a quarter of the best rate up to one √2 step above it:
   the rung has trained a quarter of the steps, and a rate four times smaller reaches at the
   end about the η·t the best rate had reached at the rung, so a longer run favours smaller
   rates (short-horizon bias) — ranking the finalists at the rung would keep the fast starters
   only. The grid is filled to √2 steps inside that window (trained to the rung), and the
   finalists that trained train on to the probe's full length.

A rate counts as diverged when any seed's loss turns non-finite or exceeds 1000× its start,
as making no progress when its mean training loss did not fall below the start, and a finalist
as unstable when its training loss rose by half or more between the rung and the end. These
judge training health on the training loss; the ranking uses the score (validation loss when
given), so an overfitting model is still ranked by what it will be used for.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from lradvisor.advisor.problem import Problem
from lradvisor.advisor.trials import BatchedCohort, Cohort, ProbeData, make_cohort
from lradvisor.errors import LRAdvisorError
from lradvisor.records import Bound, ProbeResult

__all__ = ["ProbeState", "run_probe"]

RUNG_FRACTION = 0.25
WINDOW_BELOW = 4.0  # finalists: from best/WINDOW_BELOW …
WINDOW_ABOVE = 2**0.5  # … to best·WINDOW_ABOVE
MIN_FINALISTS = 3
EXTENSION_RATES = 2
MAX_EXTENSIONS = 3
HISTORY_POINTS = 12
UNSTABLE_RISE = 1.5  # a finalist whose training loss rose this much after the rung  # 1 − q̄(t) records within the rung (for τ)


@dataclass
class ProbeState:
    """What later stages need beyond the record: the finalists' trials and λ(t) checkpoints."""

    cohort: Cohort
    checkpoints: list[tuple[int, nn.Module]] = field(default_factory=list)
    trajectory_lr: float | None = None


class _Subset:
    """A read-only view of some of a cohort's trials, for scoring them before they leave."""

    def __init__(self, cohort: Cohort, mask: np.ndarray) -> None:
        self.cohort, self.mask = cohort, mask
        self.rates, self.alive = cohort.rates[mask], cohort.alive[mask]

    def losses(self, split: str) -> np.ndarray:
        return self.cohort.losses(split)[self.mask]


class _Book:
    """Per-rate scores as the probe goes: one row per rate, seeds aggregated."""

    def __init__(self, split: str) -> None:
        self.split = split
        self.rows: dict[float, dict] = {}
        self.initial = self.initial_train = math.nan

    def start(self, cohort: Cohort) -> None:
        self.initial = float(np.nanmean(cohort.losses(self.split)))
        train = self.initial if self.split == "train" else cohort.losses("train")
        self.initial_train = float(np.nanmean(train))

    def prune(self, cohort: Cohort, origin: str, *, stalled: bool) -> None:
        """Stop rates that diverged (any seed) — and, with ``stalled``, rates whose training
        loss is not below its start — before the rung: they are recorded and leave the cohort."""
        rates = np.unique(cohort.rates)
        dead = {r for r in rates if not cohort.alive[cohort.rates == r].all()}
        if stalled:
            train = cohort.losses("train")
            dead |= {r for r in rates if not np.mean(train[cohort.rates == r]) < self.initial_train}
        if not dead:
            return
        stopped = np.isin(cohort.rates, list(dead))
        subset = _Subset(cohort, stopped)
        self.score(subset, origin, final=False)
        for rate in dead:
            self.rows[float(rate)]["stopped_at"] = cohort.step
        cohort.keep(~stopped)

    def score(self, cohort: Cohort, origin: str | None, *, final: bool) -> None:
        scores = cohort.losses(self.split)
        train = scores if self.split == "train" else cohort.losses("train")
        for rate in np.unique(cohort.rates):
            trials = cohort.rates == rate
            row = self.rows.setdefault(float(rate), {"lr": float(rate), "origin": origin})
            dead = int((~cohort.alive[trials]).sum())
            value = float(np.mean(scores[trials])) if dead == 0 else math.inf
            key = "final" if final else "rung"
            row[f"{key}_score"] = value
            row[f"{key}_train"] = float(np.mean(train[trials])) if dead == 0 else math.inf
            row["seed_scores"] = [float(v) for v in scores[trials]]
            row["diverged_seeds"] = dead
            row["status"] = self._status(row, final)

    def _status(self, row: dict, final: bool) -> str:
        """Training health, judged on the training loss whatever ranks the rates."""
        train = row["final_train" if final else "rung_train"]
        if not np.isfinite(train):
            return "diverged"
        if not train < self.initial_train:
            return "no progress"
        if final and train > UNSTABLE_RISE * row["rung_train"]:
            return "unstable"
        return "finalist" if final else "dropped"

    def ranked(self) -> list[float]:
        """Rates by rung score, best first, among those that trained (finite, progressed)."""
        usable = [r for r in self.rows.values() if r["status"] not in ("diverged", "no progress")]
        return [r["lr"] for r in sorted(usable, key=lambda r: r["rung_score"])]

    def edge(self) -> str | None:
        """ "below" / "above" when the best rate is the smallest / largest probed."""
        rates = sorted(self.rows)
        ranked = self.ranked()
        if not ranked:
            return "below"  # everything diverged or stalled: look at smaller rates
        if ranked[0] == rates[0]:
            return "below"
        if ranked[0] == rates[-1]:
            return "above"
        return None

    def window(self) -> tuple[float, float] | None:
        """The finalists' window around the best rate at the rung, within what was probed."""
        ranked = self.ranked()
        if not ranked:
            return None
        return ranked[0] / WINDOW_BELOW, ranked[0] * WINDOW_ABOVE

    def refinement(self) -> list[float]:
        """√2 midpoints of the factor-2 grid inside the window (where the grid has a gap)."""
        window = self.window()
        if window is None:
            return []
        rates = sorted(self.rows)
        middles = [math.sqrt(a * b) for a, b in itertools.pairwise(rates) if b / a > 1.6]
        return [
            m
            for m in middles
            if window[0] * 0.99 <= m <= window[1] * 1.01 and rates[0] < m < rates[-1]
        ]

    def finalists(self) -> list[float]:
        """Rates in the window that trained; topped up from the rung ranking to a minimum."""
        window = self.window()
        ranked = self.ranked()
        if window is None:
            return []
        inside = [r for r in ranked if window[0] * 0.99 <= r <= window[1] * 1.01]
        extra = [r for r in ranked if r not in inside][: max(0, MIN_FINALISTS - len(inside))]
        return inside + extra

    def result(
        self,
        problem: Problem,
        rung: int,
        extensions: list[str],
        mode: str,
        history: dict | None,
        trial_steps: int,
    ) -> ProbeResult:
        rows = tuple(self.rows[r] for r in sorted(self.rows))
        return ProbeResult(
            steps=problem.probe_steps,
            rung=rung,
            seeds=problem.seeds,
            score="validation loss" if self.split == "val" else "training loss",
            initial_score=self.initial,
            rows=rows,
            extensions=tuple(extensions),
            mode=mode,
            concentration=history,
            trial_steps=trial_steps,
        )


def run_probe(
    problem: Problem,
    bound: Bound,
    *,
    trajectory_rate: float | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[ProbeResult, ProbeState]:
    """Train the bracket, extend it at an edge, refine around the best, finish the finalists.

    ``trajectory_rate``: keep checkpoints (steps 0, ¼, ½ and 1 × the rung) of the first
    seed's trial at the bracket rate nearest to it, for λ_max(t) (stage 5).
    """
    steps = problem.probe_steps
    rung = max(1, round(RUNG_FRACTION * steps))
    data = ProbeData(problem, problem.seeds, steps)
    book = _Book(problem.score)
    bracket = sorted(bound.bracket)
    say(f"probe: {len(bracket)} rates × {len(problem.seeds)} seeds to step {rung}")
    cohort = make_cohort(problem, data, bracket, problem.seeds)
    book.start(cohort)
    recorder = _Recorder(problem, bracket, trajectory_rate, rung)
    _to_rung(cohort, book, rung, "bracket", recorder)
    extensions = []
    for _ in range(MAX_EXTENSIONS):
        direction = book.edge()
        if direction is None:
            break
        edge = min(book.rows) if direction == "below" else max(book.rows)
        factor = 0.5 if direction == "below" else 2.0
        rates = [edge * factor**k for k in range(1, EXTENSION_RATES + 1)]
        side = "lower" if direction == "below" else "upper"
        say(f"probe: best rate at the {side} edge, adding {_rates(rates)}")
        extensions.append(f"best rate at the {side} edge {edge:.3g}: added {_rates(rates)}")
        _add(problem, data, book, cohort, rates, rung, "extension")
    middle = book.refinement()
    if middle:
        say(f"probe: filling the finalists' window with {_rates(middle)}")
        _add(problem, data, book, cohort, middle, rung, "refinement")
    finalists = book.finalists()
    if not finalists:
        raise LRAdvisorError(
            f"model {problem.name}: every probe rate ({_rates(sorted(book.rows))}) diverged or "
            "made no progress; check that the loss is finite and can fall at init"
        )
    cohort.keep(np.isin(cohort.rates, finalists))
    say(f"probe: {len(finalists)} finalists to step {steps}")
    cohort.advance(steps)
    book.score(cohort, None, final=True)
    mode = (
        f"batched: {len(problem.seeds)} seeds × up to {len(bracket)} rates per vmapped step"
        if isinstance(cohort, BatchedCohort)
        else problem.loop_reason
        or f"one trial at a time ({problem.optimizer.name} has no batched form)"
    )
    result = book.result(problem, rung, extensions, mode, recorder.history(), cohort.trial_steps)
    return result, ProbeState(cohort, recorder.checkpoints, recorder.trajectory_lr)


def _to_rung(
    cohort: Cohort, book: _Book, rung: int, origin: str, recorder: _Recorder | None = None
) -> None:
    """Train to the rung in quarters, stopping diverged rates at each quarter and rates that
    have not got below their start from half-way on; then score what is left."""
    for quarter in (1, 2, 3, 4):
        stop = max(cohort.step, round(rung * quarter / 4))
        if recorder is not None:
            cohort.advance(stop, record=recorder, record_every=recorder.every)
        else:
            cohort.advance(stop)
        if quarter < 4:
            book.prune(cohort, origin, stalled=quarter >= 2)
    book.score(cohort, origin, final=False)


def _add(
    problem: Problem,
    data: ProbeData,
    book: _Book,
    cohort: Cohort,
    rates: list[float],
    rung: int,
    origin: str,
) -> None:
    extra = make_cohort(problem, data, rates, problem.seeds)
    _to_rung(extra, book, rung, origin)
    if len(extra):
        cohort.merge(extra)
    else:  # every added rate stopped early: keep its cost on the books
        cohort.trial_steps += extra.trial_steps


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{r:.3g}" for r in rates)


class _Recorder:
    """1 − q̄(t) per rate (cross-entropy), and checkpoints of one trial, along the rung."""

    def __init__(
        self, problem: Problem, bracket: list[float], trajectory_rate: float | None, rung: int
    ) -> None:
        self.enabled = problem.cross_entropy
        wanted = self.enabled or trajectory_rate is not None
        self.every = max(1, rung // HISTORY_POINTS) if wanted else 0
        self.seed = problem.seeds[0]
        self.steps: list[int] = []
        self.curves: dict[float, list[float]] = {float(r): [] for r in bracket}
        self.checkpoints: list[tuple[int, nn.Module]] = []
        self.trajectory_lr = None
        self.checkpoint_steps: set[int] = set()
        if trajectory_rate is not None:
            self.trajectory_lr = float(
                min(bracket, key=lambda r: abs(math.log(r / trajectory_rate)))
            )
            self.checkpoint_steps = {0, *(self.every * k for k in (3, 6, 12))}

    def __call__(self, cohort: Cohort, step: int) -> None:
        if self.enabled:
            self.steps.append(step)
            values = cohort.concentration()
            for rate, curve in self.curves.items():
                trials = cohort.rates == rate
                # NaN once a seed diverged or the rate was stopped
                curve.append(
                    float(values[trials].mean())
                    if trials.sum() == len(set(cohort.seeds))
                    else math.nan
                )
        if self.trajectory_lr is not None and step in self.checkpoint_steps:
            trial = np.flatnonzero(
                (cohort.rates == self.trajectory_lr) & (cohort.seeds == self.seed)
            )
            if len(trial) and cohort.alive[trial[0]]:
                self.checkpoints.append((step, cohort.module(int(trial[0]))))

    def history(self) -> dict | None:
        if not self.steps:
            return None
        return {"steps": self.steps, "per_rate": dict(self.curves)}
