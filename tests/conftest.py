from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from lradvisor.config import ModelConfig, parse_config


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    """Two threads; one per worker when pytest-xdist runs workers side by side (2 cores)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, 2 // workers))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (two threads thrash on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _mlflow_outside_the_repository(tmp_path_factory) -> Iterator[None]:
    """Studies log to MLflow by default: keep the store and the spool in a temp folder."""
    folder = tmp_path_factory.mktemp("mlflow")
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "LRADVISOR_MLFLOW_SPOOL")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["LRADVISOR_MLFLOW_SPOOL"] = str(folder / "spool")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
