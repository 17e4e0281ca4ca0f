from __future__ import annotations

import pytest
import yaml

from lradvisor.config import load_config, parse_config
from lradvisor.errors import ConfigError, LRAdvisorError


def test_example_e5_is_the_headline_setup():
    config = load_config("examples/e5.yaml")
    assert config.model.hidden == [64]
    assert config.model.bias is False
    assert config.training.loss == "ce"
    assert config.training.steps == 2000
    assert config.sweep.lrs == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 0.5, 1.0]
    assert config.sweep.seeds == [42, 137, 256, 512, 1024]


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        ({}, "model", "required"),
        ({"model": {}}, "model.hidden", "required"),
        (
            {"model": {"hidden": [8], "activation": "gelu"}},
            "model.activation",
            "relu, leaky_relu or identity",
        ),
        ({"model": {"hidden": [8]}, "sweep": {"lrs": [-0.1]}}, "sweep.lrs.0", "greater than 0"),
        (
            {"model": {"hidden": [8]}, "data": {"source": "file", "path": "missing.npz"}},
            "data.path",
            "an existing file",
        ),
        ({"model": {"hidden": [8]}, "data": {"source": "sklearn"}}, "data.name", "digits"),
        ({"model": {"hidden": [8]}, "trainng": {}}, "trainng", "a known field"),
        ({"model": {"hidden": [0]}}, "model.hidden.0", "greater than 0"),
        (
            {"model": {"hidden": [8]}, "training": {"loss": "hinge"}},
            "training.loss",
            "ce, mse or mix",
        ),
        ({"model": {"hidden": [8]}, "training": {"loss": "mix"}}, "training.ce_weight", "[0, 1]"),
        (
            {"model": {"hidden": [8]}, "training": {"ce_weight": 0.5}},
            "training.ce_weight",
            "loss: mix",
        ),
    ],
)
def test_bad_fields_name_file_field_and_expectation(raw, field, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, file="cfg.yaml")
    message = str(info.value)
    assert message.startswith("cfg.yaml: field ")
    assert f"'{field}'" in message
    assert expected in message
    assert "\n" not in message


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="a readable YAML file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_config(bad)


def test_relative_data_path_is_read_next_to_the_model_file(tmp_path):
    import numpy as np

    np.savez(
        tmp_path / "d.npz", X=np.random.default_rng(0).normal(size=(30, 4)), y=np.arange(30) % 3
    )
    cfg = tmp_path / "m.yaml"
    cfg.write_text(
        yaml.safe_dump({"model": {"hidden": [8]}, "data": {"source": "file", "path": "d.npz"}})
    )
    assert load_config(cfg).data.path == "d.npz"


def test_the_mixed_loss_is_refused_where_it_is_not_implemented():
    config = parse_config(
        {"model": {"hidden": [8]}, "training": {"loss": "mix", "ce_weight": 0.25}}, file="m.yaml"
    )
    assert config.training.loss_weights == (0.25, 0.75)
    with pytest.raises(LRAdvisorError, match="not supported by lradvisor suggest"):
        config.training.require_plain_loss("lradvisor suggest")
