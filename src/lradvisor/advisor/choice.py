"""Stage 4: the recommended rate and the sweep range, read from the probe.

* Recommendation: the finalist with the lowest mean score at the end of the probe. A finalist
  whose next larger probed rate diverged, made no progress or turned unstable sits at a cliff, where other
  seeds and longer runs fall off more often: its score is counted ``CLIFF_PENALTY`` worse
  before ranking, so it wins only when it is clearly better than the safer rates (a re-rank,
  not a blind step back).
* Sweep range: from a tenth of the recommendation (or the smallest rate that trained well, if
  lower) up to the largest rate that trained well — that made at least 90 % of the best
  rate's loss reduction by the rung — so its top is never a rate stuck at chance.
"""

from __future__ import annotations

import math

import numpy as np

from lradvisor.records import Choice, ProbeResult

__all__ = ["CLIFF_PENALTY", "choose"]

CLIFF_PENALTY = 0.10
UNSAFE = ("diverged", "no progress", "unstable")
GOOD_SHARE = 0.9  # "trained well": this share of the best rate's loss reduction at the rung
RANGE_FLOOR = 10.0


def choose(probe: ProbeResult, *, steps: int) -> Choice:
    """Recommendation, range and warnings from ``probe`` (``steps``: the user's budget)."""
    rows = list(probe.rows)
    finalists = [r for r in rows if r["status"] == "finalist"]
    warnings = []
    if finalists:
        key, stage = "final_score", f"the end of the probe (step {probe.steps})"
        candidates = finalists
    else:  # no finalist trained stably to the end: fall back to the rung's ranking
        key, stage = (
            "rung_score",
            f"the rung (step {probe.rung}; no finalist trained stably to the end)",
        )
        candidates = [r for r in rows if r["status"] == "dropped"] or [
            r for r in rows if r["status"] not in ("diverged", "no progress")
        ]
        warnings.append(
            "no finalist trained stably to the end of the probe (diverged, stalled or its "
            "training loss rose): the recommendation comes from the rung"
        )
    rates = [r["lr"] for r in rows]
    adjusted, cliffs = {}, []
    for row in candidates:
        above = [r for r in rows if r["lr"] > row["lr"]]
        cliff = bool(above) and above[0]["status"] in UNSAFE
        adjusted[row["lr"]] = row[key] * (1 + CLIFF_PENALTY) if cliff else row[key]
        if cliff:
            cliffs.append(row["lr"])
    best = min(candidates, key=lambda r: r[key])["lr"]
    recommended = min(adjusted, key=adjusted.get)
    rule = f"lowest mean {probe.score} over seeds {list(probe.seeds)} at {stage}"
    if recommended != best:
        rule += (
            f"; {best:.3g} scored lower but sits below a rate that diverged or stalled, and "
            f"its {CLIFF_PENALTY:.0%} cliff penalty ranks it behind {recommended:.3g}"
        )
    elif recommended in cliffs:
        rule += f" (it sits below a rate that diverged or stalled, and beats the others by more than the {CLIFF_PENALTY:.0%} cliff penalty)"
        warnings.append(
            f"the next larger probe rate above {recommended:.3g} diverged or stalled: "
            "training at the recommendation is close to a cliff"
        )
    chosen = next(r for r in candidates if r["lr"] == recommended)
    if probe.score == "validation loss" and not chosen[key] < probe.initial_score:
        warnings.append(
            f"the validation loss at the recommendation ({chosen[key]:.4g}) did not fall below "
            f"its start ({probe.initial_score:.4g}): the model overfits within the probe, or the "
            "validation data differ from the training data"
        )
    if recommended == min(rates):
        warnings.append(
            f"the recommendation {recommended:.3g} is the smallest rate probed: the best rate may lie lower"
        )
    elif recommended == max(rates):
        warnings.append(
            f"the recommendation {recommended:.3g} is the largest rate probed: the best rate may lie higher"
        )
    if probe.steps < steps:
        warnings.append(
            f"the probe trained {probe.steps} of your {steps} steps: a longer run may prefer a somewhat smaller rate"
        )
    good = _trained_well(rows, probe.initial_score) or [recommended]
    top = max(max(good), recommended)
    low = min(min(good), recommended / RANGE_FLOOR)
    return Choice(
        recommended_lr=float(recommended),
        lr_range=(float(low), float(top)),
        rule=rule,
        range_rule=(
            f"from min(recommendation/{RANGE_FLOOR:g}, the smallest rate that trained well) to "
            f"the largest rate that trained well (≥ {GOOD_SHARE:.0%} of the best rate's loss "
            f"reduction at step {probe.rung}, no seed diverged)"
        ),
        warnings=tuple(warnings),
    )


def _trained_well(rows: list[dict], initial: float) -> list[float]:
    scored = [r for r in rows if r["status"] not in UNSAFE]
    if not scored or not math.isfinite(initial):
        return []
    best = min(r["rung_score"] for r in scored)
    threshold = best + (1 - GOOD_SHARE) * (initial - best)
    return [
        r["lr"] for r in scored if r["rung_score"] <= threshold and np.isfinite(r["rung_score"])
    ]
