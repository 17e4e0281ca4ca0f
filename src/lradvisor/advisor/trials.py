"""Probe trials: many (learning rate, seed) runs of the user's model, advanced rung by rung.

A :class:`Cohort` is a set of trials at the same step. Two implementations share one interface:

* :class:`BatchedCohort` stacks every trial's parameters and buffers along a leading axis and
  takes one step of all of them: a ``torch.func.vmap`` of a ``functional_call`` forward
  (BatchNorm running statistics update per trial inside the vmap), one backward pass of the
  summed losses, and torch.optim's SGD / Adam / AdamW rules applied batched
  (:class:`BatchedOptimizer`);
* :class:`LoopCohort` keeps one module and one real ``torch.optim`` optimizer per trial and
  steps them in turn: any optimizer, any module ``vmap`` cannot trace.

:func:`make_cohort` takes the batched one when the optimizer allows it and falls back to the
loop when ``vmap`` fails on the model (the reason is kept for the advice). Trials with the same
seed see the same mini-batches (a fresh permutation per epoch, :func:`batch_indices`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from lradvisor.advisor.optimizers import BatchedOptimizer
from lradvisor.advisor.problem import Problem, model_error
from lradvisor.engine.batched import batch_indices
from lradvisor.errors import LRAdvisorError

__all__ = ["BatchedCohort", "Cohort", "LoopCohort", "ProbeData", "make_cohort"]

DIVERGENCE_FACTOR = 1e3  # a loss this many times its initial value counts as diverged
TRAIN_EVAL_SAMPLES = 1024  # training loss is scored on a fixed subsample of this size
VAL_EVAL_SAMPLES = 4096
EVAL_CHUNK = 1024


@contextmanager
def _vmap_friendly_kernels() -> Iterator[None]:
    """Kernels vmap has batching rules for: scaled-dot-product attention as plain matmuls and
    softmax (the flash kernel and MultiheadAttention's fused fast path have none, and vmap would
    fall back to a Python loop over the trials)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


class _VmapUnsupported(Exception):
    """vmap could not trace the model: use the per-trial loop instead."""


