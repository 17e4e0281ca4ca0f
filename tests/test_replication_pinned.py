"""The committed replication (docs/replication.json, the run behind docs/replication.md):
every verdict pinned, and every claim judged again from the committed measurements with
today's study files and reading rules. Change a claim, a rule or a verdict on purpose and
these tests name the experiment and the claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lradvisor.replication.claims import evaluate_claim, verdict_of
from lradvisor.replication.kinds import KINDS
from lradvisor.replication.reproduce import json_revive
from lradvisor.replication.spec import load_experiment

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "replication.json"

# The verdicts of the committed full run (docs/replication.md states its commit).
PINNED = {
    "E1": "not reproduced",
    "E2": "reproduced",
    "E3": "partly",
    "E4": "not reproduced",
    "E5": "reproduced",
    "E6": "partly",
    "E7": "not reproduced",
    "E8": "not reproduced",
    "E9": "partly",
    "E10": "reproduced",
    "E11": "reproduced",
    "E12": "reproduced",
    "E13": "reproduced",
    "E14": "reproduced",
    "E15": "not reproduced",
    "E16": "cannot be settled",
    "E17": "reproduced",
    "E18": "partly",
    "E19": "reproduced",
    "E20": "cannot be settled",
    "E21": "cannot be settled",
    "E22": "not reproduced",
    "E23": "not reproduced",
}


def _committed() -> dict:
    return json.loads(REPORT.read_text())


def test_the_committed_run_is_the_full_protocol_with_stability_runs():
    data = _committed()
    assert data["mode"] == "full" and len(data["stability_runs"]) == 2
    assert len(data["experiments"]) == 23
    assert "+ local changes" not in data["commit"]


def test_every_committed_verdict_is_pinned():
    verdicts = {row["id"]: row["verdict"] for row in _committed()["experiments"]}
    changed = {k: (PINNED.get(k), v) for k, v in verdicts.items() if PINNED.get(k) != v}
    assert not changed, f"verdicts differ from the pinned ones (pinned, committed): {changed}"


@pytest.mark.parametrize("row", _committed()["experiments"], ids=lambda row: row["id"])
def test_the_committed_measurements_give_the_committed_claims(row):
    """Judge the committed values again with the current study file; a claim that a
    stability run judged otherwise stays unsettled, as in the committed run."""
    experiment = load_experiment(ROOT / "studies" / Path(row["file"]).name, kinds=KINDS)
    values = json_revive(row["values"])
    committed = {claim["id"]: claim for claim in row["claims"]}
    assert [c.id for c in experiment.claims] == list(committed), "the claims changed"
    results = []
    for claim in experiment.claims:
        result = evaluate_claim(claim, values)
        runs = [run for run in committed[claim.id]["runs"].values() if run is not None]
        holds = result.holds if all(run["holds"] == result.holds for run in runs) else None
        assert holds == committed[claim.id]["holds"], (
            f"{row['id']} {claim.id}: judged {holds} now, {committed[claim.id]['holds']} committed"
        )
        results.append((claim, holds))
    counted = [holds for claim, holds in results if claim.extra is None]
    assert _verdict(counted) == row["verdict"] == PINNED[row["id"]]


def _verdict(states: list) -> str:
    class _Result:
        def __init__(self, holds):
            self.holds = holds

    return verdict_of([_Result(h) for h in states])
