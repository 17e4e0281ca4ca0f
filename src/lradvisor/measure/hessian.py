"""Hessians of a trial's training loss at a given state, for the spectral formula.

The dense path (``dense_spectrum``) is for small models (a few thousand parameters); it is
exact and is the reference the Lanczos path is tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from lradvisor.records import Spectrum

DENSE_LIMIT = 6000


def mlp_loss_function(
    shapes: list[torch.Size],
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    classes: int,
    activation: str,
    negative_slope: float,
    loss: str,
    has_bias: bool,
    ce_weight: float | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Full-batch loss of an MLP as a function of one flat parameter vector.

    ``loss`` is "ce", "mse" or "mix" ((1 − w)·MSE + w·CE with w = ``ce_weight``).

    The flat layout is every weight (out × in, row-major) in layer order, then every bias.
    """
    sizes = [int(np.prod(shape)) for shape in shapes]
    target = torch.nn.functional.one_hot(y, classes).to(X.dtype)
    n_weights = len(shapes) // 2 if has_bias else len(shapes)

    def act(z: torch.Tensor) -> torch.Tensor:
        if activation == "relu":
            return torch.relu(z)
        if activation == "leaky_relu":
            return torch.nn.functional.leaky_relu(z, negative_slope)
        return z

    def f(theta: torch.Tensor) -> torch.Tensor:
        parts = [p.reshape(s) for p, s in zip(torch.split(theta, sizes), shapes, strict=True)]
        weights, biases = parts[:n_weights], parts[n_weights:] if has_bias else None
        h = X
        for i, weight in enumerate(weights):
            h = h @ weight.T
            if biases is not None:
                h = h + biases[i]
            if i < n_weights - 1:
                h = act(h)
        if loss == "ce":
            return torch.nn.functional.cross_entropy(h, y)
        if loss == "mix":
            return (
                ce_weight * torch.nn.functional.cross_entropy(h, y)
                + (1.0 - ce_weight) * ((h - target) ** 2).mean()
            )
        return ((h - target) ** 2).mean()

    return f


def config_loss_function(
    config, shapes: list[torch.Size], data, *, dtype: torch.dtype = torch.float64
) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`mlp_loss_function` of the built-in MLP of ``config`` (a ModelConfig) on ``data``.

    ``shapes``: the parameter shapes in the flat layout (weights, then biases); the inputs
    are cast to ``dtype``.
    """
    model, training = config.model, config.training
    return mlp_loss_function(
        list(shapes),
        data.X.to(dtype),
        data.y,
        classes=data.classes,
        activation=model.activation,
        negative_slope=model.negative_slope,
        loss=training.loss,
        has_bias=model.bias,
        ce_weight=training.ce_weight,
    )


def dense_hessian(
    loss_fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor
) -> torch.Tensor:
    """Exact Hessian (P × P) by forward-over-reverse differentiation."""
    if theta.numel() > DENSE_LIMIT:
        raise ValueError(f"dense Hessian limited to {DENSE_LIMIT} parameters, got {theta.numel()}")
    return torch.func.hessian(loss_fn)(theta)


def dense_spectrum(
    loss_fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor
) -> Spectrum:
    """All eigenpairs of the Hessian, descending, as float64 numpy arrays."""
    hessian = dense_hessian(loss_fn, theta.to(torch.float64))
    hessian = 0.5 * (hessian + hessian.T)
    values, vectors = torch.linalg.eigh(hessian)
    order = torch.argsort(values, descending=True)
    return Spectrum(
        values[order].numpy(), vectors[:, order].numpy(), method="dense", n_hvp=theta.numel()
    )


def flat_gradient(
    loss_fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor
) -> torch.Tensor:
    return torch.func.grad(loss_fn)(theta)
