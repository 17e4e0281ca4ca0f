"""Published claims checked against measured values, and the verdict of an experiment.

One reading rule per claim type, fixed before any run (``studies/README.md``):

==============  ==============================  =============================================
check           the paper says                  holds when
==============  ==============================  =============================================
``less``        "< x"                           measured < x (literal)
``greater``     "> x"                           measured > x (literal)
``approx``      "≈ x", "= x", "about x"         |measured − x| ≤ 10 % of |x| (``APPROX_BAND``)
``correlation`` a correlation "R = x"           measured ≥ x − 0.05 (``CORRELATION_SLACK``);
                                                the literal reading ≈ x is shown beside it
``between``     a range "a–b"                   a ≤ measured ≤ b (two-sided)
``increasing``  "rises", "grows"                every step up (literal)
``decreasing``  "falls"                         every step down (literal)
``qualitative`` a statement no number settles   the kind's rule, stated in the study file
==============  ==============================  =============================================

A scalar check applied to a list must hold for every element (``approx`` against a list of
values: element by element).

Null baselines. A claim that compares a prediction with a measurement names ``nulls``: a
mapping of null predictions (no Hessian, constant spectrum, random directions, another
seed's Hessian, …) to the same metric, and ``better`` ("higher" for a correlation, "lower"
for an error). The prediction *beats* a null when its miss (1 − R, or the error) is at most
half the null's (``NULL_MARGIN``) and at least 0.01 smaller (``NULL_GAP``). A claim whose reading holds but which does not beat
every null cannot be settled by the protocol (``holds`` None): the metric does not tell the
prediction from one without its ingredients.

Claims marked ``extra`` (a deviation from the protocol, a relaxed reading, or a check
beyond the paper) are evaluated and shown but never enter the verdict.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from lradvisor.replication.spec import Claim

REPRODUCED = "reproduced"
PARTLY = "partly"
NOT_REPRODUCED = "not reproduced"
UNSETTLED = "cannot be settled"

APPROX_BAND = 0.10
CORRELATION_SLACK = 0.05
NULL_MARGIN = 2.0
NULL_GAP = 0.01


@dataclass(frozen=True)
class ClaimResult:
    """One claim checked.

    ``holds``: True/False, or None when the measurement cannot settle it (missing or
    non-finite value, or a null baseline the prediction does not beat). ``reading_holds``:
    the reading rule alone; ``literal_holds``: the literal reading where the rule relaxes it
    (a correlation read as ≈), else equal to ``reading_holds``; ``nulls``: the nulls'
    values of the metric; ``beaten``: which of them the prediction beats by the margin.
    """

    claim: Claim
    holds: bool | None
    measured: Any
    reason: str
    reading_holds: bool | None = None
    literal_holds: bool | None = None
    nulls: dict[str, float] = field(default_factory=dict)
    beaten: dict[str, bool] = field(default_factory=dict)
    versus: Any = None

    @property
    def extra(self) -> bool:
        return self.claim.extra is not None

    def as_dict(self) -> dict:
        return {
            "id": self.claim.id,
            "published": self.claim.published,
            "metric": self.claim.metric,
            "check": self.claim.check,
            "reading": expected_text(self.claim),
            "holds": self.holds,
            "reading_holds": self.reading_holds,
            "literal_holds": self.literal_holds,
            "measured": self.measured,
            "nulls": self.nulls,
            "versus": self.versus,
            "beaten": self.beaten,
            "extra": self.claim.extra,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Verdict:
    """An experiment's verdict over its claims (extra rows excluded)."""

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


def format_value(value: Any, *, limit: int = 6, digits: int = 4) -> str:
    """A short text for a measured value: ``digits`` significant digits, lists shortened."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    if isinstance(value, dict) and "holds" in value:
        return {True: "yes", False: "no", None: "unsettled"}[value["holds"]]
    if isinstance(value, list):
        shown = [format_value(v, digits=digits) for v in value[:limit]]
        return "[" + ", ".join(shown) + (", …" if len(value) > limit else "") + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{k}: {format_value(v, digits=digits)}" for k, v in value.items())
            + "}"
        )
    return str(value)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _comparable(value: Any) -> bool:
    """A number a rule can read: finite, or ±inf (a bound: "beyond the grid"), not NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def expected_text(claim: Claim) -> str:
    """The reading rule applied to this claim, in words."""
    check, value = claim.check, claim.value
    if check == "approx":
        return f"≈ {format_value(value)} (± {APPROX_BAND:.0%})"
    if check == "correlation":
        return f"≥ {value - CORRELATION_SLACK:.4g} (published {value:g} − {CORRELATION_SLACK:g})"
    if check == "greater":
        return f"> {value:g}"
    if check == "less":
        return f"< {value:g}"
    if check == "between":
        return f"in [{value[0]:g}, {value[1]:g}]"
    if check in ("increasing", "decreasing"):
        return f"{check} at every step"
    return "the study file's rule"


def _approx(measured: float, target: float) -> bool:
    return abs(measured - target) <= APPROX_BAND * abs(target)


def _scalar_holds(claim: Claim, measured: float, target: Any = None) -> bool:
    check = claim.check
    value = claim.value if target is None else target
    if check == "approx":
        return _approx(measured, value)
    if check == "correlation":
        return measured >= value - CORRELATION_SLACK
    if check == "greater":
        return measured > value
    if check == "less":
        return measured < value
    return value[0] <= measured <= value[1]


def _trend_holds(claim: Claim, series: list[float]) -> bool:
    steps = [b - a for a, b in itertools.pairwise(series)]
    if claim.check == "increasing":
        return all(step > 0 for step in steps)
    return all(step < 0 for step in steps)


