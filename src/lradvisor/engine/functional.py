"""The functional trial engine: many (η, seed) trials of the user's own model as one computation.

Every parameter of the factory model is stacked along a leading trial axis; one step of all
trials is ``torch.func.vmap`` of ``torch.func.grad_and_value`` of a ``functional_call`` of
one module instance, so any ``nn.Module`` that ``vmap`` can trace is trained without a
Python loop over trials. The semantics are those of :func:`lradvisor.engine.batched.run_sweep`
(η-major trial order, data per seed, the same mini-batch schedule and optimiser updates).

The conservation laws are the rescaling-symmetric ``Linear → activation → Linear`` pairs that
:func:`~lradvisor.measure.discovery.discover_pairs` finds in the model. For each pair (A, B)
the per-unit imbalance of the batched gradients is summed in float64 every step,

.. math::

    S_j = \\sum_{t<T} \\delta_j(t), \\qquad
    \\delta_j = \\lVert G_B[:, j] \\rVert^2 - \\lVert G_A[j, :] \\rVert^2 - g_{b_A}[j]^2 ,

and C_j is read from the weights at the start and the end, so plain SGD gives
C_j(T) − C_j(0) = η² S_j to round-off (docs/theory.md §2).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import (
    ProgressCallback,
    SweepResult,
    _history_steps,
    _Optimizer,
    batch_indices,
    identity_applies,
    trial_setup,
)
from lradvisor.engine.data import Dataset
from lradvisor.engine.factory import initial_factory_state
from lradvisor.errors import LRAdvisorError
from lradvisor.measure.discovery import Discovery, LawPair, discover_pairs
from lradvisor.measure.laws import unit_balance

__all__ = ["run_functional_sweep"]

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class _LawSlots:
    """Names of the stacked tensors one law reads: B's weight, A's weight, A's bias (or None)."""

    pair: LawPair
    out_weight: str
    in_weight: str
    in_bias: str | None

    def balance(self, tensors: Tensors, *, bias: bool = True) -> torch.Tensor:
        in_bias = tensors[self.in_bias] if bias and self.in_bias is not None else None
        return unit_balance(tensors[self.out_weight], tensors[self.in_weight], in_bias)


