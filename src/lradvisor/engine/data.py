"""Data sets for trials: the paper's Gaussian mixture, scikit-learn's bundled sets, user files.

The Gaussian mixture follows the published protocol bit for bit (THEORY.md §3): it is drawn
from torch's global generator *after* the model has been built from the same seed, so the
data differ per seed. Every other source is loaded once and shared by all seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lradvisor.config import DataSpec, ModelConfig, resolve_data_path
from lradvisor.errors import ConfigError


@dataclass(frozen=True)
class Dataset:
    """Training inputs ``X`` (n × d), integer labels ``y`` (n,), and an optional validation split."""

    X: torch.Tensor
    y: torch.Tensor
    classes: int
    name: str
    X_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])


def gaussian_mixture(
    n: int, dim: int, classes: int, separation: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the mixture from torch's *current global* generator (call after building the model).

    Order of draws: class centres N(0, I_d) rescaled to norm s·√d; balanced labels
    ``arange(n) % K``; samples = centre + N(0, I_d); then one permutation shuffles the order.
    """
    centres = torch.randn(classes, dim)
    centres = centres / centres.norm(dim=1, keepdim=True) * separation * math.sqrt(dim)
    y = torch.arange(n) % classes
    X = centres[y] + torch.randn(n, dim)
    order = torch.randperm(n)
    return X[order], y[order]


def _standardize(X: np.ndarray) -> np.ndarray:
    std = X.std(axis=0)
    std[std == 0] = 1.0
    return (X - X.mean(axis=0)) / std


def _load_sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    loader = {
        "digits": datasets.load_digits,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "iris": datasets.load_iris,
    }[name]
    bunch = loader()
    return np.asarray(bunch.data, dtype=float), np.asarray(bunch.target)


def _load_file(path: Path, config_file: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        if path.suffix == ".npz":
            with np.load(path) as archive:
                if "X" not in archive or "y" not in archive:
                    raise ConfigError(
                        config_file,
                        "data.path",
                        "an .npz file holding arrays 'X' and 'y'",
                        str(path),
                    )
                return np.asarray(archive["X"], dtype=float), np.asarray(archive["y"])
        table = np.genfromtxt(path, delimiter=",", dtype=float)
        if np.isnan(table[0]).all():
            table = table[1:]
    except (OSError, ValueError) as exc:
        raise ConfigError(
            config_file, "data.path", "a readable .npz or numeric .csv file", f"{path}: {exc}"
        ) from None
    if table.ndim != 2 or table.shape[1] < 2 or np.isnan(table).any():
        raise ConfigError(
            config_file, "data.path", "a numeric .csv with features then a label column", str(path)
        )
    return table[:, :-1], table[:, -1]


def _encode_labels(y: np.ndarray, config_file: str) -> tuple[np.ndarray, int]:
    values, encoded = np.unique(y, return_inverse=True)
    if len(values) < 2:
        raise ConfigError(
            config_file, "data", "labels of at least two classes", f"{len(values)} class"
        )
    return encoded, len(values)


def _split(X: torch.Tensor, y: torch.Tensor, fraction: float) -> tuple[torch.Tensor, ...]:
    if fraction == 0.0:
        return X, y, None, None
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    n_val = max(1, round(fraction * len(y)))
    val, train = order[:n_val], order[n_val:]
    return X[train], y[train], X[val], y[val]


def load_shared_dataset(config: ModelConfig, *, dtype: torch.dtype = torch.float64) -> Dataset:
    """Load a seed-independent data set (``sklearn`` or ``file``)."""
    spec: DataSpec = config.data
    if spec.source == "sklearn":
        X, y = _load_sklearn(spec.name or "")
        name = spec.name or "sklearn"
    else:
        path = resolve_data_path(config)
        X, y = _load_file(path, config.source_file)
        name = path.name
    if X.ndim != 2:
        raise ConfigError(
            config.source_file, "data", "a 2-D feature array X (n × d)", f"shape {X.shape}"
        )
    if len(X) != len(y):
        raise ConfigError(
            config.source_file,
            "data",
            "as many labels as rows of X",
            f"{len(X)} rows, {len(y)} labels",
        )
    labels, classes = _encode_labels(y, config.source_file)
    if spec.standardize:
        X = _standardize(X)
    X_t, y_t, X_v, y_v = _split(
        torch.tensor(X, dtype=dtype), torch.from_numpy(labels).long(), spec.validation_fraction
    )
    return Dataset(X_t, y_t, classes, name, X_v, y_v)


def mixture_dataset(spec: DataSpec, *, dtype: torch.dtype) -> Dataset:
    """The seed-dependent mixture, drawn from the global generator as it stands."""
    X, y = gaussian_mixture(spec.n, spec.dim, spec.classes, spec.separation)
    X_t, y_t, X_v, y_v = _split(X.to(dtype), y, spec.validation_fraction)
    return Dataset(X_t, y_t, spec.classes, "gaussian_mixture", X_v, y_v)


def data_shape(config: ModelConfig) -> tuple[int, int]:
    """(input dimension, number of classes) without building any trial."""
    if config.data.source == "gaussian_mixture":
        return config.data.dim, config.data.classes
    data = load_shared_dataset(config)
    return data.dim, data.classes