def miss(value: float, better: str) -> float:
    """How far a metric is from perfect: 1 − R for a correlation, the error itself."""
    return 1.0 - value if better == "higher" else value


def beats(prediction: float, null: float, better: str) -> bool:
    """The prediction's miss is at most 1/``NULL_MARGIN`` of the null's and at least
    ``NULL_GAP`` smaller (near R = 1, round-off alone would otherwise make a "factor 2")."""
    ours, theirs = miss(prediction, better), miss(null, better)
    return NULL_MARGIN * ours <= theirs and theirs - ours >= NULL_GAP


def _nulls(claim: Claim, values: dict[str, Any]) -> dict[str, float]:
    if claim.nulls is None:
        return {}
    try:
        table = lookup(values, claim.nulls)
    except MissingMetric:
        return {}
    if not isinstance(table, dict):
        return {}
    return {str(k): float(v) for k, v in table.items() if _finite(v)}


def _versus(claim: Claim, values: dict[str, Any], measured: Any) -> Any:
    """The prediction's value that the nulls are compared with."""
    if claim.versus is None:
        return measured
    try:
        return lookup(values, claim.versus)
    except MissingMetric:
        return None


def _check_series(claim: Claim, measured: Any) -> tuple[bool | None, str | None]:
    """The reading rule on a measured value; (None, why) when it cannot be applied."""
    series = measured if isinstance(measured, list) else None
    if claim.check in ("increasing", "decreasing"):
        if series is None or len(series) < 2:
            return None, "needs a list of ≥ 2 values"
    else:
        series = measured if series is not None else [measured]
    if not series or not all(_comparable(v) for v in series):
        return None, f"measured {format_value(measured)} is not a number"
    if claim.check in ("increasing", "decreasing"):
        return _trend_holds(claim, series), None
    if claim.check == "approx" and isinstance(claim.value, list):
        if len(claim.value) != len(series):
            return None, f"{len(series)} measured values for {len(claim.value)} published"
        return all(
            _scalar_holds(claim, m, v) for m, v in zip(series, claim.value, strict=True)
        ), None
    return all(_scalar_holds(claim, m) for m in series), None


def evaluate_claim(claim: Claim, values: dict[str, Any]) -> ClaimResult:
    """Check one claim against the measured values (reading rule, literal reading, nulls)."""
    try:
        measured = lookup(values, claim.metric)
    except MissingMetric:
        return ClaimResult(claim, None, None, f"{claim.id}: no measured value '{claim.metric}'")
    if claim.check == "qualitative":
        if not isinstance(measured, dict) or "holds" not in measured:
            return ClaimResult(claim, None, measured, f"{claim.id}: no qualitative result")
        holds = measured["holds"]
        reason = f"{claim.id}: {measured.get('reason', '')}"
        return ClaimResult(claim, holds, measured, reason, holds, holds)
    reading, problem = _check_series(claim, measured)
    if problem is not None:
        return ClaimResult(claim, None, measured, f"{claim.id}: {problem}")
    literal = reading
    if claim.check == "correlation":
        literal = _approx(float(measured), float(claim.value))
    nulls = _nulls(claim, values)
    versus = _versus(claim, values, measured)
    beaten = {
        name: _finite(versus) and beats(float(versus), value, claim.better or "higher")
        for name, value in nulls.items()
    }
    text = f"{claim.metric} = {format_value(measured)}, read {expected_text(claim)}"
    if not reading:
        reason = f"{claim.id} fails: {text}"
        if claim.explanation:
            reason += f" ({claim.explanation})"
        return ClaimResult(claim, False, measured, reason, reading, literal, nulls, beaten, versus)
    unbeaten = [name for name, ok in beaten.items() if not ok]
    if unbeaten:
        shown = ", ".join(f"{name} {format_value(nulls[name])}" for name in unbeaten)
        own = "" if claim.versus is None else f" ({claim.versus} = {format_value(versus)})"
        reason = (
            f"{claim.id} cannot be settled: {text} holds, but the prediction{own} does not "
            f"beat the null(s) {shown} by the margin (miss ≤ 1/{NULL_MARGIN:g} of theirs "
            f"and {NULL_GAP:g} below)"
        )
        if claim.explanation:
            reason += f" ({claim.explanation})"
        return ClaimResult(claim, None, measured, reason, reading, literal, nulls, beaten, versus)
    reason = f"{claim.id} holds: {text}"
    if nulls:
        reason += f"; beats {len(nulls)} null(s) by the margin"
    return ClaimResult(claim, True, measured, reason, reading, literal, nulls, beaten, versus)


def verdict_of(results: list[ClaimResult] | tuple[ClaimResult, ...]) -> str:
    """reproduced (all hold), cannot be settled (none settled), not reproduced (none
    holds), partly (the rest)."""
    states = [r.holds for r in results]
    if all(s is True for s in states):
        return REPRODUCED
    if all(s is None for s in states):
        return UNSETTLED
    if not any(s is True for s in states):
        return NOT_REPRODUCED
    return PARTLY


def judge(claims: tuple[Claim, ...] | list[Claim], values: dict[str, Any]) -> Verdict:
    """Every claim checked, the verdict over the non-extra claims, and one line saying why."""
    results = tuple(evaluate_claim(claim, values) for claim in claims)
    counted = [r for r in results if not r.extra]
    if not counted:
        return Verdict(UNSETTLED, "no claim enters the verdict", results)
    verdict = verdict_of(counted)
    if verdict == REPRODUCED:
        reason = f"all {len(counted)} claims hold" if len(counted) > 1 else counted[0].reason
    else:
        reason = "; ".join(r.reason for r in counted if r.holds is not True)
        held = sum(r.holds is True for r in counted)
        if held:
            reason += f" ({held} of {len(counted)} claims hold)"
    return Verdict(verdict, reason, results)
