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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from lradvisor.config import ModelConfig
from lradvisor.engine.data import Dataset, load_shared_dataset
from lradvisor.engine.models import InitialState, initial_state
from lradvisor.measure.laws import unit_balance

ProgressCallback = Callable[[int, int], None]

# More slices than workers lets a worker on a busy core take fewer of them (load balance).
SLICES_PER_WORKER = 1

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


@dataclass(frozen=True)
class Observables:
    """Extra per-trial measurements for probes, taken on the loss-history grid only.

    ``concentration``: mean over samples of 1 − q_i, q_i the softmax probability of the
    correct class (CE only; the Hessian compresses as it falls, docs/theory.md §5).
    ``switch_rate``: fraction of (hidden unit, sample) activation states that flip between a
    recorded step and the next, on a fixed evaluation subset (docs/theory.md §6).
    ``checkpoints``: steps at which every trial's weights are copied (for λ_max(t)).
    """

    concentration: bool = False
    switch_rate: bool = False
    checkpoints: tuple[int, ...] = ()
    switch_samples: int = 256


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
    concentration: np.ndarray | None = None
    switch_rate: np.ndarray | None = None
    checkpoints: dict[int, tuple[list[torch.Tensor], list[torch.Tensor] | None]] = field(
        default_factory=dict
    )

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

    @property
    def in_place(self) -> bool:
        """ReLU runs in place: relu(z) > 0 exactly where z > 0, so its backward can use it."""
        return self.name == "relu"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.name == "relu":
            return z.relu_()
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


def _accumulate_imbalance(
    sums: list[torch.Tensor], grads: list[torch.Tensor], bias_grads: list[torch.Tensor] | None
) -> None:
    """S_j += δ_j(t) per unit, into float64 sums.

    The per-unit sums of squares are reduced in the gradients' own precision and the
    difference is taken in the float64 accumulator (in-place type promotion), which is what
    keeps the cancellation between layers exact. For float64 training this is the same as
    :func:`unit_balance`; for float32 it avoids two float64 copies of every gradient a step.
    """
    for i, total in enumerate(sums):
        total.add_((grads[i + 1] * grads[i + 1]).sum(-2))
        total.sub_((grads[i] * grads[i]).sum(-1))
        if bias_grads is not None:
            total.sub_(bias_grads[i] * bias_grads[i])


class _Batch:
    """The trials' data on the device, samples along the *last* axis (features × samples).

    The sample-last layout puts the long axis where batched GEMMs and the softmax over a
    handful of classes are fast on CPUs (measured: softmax over 5 classes is 20× faster
    along a non-last axis here).
    """

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
        self.classes = datasets[0].classes
        X = torch.stack([d.X for d in datasets]).to(device=device, dtype=dtype)
        y = torch.stack([d.y for d in datasets]).to(device)
        if not self.shared:
            X, y = X[trial_data], y[trial_data]
        self.X = X  # (groups, n, d): rows are samples, for mini-batch gathering
        self.onehot = torch.nn.functional.one_hot(y, self.classes).to(dtype)
        self.XT = X.transpose(-1, -2).contiguous()
        self.targetT = self.onehot.transpose(-1, -2).contiguous()
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
        """(inputs d × b, targets K × b) of this step, with a leading trial (or group) axis."""
        if self.indices is None:
            return self.XT, self.targetT
        idx = self.indices[step]
        if self.shared:
            return self.X[0, idx].transpose(-1, -2), self.onehot[0, idx].transpose(-1, -2)
        return self.X[self.rows, idx].transpose(-1, -2), self.onehot[self.rows, idx].transpose(
            -1, -2
        )


