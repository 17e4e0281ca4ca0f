"""Data sets for trials: the paper's Gaussian mixture, scikit-learn's bundled sets, user files.

The Gaussian mixture follows the published protocol bit for bit (docs/theory.md §3): it is drawn
from torch's global generator *after* the model has been built from the same seed, so the
data differ per seed. Every other source is loaded once and shared by all seeds.
"""

from __future__ import annotations

import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lradvisor.config import (
    DataSpec,
    ModelConfig,
    check_batch_size,
    resolve_data_path,
    validation_rows,
)
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
    """Z-scores per column; a column whose mean or spread overflows comes out non-finite."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        std[std == 0] = 1.0
        scaled = (X - mean) / std
    scaled[:, ~(np.isfinite(mean) & np.isfinite(std))] = np.nan
    return scaled


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


#: A parsed .csv holds a few times its size in memory (np.genfromtxt builds Python
#: objects per field on the way); an .npz array its uncompressed size, twice while copied.
_CSV_EXPANSION = 30
_NPZ_EXPANSION = 2


def _load_file(path: Path, config_file: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) from a user's .npz (arrays ``X``, ``y``) or .csv (last column the label)."""
    if not path.is_file():
        raise ConfigError(config_file, "data.path", "an existing regular file", str(path))
    try:
        if path.suffix == ".npz":
            return _load_npz(path, config_file)
        return _load_csv(path, config_file)
    except ConfigError:
        raise
    except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ConfigError(
            config_file,
            "data.path",
            f"a readable {'.npz archive' if path.suffix == '.npz' else 'numeric .csv file'}",
            f"{path}: {type(exc).__name__}: {exc}",
        ) from None


