"""Out-of-sample prediction of S(η) from the Hessian at initialisation (docs/theory.md §4).

For each seed, c_k ∝ (g₀·v_k)² over the modes with λ_k > 0, normalised to |δ_l(0)| for each
law l, then S_l(η) = Σ_k c_k (1 − ρ_k^{2T}) / (ηλ_k(2 − ηλ_k)); the seeds' predictions are
averaged, as the measured drift is. Two ways to get the (λ_k, (g₀·v_k)²):

* ``"quadrature"`` (the default of ``lradvisor sweep``): m Lanczos steps started at g₀ on
  Hessian-vector products give the Gauss quadrature of g₀'s spectral measure, nodes θ_i and
  weights τ_i with Σ_k (g₀·v_k)² f(λ_k) = ‖g₀‖² Σ_i τ_i f(θ_i) for polynomials f of degree
  < 2m. All seeds run as one Lanczos: the seeds' losses are summed, so the Hessian is block
  diagonal and one double-backward pass is every seed's HVP. No P × P matrix is formed.
* ``"dense"``: the exact Hessian per seed and its eigendecomposition (O(P²) memory, O(P³)
  time); the replication's null baselines need the eigenvectors, and tests use it as the
  reference for the quadrature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
from lradvisor.records import Spectrum
from lradvisor.theory import eos_learning_rate, gradient_imbalance_sum, mode_coefficients

# Lanczos steps of the quadrature: on E5 the seed-mean S(η) agrees with the dense prediction
# to ≤ 1.5 % at every rate below the EoS bound and λ_max to 1e-12 (tests/test_prediction.py);
# per seed the largest sub-EoS rate is off by up to ~5 %: there f(λ) changes fastest at small
# λ > 0, right next to the negative modes the formula leaves out (a cut Gauss nodes straddle).
QUADRATURE_STEPS = 200
# The Lanczos basis (seeds × steps × P float64) is kept below this; larger models take fewer steps.
QUADRATURE_MEMORY = 256 * 2**20
METHODS = ("quadrature", "dense")


@dataclass(frozen=True)
class SeedSpectrum:
    """One seed's modes as the formula sees them: λ_k and (g₀·v_k)², the law imbalances δ_l(0).

    ``weights`` sum to ‖g₀‖²; for ``"quadrature"`` the modes are the Gauss nodes. With
    ``"dense"`` the full spectrum and the gradient are kept for the null baselines.
    """

    seed: int
    eigenvalues: np.ndarray
    weights: np.ndarray
    deltas: np.ndarray
    lambda_max: float
    spectrum: Spectrum | None = None
    gradient: np.ndarray | None = None


@dataclass(frozen=True)
class SpectralPrediction:
    """Predicted S(η) per law (rows: η, columns: laws), averaged over seeds."""

    lrs: np.ndarray
    imbalance_sum: np.ndarray
    lambda_max: np.ndarray
    eos_lr: float
    outside_fraction: float
    seeds: list[int]
    method: str = "dense"
    per_seed: np.ndarray | None = None  # (seed, η, law)
    spectra: list[SeedSpectrum] = field(default_factory=list)


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


def _shared(config: ModelConfig):
    if config.data.source == "gaussian_mixture":
        return None
    return load_shared_dataset(config, dtype=torch.float64)


def _dense_spectra(config: ModelConfig, seeds: list[int]) -> list[SeedSpectrum]:
    shared = _shared(config)
    spectra = []
    for seed in seeds:
        state, shapes, theta = _initial_parameters(config, seed, shared)
        if theta.numel() > DENSE_LIMIT:
            raise ValueError(
                f"{theta.numel()} parameters: the dense prediction is limited to {DENSE_LIMIT}"
            )
        loss_fn = config_loss_function(config, shapes, state.data, dtype=torch.float64)
        spectrum = dense_spectrum(loss_fn, theta)
        gradient = flat_gradient(loss_fn, theta)
        weights = (gradient.numpy() @ spectrum.eigenvectors) ** 2
        spectra.append(
            SeedSpectrum(
                seed=seed,
                eigenvalues=spectrum.eigenvalues,
                weights=weights,
                deltas=_initial_imbalance(config, shapes, gradient),
                lambda_max=float(spectrum.lambda_max),
                spectrum=spectrum,
                gradient=gradient.numpy(),
            )
        )
    return spectra


class _BatchedMLP:
    """Exact gradients and Hessian-vector products of every seed's full-batch loss at once.

    Samples-first batched tensors (seed axis first); the HVP is Pearlmutter's R-operator on
    the hand-written backward pass, exact for piecewise-linear activations (σ'' = 0 almost
    everywhere, as autograd also takes it). The flat layout is that of
    :func:`lradvisor.measure.hessian.mlp_loss_function`: weights in layer order, then biases.
    """

    def __init__(self, config: ModelConfig, states: list) -> None:
        self.X = torch.stack([s.data.X.to(torch.float64) for s in states])
        classes = states[0].data.classes
        labels = torch.stack([s.data.y for s in states])
        self.target = torch.nn.functional.one_hot(labels, classes).to(torch.float64)
        self.weights = [
            torch.stack([s.weights[i] for s in states]) for i in range(len(states[0].weights))
        ]
        self.biases = (
            None
            if states[0].biases is None
            else [torch.stack([s.biases[i] for s in states]) for i in range(len(self.weights))]
        )
        self.ce, self.mse = config.training.loss_weights
        self.activation = config.model.activation
        self.slope = config.model.negative_slope
        self.shapes = [w.shape[1:] for w in self.weights] + (
            [b.shape[1:] for b in self.biases] if self.biases is not None else []
        )
        self.sizes = [int(np.prod(shape)) for shape in self.shapes]
        self._forward()
        self._gradient = self._backward(self.d_out, None, None)

    def _derivative(self, z: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return (z > 0).to(z.dtype)
        if self.activation == "leaky_relu":
            return torch.where(z > 0, 1.0, self.slope).to(z.dtype)
        return torch.ones_like(z)

    def _forward(self) -> None:
        h, self.inputs, self.slopes = self.X, [self.X], []
        last = len(self.weights) - 1
        for i, weight in enumerate(self.weights):
            z = h @ weight.transpose(-1, -2)
            if self.biases is not None:
                z = z + self.biases[i].unsqueeze(-2)
            if i == last:
                break
            slope = self._derivative(z)
            h = slope * z if self.activation != "identity" else z
            self.slopes.append(slope)
            self.inputs.append(h)
        n, classes = z.shape[-2], z.shape[-1]
        self.probabilities = torch.softmax(z, dim=-1)
        self.d_out = torch.zeros_like(z)
        if self.ce:
            self.d_out += self.ce * (self.probabilities - self.target) / n
        if self.mse:
            self.d_out += self.mse * 2.0 * (z - self.target) / (n * classes)

    def _output_curvature(self, r_out: torch.Tensor) -> torch.Tensor:
        n, classes = r_out.shape[-2], r_out.shape[-1]
        result = torch.zeros_like(r_out)
        if self.ce:
            p = self.probabilities
            result += self.ce * (p * r_out - p * (p * r_out).sum(-1, keepdim=True)) / n
        if self.mse:
            result += self.mse * 2.0 * r_out / (n * classes)
        return result

    def _backward(self, delta, r_inputs, directions) -> list[torch.Tensor]:
        """Gradients (``r_inputs`` None) or their R-derivatives along ``directions``."""
        layers = len(self.weights)
        grads, bias_grads = [None] * layers, [None] * layers
        r_delta = None if r_inputs is None else self._output_curvature(r_inputs[-1])
        for i in range(layers - 1, -1, -1):
            if r_inputs is None:
                grads[i] = delta.transpose(-1, -2) @ self.inputs[i]
                bias_grads[i] = delta.sum(-2)
            else:
                grads[i] = (
                    r_delta.transpose(-1, -2) @ self.inputs[i]
                    + delta.transpose(-1, -2) @ r_inputs[i]
                )
                bias_grads[i] = r_delta.sum(-2)
            if i == 0:
                break
            back = delta @ self.weights[i]
            if r_inputs is not None:
                r_back = r_delta @ self.weights[i] + delta @ directions[0][i]
                r_delta = self.slopes[i - 1] * r_back
            delta = self.slopes[i - 1] * back
        parts = grads + (bias_grads if self.biases is not None else [])
        return [p.reshape(p.shape[0], -1) for p in parts]

    def gradient(self) -> torch.Tensor:
        return torch.cat(self._gradient, dim=1)

    def hvp(self, vectors: torch.Tensor) -> torch.Tensor:
        parts = torch.split(vectors, self.sizes, dim=1)
        layers = len(self.weights)
        v_weights = [p.reshape(-1, *s) for p, s in zip(parts[:layers], self.shapes, strict=False)]
        v_biases = (
            [p.reshape(p.shape[0], -1) for p in parts[layers:]] if self.biases is not None else None
        )
        r_h, r_inputs = torch.zeros_like(self.X), [torch.zeros_like(self.X)]
        for i, weight in enumerate(self.weights):
            r_z = self.inputs[i] @ v_weights[i].transpose(-1, -2) + r_h @ weight.transpose(-1, -2)
            if v_biases is not None:
                r_z = r_z + v_biases[i].unsqueeze(-2)
            if i == layers - 1:
                r_inputs.append(r_z)
                break
            r_h = self.slopes[i] * r_z
            r_inputs.append(r_h)
        # r_inputs[i] = R(input of layer i), r_inputs[-1] = R(outputs); delta from the forward
        return torch.cat(self._backward(self.d_out, r_inputs, (v_weights,)), dim=1)


def _quadrature_spectra(config: ModelConfig, seeds: list[int], steps: int) -> list[SeedSpectrum]:
    """Gauss quadrature of every seed's g₀-measure by one batched Lanczos on exact HVPs."""
    shared = _shared(config)
    states, shapes = [], None
    for seed in seeds:
        state, shapes, _ = _initial_parameters(config, seed, shared)
        states.append(state)
    model = _BatchedMLP(config, states)
    start = model.gradient()
    affordable = QUADRATURE_MEMORY // (8 * start.shape[0] * start.shape[1])
    steps = max(20, min(steps, start.shape[1], affordable))
    nodes, node_weights = _batched_gauss_quadrature(model.hvp, start, steps=steps)
    mass = (start**2).sum(dim=1).numpy()
    spectra = []
    for i, seed in enumerate(seeds):
        spectra.append(
            SeedSpectrum(
                seed=seed,
                eigenvalues=nodes[i],
                weights=node_weights[i] * mass[i],
                deltas=_initial_imbalance(config, shapes, start[i]),
                lambda_max=float(nodes[i].max()),
            )
        )
    return spectra


