"""Out-of-sample prediction of S(η) from the Hessian at initialisation (THEORY.md §4).

For each seed: the exact Hessian at θ₀ (dense, small models), c_k ∝ (g₀·v_k)² normalised to
|δ_l(0)| for each law l, then S_l(η) = Σ_k c_k (1 − ρ_k^{2T}) / (ηλ_k(2 − ηλ_k)). The seeds'
predictions are averaged, as the measured drift is.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from lradvisor.config import ModelConfig
from lradvisor.engine.data import load_shared_dataset
from lradvisor.engine.models import initial_state
from lradvisor.measure.hessian import (
    DENSE_LIMIT,
    config_loss_function,
    dense_spectrum,
    flat_gradient,
)
from lradvisor.measure.laws import unit_balance
from lradvisor.theory import eos_learning_rate, gradient_imbalance_sum, mode_coefficients


@dataclass(frozen=True)
class SpectralPrediction:
    """Predicted S(η) per law (rows: η, columns: laws), averaged over seeds."""

    lrs: np.ndarray
    imbalance_sum: np.ndarray
    lambda_max: np.ndarray
    eos_lr: float
    outside_fraction: float
    seeds: list[int]


def _initial_parameters(config: ModelConfig, seed: int, shared):
    state = initial_state(config, seed, shared, dtype=torch.float64)
    tensors = state.weights + (state.biases or [])
    theta = torch.cat([t.reshape(-1) for t in tensors])
    return state, [t.shape for t in tensors], theta


def _initial_imbalance(config: ModelConfig, shapes, gradient: torch.Tensor) -> np.ndarray:
    sizes = [int(np.prod(s)) for s in shapes]
    parts = [p.reshape(s) for p, s in zip(torch.split(gradient, sizes), shapes, strict=True)]
    n_weights = config.model.depth
    weights = parts[:n_weights]
    biases = parts[n_weights:] if config.model.bias else None
    return np.array(
        [
            float(
                unit_balance(
                    weights[i + 1], weights[i], None if biases is None else biases[i]
                ).sum()
            )
            for i in range(n_weights - 1)
        ]
    )


def parameter_count(config: ModelConfig, in_dim: int, out_dim: int) -> int:
    widths = [in_dim, *config.model.hidden, out_dim]
    weights = sum(a * b for a, b in pairwise(widths))
    return weights + (sum(widths[1:]) if config.model.bias else 0)


def predict_imbalance_sum(
    config: ModelConfig,
    *,
    lrs: np.ndarray,
    seeds: list[int],
    steps: int,
) -> SpectralPrediction:
    """Predict S(η) for every law from the Hessian and gradient at initialisation."""
    dtype = torch.float64
    shared = (
        None
        if config.data.source == "gaussian_mixture"
        else load_shared_dataset(config, dtype=dtype)
    )
    per_seed, lambda_max, outside = [], [], []
    for seed in seeds:
        state, shapes, theta = _initial_parameters(config, seed, shared)
        if theta.numel() > DENSE_LIMIT:
            raise ValueError(
                f"{theta.numel()} parameters: the dense prediction is limited to {DENSE_LIMIT}"
            )
        data = state.data
        loss_fn = config_loss_function(config, shapes, data, dtype=dtype)
        spectrum = dense_spectrum(loss_fn, theta)
        gradient = flat_gradient(loss_fn, theta)
        deltas = _initial_imbalance(config, shapes, gradient)
        laws = []
        for delta0 in deltas:
            modes = mode_coefficients(
                gradient.numpy(), spectrum.eigenvectors, spectrum.eigenvalues, delta0=delta0
            )
            laws.append(
                gradient_imbalance_sum(lrs, modes.eigenvalues, modes.coefficients, steps=steps)
            )
            outside.append(modes.outside_fraction)
        per_seed.append(np.stack(laws, axis=1))
        lambda_max.append(spectrum.lambda_max)
    lambda_max_arr = np.array(lambda_max)
    return SpectralPrediction(
        lrs=np.asarray(lrs, dtype=float),
        imbalance_sum=np.mean(per_seed, axis=0),
        lambda_max=lambda_max_arr,
        eos_lr=eos_learning_rate(float(lambda_max_arr.mean())),
        outside_fraction=float(np.mean(outside)),
        seeds=list(seeds),
    )
