"""Stage 4: the recommended rate and the sweep range, read from the probe.

* The first failure F: the smallest probed rate that diverged, made no progress, turned
  unstable, or collapsed (its training loss at the rung more than ``COLLAPSE_JUMP`` times that
  of the next smaller rate: stuck on a plateau far above its neighbour).
* Recommendation: the finalist with the lowest mean score at the end of the probe among those
  at most F/``SAFETY_FACTOR``. The probe sees two seeds and a part of the user's steps; where
  it placed the cliff moved by up to a factor 2 between seeds and run lengths on our suites
  (the training-loss optimum of full-batch cross-entropy sits right at it), so a rate closer
  than that to a failure is not recommended. The finalists are re-ranked under this rule —
  the recommendation is the best safe finalist, not the best one stepped back a notch — and a
  better-scoring rate that was left out is named in the rule.
* Sweep range: from a tenth of the recommendation (or the smallest rate that trained well, if
  lower) up to the largest rate below F that trained well — that made at least 90 % of the best
  rate's loss reduction by the rung — so its top is never a rate stuck at chance.
"""

from __future__ import annotations

import math

from lradvisor.records import Choice, ProbeResult

__all__ = ["SAFETY_FACTOR", "choose", "first_failure"]

SAFETY_FACTOR = 2.0
COLLAPSE_JUMP = 10.0
FAILED = ("diverged", "no progress", "unstable")
GOOD_SHARE = 0.9  # "trained well": this share of the best rate's loss reduction at the rung
RANGE_FLOOR = 10.0


def first_failure(rows: list[dict]) -> tuple[float, str] | None:
    """(rate, what happened) of the smallest probed rate that failed, or None."""
    previous = None
    for row in sorted(rows, key=lambda r: r["lr"]):
        if row["status"] in FAILED:
            return row["lr"], row["status"]
        if previous is not None and row["rung_train"] > COLLAPSE_JUMP * previous["rung_train"]:
            return row["lr"], (
                f"collapsed: training loss {row['rung_train']:.3g} against "
                f"{previous['rung_train']:.3g} one step below"
            )
        previous = row
    return None


def choose(probe: ProbeResult, *, steps: int) -> Choice:
    """Recommendation, range and warnings from ``probe`` (``steps``: the user's budget)."""
    rows = sorted(probe.rows, key=lambda r: r["lr"])
    failure = first_failure(rows)
    cap = failure[0] / SAFETY_FACTOR if failure else math.inf
    finalists = [r for r in rows if r["status"] == "finalist"]
    safe = [r for r in finalists if r["lr"] <= cap * (1 + 1e-9)]
    warnings = []
    if safe:
        key, candidates = "final_score", safe
        stage = f"the end of the probe (step {probe.steps})"
    else:  # no finalist below the margin trained stably to the end: use the rung's ranking
        key = "rung_score"
        candidates = [
            r for r in rows if r["status"] in ("finalist", "dropped") and r["lr"] <= cap * 1.000001
        ] or [r for r in rows if r["status"] in ("finalist", "dropped")]
        stage = f"the rung (step {probe.rung}; no finalist below the margin lasted the probe)"
        warnings.append(
            "no finalist at least a factor 2 below the first failure trained stably to the end "
            "of the probe: the recommendation comes from the rung"
        )
    recommended = min(candidates, key=lambda r: r[key])
    rule = f"lowest mean {probe.score} over seeds {list(probe.seeds)} at {stage}"
    if failure:
        rule += (
            f", among rates ≤ F/{SAFETY_FACTOR:g} = {cap:.3g} where F = {failure[0]:.3g} is the "
            f"smallest probed rate that failed ({failure[1]})"
        )
        better = [r for r in finalists if r["lr"] > cap and r[key] < recommended[key]]
        if better:
            best = min(better, key=lambda r: r["final_score"])
            rule += (
                f"; {best['lr']:.3g} scored {best['final_score']:.4g} against "
                f"{recommended[key]:.4g} but lies within a factor {SAFETY_FACTOR:g} of F"
            )
    rates = [r["lr"] for r in rows]
    rate = recommended["lr"]
    if probe.score == "validation loss" and not recommended[key] < probe.initial_score:
        warnings.append(
            f"the validation loss at the recommendation ({recommended[key]:.4g}) did not fall "
            f"below its start ({probe.initial_score:.4g}): the model overfits within the probe, "
            "or the validation data differ from the training data"
        )
    if rate == min(rates):
        warnings.append(
            f"the recommendation {rate:.3g} is the smallest rate probed: the best rate may lie lower"
        )
    elif rate == max(r["lr"] for r in rows if r["lr"] <= cap) and not failure:
        warnings.append(
            f"the recommendation {rate:.3g} is the largest rate probed: the best rate may lie higher"
        )
    if probe.steps < steps:
        warnings.append(
            f"the probe trained {probe.steps} of your {steps} steps: a longer run may prefer a "
            "somewhat smaller rate"
        )
    good = _trained_well(rows, probe.initial_score, failure[0] if failure else math.inf)
    good = good or [rate]
    return Choice(
        recommended_lr=float(rate),
        lr_range=(float(min(min(good), rate / RANGE_FLOOR)), float(max(max(good), rate))),
        rule=rule,
        range_rule=(
            f"from min(recommendation/{RANGE_FLOOR:g}, the smallest rate that trained well) to "
            f"the largest rate below the first failure that trained well (≥ {GOOD_SHARE:.0%} of "
            f"the best rate's loss reduction at step {probe.rung})"
        ),
        warnings=tuple(warnings),
    )


def _trained_well(rows: list[dict], initial: float, failure: float) -> list[float]:
    scored = [r for r in rows if r["status"] not in FAILED and r["lr"] < failure]
    if not scored or not math.isfinite(initial):
        return []
    best = min(r["rung_score"] for r in scored)
    threshold = best + (1 - GOOD_SHARE) * (initial - best)
    return [r["lr"] for r in scored if r["rung_score"] <= threshold]
