"""The training loss and optimiser of one nn.Module trial, as every per-module path uses them.

The batched engines implement the same losses by hand; the reference loop, the study
objective, the range test and ``suggest``'s Hessian on modules call these.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from lradvisor.config import ModelConfig, TrainingSpec

__all__ = ["loss_function", "make_optimizer", "module_loss", "optimizer_class"]

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def module_loss(
    outputs: torch.Tensor, labels: torch.Tensor, loss_weights: tuple[float, float]
) -> torch.Tensor:
    """(CE weight)·mean cross-entropy + (MSE weight)·squared error to one-hot targets
    averaged over every entry (``TrainingSpec.loss_weights``: (1, 0) CE, (0, 1) MSE)."""
    ce, mse = loss_weights
    total = 0.0
    if ce:
        total = total + ce * nn.functional.cross_entropy(outputs, labels)
    if mse:
        target = nn.functional.one_hot(labels, outputs.shape[-1]).to(outputs.dtype)
        total = total + mse * nn.functional.mse_loss(outputs, target)
    return total


def loss_function(training: TrainingSpec) -> LossFunction:
    """``loss(outputs, labels)`` of ``training`` (named "ce", "mse" or "mix")."""
    weights = training.loss_weights

    def loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return module_loss(outputs, labels, weights)

    loss.__name__ = training.loss
    return loss


def make_optimizer(config: ModelConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam``, ``AdamW`` or ``SGD`` (momentum, Nesterov, weight decay) as
    ``config.training`` says."""
    return optimizer_class(config.training)(model.parameters(), lr=lr)


def optimizer_class(training: TrainingSpec) -> Callable[..., torch.optim.Optimizer]:
    """``factory(params, lr=...)`` of the optimizer ``training`` names, its options bound."""
    if training.optimizer == "adam":
        return functools.partial(torch.optim.Adam, weight_decay=training.weight_decay)
    if training.optimizer == "adamw":
        return functools.partial(torch.optim.AdamW, weight_decay=training.weight_decay)
    return functools.partial(
        torch.optim.SGD,
        momentum=training.momentum,
        nesterov=training.nesterov,
        weight_decay=training.weight_decay,
    )
