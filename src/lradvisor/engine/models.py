"""Models of a trial: the nn.Sequential reference, and the per-seed initial state.

Both the batched engine and the per-trial reference loop initialise through
:func:`initial_state`, so they start from the same weights and data bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from lradvisor.config import ModelConfig, ModelSpec
from lradvisor.engine.data import Dataset, mixture_dataset


def layer_widths(spec: ModelSpec, in_dim: int, out_dim: int) -> list[int]:
    return [in_dim, *spec.hidden, out_dim]


def activation_module(spec: ModelSpec) -> nn.Module:
    if spec.activation == "relu":
        return nn.ReLU()
    if spec.activation == "leaky_relu":
        return nn.LeakyReLU(spec.negative_slope)
    return nn.Identity()


def build_mlp(spec: ModelSpec, in_dim: int, out_dim: int) -> nn.Sequential:
    """PyTorch default initialisation, U(−1/√fan_in, 1/√fan_in), built from the global generator."""
    widths = layer_widths(spec, in_dim, out_dim)
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(pairwise(widths)):
        if index > 0:
            layers.append(activation_module(spec))
        layers.append(nn.Linear(fan_in, fan_out, bias=spec.bias))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class InitialState:
    """One seed's starting point: weights (out × in), biases, and its data."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor] | None
    data: Dataset


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [module for module in model.modules() if isinstance(module, nn.Linear)]


def initial_state(
    config: ModelConfig, seed: int, shared: Dataset | None, *, dtype: torch.dtype
) -> InitialState:
    """Seed the global generator, build the model, then draw the data (published RNG order)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        in_dim = shared.dim if shared is not None else config.data.dim
        out_dim = shared.classes if shared is not None else config.data.classes
        model = build_mlp(config.model, in_dim, out_dim)
        data = shared if shared is not None else mixture_dataset(config.data, dtype=dtype)
    layers = linear_layers(model)
    weights = [layer.weight.detach().to(dtype).clone() for layer in layers]
    biases = (
        [layer.bias.detach().to(dtype).clone() for layer in layers] if config.model.bias else None
    )
    return InitialState(weights, biases, data)
