"""The batched trial engine: many (η, seed) trials of one MLP trained as one computation.

Every trial's weights carry a leading trial axis, so one batched matmul per layer does the
forward and backward pass of all trials at once; gradients are formed by hand (the network
is a plain MLP), which skips autograd's bookkeeping. Conservation laws are measured on the
way (the per-unit gradient imbalance δ(t) accumulated in float64), at O(parameters) per step.

A trial whose loss turns non-finite or grows past ``divergence_factor`` × its initial loss is
frozen at its last finite state and marked diverged with the step; the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lradvisor.config import ModelConfig
from lradvisor.engine.data import Dataset, load_shared_dataset
from lradvisor.engine.models import InitialState, initial_state
from lradvisor.measure.laws import unit_balance

ProgressCallback = Callable[[int, int], None]

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


@dataclass(frozen=True)
class SweepResult:
    """Per-trial measurements of a batched sweep; arrays have the trial axis first.

    ``drift_identity`` is η²·S per law (NaN where the identity does not apply or the trial
    diverged); ``drift_direct`` is C(T) − C(0) from float64 norms of the final weights.
    ``bias_free_direct`` is the drift of the bias-free formula on a biased net (None
    when the net has no biases).
    """

    config: ModelConfig
    lrs: np.ndarray
    seeds: np.ndarray
    law_names: list[str]
    identity_holds: bool
    steps: int
    c_initial: np.ndarray
    drift_identity: np.ndarray
    drift_direct: np.ndarray
    imbalance_sum: np.ndarray
    unit_drift_identity: list[np.ndarray]
    unit_drift_direct: list[np.ndarray]
    bias_free_direct: np.ndarray | None
    final_loss: np.ndarray
    final_val_loss: np.ndarray
    initial_loss: np.ndarray
    diverged: np.ndarray
    diverged_step: np.ndarray
    loss_history: np.ndarray
    history_steps: np.ndarray
    wall_time: float
    notes: list[str] = field(default_factory=list)

    @property
    def n_trials(self) -> int:
        return len(self.lrs)

    def drift(self, law: int = 0) -> np.ndarray:
        """The drift to fit: η²·S when the identity applies, else the direct difference."""
        return self.drift_identity[:, law] if self.identity_holds else self.drift_direct[:, law]

    def grid(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reshape a per-trial array to (distinct η, seed) with the sorted distinct η."""
        unique_lrs = np.unique(self.lrs)
        unique_seeds = list(dict.fromkeys(self.seeds.tolist()))
        table = np.full((len(unique_lrs), len(unique_seeds)), np.nan)
        for value, lr, seed in zip(values, self.lrs, self.seeds, strict=True):
            table[np.searchsorted(unique_lrs, lr), unique_seeds.index(seed)] = value
        return unique_lrs, table