class _TrialData:
    """Every trial's training batch per step, validation set and full training set.

    Inputs are (trials, samples, features) with labels (trials, samples), or shared by all
    trials (no trial axis, ``in_dim`` None) for a full batch of a seed-independent data set.
    """

    def __init__(
        self,
        datasets: list[Dataset],
        groups: torch.Tensor,
        config: ModelConfig,
        seeds: np.ndarray,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.loss = config.training.loss
        self.classes = datasets[0].classes
        self.groups = groups
        self.shared = len(datasets) == 1
        self.X = torch.stack([d.X for d in datasets]).to(device=device, dtype=dtype)
        self.y = self._targets(torch.stack([d.y for d in datasets]).to(device), dtype)
        self.validation = None
        if datasets[0].X_val is not None:
            X_val = torch.stack([d.X_val for d in datasets]).to(device=device, dtype=dtype)
            y_val = self._targets(torch.stack([d.y_val for d in datasets]).to(device), dtype)
            self.validation = self._per_trial(X_val, y_val)
        self.schedule = None
        n, batch_size = datasets[0].n, config.training.batch_size
        if batch_size is not None and batch_size < n:
            steps = config.training.steps
            per_seed = {
                int(s): batch_indices(n, batch_size, steps, int(s)) for s in np.unique(seeds)
            }
            self.schedule = torch.stack([per_seed[int(s)] for s in seeds], dim=1).to(device)
        self.full = self._per_trial(self.X, self.y)

    def _targets(self, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.loss == "ce":
            return labels
        return nn.functional.one_hot(labels, self.classes).to(dtype)

    def _per_trial(
        self, X: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        if self.shared:
            return X[0], y[0], None
        return X[self.groups], y[self.groups], 0

    def at(self, step: int) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """(inputs, targets, vmap in_dim) of every trial at ``step``."""
        if self.schedule is None:
            return self.full
        index = self.schedule[step]
        if self.shared:
            return self.X[0, index], self.y[0, index], 0
        rows = self.groups[:, None]
        return self.X[rows, index], self.y[rows, index], 0


class _Trials:
    """One module instance evaluated on stacked per-trial parameters with ``torch.func``."""

    def __init__(
        self, base: nn.Module, models: list[nn.Module], loss: str, device: torch.device
    ) -> None:
        self.base = base
        self.loss_kind = loss
        trainable = [n for n, p in base.named_parameters() if p.requires_grad]
        frozen = [n for n, p in base.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in base.named_buffers()]
        self.params = _stack(models, trainable, device)
        self.frozen = _stack(models, frozen, device)
        self._step = vmap(grad_and_value(self._loss), in_dims=(0, 0, 0, 0), randomness="different")
        self._step_shared = vmap(
            grad_and_value(self._loss), in_dims=(0, 0, None, None), randomness="different"
        )
        self._eval = vmap(self._loss, in_dims=(0, 0, 0, 0), randomness="different")
        self._eval_shared = vmap(self._loss, in_dims=(0, 0, None, None), randomness="different")

    def _loss(
        self, params: Tensors, frozen: Tensors, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        out = functional_call(self.base, {**params, **frozen}, (x,))
        if self.loss_kind == "ce":
            return nn.functional.cross_entropy(out, y)
        return nn.functional.mse_loss(out, y)

    def step(
        self, x: torch.Tensor, y: torch.Tensor, in_dim: int | None
    ) -> tuple[Tensors, torch.Tensor]:
        """(gradients by name, per-trial loss) of every trial on its batch."""
        step = self._step if in_dim == 0 else self._step_shared
        return step(self.params, self.frozen, x, y)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, in_dim: int | None) -> torch.Tensor:
        """Per-trial loss in eval mode (dropout off), no gradients."""
        evaluate = self._eval if in_dim == 0 else self._eval_shared
        self.base.eval()
        try:
            return evaluate(self.params, self.frozen, x, y)
        finally:
            self.base.train()


def _stack(models: list[nn.Module], names: list[str], device: torch.device) -> Tensors:
    states = [dict(model.named_parameters()) | dict(model.named_buffers()) for model in models]
    return {
        name: torch.stack([state[name].detach() for state in states]).to(device) for name in names
    }


def run_functional_sweep(
    config: ModelConfig,
    *,
    lrs: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
    progress: ProgressCallback | None = None,
    history_points: int = 200,
) -> SweepResult:
    """Train every (η, seed) trial of a factory model (``model.factory``) as one computation.

    Trials are ordered η-major: trial ``k`` has η = ``lrs[k // len(seeds)]`` and seed
    ``seeds[k % len(seeds)]``. Each seed's model is built by the factory from that seed
    (then its Gaussian-mixture data are drawn, as for built-in MLPs); all trials then train
    together, ``vmap`` over the stacked parameters.

    Example:
        >>> result = run_functional_sweep(load_config("examples/residual_mlp.yaml"))  # doctest: +SKIP
        >>> result.law_names
        ['blocks.0.fc1->blocks.0.fc2', 'blocks.1.fc1->blocks.1.fc2']

    .. note::
        Divergence is checked every step (the loss comes with the gradient at no cost),
        where the batched MLP engine checks on the loss-history grid only. A model without
        any law still trains (loss, divergence); ``law_names`` is then empty and the law
        arrays have zero columns. Dropout draws a different mask per trial.
    """
    config.training.require_plain_loss("the factory-model engine")
    started = time.perf_counter()
    grid = trial_setup(config, lrs=lrs, seeds=seeds, steps=steps)
    config, trial_lrs, trial_seeds = grid.config, grid.lrs, grid.seeds
    dtype, device, shared, unique_seeds = grid.dtype, grid.device, grid.shared, grid.unique_seeds
    initial = {
        seed: initial_factory_state(config, seed, shared, dtype=dtype) for seed in unique_seeds
    }
    datasets = [shared] if shared is not None else [initial[seed].data for seed in unique_seeds]
    base = copy.deepcopy(initial[unique_seeds[0]].model).to(device).train()
    discovery = discover_pairs(base)
    models = [initial[int(seed)].model for seed in trial_seeds]
    trials = _Trials(base, models, config.training.loss, device)
    laws, law_notes = _law_slots(discovery, trials)
    groups = torch.tensor([unique_seeds.index(int(s)) for s in trial_seeds], device=device)
    data = _TrialData(datasets, groups, config, trial_seeds, device, dtype)
    raw = _train(config, trials, laws, data, trial_lrs, progress, history_points)
    notes = _notes(config, discovery, law_notes, laws)
    return _collect(config, trial_lrs, trial_seeds, laws, raw, notes, time.perf_counter() - started)


def _law_slots(discovery: Discovery, trials: _Trials) -> tuple[list[_LawSlots], list[str]]:
    laws, notes = [], []
    for pair in discovery.pairs:
        names = (
            f"{pair.out_layer_name}.weight",
            f"{pair.in_layer_name}.weight",
            f"{pair.in_layer_name}.bias" if pair.bias_aware else None,
        )
        missing = [name for name in names if name is not None and name not in trials.params]
        if missing:
            notes.append(f"law {pair.name} left out: {', '.join(missing)} not trained (frozen)")
            continue
        laws.append(_LawSlots(pair, *names))
    return laws, notes


def _train(
    config: ModelConfig,
    trials: _Trials,
    laws: list[_LawSlots],
    data: _TrialData,
    trial_lrs: np.ndarray,
    progress: ProgressCallback | None,
    history_points: int,
) -> dict:
    steps = config.training.steps
    n_trials = len(trial_lrs)
    device = data.X.device
    names = list(trials.params)
    params = [trials.params[name] for name in names]
    optimizer = _Optimizer(config, torch.tensor(trial_lrs, dtype=data.X.dtype, device=device))
    c_initial = [law.balance(trials.params) for law in laws]
    bias_free_initial = [law.balance(trials.params, bias=False).sum(-1) for law in laws]
    imbalance = [torch.zeros_like(c) for c in c_initial]
    alive = torch.ones(n_trials, dtype=torch.bool, device=device)
    diverged_step = torch.full((n_trials,), -1, dtype=torch.long, device=device)
    record_at = _history_steps(steps, history_points)
    record_slot = {int(t): i for i, t in enumerate(record_at)}
    history = torch.full(
        (len(record_at), n_trials), float("nan"), dtype=torch.float64, device=device
    )
    limit = initial_loss = None
    report_every = max(1, steps // 100)
    for t in range(steps):
        grads, loss = _checked_step(trials, *data.at(t), first=t == 0)
        loss = loss.detach().to(torch.float64)
        if initial_loss is None:
            initial_loss = loss.clone()
            limit = config.training.divergence_factor * initial_loss.clamp_min(1e-12)
        ok = torch.isfinite(loss) & (loss <= limit)
        diverged_step = torch.where(alive & ~ok, t, diverged_step)
        alive = alive & ok
        if t in record_slot:
            history[record_slot[t]] = torch.where(alive, loss, float("nan"))
        with torch.no_grad():
            for law, total in zip(laws, imbalance, strict=True):
                total.add_(law.balance(grads))
            optimizer.update(params, [grads[name] for name in names])
        if progress is not None and (t + 1) % report_every == 0:
            progress(t + 1, steps)
    final_loss = trials.evaluate(*data.full).to(torch.float64)
    ok = torch.isfinite(final_loss) & (final_loss <= limit)
    diverged_step = torch.where(alive & ~ok, steps, diverged_step)
    alive = alive & ok
    if steps in record_slot:
        history[record_slot[steps]] = torch.where(alive, final_loss, float("nan"))
    val_loss = torch.full((n_trials,), float("nan"), dtype=torch.float64, device=device)
    if data.validation is not None:
        val_loss = torch.where(alive, trials.evaluate(*data.validation).double(), float("nan"))
    return {
        "alive": alive,
        "diverged_step": diverged_step,
        "c_initial": c_initial,
        "c_final": [law.balance(trials.params) for law in laws],
        "imbalance": imbalance,
        "bias_free": [
            law.balance(trials.params, bias=False).sum(-1) - initial
            for law, initial in zip(laws, bias_free_initial, strict=True)
        ],
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "val_loss": val_loss,
        "history": history,
        "history_steps": record_at,
    }


def _checked_step(
    trials: _Trials, x: torch.Tensor, y: torch.Tensor, in_dim: int | None, *, first: bool
) -> tuple[Tensors, torch.Tensor]:
    if not first:
        return trials.step(x, y, in_dim)
    try:
        return trials.step(x, y, in_dim)
    except Exception as error:  # vmap over user code can fail in many ways
        raise LRAdvisorError(
            f"the functional engine cannot vmap {type(trials.base).__name__} "
            f"({type(error).__name__}: {' '.join(str(error).split())}); models that update "
            "buffers in place (BatchNorm running statistics) or branch on tensor values "
            "are not supported"
        ) from None


def _notes(
    config: ModelConfig, discovery: Discovery, law_notes: list[str], laws: list[_LawSlots]
) -> list[str]:
    notes = []
    if not identity_applies(config):
        training = config.training
        notes.append(
            f"optimizer {training.optimizer} (momentum={training.momentum}, weight_decay={training.weight_decay}) breaks the η²·S identity: drift is the direct difference C(T) − C(0)"
        )
    if not laws:
        notes.append(
            f"no rescaling-symmetric Linear→activation→Linear pair in {discovery.model_class}: "
            "only loss and divergence are measured"
        )
    notes.extend(law_notes)
    notes.extend(f"note: {note}" for note in discovery.notes)
    notes.extend(f"skipped {name}: {reason}" for name, reason in discovery.skipped)
    return notes


def _collect(
    config: ModelConfig,
    trial_lrs: np.ndarray,
    trial_seeds: np.ndarray,
    laws: list[_LawSlots],
    r: dict,
    notes: list[str],
    wall: float,
) -> SweepResult:
    n_trials = len(trial_lrs)
    alive = r["alive"].cpu().numpy()
    holds = identity_applies(config)
    eta_squared = torch.tensor(trial_lrs, dtype=torch.float64).unsqueeze(-1) ** 2

    def masked(values: np.ndarray) -> np.ndarray:
        values = values.copy()
        values[~alive] = np.nan
        return values

    def per_law(values: list[np.ndarray]) -> np.ndarray:
        if not values:
            return np.zeros((n_trials, 0))
        return np.stack(values, axis=1)

    unit_identity = [(eta_squared * s.cpu()).numpy() for s in r["imbalance"]]
    unit_direct = [(f - i).cpu().numpy() for f, i in zip(r["c_final"], r["c_initial"], strict=True)]
    if not holds:
        unit_identity = [np.full_like(u, np.nan) for u in unit_identity]
    imbalance = per_law([s.sum(-1).cpu().numpy() for s in r["imbalance"]])
    bias_aware = [law.pair.bias_aware for law in laws]
    # A bias-free pair's bias-free formula is its law: the column repeats drift_direct.
    bias_free = per_law([d.cpu().numpy() for d in r["bias_free"]]) if any(bias_aware) else None
    return SweepResult(
        config=config,
        lrs=trial_lrs,
        seeds=trial_seeds,
        law_names=[law.pair.name for law in laws],
        identity_holds=holds,
        steps=config.training.steps,
        c_initial=per_law([c.sum(-1).cpu().numpy() for c in r["c_initial"]]),
        drift_identity=masked(per_law([u.sum(-1) for u in unit_identity])),
        drift_direct=masked(per_law([u.sum(-1) for u in unit_direct])),
        imbalance_sum=masked(imbalance if holds else np.full_like(imbalance, np.nan)),
        unit_drift_identity=[masked(u) for u in unit_identity],
        unit_drift_direct=[masked(u) for u in unit_direct],
        bias_free_direct=None if bias_free is None else masked(bias_free),
        final_loss=masked(r["final_loss"].cpu().numpy()),
        final_val_loss=r["val_loss"].cpu().numpy(),
        initial_loss=r["initial_loss"].cpu().numpy(),
        diverged=~alive,
        diverged_step=r["diverged_step"].cpu().numpy(),
        loss_history=r["history"].cpu().numpy(),
        history_steps=r["history_steps"],
        wall_time=wall,
        notes=notes,
    )