def _load_npz(path: Path, config_file: str) -> tuple[np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise ConfigError(
            config_file,
            "data.path",
            "an .npz archive (numpy.savez) holding arrays 'X' and 'y'",
            f"{path}: not a zip archive",
        )
    with zipfile.ZipFile(path) as archive:
        unpacked = sum(member.file_size for member in archive.infolist())
    _check_fits(unpacked * _NPZ_EXPANSION, path, config_file)
    with np.load(path, allow_pickle=False) as archive:
        if "X" not in archive or "y" not in archive:
            raise ConfigError(
                config_file, "data.path", "an .npz file holding arrays 'X' and 'y'", str(path)
            )
        X, y = archive["X"], archive["y"]
    if X.dtype.kind not in "biuf":
        raise ConfigError(
            config_file, "data.path", "a numeric feature array X", f"{path}: dtype {X.dtype}"
        )
    return np.asarray(X, dtype=float), np.asarray(y)


def _load_csv(path: Path, config_file: str) -> tuple[np.ndarray, np.ndarray]:
    _check_fits(path.stat().st_size * _CSV_EXPANSION, path, config_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Empty input file": said below, in one line
        table = np.genfromtxt(path, delimiter=",", dtype=float, ndmin=2)
    if table.size and np.isnan(table[0]).all():
        table = table[1:]  # a header row
    if table.size == 0:
        raise ConfigError(
            config_file, "data.path", "a .csv with at least one row of numbers", f"{path}: empty"
        )
    if table.ndim != 2 or table.shape[1] < 2 or np.isnan(table).any():
        raise ConfigError(
            config_file,
            "data.path",
            "a numeric .csv with features then a label column (no empty or text fields)",
            str(path),
        )
    return table[:, :-1], table[:, -1]


def _check_fits(needed: int, path: Path, config_file: str) -> None:
    from lradvisor.config import available_memory, format_bytes

    available = available_memory()
    if available is not None and needed > available:
        raise ConfigError(
            config_file,
            "data.path",
            f"a data file that fits in memory: about {format_bytes(needed)} once loaded, "
            f"{format_bytes(available)} available",
            str(path),
        )


def _check_arrays(X: np.ndarray, y: np.ndarray, config_file: str) -> np.ndarray:
    """Shapes and values a trial can use; returns the labels as a 1-D array."""
    if X.ndim != 2 or X.shape[1] < 1:
        raise ConfigError(config_file, "data", "a 2-D feature array X (n × d)", f"shape {X.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ConfigError(
            config_file, "data", "one class label per row (a 1-D label array y)", f"shape {y.shape}"
        )
    if len(X) != len(y):
        raise ConfigError(
            config_file, "data", "as many labels as rows of X", f"{len(X)} rows, {len(y)} labels"
        )
    if not np.isfinite(X).all():
        bad = int(np.count_nonzero(~np.isfinite(X)))
        raise ConfigError(
            config_file, "data", "finite features (no NaN or inf)", f"{bad} non-finite value(s)"
        )
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ConfigError(config_file, "data", "finite class labels (no NaN or inf)")
        if not np.all(y == np.round(y)):
            raise ConfigError(
                config_file, "data", "integer class labels (this looks like a regression target)"
            )
    elif y.dtype.kind not in "biuUS":
        raise ConfigError(config_file, "data", "integer or string class labels", f"dtype {y.dtype}")
    return y


def _encode_labels(y: np.ndarray, config_file: str) -> tuple[np.ndarray, int]:
    values, encoded = np.unique(y, return_inverse=True)
    if len(values) < 2:
        raise ConfigError(
            config_file, "data", "labels of at least two classes", f"{len(values)} class"
        )
    return encoded.reshape(-1), len(values)


def _split(X: torch.Tensor, y: torch.Tensor, fraction: float) -> tuple[torch.Tensor, ...]:
    if fraction == 0.0:
        return X, y, None, None
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    n_val = validation_rows(len(y), fraction)
    val, train = order[:n_val], order[n_val:]
    return X[train], y[train], X[val], y[val]


def load_shared_dataset(config: ModelConfig, *, dtype: torch.dtype = torch.float64) -> Dataset:
    """Load a seed-independent data set (``sklearn`` or ``file``).

    A file must give finite features, one integer (or string) label per row and at least
    two classes; the standardised features must stay finite in ``dtype``; the validation
    split must leave training rows, and a mini-batch must be smaller than them.
    """
    spec: DataSpec = config.data
    if spec.source == "sklearn":
        X, y = _load_sklearn(spec.name or "")
        name = spec.name or "sklearn"
    else:
        path = resolve_data_path(config)
        X, y = _load_file(path, config.source_file)
        name = path.name
    y = _check_arrays(X, y, config.source_file)
    labels, classes = _encode_labels(y, config.source_file)
    if spec.standardize:
        X = _standardize(X)
        if not np.isfinite(X).all():
            column = int(np.flatnonzero(~np.isfinite(X).all(axis=0))[0])
            raise ConfigError(
                config.source_file,
                "data.standardize",
                "features whose mean and standard deviation are finite (standardize: false, "
                "or rescale the file)",
                f"column {column} overflows",
            )
    features = torch.tensor(X, dtype=dtype)
    if not torch.isfinite(features).all():
        raise ConfigError(
            config.source_file,
            "data",
            f"features that stay finite in {str(dtype).removeprefix('torch.')}"
            + (" once standardised" if spec.standardize else ""),
            f"largest |x| = {float(np.nanmax(np.abs(X))):.3g}",
        )
    n_train = len(labels) - validation_rows(len(labels), spec.validation_fraction)
    if n_train < 1:
        raise ConfigError(
            config.source_file,
            "data.validation_fraction",
            f"a fraction that leaves training rows ({len(labels)} rows leave {n_train})",
            spec.validation_fraction,
        )
    try:
        check_batch_size(config.training.batch_size, n_train)
    except ValueError as exc:
        field, _, expected = str(exc).partition(": ")
        raise ConfigError(config.source_file, field, expected, config.training.batch_size) from None
    X_t, y_t, X_v, y_v = _split(features, torch.from_numpy(labels).long(), spec.validation_fraction)
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