def _forward(
    state: _State, XT: torch.Tensor, act: _Activation
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Outputs (K × b per trial), the input of every layer and every pre-activation."""
    inputs, pre = [XT], []
    h = XT
    last = len(state.weights) - 1
    for i, weight in enumerate(state.weights):
        z = torch.matmul(weight, h)
        if state.biases is not None:
            z = z + state.biases[i].unsqueeze(-1)
        if i == last:
            return z, inputs, pre
        h = act.forward(z)
        pre.append(h if act.in_place else z)
        inputs.append(h)
    raise AssertionError("unreachable")


def _output_grad(
    out: torch.Tensor, target: torch.Tensor, loss_weights: tuple[float, float]
) -> torch.Tensor:
    """Gradient of the per-trial mean loss with respect to the outputs (classes × samples).

    ``loss_weights`` = (CE weight, MSE weight): (1, 0) is CE, (0, 1) MSE, anything else the
    mixed loss (``TrainingSpec.loss_weights``).
    """
    ce, mse = loss_weights
    grad = None
    if ce:
        grad = (torch.softmax(out, dim=-2) - target) / out.shape[-1]
        if ce != 1.0:
            grad = grad * ce
    if mse:
        squared = (out - target) * (2.0 * mse / (out.shape[-1] * out.shape[-2]))
        grad = squared if grad is None else grad + squared
    return grad


def exact_loss(
    out: torch.Tensor, target: torch.Tensor, loss_weights: tuple[float, float]
) -> torch.Tensor:
    """Per-trial mean loss (CE by log-sum-exp, accurate near zero); outputs classes × samples.

    ``loss_weights`` = (CE weight, MSE weight), as for :func:`_output_grad`.
    """
    ce, mse = loss_weights
    total = None
    if ce:
        lse = out.logsumexp(-2)
        total = (lse - (out * target).sum(-2)).mean(-1)
        if ce != 1.0:
            total = total * ce
    if mse:
        diff = out - target
        squared = (diff * diff).mean((-1, -2))
        if mse != 1.0:
            squared = squared * mse
        total = squared if total is None else total + squared
    return total


def _weight_grad(delta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """δ (out × b) times inputsᵀ (b × in), formed with the smaller output side as GEMM rows."""
    if inputs.shape[-2] < delta.shape[-2]:
        return torch.matmul(inputs, delta.transpose(-1, -2)).transpose(-1, -2)
    return torch.matmul(delta, inputs.transpose(-1, -2))


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
        grads[i] = _weight_grad(delta, inputs[i])
        if bias_grads is not None:
            bias_grads[i] = delta.sum(-1)
        if i > 0:
            delta = act.backward(
                torch.matmul(state.weights[i].transpose(-1, -2), delta), pre[i - 1]
            )
    return grads, bias_grads


class _Optimizer:
    """SGD (momentum, Nesterov, weight decay), Adam and AdamW with torch.optim's exact update
    rules, batched."""

    def __init__(self, config: ModelConfig, lrs: torch.Tensor) -> None:
        self.kind = config.training.optimizer
        self.momentum = config.training.momentum
        self.nesterov = config.training.nesterov
        self.weight_decay = config.training.weight_decay
        self._neg_lrs = -lrs
        self.step_count = 0
        self.buffers: dict[int, list[torch.Tensor]] = {}

    def _neg_lr(self, param: torch.Tensor) -> torch.Tensor:
        return self._neg_lrs.view(-1, *([1] * (param.dim() - 1)))

    def update(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Step every parameter in place. Trials never mix, so a diverged trial (NaN/inf)
        cannot spoil the others and needs no masking here."""
        self.step_count += 1
        for slot, (param, grad) in enumerate(zip(params, grads, strict=True)):
            if self.weight_decay and self.kind == "adamw":
                param.addcmul_(param, self._neg_lr(param), value=self.weight_decay)
            elif self.weight_decay:
                grad = grad + self.weight_decay * param
            param.addcmul_(self._neg_lr(param), self._direction(slot, grad))

    def _direction(self, slot: int, grad: torch.Tensor) -> torch.Tensor:
        if self.kind == "sgd":
            if not self.momentum:
                return grad
            if slot not in self.buffers:
                self.buffers[slot] = [grad.clone()]
            else:
                self.buffers[slot][0] = self.momentum * self.buffers[slot][0] + grad
            if self.nesterov:
                return grad + self.momentum * self.buffers[slot][0]
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


@dataclass(frozen=True)
class TrialSetup:
    """What every engine derives from a config before training: the (η, seed) grid in trial
    order, precision, device, and the seed-independent data set (None for the mixture)."""

    config: ModelConfig
    lrs: np.ndarray
    seeds: np.ndarray
    dtype: torch.dtype
    device: torch.device
    shared: Dataset | None
    unique_seeds: list[int]


def trial_setup(
    config: ModelConfig,
    *,
    lrs: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
) -> TrialSetup:
    if steps is not None:
        config = config.model_copy(
            update={"training": config.training.model_copy(update={"steps": steps})}
        )
    trial_lrs, trial_seeds = _trial_grid(config, lrs, seeds)
    dtype = getattr(torch, config.training.dtype)
    shared = (
        None
        if config.data.source == "gaussian_mixture"
        else load_shared_dataset(config, dtype=dtype)
    )
    return TrialSetup(
        config=config,
        lrs=trial_lrs,
        seeds=trial_seeds,
        dtype=dtype,
        device=torch.device(config.training.device),
        shared=shared,
        unique_seeds=list(dict.fromkeys(trial_seeds.tolist())),
    )


def run_sweep(
    config: ModelConfig,
    *,
    lrs: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
    progress: ProgressCallback | None = None,
    history_points: int = 200,
    workers: int | None = None,
    observe: Observables | None = None,
) -> SweepResult:
    """Train every (η, seed) trial of ``config`` as batched computations.

    Trials are ordered η-major: trial ``k`` has η = ``lrs[k // len(seeds)]`` and seed
    ``seeds[k % len(seeds)]``.

    On the CPU the trials are split into ``workers`` slices (default: torch's thread count),
    each one batched computation on its own thread with single-threaded kernels. Trials
    never interact, so the split changes no number; it removes the per-operation
    synchronisation of multi-threaded kernels on small tensors (measured 1.6× faster on
    two cores for the E5 sweep).
    """
    started = time.perf_counter()
    grid = trial_setup(config, lrs=lrs, seeds=seeds, steps=steps)
    config, trial_lrs, trial_seeds = grid.config, grid.lrs, grid.seeds
    dtype, device, shared, unique_seeds = grid.dtype, grid.device, grid.shared, grid.unique_seeds
    initial = {seed: initial_state(config, seed, shared, dtype=dtype) for seed in unique_seeds}
    datasets = [shared] if shared is not None else [initial[seed].data for seed in unique_seeds]

    def run_slice(index: np.ndarray, report: ProgressCallback | None) -> dict:
        state = _stack_state([initial[int(seed)] for seed in trial_seeds[index]], device)
        trial_data = torch.tensor(
            [unique_seeds.index(int(s)) for s in trial_seeds[index]], device=device
        )
        batch = _Batch(datasets, trial_data, config, trial_seeds[index], device, dtype)
        raw = _train(
            config, state, batch, trial_lrs[index], device, dtype, report, history_points, observe
        )
        raw["val_loss"] = _validation_loss(
            config, state, datasets, trial_data, raw["alive"], device, dtype
        )
        return raw

    workers = workers if workers is not None else torch.get_num_threads()
    slices = _slices(len(trial_lrs), device, workers, SLICES_PER_WORKER)
    if len(slices) == 1:
        raw = run_slice(slices[0], progress)
    else:
        raw = _merge(_run_threaded(run_slice, slices, workers, progress))
    return _collect(config, trial_lrs, trial_seeds, raw, time.perf_counter() - started)


def _slices(n_trials: int, device: torch.device, workers: int, per_worker: int) -> list[np.ndarray]:
    count = 1 if device.type != "cpu" else max(1, min(workers * per_worker, n_trials))
    return [part for part in np.array_split(np.arange(n_trials), count) if len(part)]


def _run_threaded(
    run_slice: Callable[[np.ndarray, ProgressCallback | None], dict],
    slices: list[np.ndarray],
    workers: int,
    progress: ProgressCallback | None,
) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(run_slice, part, progress if i == 0 else None)
                for i, part in enumerate(slices)
            ]
            return [future.result() for future in futures]
    finally:
        torch.set_num_threads(threads)


