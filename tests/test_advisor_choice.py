"""Stage 4 on hand-made probe results: the safety margin below the first failure, the
re-rank among safe finalists, the range's top on a rate that trained well, the warnings."""

from __future__ import annotations

import math

import pytest

from lradvisor.advisor.choice import choose, first_failure
from lradvisor.records import ProbeResult


def _row(lr, status, rung, final=None, rung_train=None):
    row = {"lr": lr, "origin": "bracket", "status": status, "rung_score": rung}
    row["rung_train"] = rung if rung_train is None else rung_train
    if final is not None:
        row["final_score"] = final
        row["final_train"] = final
    return row


def _probe(rows, *, steps=400, score="training loss", initial=2.3):
    return ProbeResult(
        steps=steps,
        rung=steps // 4,
        seeds=(0, 1),
        score=score,
        initial_score=initial,
        rows=tuple(rows),
        extensions=(),
        mode="batched",
    )


def test_the_best_finalist_wins_when_no_rate_failed():
    rows = [
        _row(0.1, "dropped", 0.5),
        _row(0.2, "finalist", 0.3, 0.10),
        _row(0.4, "finalist", 0.2, 0.05),
        _row(0.8, "finalist", 0.25, 0.07),
    ]
    choice = choose(_probe(rows), steps=400)
    assert choice.recommended_lr == 0.4
    assert first_failure(rows) is None


def test_a_finalist_within_a_factor_two_of_a_divergence_is_re_ranked_not_stepped_back():
    rows = [
        _row(0.25, "dropped", 0.5),
        _row(0.5, "finalist", 0.3, 0.020),
        _row(0.7, "finalist", 0.2, 0.010),
        _row(1.0, "finalist", 0.1, 0.001),  # best score, but 1.41× below the divergence
        _row(1.41, "diverged", math.inf),
    ]
    choice = choose(_probe(rows), steps=400)
    assert choice.recommended_lr == 0.7  # the best safe finalist (≤ 1.41/2), not 1.0/√2 blindly
    assert "F = 1.41" in choice.rule and "1 scored 0.001" in choice.rule
    assert choice.lr_range[1] < 1.41


def test_a_collapse_onto_a_plateau_counts_as_a_failure():
    rows = [
        _row(0.4, "finalist", 1e-3, 1e-4),
        _row(0.8, "finalist", 2e-4, 3e-5),
        _row(1.6, "finalist", 0.46, 0.46),  # stuck far above its neighbour, yet "below start"
    ]
    lr, why = first_failure(rows)
    assert lr == 1.6 and why.startswith("collapsed")
    assert choose(_probe(rows), steps=400).recommended_lr == 0.8


def test_the_range_tops_on_a_rate_that_trained_well_not_one_stuck_at_chance():
    rows = [
        _row(0.01, "dropped", 0.9),
        _row(0.02, "dropped", 0.30),
        _row(0.04, "finalist", 0.12, 0.05),
        _row(0.08, "finalist", 0.10, 0.06),
        _row(0.16, "dropped", 0.25),
        _row(0.32, "dropped", 2.2),  # stuck near chance (2.3): trained, but not well
    ]
    choice = choose(_probe(rows), steps=400)
    assert choice.recommended_lr == 0.04
    low, high = choice.lr_range
    assert high == 0.16 and low == pytest.approx(0.004)


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        (
            [_row(0.1, "finalist", 0.2, 0.1), _row(0.2, "finalist", 0.3, 0.2)],
            "smallest rate probed",
        ),
        ([_row(0.1, "finalist", 0.3, 0.2), _row(0.2, "finalist", 0.2, 0.1)], "largest rate probed"),
    ],
)
def test_a_recommendation_at_the_edge_of_the_probe_warns(rows, words):
    choice = choose(_probe(rows), steps=400)
    assert any(words in w for w in choice.warnings)


def test_a_shorter_probe_and_an_overfitting_model_are_named():
    rows = [
        _row(0.1, "finalist", 2.4, 2.5, rung_train=1.0),
        _row(0.2, "finalist", 2.5, 2.6, rung_train=0.9),
    ]
    choice = choose(_probe(rows, steps=100, score="validation loss"), steps=1000)
    text = " ".join(choice.warnings)
    assert "100 of your 1000 steps" in text and "overfits" in text