def identity_applies(config: ModelConfig) -> bool:
    """C(T) − C(0) = η²·S holds exactly only for plain (S)GD."""
    training = config.training
    return training.optimizer == "sgd" and training.momentum == 0.0 and training.weight_decay == 0.0


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """Mini-batch index schedule (steps × batch_size) for one seed.

    Each epoch is a fresh permutation from a generator seeded with ``seed``, cut into
    ⌊n / batch_size⌋ batches (an incomplete last batch is dropped so every step sees
    ``batch_size`` samples). All trials with the same seed see the same batches.
    """
    per_epoch = n // batch_size
    generator = torch.Generator().manual_seed(seed)
    epochs = -(-steps // per_epoch)
    rows = [
        torch.randperm(n, generator=generator)[: per_epoch * batch_size].view(per_epoch, batch_size)
        for _ in range(epochs)
    ]
    return torch.cat(rows)[:steps]


class _Activation:
    def __init__(self, name: str, slope: float) -> None:
        self.name = name
        self.slope = slope

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.name == "relu":
            return torch.relu(z)
        if self.name == "leaky_relu":
            return torch.nn.functional.leaky_relu(z, self.slope)
        return z

    def backward(self, grad: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # aten's own activation backward kernels: several times faster than a masked multiply.
        if self.name == "relu":
            return torch.ops.aten.threshold_backward(grad, z, 0)
        if self.name == "leaky_relu":
            return torch.ops.aten.leaky_relu_backward(grad, z, self.slope, False)
        return grad


@dataclass
class _State:
    weights: list[torch.Tensor]
    biases: list[torch.Tensor] | None
    buffers: list[list[torch.Tensor]] = field(default_factory=list)


def _stack_state(states: Sequence[InitialState], device: torch.device) -> _State:
    weights = [
        torch.stack([s.weights[i] for s in states]).to(device)
        for i in range(len(states[0].weights))
    ]
    biases = None
    if states[0].biases is not None:
        biases = [
            torch.stack([s.biases[i] for s in states]).to(device) for i in range(len(weights))
        ]
    return _State(weights, biases)


def _laws(weights: list[torch.Tensor], biases: list[torch.Tensor] | None) -> list[torch.Tensor]:
    return [
        unit_balance(weights[i + 1], weights[i], None if biases is None else biases[i])
        for i in range(len(weights) - 1)
    ]


class _Batch:
    """The trials' data on the device: full batch, or a mini-batch per step."""

    def __init__(
        self,
        datasets: list[Dataset],
        trial_data: torch.Tensor,
        config: ModelConfig,
        seeds: np.ndarray,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.shared = len(datasets) == 1
        stack = torch.stack if not self.shared else (lambda xs: xs[0])
        self.X = stack([d.X for d in datasets]).to(device=device, dtype=dtype)
        self.y = stack([d.y for d in datasets]).to(device)
        if not self.shared:
            self.X, self.y = self.X[trial_data], self.y[trial_data]
        self.classes = datasets[0].classes
        self.onehot = torch.nn.functional.one_hot(self.y, self.classes).to(dtype)
        n = datasets[0].n
        batch_size = config.training.batch_size
        self.indices = None
        if batch_size is not None and batch_size < n:
            steps = config.training.steps
            per_seed = {
                int(s): batch_indices(n, batch_size, steps, int(s)) for s in np.unique(seeds)
            }
            self.indices = torch.stack([per_seed[int(s)] for s in seeds], dim=1).to(device)
            self.rows = torch.arange(len(seeds), device=device)[:, None]

    def at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.indices is None:
            return self.X, self.onehot
        idx = self.indices[step]
        if self.shared:
            return self.X[idx], self.onehot[idx]
        return self.X[self.rows, idx], self.onehot[self.rows, idx]


def _forward(
    state: _State, X: torch.Tensor, act: _Activation
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    inputs, pre = [X], []
    h = X
    last = len(state.weights) - 1
    for i, weight in enumerate(state.weights):
        z = torch.matmul(h, weight.transpose(-1, -2))
        if state.biases is not None:
            z = z + state.biases[i].unsqueeze(-2)
        if i == last:
            return z, inputs, pre
        pre.append(z)
        h = act.forward(z)
        inputs.append(h)
    raise AssertionError("unreachable")


def _loss_and_grad(
    out: torch.Tensor, target: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-trial mean loss and its gradient with respect to the outputs."""
    n = out.shape[-2]
    if loss == "ce":
        lse = out.logsumexp(-1, keepdim=True)
        value = (lse.squeeze(-1) - (out * target).sum(-1)).mean(-1)
        return value, ((out - lse).exp() - target) / n
    diff = out - target
    value = (diff * diff).mean((-1, -2))
    return value, diff * (2.0 / diff[0].numel())


def _backward(
    state: _State,
    d_out: torch.Tensor,
    inputs: list[torch.Tensor],
    pre: list[torch.Tensor],
    act: _Activation,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    n_layers = len(state.weights)
    grads: list[torch.Tensor] = [None] * n_layers  # type: ignore[list-item]
    bias_grads: list[torch.Tensor] | None = None if state.biases is None else [None] * n_layers  # type: ignore[list-item]
    delta = d_out
    for i in range(n_layers - 1, -1, -1):
        grads[i] = torch.matmul(delta.transpose(-1, -2), inputs[i])
        if bias_grads is not None:
            bias_grads[i] = delta.sum(-2)
        if i > 0:
            delta = act.backward(torch.matmul(delta, state.weights[i]), pre[i - 1])
    return grads, bias_grads


class _Optimizer:
    """SGD (momentum, weight decay) and Adam with torch.optim's exact update rules, batched."""

    def __init__(self, config: ModelConfig, lrs: torch.Tensor) -> None:
        self.kind = config.training.optimizer
        self.momentum = config.training.momentum
        self.weight_decay = config.training.weight_decay
        self.lrs = lrs
        self.step_count = 0
        self.buffers: dict[int, list[torch.Tensor]] = {}

    def _lr(self, param: torch.Tensor) -> torch.Tensor:
        return self.lrs.view(-1, *([1] * (param.dim() - 1)))

    def update(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], alive: torch.Tensor
    ) -> list[torch.Tensor]:
        self.step_count += 1
        out = []
        for slot, (param, grad) in enumerate(zip(params, grads, strict=True)):
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            direction = self._direction(slot, grad)
            keep = alive.view(-1, *([1] * (param.dim() - 1)))
            out.append(torch.where(keep, param - self._lr(param) * direction, param))
        return out

    def _direction(self, slot: int, grad: torch.Tensor) -> torch.Tensor:
        if self.kind == "sgd":
            if not self.momentum:
                return grad
            if slot not in self.buffers:
                self.buffers[slot] = [grad.clone()]
            else:
                self.buffers[slot][0] = self.momentum * self.buffers[slot][0] + grad
            return self.buffers[slot][0]
        beta1, beta2 = _ADAM_BETAS
        if slot not in self.buffers:
            self.buffers[slot] = [torch.zeros_like(grad), torch.zeros_like(grad)]
        m, v = self.buffers[slot]
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1 = 1 - beta1**self.step_count
        bias2 = 1 - beta2**self.step_count
        return (m / bias1) / (v.sqrt() / bias2**0.5 + _ADAM_EPS)


def _trial_grid(
    config: ModelConfig, lrs: Sequence[float] | None, seeds: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    lr_values = np.asarray(lrs if lrs is not None else config.sweep.lrs, dtype=float)
    seed_values = np.asarray(seeds if seeds is not None else config.sweep.seeds, dtype=np.int64)
    return np.repeat(lr_values, len(seed_values)), np.tile(seed_values, len(lr_values))


def _history_steps(steps: int, points: int) -> np.ndarray:
    return np.unique(np.linspace(0, steps, num=min(points, steps + 1)).astype(int))


def run_sweep(
    config: ModelConfig,
    *,
    lrs: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
    progress: ProgressCallback | None = None,
    history_points: int = 200,
) -> SweepResult:
    """Train every (η, seed) trial of ``config`` as one batched computation.

    Trials are ordered η-major: trial ``k`` has η = ``lrs[k // len(seeds)]`` and seed
    ``seeds[k % len(seeds)]``.
    """
    started = time.perf_counter()
    if steps is not None:
        config = config.model_copy(
            update={"training": config.training.model_copy(update={"steps": steps})}
        )
    trial_lrs, trial_seeds = _trial_grid(config, lrs, seeds)
    dtype = getattr(torch, config.training.dtype)
    device = torch.device(config.training.device)
    shared = (
        None
        if config.data.source == "gaussian_mixture"
        else load_shared_dataset(config, dtype=dtype)
    )
    unique_seeds = list(dict.fromkeys(trial_seeds.tolist()))
    initial = {seed: initial_state(config, seed, shared, dtype=dtype) for seed in unique_seeds}
    states = [initial[int(seed)] for seed in trial_seeds]
    state = _stack_state(states, device)
    datasets = [shared] if shared is not None else [initial[seed].data for seed in unique_seeds]
    trial_data = torch.tensor([unique_seeds.index(int(s)) for s in trial_seeds], device=device)
    batch = _Batch(datasets, trial_data, config, trial_seeds, device, dtype)

    result = _train(config, state, batch, trial_lrs, device, dtype, progress, history_points)
    val_loss = _validation_loss(config, state, datasets, trial_data, result["alive"], device, dtype)
    return _collect(config, trial_lrs, trial_seeds, result, val_loss, time.perf_counter() - started)


def _train(
    config: ModelConfig,
    state: _State,
    batch: _Batch,
    trial_lrs: np.ndarray,
    device: torch.device,
    dtype: torch.dtype,
    progress: ProgressCallback | None,
    history_points: int,
) -> dict:
    steps = config.training.steps
    act = _Activation(config.model.activation, config.model.negative_slope)
    lrs = torch.tensor(trial_lrs, dtype=dtype, device=device)
    optimizer = _Optimizer(config, lrs)
    n_trials = len(trial_lrs)
    c_initial = [law.clone() for law in _laws(state.weights, state.biases)]
    bias_free_initial = (
        [law.sum(-1) for law in _laws(state.weights, None)] if state.biases is not None else None
    )
    imbalance = [torch.zeros_like(law) for law in c_initial]
    alive = torch.ones(n_trials, dtype=torch.bool, device=device)
    diverged_step = torch.full((n_trials,), -1, dtype=torch.long, device=device)
    record_at = _history_steps(steps, history_points)
    history = torch.full(
        (len(record_at), n_trials), float("nan"), dtype=torch.float64, device=device
    )
    record_slot = {int(t): i for i, t in enumerate(record_at)}
    initial_loss = None
    factor = config.training.divergence_factor
    report_every = max(1, steps // 100)
    for t in range(steps):
        X, target = batch.at(t)
        out, inputs, pre = _forward(state, X, act)
        loss, d_out = _loss_and_grad(out, target, config.training.loss)
        if initial_loss is None:
            initial_loss = loss.detach().to(torch.float64)
        ok = torch.isfinite(loss) & (loss <= factor * initial_loss.clamp_min(1e-12))
        newly_dead = alive & ~ok
        diverged_step = torch.where(newly_dead, t, diverged_step)
        alive = alive & ok
        if t in record_slot:
            history[record_slot[t]] = torch.where(alive, loss.to(torch.float64), float("nan"))
        grads, bias_grads = _backward(state, d_out, inputs, pre, act)
        weight = alive.to(torch.float64).unsqueeze(-1)
        for law, delta in zip(imbalance, _laws(grads, bias_grads), strict=True):
            law.add_(torch.where(weight > 0, delta, 0.0))
        params = state.weights + (state.biases or [])
        param_grads = grads + (bias_grads or [])
        updated = optimizer.update(params, param_grads, alive)
        state.weights = updated[: len(state.weights)]
        if state.biases is not None:
            state.biases = updated[len(state.weights) :]
        if progress is not None and (t + 1) % report_every == 0:
            progress(t + 1, steps)
    X, target = batch.at(steps - 1) if batch.indices is not None else (batch.X, batch.onehot)
    final_out, _, _ = _forward(state, batch.X if batch.indices is not None else X, act)
    final_loss, _ = _loss_and_grad(final_out, batch.onehot, config.training.loss)
    ok = torch.isfinite(final_loss) & (final_loss <= factor * initial_loss.clamp_min(1e-12))
    diverged_step = torch.where(alive & ~ok, steps, diverged_step)
    alive = alive & ok
    if steps in record_slot:
        history[record_slot[steps]] = torch.where(alive, final_loss.to(torch.float64), float("nan"))
    c_final = _laws(state.weights, state.biases)
    bias_free_final = (
        [law.sum(-1) for law in _laws(state.weights, None)] if state.biases is not None else None
    )
    return {
        "state": state,
        "alive": alive,
        "diverged_step": diverged_step,
        "c_initial": c_initial,
        "c_final": c_final,
        "imbalance": imbalance,
        "bias_free": None
        if bias_free_initial is None
        else [f - i for f, i in zip(bias_free_final, bias_free_initial, strict=True)],
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "history": history,
        "history_steps": record_at,
    }


def _validation_loss(
    config: ModelConfig,
    state: _State,
    datasets: list[Dataset],
    trial_data: torch.Tensor,
    alive: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    if datasets[0].X_val is None:
        return torch.full_like(alive, float("nan"), dtype=torch.float64)
    act = _Activation(config.model.activation, config.model.negative_slope)
    if len(datasets) == 1:
        X, y = datasets[0].X_val.to(device, dtype), datasets[0].y_val.to(device)
    else:
        X = torch.stack([d.X_val for d in datasets]).to(device, dtype)[trial_data]
        y = torch.stack([d.y_val for d in datasets]).to(device)[trial_data]
    out, _, _ = _forward(state, X, act)
    loss, _ = _loss_and_grad(
        out, torch.nn.functional.one_hot(y, datasets[0].classes).to(dtype), config.training.loss
    )
    return torch.where(alive, loss.to(torch.float64), float("nan"))


def _collect(
    config: ModelConfig,
    trial_lrs: np.ndarray,
    trial_seeds: np.ndarray,
    r: dict,
    val_loss: torch.Tensor,
    wall: float,
) -> SweepResult:
    alive = r["alive"].cpu().numpy()
    holds = identity_applies(config)
    eta2 = torch.tensor(trial_lrs, dtype=torch.float64).unsqueeze(-1)

    def per_law(tensors: list[torch.Tensor]) -> np.ndarray:
        return np.stack([t.cpu().numpy() for t in tensors], axis=1)

    def masked(values: np.ndarray) -> np.ndarray:
        values = values.copy()
        values[~alive] = np.nan
        return values

    unit_identity = [(eta2**2 * law.cpu()).numpy() for law in r["imbalance"]]
    unit_direct = [(f - i).cpu().numpy() for f, i in zip(r["c_final"], r["c_initial"], strict=True)]
    if not holds:
        unit_identity = [np.full_like(u, np.nan) for u in unit_identity]
    imbalance = per_law([law.sum(-1) for law in r["imbalance"]])
    notes = []
    if not holds:
        notes.append(
            f"optimizer {config.training.optimizer} (momentum={config.training.momentum}, weight_decay={config.training.weight_decay}) breaks the η²·S identity: drift is the direct difference C(T) − C(0)"
        )
    return SweepResult(
        config=config,
        lrs=trial_lrs,
        seeds=trial_seeds,
        law_names=[f"C{i + 1}" for i in range(len(r["c_initial"]))],
        identity_holds=holds,
        steps=config.training.steps,
        c_initial=per_law([law.sum(-1) for law in r["c_initial"]]),
        drift_identity=masked(np.stack([u.sum(-1) for u in unit_identity], axis=1)),
        drift_direct=masked(np.stack([u.sum(-1) for u in unit_direct], axis=1)),
        imbalance_sum=masked(imbalance if holds else np.full_like(imbalance, np.nan)),
        unit_drift_identity=[masked(u) for u in unit_identity],
        unit_drift_direct=[masked(u) for u in unit_direct],
        bias_free_direct=None if r["bias_free"] is None else masked(per_law(r["bias_free"])),
        final_loss=masked(r["final_loss"].to(torch.float64).cpu().numpy()),
        final_val_loss=val_loss.cpu().numpy(),
        initial_loss=r["initial_loss"].cpu().numpy(),
        diverged=~alive,
        diverged_step=r["diverged_step"].cpu().numpy(),
        loss_history=r["history"].cpu().numpy(),
        history_steps=r["history_steps"],
        wall_time=wall,
        notes=notes,
    )
