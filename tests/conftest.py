from __future__ import annotations

import pytest
import torch

from lradvisor.config import ModelConfig, parse_config


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    torch.set_num_threads(2)


def make_config(**sections) -> ModelConfig:
    """A small model config; keyword sections override the defaults shallowly."""
    raw = {
        "name": "test",
        "model": {"hidden": [16], "activation": "relu", "bias": False},
        "data": {"source": "gaussian_mixture", "n": 60, "dim": 8, "classes": 3, "separation": 2.0},
        "training": {"loss": "ce", "steps": 100, "dtype": "float64"},
        "sweep": {"lrs": [0.01, 0.1], "seeds": [1, 2]},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(raw, file="test.yaml")
