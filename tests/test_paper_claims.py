"""Published claims against measured values: every check, list semantics, verdicts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lradvisor.replication.claims import (
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    MissingMetric,
    evaluate_claim,
    format_value,
    judge,
    lookup,
)
from lradvisor.replication.spec import Claim


def claim(check: str, metric: str = "x", **fields) -> Claim:
    return Claim(id="c", published="p", metric=metric, check=check, **fields)


@pytest.mark.parametrize(
    ("check", "fields", "measured", "holds"),
    [
        ("approx", {"value": 1.16, "tolerance": 0.03}, 1.18, True),
        ("approx", {"value": 1.16, "tolerance": 0.03}, 1.20, False),
        ("approx", {"value": 3e-5, "factor": 1.5}, 4.4e-5, True),
        ("approx", {"value": 3e-5, "factor": 1.5}, 1.9e-5, False),
        ("approx", {"value": 3e-5, "factor": 1.5}, -3e-5, False),
        ("greater", {"value": 0.99}, 0.9925, True),
        ("greater", {"value": 0.99}, 0.99, False),
        ("less", {"value": 3e-5}, 2e-5, True),
        ("less", {"value": 3e-5}, 4e-5, False),
        ("between", {"value": [0.9, 1.1]}, 1.0, True),
        ("between", {"value": [0.9, 1.1]}, 1.2, False),
        ("between", {"value": [0.9, 1.1]}, [0.95, 1.05], True),
        ("between", {"value": [0.9, 1.1]}, [0.95, 1.15], False),
        ("approx", {"value": [6.0, 3.0, 1.0], "factor": 1.4}, [6.0, 3.0, 1.0], True),
        ("approx", {"value": [6.0, 3.0, 1.0], "factor": 1.4}, [6.0, 6.0, 1.0], False),
        ("increasing", {}, [1.0, 1.2, 1.7], True),
        ("increasing", {}, [1.0, 0.9, 1.7], False),
        ("increasing", {"tolerance": 0.2}, [1.0, 0.9, 1.7], True),
        ("decreasing", {}, [6.0, 3.0, 1.0], True),
        ("decreasing", {}, [6.0, 3.0, 3.0], False),
        ("constant", {"tolerance": 0.1}, [1.0, 1.05, 0.97], True),
        ("constant", {"tolerance": 0.1}, [1.0, 1.25], False),
        ("constant", {"factor": 2.0}, [1.0, 1.9], True),
        ("constant", {"factor": 2.0}, [1.0, 2.1], False),
    ],
)
def test_checks(check, fields, measured, holds):
    result = evaluate_claim(claim(check, **fields), {"x": measured})
    assert result.holds is holds
    assert result.measured == measured
    assert ("holds" if holds else "fails") in result.reason


def test_qualitative_reads_the_kind_result():
    values = {"q": {"holds": False, "reason": "spread 0.01 below noise 0.05"}}
    result = evaluate_claim(claim("qualitative", "q"), values)
    assert result.holds is False and "below noise" in result.reason
    assert evaluate_claim(claim("qualitative", "q"), {"q": 1.0}).holds is None


@pytest.mark.parametrize(
    "values", [{}, {"x": None}, {"x": math.nan}, {"x": [1.0, None]}, {"x": [1.0]}]
)
def test_unsettled_claims(values):
    check = "increasing" if isinstance(values.get("x"), list) else "greater"
    result = evaluate_claim(claim(check, value=None if check == "increasing" else 1.0), values)
    assert result.holds is None
    assert result.reason.startswith("c")


def test_lookup_dotted_paths_lists_and_keys_with_dots():
    values = {"variants": {"2-layer": {"drift": [1.0, 2.0]}}, "ratio": {"0.001": 5.0}}
    assert lookup(values, "variants.2-layer.drift.1") == 2.0
    assert lookup(values, "variants.2-layer.drift.-1") == 2.0
    assert lookup(values, "ratio.0.001") == 5.0
    for path in ("variants.3-layer", "variants.2-layer.drift.5", "ratio.0.001.x"):
        with pytest.raises(MissingMetric):
            lookup(values, path)


def test_verdicts():
    good = claim("greater", "a", value=0.0)
    bad = Claim("d", "p", "b", "less", value=0.0, explanation="known cause")
    assert judge([good], {"a": 1.0}).verdict == REPRODUCED
    partly = judge([good, bad], {"a": 1.0, "b": 1.0})
    assert partly.verdict == PARTLY
    assert "known cause" in partly.reason and "1 of 2" in partly.reason
    assert judge([bad], {"b": 1.0}).verdict == NOT_REPRODUCED
    assert judge([good], {}).verdict == NOT_REPRODUCED


def test_format_value():
    assert format_value(1.16134) == "1.161"
    assert format_value([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) == "[1, 2, 3, 4, 5, 6, …]"
    assert format_value({"holds": True, "reason": ""}) == "yes"
    assert format_value(math.nan) == "nan"


@given(
    value=st.floats(1e-6, 1e6),
    factor=st.floats(1.01, 10.0),
    ratio=st.floats(0.05, 20.0),
)
def test_factor_tolerance_is_symmetric_in_log_space(value, factor, ratio):
    distance = max(ratio, 1 / ratio)
    if abs(distance / factor - 1) < 1e-9:
        return  # on the boundary rounding decides
    up = evaluate_claim(claim("approx", value=value, factor=factor), {"x": value * ratio})
    down = evaluate_claim(claim("approx", value=value, factor=factor), {"x": value / ratio})
    assert up.holds == down.holds == (distance < factor)


@given(st.lists(st.floats(-10, 10), min_size=2, max_size=8))
def test_a_sorted_series_is_increasing_and_its_reverse_decreasing(series):
    ordered = sorted(set(series))
    if len(ordered) < 2:
        return
    assert evaluate_claim(claim("increasing"), {"x": ordered}).holds
    assert evaluate_claim(claim("decreasing"), {"x": ordered[::-1]}).holds
    assert not evaluate_claim(claim("increasing"), {"x": ordered[::-1]}).holds
