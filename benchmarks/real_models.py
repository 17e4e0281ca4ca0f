"""The real-model advice suite: models, data and optimizers of the kind users bring.

Each :class:`Task` is what a user would hand to ``lradvisor.suggest``: a model factory (seeded
by the caller), train / validation / test splits, a loss, an optimizer factory, a batch size
and a step budget. Data are scikit-learn's bundled sets or generated here; nothing is
downloaded. Nothing in this file imports lradvisor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Split = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    make_model: Callable[[], nn.Module]
    train: Split
    val: Split
    test: Split
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: Callable[..., torch.optim.Optimizer]
    optimizer_name: str
    batch_size: int | None
    steps: int
    default_lr: float


class SmallCNN(nn.Module):
    """8×8 grey images: Conv(8) → [BatchNorm] → ReLU → Conv(16, stride 2) → ReLU → Linear."""

    def __init__(self, batchnorm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.conv1(x)))
        h = torch.relu(self.conv2(h))
        return self.head(h.flatten(1))


class NormMLP(nn.Module):
    """Linear → LayerNorm → GELU, twice, then a linear head."""

    def __init__(self, inputs: int, width: int, outputs: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(inputs, width),
            nn.LayerNorm(width),
            nn.GELU(),
            nn.Linear(width, width),
            nn.LayerNorm(width),
            nn.GELU(),
        )
        self.head = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ResidualMLP(nn.Module):
    """stem → ReLU → 2 × (h + fc2(relu(fc1(h)))) → head."""

    def __init__(self, inputs: int, width: int, outputs: int, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
            for _ in range(blocks)
        )
        self.head = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


class TinyAttention(nn.Module):
    """Token embedding + position → one pre-norm self-attention block with an MLP → mean pool."""

    def __init__(self, vocab: int, length: int, width: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        self.norm1 = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )
        self.head = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position
        q = self.norm1(h)
        h = h + self.attention(q, q, q, need_weights=False)[0]
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(dim=1))


def _splits(X: np.ndarray, y: np.ndarray, *, seed: int = 0) -> tuple[Split, Split, Split]:
    """60 / 20 / 20 train / validation / test, shuffled with a fixed seed."""
    order = np.random.default_rng(seed).permutation(len(X))
    X, y = X[order], y[order]
    a, b = int(0.6 * len(X)), int(0.8 * len(X))
    as_pair = lambda lo, hi: (torch.as_tensor(X[lo:hi]), torch.as_tensor(y[lo:hi]))  # noqa: E731
    return as_pair(0, a), as_pair(a, b), as_pair(b, len(X))


@functools.cache
def digits_images() -> tuple[Split, Split, Split]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    images = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return _splits(images, y.astype(np.int64))


@functools.cache
def digits_flat() -> tuple[Split, Split, Split]:
    (Xa, ya), (Xb, yb), (Xc, yc) = digits_images()
    return (Xa.flatten(1), ya), (Xb.flatten(1), yb), (Xc.flatten(1), yc)


@functools.cache
def wine() -> tuple[Split, Split, Split]:
    from sklearn.datasets import load_wine

    X, y = load_wine(return_X_y=True)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    return _splits(X, y.astype(np.int64))


@functools.cache
def breast_cancer() -> tuple[Split, Split, Split]:
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    return _splits(X, y.astype(np.int64))


@functools.cache
def diabetes() -> tuple[Split, Split, Split]:
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    y = ((y - y.mean()) / y.std()).astype(np.float32).reshape(-1, 1)
    return _splits(X, y)


@functools.cache
def token_sequences(n: int = 1500, length: int = 10, vocab: int = 16) -> tuple[Split, Split, Split]:
    """Label = which of 4 marker tokens occurs most often in the sequence (ties: the lowest).

    Needs attention (counting across positions), not a bag of positions.
    """
    rng = np.random.default_rng(7)
    tokens = rng.integers(4, vocab, size=(n, length))
    for row in tokens:
        marks = rng.integers(0, 4, size=rng.integers(1, 6))
        places = rng.choice(length, size=len(marks), replace=False)
        row[places] = marks
    counts = np.stack([(tokens == k).sum(1) for k in range(4)], axis=1)
    return _splits(tokens.astype(np.int64), counts.argmax(1).astype(np.int64))


def _sgd(**options) -> Callable[..., torch.optim.Optimizer]:
    return functools.partial(torch.optim.SGD, **options)


def tasks() -> list[Task]:
    ce, mse = nn.CrossEntropyLoss(), nn.MSELoss()
    images, flat = digits_images(), digits_flat()
    return [
        Task(
            "cnn_momentum_mb64",
            "small CNN, digits, SGD momentum 0.9, batch 64, 400 steps",
            lambda: SmallCNN(),
            *images,
            ce,
            _sgd(momentum=0.9),
            "SGD(momentum=0.9)",
            64,
            400,
            0.1,
        ),
        Task(
            "cnn_batchnorm_sgd_mb64",
            "CNN + BatchNorm, digits, plain SGD, batch 64, 400 steps",
            lambda: SmallCNN(batchnorm=True),
            *images,
            ce,
            _sgd(),
            "SGD",
            64,
            400,
            0.1,
        ),
        Task(
            "cnn_adamw_mb64",
            "small CNN, digits, AdamW (wd 0.01), batch 64, 400 steps",
            lambda: SmallCNN(),
            *images,
            ce,
            functools.partial(torch.optim.AdamW, weight_decay=0.01),
            "AdamW(weight_decay=0.01)",
            64,
            400,
            1e-3,
        ),
        Task(
            "layernorm_gelu_mlp_adamw_mb32",
            "LayerNorm + GELU MLP (128), digits, AdamW, batch 32, 400 steps",
            lambda: NormMLP(64, 128, 10),
            *flat,
            ce,
            functools.partial(torch.optim.AdamW, weight_decay=0.01),
            "AdamW(weight_decay=0.01)",
            32,
            400,
            1e-3,
        ),
        Task(
            "attention_adam_mb32",
            "self-attention block on token sequences, Adam, batch 32, 500 steps",
            lambda: TinyAttention(16, 10, 32, 4),
            *token_sequences(),
            ce,
            torch.optim.Adam,
            "Adam",
            32,
            500,
            1e-3,
        ),
        Task(
            "residual_mlp_momentum_full",
            "residual MLP (64), digits, SGD momentum 0.9, full batch, 300 steps",
            lambda: ResidualMLP(64, 64, 10),
            *flat,
            ce,
            _sgd(momentum=0.9),
            "SGD(momentum=0.9)",
            None,
            300,
            0.1,
        ),
        Task(
            "plain_mlp_sgd_full",
            "ReLU MLP (64-32), breast cancer, plain SGD, full batch, 500 steps",
            lambda: nn.Sequential(
                nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2)
            ),
            *breast_cancer(),
            ce,
            _sgd(),
            "SGD",
            None,
            500,
            0.1,
        ),
        Task(
            "regression_mlp_nesterov_mb32",
            "ReLU MLP (64) regression, diabetes, MSE, SGD Nesterov 0.9, batch 32, 400 steps",
            lambda: nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1)),
            *diabetes(),
            mse,
            _sgd(momentum=0.9, nesterov=True),
            "SGD(momentum=0.9, nesterov=True)",
            32,
            400,
            0.1,
        ),
    ]


def batch_schedule(
    n: int, batch_size: int | None, steps: int, seed: int
) -> list[torch.Tensor] | None:
    """Fresh permutation per epoch from torch.Generator(seed), incomplete last batch dropped."""
    if batch_size is None or batch_size >= n:
        return None
    generator = torch.Generator().manual_seed(seed)
    per_epoch = n // batch_size
    batches = []
    for _ in range(math.ceil(steps / per_epoch)):
        order = torch.randperm(n, generator=generator)
        batches += [order[i * batch_size : (i + 1) * batch_size] for i in range(per_epoch)]
    return batches[:steps]