class ProbeData:
    """Mini-batches per (seed, step) and the evaluation sets every cohort shares."""

    def __init__(self, problem: Problem, seeds: Sequence[int], steps: int) -> None:
        self.problem = problem
        self.steps = steps
        self.X, self.y = problem.X, problem.y
        n = problem.n
        self.schedules: dict[int, torch.Tensor] = {}
        if not problem.full_batch:
            for seed in seeds:
                self.schedules[int(seed)] = batch_indices(
                    n, problem.batch_size, steps, int(seed)
                ).to(problem.device)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:TRAIN_EVAL_SAMPLES]
        self.train_eval = (self.X[order.to(problem.device)], self.y[order.to(problem.device)])
        self.val_eval = None
        if problem.X_val is not None:
            self.val_eval = (problem.X_val[:VAL_EVAL_SAMPLES], problem.y_val[:VAL_EVAL_SAMPLES])

    def batch(self, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.schedules:
            return self.X, self.y
        index = self.schedules[seed][step]
        return self.X[index], self.y[index]

    def batches(
        self, seeds: np.ndarray, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """Every trial's batch at ``step`` (stacked, vmap in_dim 0), or the shared full batch."""
        if not self.schedules:
            return self.X, self.y, None
        index = torch.stack([self.schedules[int(s)][step] for s in seeds])
        return self.X[index], self.y[index], 0

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name == "val":
            if self.val_eval is None:
                raise LRAdvisorError("no validation data to score on")
            return self.val_eval
        return self.train_eval


class Cohort:
    """Trials at one common step. ``rates``/``seeds`` per trial; ``alive`` False once diverged."""

    def _start(
        self, problem: Problem, data: ProbeData, rates: np.ndarray, seeds: np.ndarray
    ) -> None:
        self.problem, self.data = problem, data
        self.rates, self.seeds = rates, seeds
        self.step = 0
        self.alive = np.ones(len(rates), dtype=bool)
        self.diverged_step = np.full(len(rates), -1)
        self.initial_loss: np.ndarray | None = None
        self.trial_steps = 0  # (trial, step) pairs trained: the probe's compute

    def advance(
        self,
        to_step: int,
        *,
        record: Callable[[Cohort, int], None] | None = None,
        record_every: int = 0,
    ) -> None:
        """Train every live trial up to ``to_step``; ``record(cohort, step)`` every
        ``record_every`` steps (and at ``to_step`` when it is a multiple)."""
        while self.step < to_step:
            if record is not None and record_every and self.step % record_every == 0:
                record(self, self.step)
            losses = self._train_step(self.problem.schedule(self.step, self.data.steps))
            self._check_losses(losses)
            self.trial_steps += len(self)
            self.step += 1
        if record is not None and record_every and self.step % record_every == 0:
            record(self, self.step)

    def _train_step(self, multiplier: float) -> np.ndarray:
        raise NotImplementedError

    def losses(self, split: str) -> np.ndarray:
        """Per-trial mean loss on ``split`` ("train" subsample or "val"), eval mode; NaN if dead."""
        raise NotImplementedError

    def concentration(self) -> np.ndarray:
        """Per-trial mean(1 − q_i) on the training subsample (classification only)."""
        raise NotImplementedError

    def keep(self, mask: np.ndarray) -> None:
        """Keep the trials where ``mask`` is True."""
        self.rates, self.seeds, self.alive = self.rates[mask], self.seeds[mask], self.alive[mask]
        self.diverged_step = self.diverged_step[mask]
        if self.initial_loss is not None:
            self.initial_loss = self.initial_loss[mask]

    def merge(self, other: Cohort) -> None:
        """Append ``other``'s trials (same kind, same step)."""
        if type(other) is not type(self) or other.step != self.step:
            raise LRAdvisorError("cohorts merge only when both are of one kind and at one step")
        self.rates = np.concatenate([self.rates, other.rates])
        self.seeds = np.concatenate([self.seeds, other.seeds])
        self.alive = np.concatenate([self.alive, other.alive])
        self.diverged_step = np.concatenate([self.diverged_step, other.diverged_step])
        self.trial_steps += other.trial_steps
        if self.initial_loss is not None and other.initial_loss is not None:
            self.initial_loss = np.concatenate([self.initial_loss, other.initial_loss])

    def module(self, trial: int) -> nn.Module:
        """A real module holding trial ``trial``'s current parameters and buffers."""
        raise NotImplementedError

    def second_moment(self, trial: int) -> list[torch.Tensor] | None:
        """Adam's bias-corrected v̂ per trainable parameter of one trial (None for SGD)."""
        raise NotImplementedError

    def _check_losses(self, losses: np.ndarray) -> None:
        if self.initial_loss is None:
            self.initial_loss = np.where(np.isfinite(losses), losses, np.inf)
        limit = DIVERGENCE_FACTOR * np.maximum(self.initial_loss, 1e-12)
        ok = np.isfinite(losses) & (losses <= limit)
        self.diverged_step[self.alive & ~ok] = self.step
        self.alive &= ok

    def __len__(self) -> int:
        return len(self.rates)


def make_cohort(
    problem: Problem, data: ProbeData, rates: Sequence[float], seeds: Sequence[int]
) -> Cohort:
    """Trials (rate × seed, rate-major) of ``problem``: batched when possible, else a loop."""
    trial_rates = np.repeat(np.asarray(rates, dtype=float), len(seeds))
    trial_seeds = np.tile(np.asarray(seeds, dtype=np.int64), len(rates))
    models = {int(s): problem.make_model(int(s)).train() for s in seeds}
    if problem.optimizer.batched and problem.loop_reason is None:
        try:
            return BatchedCohort(problem, data, trial_rates, trial_seeds, models)
        except _VmapUnsupported as reason:
            problem.loop_reason = f"probe trials run one by one: torch.func.vmap cannot trace {problem.name} ({reason})"
    return LoopCohort(problem, data, trial_rates, trial_seeds, models)


class BatchedCohort(Cohort):
    """All trials as one vmapped computation (see the module docstring)."""

    def __init__(
        self,
        problem: Problem,
        data: ProbeData,
        rates: np.ndarray,
        seeds: np.ndarray,
        models: dict[int, nn.Module],
    ) -> None:
        self._start(problem, data, rates, seeds)
        first = models[int(seeds[0])]
        self.base = copy.deepcopy(first)
        self.trainable = [n for n, p in first.named_parameters() if p.requires_grad]
        other = [n for n, p in first.named_parameters() if not p.requires_grad]
        other += [n for n, _ in first.named_buffers()]
        self.params = _stack(models, seeds, self.trainable)
        self.extra = _stack(models, seeds, other)
        dtype = self.params[self.trainable[0]].dtype
        lrs = torch.tensor(rates, dtype=dtype, device=problem.device)
        self.optimizer = BatchedOptimizer(problem.optimizer, lrs)
        self._forward_fns: dict[int | None, Callable] = {}
        self._probe_vmap()

    def _loss(self, params, extra, x, y):
        return self.problem.loss_fn(functional_call(self.base, {**params, **extra}, (x,)), y)

    def _outputs(self, params, extra, x, y):
        return functional_call(self.base, {**params, **extra}, (x,))

    def _forward_fn(self, in_dim: int | None) -> Callable:
        if in_dim not in self._forward_fns:
            self._forward_fns[in_dim] = vmap(
                self._loss, in_dims=(0, 0, in_dim, in_dim), randomness="different"
            )
        return self._forward_fns[in_dim]

    def _gradients(
        self, params, extra, x, y, in_dim
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per-trial gradients and losses: a vmapped forward, one backward of the summed
        losses (trials share no parameters, so each trial's slice is its own gradient)."""
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad(), _vmap_friendly_kernels():
            losses = self._forward_fn(in_dim)(leaves, extra, x, y)
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return dict(zip(leaves, grads, strict=True)), losses.detach()

    def _probe_vmap(self) -> None:
        """Trace one step on a copy of one trial's state (nothing is updated): refuse early."""
        x, y, in_dim = self.data.batches(self.seeds[:1], 0)
        params = {k: v[:1].clone() for k, v in self.params.items()}
        extra = {k: v[:1].clone() for k, v in self.extra.items()}
        try:
            self._gradients(params, extra, x, y, in_dim)
        except Exception as error:  # vmap over user code can fail in many ways
            text = " ".join(str(error).split())[:200]
            raise _VmapUnsupported(f"{type(error).__name__}: {text}") from None

    def _train_step(self, multiplier: float) -> np.ndarray:
        x, y, in_dim = self.data.batches(self.seeds, self.step)
        try:
            grads, loss = self._gradients(self.params, self.extra, x, y, in_dim)
        except Exception as error:  # the user's model raised inside the step
            raise model_error(self.problem.name, f"training step {self.step}", error) from None
        self.optimizer.step(self.params, grads, multiplier)
        return loss.double().cpu().numpy()

    @torch.no_grad()
    def _evaluate(self, function: Callable, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """``function(params, extra, x, y)`` of every trial in eval mode, chunk by chunk."""
        mapped = vmap(function, in_dims=(0, 0, None, None), randomness="different")
        self.base.eval()
        try:
            with _vmap_friendly_kernels():
                return [
                    mapped(self.params, self.extra, x[i : i + EVAL_CHUNK], y[i : i + EVAL_CHUNK])
                    for i in range(0, len(x), EVAL_CHUNK)
                ]
        except Exception as error:  # the user's model raised in eval mode
            raise model_error(self.problem.name, f"evaluation at step {self.step}", error) from None
        finally:
            self.base.train()

    def losses(self, split: str) -> np.ndarray:
        x, y = self.data.split(split)
        values = torch.stack(self._evaluate(self._loss, x, y)).double().cpu().numpy()
        sizes = [len(x[i : i + EVAL_CHUNK]) for i in range(0, len(x), EVAL_CHUNK)]
        return np.where(self.alive, np.average(values, axis=0, weights=sizes), np.nan)

    def concentration(self) -> np.ndarray:
        x, y = self.data.split("train")
        outputs = torch.cat(self._evaluate(self._outputs, x, y), dim=1).double()
        labels = y.view(1, -1, 1).expand(len(self.rates), -1, 1)
        q = torch.softmax(outputs, dim=-1).gather(-1, labels)
        return np.where(self.alive, 1.0 - q.mean(dim=(1, 2)).cpu().numpy(), np.nan)

    def keep(self, mask: np.ndarray) -> None:
        index = torch.as_tensor(np.flatnonzero(mask), device=self.problem.device)
        self.params = {k: v[index] for k, v in self.params.items()}
        self.extra = {k: v[index] for k, v in self.extra.items()}
        self.optimizer.keep(index)
        super().keep(mask)

    def merge(self, other: Cohort) -> None:
        super().merge(other)
        self.params = {k: torch.cat([v, other.params[k]]) for k, v in self.params.items()}
        self.extra = {k: torch.cat([v, other.extra[k]]) for k, v in self.extra.items()}
        self.optimizer.extend(other.optimizer)

    def module(self, trial: int) -> nn.Module:
        model = copy.deepcopy(self.base)
        model.load_state_dict(
            {k: v[trial] for k, v in {**self.params, **self.extra}.items()}, strict=False
        )
        return model

    def second_moment(self, trial: int) -> list[torch.Tensor] | None:
        if self.problem.optimizer.family != "adam":
            return None
        return [self.optimizer.second_moment(name, trial) for name in self.trainable]


def _stack(
    models: dict[int, nn.Module], seeds: np.ndarray, names: list[str]
) -> dict[str, torch.Tensor]:
    states = {s: dict(m.named_parameters()) | dict(m.named_buffers()) for s, m in models.items()}
    for seed, state in states.items():
        missing = [n for n in names if n not in state]
        if missing:
            raise _VmapUnsupported(f"the model of seed {seed} lacks {missing[:3]}")
    return {name: torch.stack([states[int(s)][name].detach() for s in seeds]) for name in names}


class LoopCohort(Cohort):
    """One module and one real torch.optim optimizer per trial, stepped in turn."""

    def __init__(
        self,
        problem: Problem,
        data: ProbeData,
        rates: np.ndarray,
        seeds: np.ndarray,
        models: dict[int, nn.Module],
    ) -> None:
        self._start(problem, data, rates, seeds)
        self.models = [copy.deepcopy(models[int(s)]).train() for s in seeds]
        self.optimizers = [
            problem.optimizer.make(m.parameters(), float(r))
            for m, r in zip(self.models, rates, strict=True)
        ]

    def _train_step(self, multiplier: float) -> np.ndarray:
        losses = np.full(len(self.models), np.inf)
        for k, (model, optimizer) in enumerate(zip(self.models, self.optimizers, strict=True)):
            if not self.alive[k]:
                continue
            x, y = self.data.batch(int(self.seeds[k]), self.step)
            for group in optimizer.param_groups:
                group["lr"] = float(self.rates[k]) * multiplier
            optimizer.zero_grad(set_to_none=True)
            try:
                loss = self.problem.loss_fn(model(x), y)
                loss.backward()
            except Exception as error:  # the user's model raised inside the step
                raise model_error(self.problem.name, f"training step {self.step}", error) from None
            losses[k] = float(loss.detach())
            if np.isfinite(losses[k]):
                optimizer.step()
        return losses

    @torch.no_grad()
    def _outputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        model.eval()
        try:
            return torch.cat([model(x[i : i + EVAL_CHUNK]) for i in range(0, len(x), EVAL_CHUNK)])
        except Exception as error:  # the user's model raised in eval mode
            raise model_error(self.problem.name, f"evaluation at step {self.step}", error) from None
        finally:
            model.train()

    def losses(self, split: str) -> np.ndarray:
        x, y = self.data.split(split)
        values = np.full(len(self.models), np.nan)
        for k, model in enumerate(self.models):
            if self.alive[k]:
                with torch.no_grad():
                    values[k] = float(self.problem.loss_fn(self._outputs(model, x), y))
        return values

    def concentration(self) -> np.ndarray:
        x, y = self.data.split("train")
        values = np.full(len(self.models), np.nan)
        for k, model in enumerate(self.models):
            if self.alive[k]:
                outputs = self._outputs(model, x).double()
                q = torch.softmax(outputs, dim=-1).gather(1, y.view(-1, 1))
                values[k] = float(1.0 - q.mean())
        return values

    def keep(self, mask: np.ndarray) -> None:
        index = np.flatnonzero(mask)
        self.models = [self.models[i] for i in index]
        self.optimizers = [self.optimizers[i] for i in index]
        super().keep(mask)

    def merge(self, other: Cohort) -> None:
        super().merge(other)
        self.models += other.models
        self.optimizers += other.optimizers

    def module(self, trial: int) -> nn.Module:
        return copy.deepcopy(self.models[trial])

    def second_moment(self, trial: int) -> list[torch.Tensor] | None:
        optimizer = self.optimizers[trial]
        if self.problem.optimizer.family != "adam":
            return None
        beta2 = optimizer.param_groups[0]["betas"][1]
        moments = []
        for parameter in self.models[trial].parameters():
            if not parameter.requires_grad:
                continue
            state = optimizer.state.get(parameter, {})
            v = state.get("max_exp_avg_sq", state.get("exp_avg_sq"))
            if v is None:
                return None
            moments.append(v / (1 - beta2 ** float(state["step"])))
        return moments
