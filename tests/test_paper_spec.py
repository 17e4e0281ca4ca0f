"""Study files: validation errors name file, field and expectation; quick merge; lookup."""

from __future__ import annotations

import copy

import pytest
import yaml

from lradvisor.errors import ConfigError, LRAdvisorError
from lradvisor.replication.kinds import KINDS, VALIDATORS
from lradvisor.replication.kinds.drift import drift_sweep
from lradvisor.replication.kinds.grid import grid_sweep
from lradvisor.replication.kinds.sweeps import PROTOCOL
from lradvisor.replication.spec import (
    canonical_id,
    default_studies_dir,
    find_experiments,
    load_experiment,
    parse_experiment,
    study_files,
)

VALID = {
    "id": "E5",
    "name": "drift scaling law",
    "kind": "drift_sweep",
    "protocol": {"model": {"model": {"hidden": [8]}}, "lrs": [0.01, 0.1], "seeds": [1, 2]},
    "quick": {"seeds": [1], "steps": 10},
    "claims": [
        {
            "id": "alpha",
            "published": "α = 1.16",
            "metric": "alpha",
            "check": "approx",
            "value": 1.16,
        },
    ],
}


def with_changes(path: str, value: object) -> dict:
    raw = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    target = raw
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    key = int(last) if isinstance(target, list) else last
    if value is KeyError:
        del target[key]
    else:
        target[key] = value
    return raw


def test_a_valid_file_and_the_quick_merge():
    experiment = parse_experiment(VALID, file="E05.yaml", kinds=KINDS)
    assert experiment.id == "E5" and experiment.number == 5
    assert experiment.protocol_for(quick=False)["seeds"] == [1, 2]
    quick = experiment.protocol_for(quick=True)
    assert quick["seeds"] == [1] and quick["steps"] == 10 and quick["lrs"] == [0.01, 0.1]
    assert "steps" not in experiment.protocol


@pytest.mark.parametrize(
    ("path", "value", "field", "expected"),
    [
        ("id", "X5", "id", "an id like E5"),
        ("id", "E6", "id", "E5 (the file's name)"),
        ("name", KeyError, "name", "required"),
        ("kind", "nonsense", "kind", "a registered kind"),
        ("protocol", [], "protocol", "a mapping"),
        ("claims", [], "claims", "a non-empty list"),
        ("extra", 1, "extra", "a known field"),
        ("claims.0.check", "roughly", "claims.0.check", "one of approx"),
        ("claims.0.tolerance", 0.03, "claims.0.tolerance", "a known field"),
        ("claims.0.value", "big", "claims.0.value", "a number"),
        ("claims.0.factor", 1.5, "claims.0.factor", "a known field"),
        ("claims.0.nulls", "n", "claims.0.better", "higher or lower"),
        ("claims.0.extra", 5, "claims.0.extra", "a text"),
        ("claims.0.metric", KeyError, "claims.0.metric", "required"),
        ("claims.0.colour", "red", "claims.0.colour", "a known field"),
    ],
)
def test_bad_files_name_file_field_and_expectation(path, value, field, expected):
    with pytest.raises(ConfigError) as info:
        parse_experiment(with_changes(path, value), file="E05.yaml", kinds=KINDS)
    message = str(info.value)
    assert message.startswith(f"E05.yaml: field '{field}'")
    assert expected in message
    assert "\n" not in message


def test_between_needs_an_ordered_pair():
    raw = with_changes(
        "claims.0",
        {"id": "b", "published": "p", "metric": "m", "check": "between", "value": [2, 1]},
    )
    with pytest.raises(ConfigError, match=r"\[low, high\]"):
        parse_experiment(raw, file="E05.yaml")


@pytest.mark.parametrize(("text", "canonical"), [("E5", "E5"), ("e05", "E5"), ("E23", "E23")])
def test_canonical_ids(text, canonical):
    assert canonical_id(text) == canonical


def test_unknown_ids_and_folders(tmp_path):
    with pytest.raises(LRAdvisorError, match="E5 or E05"):
        canonical_id("five")
    (tmp_path / "E05.yaml").write_text(yaml.safe_dump(VALID, allow_unicode=True))
    assert [e.id for e in find_experiments(["e5"], studies_dir=tmp_path)] == ["E5"]
    with pytest.raises(LRAdvisorError, match="no study file for E7"):
        find_experiments(["E7"], studies_dir=tmp_path)
    with pytest.raises(ConfigError, match="--studies"):
        find_experiments("all", studies_dir=tmp_path / "missing")


def test_every_study_file_loads_and_the_sweep_protocols_build():
    """All study files of the repository: valid, registered kinds, E1 … E23 in order."""
    files = study_files()
    assert files and files[0].parent == default_studies_dir()
    experiments = [load_experiment(path, kinds=KINDS) for path in files]
    numbers = [e.number for e in experiments]
    assert numbers == sorted(numbers)
    if len(files) == 23:
        assert numbers == list(range(1, 24))
    for experiment in experiments:
        if experiment.kind in VALIDATORS:
            for quick in (False, True):
                VALIDATORS[experiment.kind](experiment.protocol_for(quick=quick))


@pytest.mark.parametrize(
    ("kind", "protocol", "field"),
    [
        (drift_sweep, {"lrs": [0.1], "seeds": [1]}, "model"),
        (drift_sweep, {"model": {"model": {"hidden": [4]}}, "lr": [0.1]}, "lr"),
        (drift_sweep, {"model": {"model": {"hidden": [4]}}, "seeds": [1]}, "lrs"),
        (
            drift_sweep,
            {"model": {"model": {"hidden": [0]}}, "lrs": [0.1], "seeds": [1]},
            "model.model.hidden.0",
        ),
        (
            grid_sweep,
            {
                "model": {"model": {"hidden": [4]}},
                "lrs": [0.1],
                "seeds": [1],
                "grid": {"colour": [1]},
            },
            "grid.colour",
        ),
    ],
)
def test_bad_protocols_are_config_errors(kind, protocol, field):
    with pytest.raises(ConfigError) as info:
        kind(protocol, quick=True, progress=None)
    assert info.value.file == PROTOCOL and info.value.field == field
