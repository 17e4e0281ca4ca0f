"""Published claims checked against measured values, and the verdict of an experiment.

A claim names a key of ``Outcome.values`` (a dotted path into nested dicts and lists; a
dict key may itself contain dots, e.g. ``alpha.0.5``) and a check. Scalar checks
(approx, greater, less, between) applied to a list must hold for every element; trend
checks (increasing, decreasing, constant) need a list; a qualitative claim reads
``{"holds": bool | None, "reason": str}`` from the kind.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from lradvisor.replication.spec import Claim

REPRODUCED = "reproduced"
PARTLY = "partly"
NOT_REPRODUCED = "not reproduced"


@dataclass(frozen=True)
class ClaimResult:
    """One claim checked: ``holds`` is None when the measurement cannot settle it."""

    claim: Claim
    holds: bool | None
    measured: Any
    reason: str

    def as_dict(self) -> dict:
        return {
            "id": self.claim.id,
            "published": self.claim.published,
            "metric": self.claim.metric,
            "check": self.claim.check,
            "holds": self.holds,
            "measured": self.measured,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Verdict:
    """An experiment's verdict: reproduced (all claims hold), partly (some), not reproduced."""

    verdict: str
    reason: str
    results: tuple[ClaimResult, ...]


class MissingMetric(KeyError):
    """A claim names a value the kind did not return."""


def lookup(values: dict[str, Any], path: str) -> Any:
    """``values`` at a dotted ``path``; the longest matching key wins at each level.

    List elements are addressed by integer index (negative counts from the end).
    """
    parts = path.split(".")
    current: Any = values
    i = 0
    while i < len(parts):
        if isinstance(current, dict):
            for j in range(len(parts), i, -1):
                key = ".".join(parts[i:j])
                if key in current:
                    current, i = current[key], j
                    break
            else:
                raise MissingMetric(path)
        elif isinstance(current, list):
            try:
                current = current[int(parts[i])]
            except (ValueError, IndexError):
                raise MissingMetric(path) from None
            i += 1
        else:
            raise MissingMetric(path)
    return current


def format_value(value: Any, *, limit: int = 6) -> str:
    """A short text for a measured value: 4 significant digits, lists shortened."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, dict) and "holds" in value:
        return {True: "yes", False: "no", None: "unsettled"}[value["holds"]]
    if isinstance(value, list):
        shown = [format_value(v) for v in value[:limit]]
        return "[" + ", ".join(shown) + (", …" if len(value) > limit else "") + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _expected(claim: Claim) -> str:
    check, value = claim.check, claim.value
    if check == "approx":
        slack = f"× ÷ {claim.factor:g}" if claim.factor is not None else f"± {claim.tolerance:g}"
        return f"≈ {format_value(value)} {slack}"
    if check == "greater":
        return f"> {value:g}"
    if check == "less":
        return f"< {value:g}"
    if check == "between":
        return f"in [{value[0]:g}, {value[1]:g}]"
    if check == "constant":
        slack = (
            f"max/min ≤ {claim.factor:g}" if claim.factor is not None else f"± {claim.tolerance:g}"
        )
        return f"constant ({slack})"
    return check


def _scalar_holds(claim: Claim, measured: float, target: float | None = None) -> bool:
    check = claim.check
    value = claim.value if target is None else target
    if check == "approx":
        if claim.factor is not None:
            return (
                measured > 0
                and value > 0
                and max(measured / value, value / measured) <= claim.factor
            )
        return abs(measured - value) <= claim.tolerance
    if check == "greater":
        return measured > value
    if check == "less":
        return measured < value
    return value[0] <= measured <= value[1]


def _trend_holds(claim: Claim, series: list[float]) -> bool:
    slack = claim.tolerance or 0.0
    steps = [b - a for a, b in itertools.pairwise(series)]
    if claim.check == "increasing":
        return all(step > -slack for step in steps) and series[-1] > series[0]
    if claim.check == "decreasing":
        return all(step < slack for step in steps) and series[-1] < series[0]
    if claim.factor is not None:
        return min(series) > 0 and max(series) / min(series) <= claim.factor
    mean = sum(series) / len(series)
    return all(abs(v - mean) <= claim.tolerance for v in series)


def evaluate_claim(claim: Claim, values: dict[str, Any]) -> ClaimResult:
    """Check one claim against the measured values."""
    try:
        measured = lookup(values, claim.metric)
    except MissingMetric:
        return ClaimResult(claim, None, None, f"{claim.id}: no measured value '{claim.metric}'")
    if claim.check == "qualitative":
        if not isinstance(measured, dict) or "holds" not in measured:
            return ClaimResult(claim, None, measured, f"{claim.id}: no qualitative result")
        holds = measured["holds"]
        return ClaimResult(claim, holds, measured, f"{claim.id}: {measured.get('reason', '')}")
    series = measured if isinstance(measured, list) else None
    if claim.check in ("increasing", "decreasing", "constant"):
        if series is None or len(series) < 2:
            return ClaimResult(claim, None, measured, f"{claim.id}: needs a list of ≥ 2 values")
    else:
        series = measured if series is not None else [measured]
    if not series or not all(_finite(v) for v in series):
        text = format_value(measured)
        return ClaimResult(claim, None, measured, f"{claim.id}: measured {text} is not finite")
    if claim.check in ("increasing", "decreasing", "constant"):
        holds = _trend_holds(claim, series)
    elif claim.check == "approx" and isinstance(claim.value, list):
        if len(claim.value) != len(series):
            reason = f"{claim.id}: {len(series)} measured values for {len(claim.value)} published"
            return ClaimResult(claim, None, measured, reason)
        holds = all(_scalar_holds(claim, m, v) for m, v in zip(series, claim.value, strict=True))
    else:
        holds = all(_scalar_holds(claim, m) for m in series)
    word = "holds" if holds else "fails"
    reason = f"{claim.id} {word}: {claim.metric} = {format_value(measured)}, published {_expected(claim)}"
    if not holds and claim.explanation:
        reason += f" ({claim.explanation})"
    return ClaimResult(claim, holds, measured, reason)


def judge(claims: tuple[Claim, ...] | list[Claim], values: dict[str, Any]) -> Verdict:
    """Every claim checked, the verdict, and one line saying why."""
    results = tuple(evaluate_claim(claim, values) for claim in claims)
    held = [r for r in results if r.holds]
    failed = [r for r in results if not r.holds]
    if not failed:
        verdict = REPRODUCED
        reason = f"all {len(results)} claims hold" if len(results) > 1 else results[0].reason
    else:
        verdict = PARTLY if held else NOT_REPRODUCED
        reason = "; ".join(r.reason for r in failed)
        if held:
            reason += f" ({len(held)} of {len(results)} claims hold)"
    return Verdict(verdict, reason, results)
