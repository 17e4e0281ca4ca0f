"""Optuna for lradvisor, the public path: ``from lradvisor.optuna import ConservationPruner``.

- :class:`TrialMonitor` measures the optimizer-aware stability bound (λ_max(θ₀) once per
  configuration, reused across trials) and the conservation-law drift of one trial, and
  writes them to the trial's user_attrs; :func:`monitor` is the same for a plain loop, as a
  context manager.
- :class:`ConservationPruner` prunes trials far beyond a certain stability bound before they
  train and diverged trials, gives cross-entropy trials a grace period of their compression
  time τ(η), then defers to any Optuna pruner.
- :class:`TheoryPriorSampler` draws the learning rate from a log-normal prior around
  lradvisor's advice for the first trials (following the bound per width in studies that
  search it), then hands over to any Optuna sampler.

Trial user_attrs are JSON scalars or JSON strings (``trials_dataframe()`` stays plain):

=================================  =========================================================
``lradvisor.lr``                   learning rate at construction (largest over groups)
``lradvisor.lambda_max``           λ_max(θ₀) on the data subsample
``lradvisor.eos_lr``               2/λ_max(θ₀) (plain gradient descent)
``lradvisor.bound``                the optimizer-aware bound (None for adaptive optimizers)
``lradvisor.bound_kind``           "gradient descent", "heavy-ball momentum", … or why none
``lradvisor.optimizer``            the optimizer and its settings
``lradvisor.scale_invariant``      BatchNorm in the model (the bound is then not certain)
``lradvisor.curvature``            "measured", "cached in the study", "width law a·m^b", …
``lradvisor.loss``                 "ce", "mse" or the loss function's name
``lradvisor.laws``                 JSON list of the conservation laws found on the model
``lradvisor.skipped``              JSON list of [module, reason] no law covers
``lradvisor.identity_holds``       whether the η²·S identity is exact (plain SGD)
``lradvisor.outside_fraction``     share of ‖g₀‖² outside the kept Lanczos eigenvectors
``lradvisor.steps_observed``       optimizer steps observed at the latest report
``lradvisor.drift_observed``       latest observed drift, summed over laws
``lradvisor.drift_predicted``      the prediction for it (plain SGD), else None
``lradvisor.drift_ratio``          observed / predicted (the drift signal), else None
``lradvisor.drift_recent``         JSON list of the last 8 [step, observed, predicted]
``lradvisor.drift_history.<k>``    JSON chunks of 16 reports: [step, observed, predicted,
                                   {law: observed}, {law: predicted}]
``lradvisor.final_drift``          JSON {law: drift after the last step}
``lradvisor.final_predicted_drift`` JSON {law: its prediction}
``lradvisor.diverged``             True once a non-finite value was reported
``lradvisor.prune_reason``         "beyond_stability_bound", "diverged",
                                   "drift_off_prediction" or "base_pruner"
``lradvisor.prune_detail``         JSON dict: the numbers behind the prune
``lradvisor.prior``                True when TheoryPriorSampler drew the learning rate
=================================  =========================================================
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    import optuna
except ImportError as error:  # pragma: no cover - optuna is a dependency of lradvisor
    raise ImportError("lradvisor.optuna needs Optuna: pip install 'optuna>=4,<6'") from error

import torch

from lradvisor.errors import LRAdvisorError
from lradvisor.integrations._optuna_monitor import TrialMonitor
from lradvisor.integrations._optuna_pruner import ConservationPruner
from lradvisor.integrations._optuna_sampler import TheoryPriorSampler

__all__ = ["ConservationPruner", "LoopMonitor", "TheoryPriorSampler", "TrialMonitor", "monitor"]


class LoopMonitor:
    """What :func:`monitor` yields: ``step`` replaces ``optimizer.step()`` in a plain loop."""

    def __init__(
        self, core: TrialMonitor, optimizer: torch.optim.Optimizer, report_every: int | None
    ) -> None:
        self.core = core
        self.optimizer = optimizer
        self.report_every = report_every
        self.steps = 0

    def step(self, loss: float | torch.Tensor | None = None) -> None:
        """After ``loss.backward()``: observe the gradients, step the optimizer, and every
        ``report_every`` steps report ``loss`` (raises ``optuna.TrialPruned`` when pruned)."""
        self.core.observe()
        self.optimizer.step()
        self.steps += 1
        if self.report_every and loss is not None and self.steps % self.report_every == 0:
            self.core.report(loss, self.steps)

    def report(self, value: float | torch.Tensor, step: int | None = None) -> dict[str, Any]:
        """Report another value (e.g. the validation loss) at ``step`` (default: steps so far)."""
        return self.core.report(value, self.steps if step is None else step)


@contextmanager
def monitor(
    trial: optuna.trial.Trial,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    report_every: int | None = None,
    **options: Any,
) -> Iterator[LoopMonitor]:
    """Monitor a plain training loop for an Optuna trial::

        with lradvisor.optuna.monitor(trial, model, optimizer, data=(X, y), report_every=50) as m:
            for batch in loader:
                optimizer.zero_grad()
                loss = loss_fn(model(batch[0]), batch[1])
                loss.backward()
                m.step(loss)            # observe + optimizer.step() + report every 50 steps
        return validation_loss(model)

    Before the first step the study's pruner is asked once (the stability-bound check:
    raises ``optuna.TrialPruned``); on leaving, even when pruned, the final drift is
    written. ``options`` are those of :class:`TrialMonitor` (``data``, ``loss``, …).
    """
    if report_every is not None and (
        isinstance(report_every, bool) or not isinstance(report_every, int) or report_every < 1
    ):
        raise LRAdvisorError(
            f"report_every must be a positive integer or None, but got {report_every!r}."
        )
    core = TrialMonitor(trial, model, optimizer, **options)
    if core.should_prune():
        raise optuna.TrialPruned("pruned before training (beyond the stability bound)")
    try:
        yield LoopMonitor(core, optimizer, report_every)
    finally:
        core.finish()