def _cat_snapshots(snapshots: list[tuple]) -> tuple:
    weights = [torch.cat(layer) for layer in zip(*(s[0] for s in snapshots), strict=True)]
    if snapshots[0][1] is None:
        return weights, None
    return weights, [torch.cat(layer) for layer in zip(*(s[1] for s in snapshots), strict=True)]


def _merge(parts: list[dict]) -> dict:
    """Concatenate the slices' raw results along the trial axis."""
    merged: dict = {"history_steps": parts[0]["history_steps"]}
    for key in ("alive", "diverged_step", "initial_loss", "final_loss", "val_loss"):
        merged[key] = torch.cat([p[key] for p in parts])
    merged["history"] = torch.cat([p["history"] for p in parts], dim=1)
    for key in ("concentration", "switch_rate"):
        merged[key] = None if parts[0][key] is None else torch.cat([p[key] for p in parts], dim=1)
    merged["checkpoints"] = {
        step: _cat_snapshots([p["checkpoints"][step] for p in parts])
        for step in parts[0]["checkpoints"]
    }
    for key in ("c_initial", "c_final", "imbalance", "bias_free"):
        if parts[0][key] is None:
            merged[key] = None
            continue
        merged[key] = [torch.cat(laws) for laws in zip(*(p[key] for p in parts), strict=True)]
    return merged


