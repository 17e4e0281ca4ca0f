"""User model factories: config validation, one-line errors, seeding, dispatch."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import yaml

from lradvisor.config import load_config, parse_config
from lradvisor.engine.batched import run_sweep
from lradvisor.engine.data import mixture_dataset
from lradvisor.engine.dispatch import build_model, run_trials
from lradvisor.engine.factory import build_factory_model, initial_factory_state
from lradvisor.engine.models import initial_state
from lradvisor.errors import ConfigError, LRAdvisorError

from conftest import make_config

FACTORIES = """
import torch
from torch import nn

NOT_CALLABLE = 3

def good(in_features, num_classes, hidden=8):
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

def raises(in_features, num_classes):
    raise ValueError("hidden must be even")

def returns_tensor(in_features, num_classes):
    return torch.zeros(3)

def fixed_input(in_features, num_classes):
    return nn.Linear(5, num_classes)

def fixed_width(in_features, num_classes, width=4):
    return nn.Linear(width, num_classes)

def wrong_classes(in_features, num_classes):
    return nn.Linear(in_features, num_classes + 1)

def returns_tuple(in_features, num_classes):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(in_features, num_classes)
        def forward(self, x):
            return self.fc(x), x
    return Two()
"""

BROKEN = "import torch\nraise RuntimeError('broken\\nimport')\n"


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tensors are tiny: one thread is faster and does not spin on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    (folder / "lra_test_factories.py").write_text(textwrap.dedent(FACTORIES))
    (folder / "lra_test_broken.py").write_text(BROKEN)
    return folder


def _factory_config(folder, factory, **model):
    raw = {
        "model": {"factory": factory, **model},
        "data": {"source": "gaussian_mixture", "n": 40, "dim": 6, "classes": 3},
        "training": {"steps": 5, "dtype": "float64"},
        "sweep": {"lrs": [0.1], "seeds": [1]},
    }
    return parse_config(raw, file=str(folder / "m.yaml"))


def _assert_one_line(error: ConfigError, file: str, field: str, *expected: str) -> None:
    message = str(error)
    assert message.startswith(f"{file}: field '{field}': expected "), message
    assert "\n" not in message
    for text in expected:
        assert text in message, message


@pytest.mark.parametrize(
    ("model", "field", "expected"),
    [
        ({}, "model.hidden", "required"),
        ({"hidden": [8], "factory": "a.b:c"}, "model.factory", "not both"),
        ({"factory": "user_models.residual_mlp"}, "model.factory", "'package.module:function'"),
        ({"factory": "user models:fn"}, "model.factory", "'package.module:function'"),
        ({"factory": "m:f", "activation": "relu"}, "model.activation", "built-in MLPs"),
        ({"hidden": [8], "kwargs": {"hidden": 4}}, "model.kwargs", "factory models"),
        ({"hidden": [8], "width_kwarg": "hidden"}, "model.width_kwarg", "factory models"),
        ({"factory": "m:f", "kwargs": {"num_classes": 3}}, "model.kwargs", "set from the data"),
        ({"factory": "m:f", "kwargs": [1, 2]}, "model.kwargs", "dictionary"),
    ],
)
def test_config_factory_validation_names_file_field_and_expectation(model, field, expected):
    with pytest.raises(ConfigError) as info:
        parse_config({"model": model}, file="cfg.yaml")
    _assert_one_line(info.value, "cfg.yaml", field, expected)


def test_config_accepts_a_factory_and_keeps_mlps_unchanged():
    config = parse_config(
        {"model": {"factory": "pkg.mod:build", "kwargs": {"hidden": 4}, "width_kwarg": "hidden"}}
    )
    assert config.model.is_factory
    assert config.model.kwargs == {"hidden": 4}
    assert config.model.hidden is None
    assert not make_config().model.is_factory
    assert load_config("examples/residual_mlp.yaml").model.factory == "user_models:residual_mlp"


def test_factory_is_imported_next_to_the_model_file_and_seeded(model_dir):
    config = _factory_config(model_dir, "lra_test_factories:good", kwargs={"hidden": 5})
    first = build_factory_model(config, 6, 3, seed=7)
    again = build_factory_model(config, 6, 3, seed=7)
    other = build_factory_model(config, 6, 3, seed=8)
    assert first[0].weight.shape == (5, 6)
    assert torch.equal(first[0].weight, again[0].weight)
    assert not torch.equal(first[0].weight, other[0].weight)


def test_initial_factory_state_builds_the_model_then_draws_the_data(model_dir):
    config = _factory_config(model_dir, "lra_test_factories:good")
    state = initial_factory_state(config, 11, None, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)  # the factory's draws, in order
        expected = mixture_dataset(config.data, dtype=torch.float64)
    assert torch.equal(state.data.X, expected.X)
    assert state.model[0].weight.dtype == torch.float64
    # the same seed gives a built-in MLP of the same shapes the same data
    mlp = make_config(model={"hidden": [8], "bias": True}, data={"n": 40, "dim": 6})
    assert torch.equal(initial_state(mlp, 11, None, dtype=torch.float64).data.X, expected.X)


@pytest.mark.parametrize(
    ("factory", "field", "expected"),
    [
        (
            "lra_test_missing_module:fn",
            "model.factory",
            ["an importable module 'package.module:function'", "ModuleNotFoundError"],
        ),
        (
            "lra_test_broken:fn",
            "model.factory",
            ["an importable module", "RuntimeError: broken import"],
        ),
        ("lra_test_factories:nope", "model.factory", ["a callable 'nope'", "no attribute 'nope'"]),
        ("lra_test_factories:NOT_CALLABLE", "model.factory", ["a callable", "is a int"]),
        (
            "lra_test_factories:raises",
            "model.factory",
            ["a factory that builds a model; it raised ValueError: hidden must be even"],
        ),
        ("lra_test_factories:returns_tensor", "model.factory", ["torch.nn.Module", "Tensor"]),
        (
            "lra_test_factories:fixed_input",
            "data",
            ["inputs (n, 6) to logits (n, 3)", "RuntimeError", "on (2, 6)"],
        ),
        (
            "lra_test_factories:wrong_classes",
            "data",
            ["inputs (n, 6) to logits (n, 3)", "output shape (2, 4)"],
        ),
        ("lra_test_factories:returns_tuple", "data", ["logits (n, 3)", "a tuple"]),
    ],
)
def test_factory_errors_are_one_line_config_errors(model_dir, factory, field, expected):
    config = _factory_config(model_dir, factory)
    with pytest.raises(ConfigError) as info:
        build_factory_model(config, 6, 3, seed=0)
    _assert_one_line(info.value, str(model_dir / "m.yaml"), field, *expected)


def test_shape_mismatch_blames_the_kwargs_when_there_are_some(model_dir):
    config = _factory_config(model_dir, "lra_test_factories:fixed_width", kwargs={"width": 5})
    with pytest.raises(ConfigError) as info:
        build_factory_model(config, 6, 3, seed=0)
    _assert_one_line(
        info.value, str(model_dir / "m.yaml"), "model.kwargs", "inputs (n, 6) to logits (n, 3)"
    )


def test_width_kwarg_must_be_a_keyword_of_the_factory(model_dir):
    config = _factory_config(model_dir, "lra_test_factories:good", width_kwarg="width")
    with pytest.raises(ConfigError) as info:
        build_factory_model(config, 6, 3, seed=0)
    _assert_one_line(
        info.value, str(model_dir / "m.yaml"), "model.width_kwarg", "in_features, num_classes"
    )


def test_run_trials_dispatches_mlps_to_the_batched_engine():
    config = make_config(training={"steps": 20})
    direct, dispatched = run_sweep(config), run_trials(config, workers=1)
    assert np.array_equal(direct.drift_direct, dispatched.drift_direct)
    assert np.array_equal(direct.final_loss, dispatched.final_loss)


def test_run_trials_dispatches_factories_and_refuses_probe_observables(model_dir):
    config = _factory_config(model_dir, "lra_test_factories:good")
    result = run_trials(config, workers=2)
    assert result.law_names == ["0->2"]
    assert np.isfinite(result.final_loss).all()

    class Probe:
        concentration = True

    with pytest.raises(LRAdvisorError, match="built-in MLPs"):
        run_trials(config, observe=Probe())


def test_build_model_gives_the_trial_start_for_both_kinds(model_dir):
    mlp = make_config(model={"hidden": [7], "bias": True})
    model, data = build_model(mlp, 2, None)
    state = initial_state(mlp, 2, None, dtype=torch.float64)
    assert torch.equal(model[0].weight, state.weights[0])
    assert torch.equal(model[2].bias, state.biases[1])
    assert torch.equal(data.X, state.data.X)

    factory = _factory_config(model_dir, "lra_test_factories:good")
    model, data = build_model(factory, 2, None)
    expected = initial_factory_state(factory, 2, None, dtype=torch.float64)
    assert model[0].weight.dtype == torch.float64
    assert torch.equal(model[0].weight, expected.model[0].weight)
    assert torch.equal(data.X, expected.data.X)


def test_examples_load_and_run_through_run_trials(tmp_path):
    for name, laws in [
        ("residual_mlp", ["blocks.0.fc1->blocks.0.fc2", "blocks.1.fc1->blocks.1.fc2"]),
        ("small_cnn", ["fc1->fc2"]),
    ]:
        config = load_config(f"examples/{name}.yaml")
        result = run_trials(config, steps=5, lrs=[0.05], seeds=[0])
        assert result.law_names == laws
        assert np.isfinite(result.final_loss).all()
    # a copy of the model file elsewhere finds no user_models.py next to it
    moved = tmp_path / "residual.yaml"
    raw = yaml.safe_load(open("examples/residual_mlp.yaml"))
    moved.write_text(yaml.safe_dump({**raw, "model": {**raw["model"], "factory": "lra_nowhere:f"}}))
    with pytest.raises(ConfigError, match="importable module"):
        run_trials(load_config(moved), steps=1)
