"""Published claims against measured values: one reading rule per check, nulls, verdicts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lradvisor.errors import ConfigError
from lradvisor.replication.claims import (
    APPROX_BAND,
    CORRELATION_SLACK,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    UNSETTLED,
    MissingMetric,
    beats,
    evaluate_claim,
    format_value,
    judge,
    lookup,
)
from lradvisor.replication.spec import Claim, parse_experiment


def claim(check: str, metric: str = "x", **fields) -> Claim:
    return Claim(id="c", published="p", metric=metric, check=check, **fields)


@pytest.mark.parametrize(
    ("check", "value", "measured", "holds"),
    [
        # "≈ x": one relative band, ± 10 %, for every claim
        ("approx", 1.16, 1.275, True),
        ("approx", 1.16, 1.277, False),
        ("approx", 1.16, 1.045, True),
        ("approx", 1.16, 1.043, False),
        ("approx", 5500, 1272, False),
        ("approx", [6.0, 3.0, 1.0], [6.0, 3.0, 1.05], True),
        ("approx", [6.0, 3.0, 1.0], [4.0, 3.0, 1.0], False),
        ("approx", [6.0, 3.0, 1.0], [math.inf, 3.0, 1.0], False),
        ("approx", 1.0, [1.05, 1.09], True),
        ("approx", 1.0, [1.05, 1.11], False),
        # a published correlation: ≥ published − 0.05
        ("correlation", 0.988, 0.938, True),
        ("correlation", 0.988, 0.9379, False),
        ("correlation", 0.847, 0.999, True),
        # "< x" and "> x" are literal
        ("less", 3e-5, 2.99e-5, True),
        ("less", 3e-5, 3.306e-5, False),
        ("greater", 0.99, 0.9925, True),
        ("greater", 0.99, 0.99, False),
        # a range is two-sided: a smaller error is not the published one
        ("between", [0.14, 0.27], 0.2, True),
        ("between", [0.14, 0.27], 0.047, False),
        ("between", [0.14, 0.27], 0.28, False),
        ("between", [-0.1, 0.1], [0.05, -0.09], True),
        # trends are literal: every step
        ("increasing", None, [1.0, 1.2, 1.7], True),
        ("increasing", None, [1.161, 1.143, 1.437], False),
        ("decreasing", None, [6.0, 3.0, 1.0], True),
        ("decreasing", None, [6.0, 3.0, 3.0], False),
        ("decreasing", None, [math.inf, math.inf, 1.0], False),
    ],
)
def test_reading_rules(check, value, measured, holds):
    result = evaluate_claim(claim(check, value=value), {"x": measured})
    assert result.holds is holds
    assert result.reading_holds is holds
    assert result.measured == measured
    assert ("holds" if holds else "fails") in result.reason


def test_the_rules_are_the_stated_constants():
    assert APPROX_BAND == 0.10 and CORRELATION_SLACK == 0.05


def test_a_correlation_shows_its_literal_reading_beside_the_rule():
    relaxed = evaluate_claim(claim("correlation", value=0.847), {"x": 0.9998})
    assert relaxed.holds is True and relaxed.literal_holds is False  # 0.9998 is not ≈ 0.847
    close = evaluate_claim(claim("correlation", value=0.988), {"x": 0.987})
    assert close.holds is True and close.literal_holds is True


@pytest.mark.parametrize(
    ("better", "prediction", "null", "beaten"),
    [
        ("higher", 0.97, 0.94, True),  # miss 0.03 vs 0.06: exactly the margin
        ("higher", 0.97, 0.945, False),
        ("higher", 0.999, 0.995, False),  # a factor 5, but only 0.004 apart
        ("higher", 1.0, 1.0 - 1e-9, False),  # round-off is not a margin
        ("higher", 0.987, 0.9989, False),
        ("lower", 0.05, 0.10, True),
        ("lower", 0.05, 0.09, False),
        ("lower", 0.002, 0.011, False),
        ("lower", 0.014, 0.016, False),
    ],
)
def test_a_null_is_beaten_when_the_prediction_misses_at_most_half_as_much(
    better, prediction, null, beaten
):
    assert beats(prediction, null, better) is beaten


def test_a_claim_that_does_not_beat_its_nulls_cannot_be_settled():
    values = {"r": 0.987, "nulls": {"no_hessian": 0.9989, "random_directions": 0.9}}
    check = claim("correlation", "r", value=0.988, nulls="nulls", better="higher")
    result = evaluate_claim(check, values)
    assert result.holds is None and result.reading_holds is True
    assert result.beaten == {"no_hessian": False, "random_directions": True}
    assert "cannot be settled" in result.reason and "no_hessian" in result.reason
    values["r"] = 0.9999  # ten times closer to 1, but only 0.001 apart
    assert evaluate_claim(check, values).holds is None
    values["nulls"]["no_hessian"] = 0.95
    assert evaluate_claim(check, values).holds is True
    values["r"] = 0.9
    assert evaluate_claim(check, values).holds is False  # the reading fails first


def test_the_nulls_are_compared_with_the_prediction_on_their_footing():
    """E8: the raw error is read against the range, its shape error against the nulls."""
    values = {"error": 0.15, "shape": 0.012, "nulls": {"constant_spectrum": 0.016}}
    check = claim(
        "between", "error", value=[0.14, 0.18], nulls="nulls", versus="shape", better="lower"
    )
    result = evaluate_claim(check, values)
    assert result.holds is None and result.versus == 0.012
    values["nulls"]["constant_spectrum"] = 0.05
    assert evaluate_claim(check, values).holds is True


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


def test_verdicts_and_extra_rows():
    good = claim("greater", "a", value=0.0)
    bad = Claim("d", "p", "b", "less", value=0.0, explanation="known cause")
    open_ = Claim("o", "p", "c", "greater", value=0.0, nulls="n", better="higher")
    extra_bad = Claim("e", "p", "b", "less", value=0.0, extra="a deviation")
    values = {"a": 1.0, "b": 1.0, "c": 0.5, "n": {"null": 0.9}}
    assert judge([good], values).verdict == REPRODUCED
    partly = judge([good, bad], values)
    assert partly.verdict == PARTLY
    assert "known cause" in partly.reason and "1 of 2" in partly.reason
    assert judge([bad], values).verdict == NOT_REPRODUCED
    assert judge([good], {}).verdict == UNSETTLED
    assert judge([open_], values).verdict == UNSETTLED
    assert judge([good, open_], values).verdict == PARTLY
    assert judge([bad, open_], values).verdict == NOT_REPRODUCED
    with_extra = judge([good, extra_bad], values)
    assert with_extra.verdict == REPRODUCED and len(with_extra.results) == 2
    assert with_extra.results[1].holds is False and with_extra.results[1].extra


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("tolerance", 0.03, "known field"),
        ("factor", 1.5, "known field"),
        ("nulls", "n", "higher or lower"),
        ("better", "higher", "without nulls"),
    ],
)
def test_no_claim_carries_a_slack_of_its_own(field, value, match):
    raw = {
        "id": "E5",
        "name": "n",
        "kind": "drift_sweep",
        "protocol": {"lrs": [0.1]},
        "claims": [{"id": "a", "published": "p", "metric": "m", "check": "approx", "value": 1.0}],
    }
    raw["claims"][0][field] = value
    with pytest.raises(ConfigError, match=match):
        parse_experiment(raw, file="E05.yaml")


def test_a_correlation_value_must_be_a_correlation():
    raw = {
        "id": "E5",
        "name": "n",
        "kind": "drift_sweep",
        "protocol": {"lrs": [0.1]},
        "claims": [
            {"id": "a", "published": "p", "metric": "m", "check": "correlation", "value": 2}
        ],
    }
    with pytest.raises(ConfigError, match=r"correlation in \(-1, 1\]"):
        parse_experiment(raw, file="E05.yaml")


def test_format_value():
    assert format_value(1.16134) == "1.161"
    assert format_value(1.16134, digits=2) == "1.2"
    assert format_value([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) == "[1, 2, 3, 4, 5, 6, …]"
    assert format_value({"holds": True, "reason": ""}) == "yes"
    assert format_value(math.nan) == "nan"
    assert format_value(math.inf) == "inf"


@given(value=st.floats(1e-6, 1e6), ratio=st.floats(0.5, 1.5))
def test_the_band_is_relative_to_the_published_value(value, ratio):
    if abs(abs(ratio - 1) - APPROX_BAND) < 1e-9:
        return  # on the boundary rounding decides
    result = evaluate_claim(claim("approx", value=value), {"x": value * ratio})
    assert result.holds == (abs(ratio - 1) < APPROX_BAND)


@given(st.lists(st.floats(-10, 10), min_size=2, max_size=8))
def test_a_sorted_series_is_increasing_and_its_reverse_decreasing(series):
    ordered = sorted(set(series))
    if len(ordered) < 2:
        return
    assert evaluate_claim(claim("increasing"), {"x": ordered}).holds
    assert evaluate_claim(claim("decreasing"), {"x": ordered[::-1]}).holds
    assert not evaluate_claim(claim("increasing"), {"x": ordered[::-1]}).holds