def _train(
    config: ModelConfig,
    state: _State,
    batch: _Batch,
    trial_lrs: np.ndarray,
    device: torch.device,
    dtype: torch.dtype,
    progress: ProgressCallback | None,
    history_points: int,
    observe: Observables | None = None,
) -> dict:
    observe = observe or Observables()
    steps = config.training.steps
    loss_weights = config.training.loss_weights
    act = _Activation(config.model.activation, config.model.negative_slope)
    lrs = torch.tensor(trial_lrs, dtype=dtype, device=device)
    optimizer = _Optimizer(config, lrs)
    n_trials = len(trial_lrs)
    c_initial = [law.clone() for law in _laws(state.weights, state.biases)]
    bias_free_initial = _bias_free_totals(state)
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
    params = state.weights + (state.biases or [])
    concentration = torch.full_like(history, float("nan")) if observe.concentration else None
    switches = torch.full_like(history, float("nan")) if observe.switch_rate else None
    switch_inputs = batch.XT[..., : observe.switch_samples]
    previous_pattern = None
    checkpoints: dict[int, tuple[list[torch.Tensor], list[torch.Tensor] | None]] = {}
    for t in range(steps):
        if t in observe.checkpoints:
            checkpoints[t] = _snapshot(state)
        if switches is not None and (t in record_slot or previous_pattern is not None):
            pattern = _activation_pattern(state, switch_inputs, act)
            if previous_pattern is not None:
                switches[record_slot[t - 1]] = _flip_fraction(previous_pattern, pattern)
            previous_pattern = pattern if t in record_slot else None
        XT, target = batch.at(t)
        out, inputs, pre = _forward(state, XT, act)
        d_out = _output_grad(out, target, loss_weights)
        if initial_loss is None:
            initial_loss = exact_loss(out, target, loss_weights).to(torch.float64)
            limit = factor * initial_loss.clamp_min(1e-12)
        if t in record_slot:
            # The loss is only needed here: divergence is detected on the history grid
            # (every steps/history_points steps), which saves ~10 small ops per step.
            loss = exact_loss(out, target, loss_weights)
            ok = torch.isfinite(loss) & (loss <= limit)
            diverged_step = torch.where(alive & ~ok, t, diverged_step)
            alive = alive & ok
            history[record_slot[t]] = torch.where(alive, loss.to(torch.float64), float("nan"))
            if concentration is not None and config.training.loss == "ce":
                correct = (torch.softmax(out, dim=-2) * target).sum(-2)
                concentration[record_slot[t]] = (1 - correct).mean(-1).to(torch.float64)
        grads, bias_grads = _backward(state, d_out, inputs, pre, act)
        _accumulate_imbalance(imbalance, grads, bias_grads)
        optimizer.update(params, grads + (bias_grads or []))
        if progress is not None and (t + 1) % report_every == 0:
            progress(t + 1, steps)
    final_out, _, _ = _forward(state, batch.XT, act)
    final_loss = exact_loss(final_out, batch.targetT, loss_weights)
    ok = torch.isfinite(final_loss) & (final_loss <= limit)
    diverged_step = torch.where(alive & ~ok, steps, diverged_step)
    alive = alive & ok
    if steps in record_slot:
        history[record_slot[steps]] = torch.where(alive, final_loss.to(torch.float64), float("nan"))
    bias_free_final = _bias_free_totals(state)
    if steps in observe.checkpoints:
        checkpoints[steps] = _snapshot(state)
    if concentration is not None and config.training.loss == "ce" and steps in record_slot:
        correct = (torch.softmax(final_out, dim=-2) * batch.targetT).sum(-2)
        concentration[record_slot[steps]] = (1 - correct).mean(-1).to(torch.float64)
    return {
        "concentration": concentration,
        "switch_rate": switches,
        "checkpoints": checkpoints,
        "alive": alive,
        "diverged_step": diverged_step,
        "c_initial": c_initial,
        "c_final": _laws(state.weights, state.biases),
        "imbalance": imbalance,
        "bias_free": None
        if bias_free_initial is None
        else [f - i for f, i in zip(bias_free_final, bias_free_initial, strict=True)],
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "history": history,
        "history_steps": record_at,
    }


