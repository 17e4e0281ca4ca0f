"""Study files: every mistake is one ConfigError naming the file and the dotted field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lradvisor.errors import ConfigError
from lradvisor.studies.objective import architecture_key, trial_config
from lradvisor.studies.schema import DEFAULT_VALIDATION_FRACTION, load_study, parse_study

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

MODEL = {
    "model": {"hidden": [8]},
    "data": {"source": "gaussian_mixture", "n": 100, "dim": 6, "classes": 3},
    "training": {"loss": "ce", "dtype": "float64"},
}
STUDY = {
    "name": "s",
    "model": MODEL,
    "search_space": {
        "lr": {"type": "float", "low": 1.0e-3, "high": 3.0, "log": True},
        "width": {"type": "int", "low": 16, "high": 256, "log": True},
        "depth": {"type": "int", "low": 1, "high": 3},
        "momentum": {"type": "float", "low": 0.0, "high": 0.95},
        "batch_size": {"type": "categorical", "choices": [32, 64, None]},
        "loss": {"type": "categorical", "choices": ["ce", "mse"]},
    },
    "metric": "val_loss",
    "budget": {"n_trials": 4, "steps": 30, "report_every": 10, "seed": 0},
    "sampler": {"type": "tpe"},
    "pruner": {"type": "lradvisor", "base": "median"},
}


def _with(path: str, value: object) -> dict:
    """STUDY with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    study = copy.deepcopy(STUDY)
    *parents, last = path.split(".")
    node = study
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return study


def test_valid_study_parses_with_template_and_budget() -> None:
    spec = parse_study(STUDY, file="s.yaml")
    assert spec.name == "s"
    assert spec.template.training.steps == 30  # the budget's steps
    assert spec.template.data.validation_fraction == DEFAULT_VALIDATION_FRACTION
    assert any("validation_fraction" in note for note in spec.notes)
    assert spec.architecture_parameters == (
        "width",
        "depth",
        "momentum",
        "batch_size",
        "loss",
    )


ERRORS = [
    # (what, dotted path, value, field in the error, expected text)
    (
        "unknown parameter type",
        "search_space.width.type",
        "double",
        "search_space.width.type",
        "one of float, int, categorical",
    ),
    (
        "empty float range",
        "search_space.lr",
        {"type": "float", "low": 0.1, "high": 0.1},
        "search_space.lr.high",
        "the range is empty",
    ),
    (
        "empty int range",
        "search_space.depth",
        {"type": "int", "low": 2, "high": 2},
        "search_space.depth.high",
        "the range is empty",
    ),
    (
        "low above high",
        "search_space.width",
        {"type": "int", "low": 64, "high": 16},
        "search_space.width.low",
        "a value ≤ high",
    ),
    (
        "empty categorical",
        "search_space.batch_size",
        {"type": "categorical", "choices": []},
        "search_space.batch_size.choices",
        "a non-empty list",
    ),
    (
        "unknown parameter name",
        "search_space.dropout",
        {"type": "float", "low": 0.0, "high": 0.5},
        "search_space.dropout",
        "a known parameter (lr, momentum",
    ),
    ("unknown sampler", "sampler.type", "cmaes", "sampler.type", "one of tpe, random, lradvisor"),
    (
        "unknown pruner",
        "pruner.type",
        "asha",
        "pruner.type",
        "one of none, median, hyperband, lradvisor",
    ),
    (
        "log with low ≤ 0",
        "search_space.momentum",
        {"type": "float", "low": 0.0, "high": 0.9, "log": True},
        "search_space.momentum.low",
        "a value > 0 (log: true)",
    ),
    ("missing lr", "search_space.lr", ..., "search_space.lr", "this required parameter"),
    (
        "int parameter as float",
        "search_space.depth",
        {"type": "float", "low": 1, "high": 3},
        "search_space.depth.type",
        "one of int, categorical",
    ),
    (
        "momentum out of bounds",
        "search_space.momentum.high",
        1.5,
        "search_space.momentum.high",
        "< 1",
    ),
    (
        "bad loss choice",
        "search_space.loss.choices",
        ["ce", "hinge"],
        "search_space.loss.choices.1",
        "one of ce, mse",
    ),
    ("unknown metric", "metric", "accuracy", "metric", "one of val_loss, train_loss"),
    ("missing budget", "budget", ..., "budget", "this required field"),
    (
        "report grid past the steps",
        "budget.report_every",
        50,
        "budget.report_every",
        "a value ≤ budget.steps (30)",
    ),
    ("base on a plain pruner", "pruner", {"type": "median", "base": "none"}, "pruner.base", ""),
    ("typo in a section", "budget.n_trial", 3, "budget.n_trial", "no such field"),
    ("inline model error", "model.model.hidden", [0], "model.model.hidden.0", ""),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "expected"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
def test_study_errors_name_file_and_field(path, value, field, expected) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_study(_with(path, value), file="bad.yaml")
    error = caught.value
    assert (error.file, error.field) == ("bad.yaml", field), str(error)
    assert expected in error.expected, str(error)
    assert str(error).startswith(f"bad.yaml: field '{field}': expected ")
    assert "\n" not in str(error)


def test_val_loss_with_explicit_zero_fraction_names_the_model_field() -> None:
    study = _with("model.data", {**MODEL["data"], "validation_fraction": 0.0})
    with pytest.raises(ConfigError) as caught:
        parse_study(study, file="bad.yaml")
    assert caught.value.field == "model.data.validation_fraction"
    assert "val_loss" in caught.value.expected


def test_train_loss_keeps_all_data_for_training() -> None:
    spec = parse_study(_with("metric", "train_loss"), file="s.yaml")
    assert spec.template.data.validation_fraction == 0.0
    assert spec.notes == ()


def test_depth_needs_a_built_in_mlp() -> None:
    factory = {"model": {"factory": "user_models:residual_mlp", "kwargs": {"hidden": 8}}}
    with pytest.raises(ConfigError, match=r"search_space\.depth"):
        parse_study(_with("model", factory), file=str(EXAMPLES / "s.yaml"))


def test_model_file_resolves_next_to_the_study(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(MODEL))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_with("model", "m.yaml")))
    assert load_study(tmp_path / "s.yaml").template.model.hidden == [8]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_with("model", "missing.yaml")))
    with pytest.raises(ConfigError, match="field 'model'"):
        load_study(tmp_path / "s.yaml")


def test_example_study_loads() -> None:
    spec = load_study(EXAMPLES / "digits_study.yaml")
    assert spec.template.data.name == "digits"
    assert spec.budget.n_trials == 40 and spec.sampler.type == "lradvisor"


def test_trial_config_applies_width_depth_and_training() -> None:
    spec = parse_study(STUDY, file="s.yaml")
    params = {"lr": 0.1, "width": 32, "depth": 3, "momentum": 0.5, "batch_size": None}
    config = trial_config(spec.template, {**params, "loss": "mse"})
    assert config.model.hidden == [32, 32, 32]
    assert (config.training.loss, config.training.momentum) == ("mse", 0.5)
    assert config.training.batch_size is None
    assert architecture_key(params) == "batch_size=None depth=3 momentum=0.5 width=32"