def _batched_gauss_quadrature(hvp, start: torch.Tensor, *, steps: int):
    """Lanczos with full reorthogonalisation on each row of ``start`` at once.

    Returns per row the Ritz values (Gauss nodes) and the squared first components of the
    Ritz vectors (weights, summing to 1). A row whose Krylov space is exhausted keeps the
    exact quadrature it has (its later coefficients are zero and add nodes of weight 0).
    """
    rows, size = start.shape
    q = start / start.norm(dim=1, keepdim=True)
    basis = torch.zeros(rows, steps, size, dtype=start.dtype)
    alphas = torch.zeros(rows, steps, dtype=start.dtype)
    betas = torch.zeros(rows, steps, dtype=start.dtype)
    active = torch.ones(rows, dtype=torch.bool)
    count = steps
    for j in range(steps):
        basis[:, j] = q
        w = hvp(q)
        alphas[:, j] = (q * w).sum(dim=1)
        Q = basis[:, : j + 1]  # (rows, j + 1, P)
        for _ in range(2):  # full reorthogonalisation, twice (no ghost nodes)
            w = w - torch.bmm(torch.bmm(Q, w.unsqueeze(-1)).transpose(1, 2), Q).squeeze(1)
        beta = w.norm(dim=1)
        scale = torch.clamp(alphas[:, j].abs(), min=1.0)
        active = active & (beta > 1e-12 * scale)
        if j == steps - 1 or not bool(active.any()):
            count = j + 1
            break
        betas[:, j] = torch.where(active, beta, torch.zeros_like(beta))
        q = torch.where(active[:, None], w / beta.clamp_min(1e-300)[:, None], torch.zeros_like(w))
    nodes, weights = [], []
    for r in range(rows):
        a = alphas[r, :count].numpy()
        b = betas[r, : count - 1].numpy()
        keep = count
        zero = np.flatnonzero(b == 0)
        if zero.size:  # Krylov space exhausted: the leading block is the exact quadrature
            keep = int(zero[0]) + 1
        tridiagonal = np.diag(a[:keep]) + np.diag(b[: keep - 1], 1) + np.diag(b[: keep - 1], -1)
        values, vectors = np.linalg.eigh(tridiagonal)
        order = np.argsort(values)[::-1]
        nodes.append(values[order])
        w = vectors[0, order] ** 2
        weights.append(w / w.sum())
    return nodes, weights