def _snapshot(state: _State) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    biases = None if state.biases is None else [b.clone() for b in state.biases]
    return [w.clone() for w in state.weights], biases


def _activation_pattern(state: _State, XT: torch.Tensor, act: _Activation) -> list[torch.Tensor]:
    _, inputs, _ = _forward(state, XT, act)
    return [h > 0 for h in inputs[1:]]


def _flip_fraction(before: list[torch.Tensor], after: list[torch.Tensor]) -> torch.Tensor:
    flips = sum(
        float(b.shape[-2]) * (b != a).float().mean((-1, -2))
        for b, a in zip(before, after, strict=True)
    )
    units = sum(b.shape[-2] for b in before)
    return (flips / units).to(torch.float64)


def _bias_free_totals(state: _State) -> list[torch.Tensor] | None:
    if state.biases is None:
        return None
    return [law.sum(-1) for law in _laws(state.weights, None)]


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
    X = torch.stack([d.X_val for d in datasets]).to(device, dtype)
    y = torch.stack([d.y_val for d in datasets]).to(device)
    if len(datasets) > 1:
        X, y = X[trial_data], y[trial_data]
    target = torch.nn.functional.one_hot(y, datasets[0].classes).to(dtype).transpose(-1, -2)
    out, _, _ = _forward(state, X.transpose(-1, -2), act)
    loss = exact_loss(out, target, config.training.loss_weights)
    return torch.where(alive, loss.to(torch.float64), float("nan"))


def _collect(
    config: ModelConfig,
    trial_lrs: np.ndarray,
    trial_seeds: np.ndarray,
    r: dict,
    wall: float,
) -> SweepResult:
    alive = r["alive"].cpu().numpy()
    val_loss = r["val_loss"]
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
        concentration=None if r["concentration"] is None else r["concentration"].cpu().numpy(),
        switch_rate=None if r["switch_rate"] is None else r["switch_rate"].cpu().numpy(),
        checkpoints=r["checkpoints"],
    )
