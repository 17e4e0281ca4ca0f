"""Example user models for ``model: {factory: "user_models:<function>"}`` in a model file.

A factory is called as ``function(in_features=d, num_classes=K, **kwargs)`` and returns an
``nn.Module`` mapping (n, d) float inputs to (n, K) logits. lradvisor imports this file from
the model file's folder, so ``examples/residual_mlp.yaml`` can name ``user_models:residual_mlp``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """x ↦ fc2(relu(fc1(x))): the residual branch, added to x by the caller."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class ResidualMLP(nn.Module):
    """stem → ReLU → ``blocks`` × (h + block(h)) → head, every Linear with a bias."""

    def __init__(self, in_features: int, num_classes: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden) for _ in range(blocks))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def residual_mlp(
    in_features: int, num_classes: int, hidden: int = 64, blocks: int = 2
) -> ResidualMLP:
    """A residual MLP; each block's fc1 → ReLU → fc2 carries a conservation law."""
    return ResidualMLP(in_features, num_classes, hidden, blocks)


class SmallCNN(nn.Module):
    """side × side grey images (flattened): Conv2d → ReLU → flatten → Linear → ReLU → Linear."""

    def __init__(
        self, side: int, num_classes: int, channels: int, hidden: int, kernel_size: int
    ) -> None:
        super().__init__()
        self.side = side
        self.conv = nn.Conv2d(1, channels, kernel_size, padding=kernel_size // 2)
        self.fc1 = nn.Linear(channels * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(x.shape[0], 1, self.side, self.side)
        h = torch.relu(self.conv(images)).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


def small_cnn(
    in_features: int, num_classes: int, channels: int = 8, hidden: int = 32, kernel_size: int = 3
) -> SmallCNN:
    """A small CNN for square images given as flat features (64 = 8 × 8 for digits)."""
    side = math.isqrt(in_features)
    if side * side != in_features:
        raise ValueError(f"small_cnn needs square images, but in_features={in_features}")
    return SmallCNN(side, num_classes, channels, hidden, kernel_size)