def seed_spectra(
    config: ModelConfig, seeds: list[int], *, method: str = "quadrature", steps: int | None = None
) -> list[SeedSpectrum]:
    """Each seed's (λ_k, (g₀·v_k)²) and δ_l(0) at initialisation, in float64."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "dense":
        return _dense_spectra(config, seeds)
    return _quadrature_spectra(config, seeds, steps or QUADRATURE_STEPS)


def predict_from_spectra(
    spectra: list[SeedSpectrum], *, lrs: np.ndarray, steps: int
) -> tuple[np.ndarray, float]:
    """(per-seed S(η) per law, shape (seed, η, law); mean share of ‖g₀‖² on λ ≤ 0)."""
    per_seed, outside = [], []
    for seed in spectra:
        kept = seed.eigenvalues > 0
        share = seed.weights[kept].sum() / seed.weights.sum()
        outside.append(1.0 - share)
        profile = seed.weights[kept] / seed.weights[kept].sum()
        laws = [
            gradient_imbalance_sum(lrs, seed.eigenvalues[kept], abs(delta) * profile, steps=steps)
            for delta in seed.deltas
        ]
        per_seed.append(np.stack(laws, axis=1))
    return np.stack(per_seed), float(np.mean(outside))


def predict_imbalance_sum(
    config: ModelConfig,
    *,
    lrs: np.ndarray,
    seeds: list[int],
    steps: int,
    method: str = "dense",
) -> SpectralPrediction:
    """Predict S(η) for every law from the Hessian and gradient at initialisation."""
    lrs = np.asarray(lrs, dtype=float)
    spectra = seed_spectra(config, list(seeds), method=method)
    per_seed, outside = predict_from_spectra(spectra, lrs=lrs, steps=steps)
    lambda_max = np.array([s.lambda_max for s in spectra])
    return SpectralPrediction(
        lrs=lrs,
        imbalance_sum=per_seed.mean(axis=0),
        lambda_max=lambda_max,
        eos_lr=eos_learning_rate(float(lambda_max.mean())),
        outside_fraction=outside,
        seeds=list(seeds),
        method=method,
        per_seed=per_seed,
        spectra=spectra,
    )


def coefficient_profile(seed: SeedSpectrum) -> tuple[np.ndarray, np.ndarray]:
    """(λ_k, c_k / |δ(0)|) over the modes with λ_k > 0, the recipe of
    :func:`lradvisor.theory.mode_coefficients` (dense spectra only)."""
    if seed.spectrum is None or seed.gradient is None:
        raise ValueError("coefficient_profile needs a dense spectrum")
    modes = mode_coefficients(
        seed.gradient, seed.spectrum.eigenvectors, seed.spectrum.eigenvalues, delta0=1.0
    )
    return modes.eigenvalues, modes.coefficients
