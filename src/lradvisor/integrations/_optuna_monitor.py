r"""TrialMonitor: the stability bound and the conservation-law drift of one Optuna trial.

At construction the monitor measures λ_max(θ₀) by Lanczos on (a subsample of) the data and
records the bound η_EoS = 2/λ_max; while the objective trains it accumulates the exact drift
identity of THEORY.md §2 through :class:`~lradvisor.measure.monitor.ConservationMonitor`
and, at each report, compares it with a cheap spectral prediction (THEORY.md §4):

.. math::

    \hat D_l(t) = \eta^2 \, \delta_l(0) \sum_k w_k \sum_{s<t} \rho_k^{2s},
    \qquad \rho_k = 1 - \eta\lambda_k, \qquad \sum_k w_k = 1,

with t the number of observed steps, δ_l(0) the law's gradient imbalance at θ₀ on the
data subsample, λ_k the top ``n_modes`` positive Lanczos eigenvalues and
w_k = (g₀·v_k)²/‖g₀‖² the share of the initial gradient g₀ on eigenvector v_k; the share
of ‖g₀‖² outside those eigenvectors (``lradvisor.outside_fraction``) is put on the
smallest kept eigenvalue.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from lradvisor.errors import LRAdvisorError
from lradvisor.integrations._optuna_pruner import (
    EXACT_HISTORY_TAIL,
    KEY_DIVERGED,
    KEY_DRIFT_HISTORY,
    KEY_EOS_LR,
    KEY_LAMBDA_MAX,
    KEY_LOSS,
    KEY_LR,
    ConservationPruner,
    write_prune_reason,
)
from lradvisor.measure.lanczos import hessian_operator, lanczos
from lradvisor.measure.laws import unit_balance
from lradvisor.measure.monitor import ConservationMonitor
from lradvisor.theory import eos_learning_rate, gradient_imbalance_sum

__all__ = ["TrialMonitor"]

KEY_LAWS = "lradvisor.laws"
KEY_SKIPPED = "lradvisor.skipped"
KEY_IDENTITY_HOLDS = "lradvisor.identity_holds"
KEY_OUTSIDE_FRACTION = "lradvisor.outside_fraction"
KEY_STEPS_OBSERVED = "lradvisor.steps_observed"
KEY_DRIFT = "lradvisor.drift"
KEY_PREDICTED_DRIFT = "lradvisor.predicted_drift"
KEY_DRIFT_RATIO = "lradvisor.drift_ratio"

HISTORY_LIMIT = 200

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrialMonitor:
    """Stability bound, drift and its prediction for one trial, written to its user_attrs.

    Five lines in an existing objective::

        monitor = TrialMonitor(trial, model, optimizer, data=(X, y), loss="ce")
        if monitor.should_prune():              # before any training step
            raise optuna.TrialPruned()
        ...
        loss.backward(); monitor.observe(); optimizer.step()
        monitor.report(step, loss)              # every k steps; raises TrialPruned

    Args:
        trial: the live trial.
        model: the model the objective trains; conservation laws are discovered on it.
        optimizer: the optimizer that steps it (plain ``torch.optim.SGD`` keeps the drift
            identity exact; others are measured directly and get no prediction).
        data: ``(X, y)`` on which λ_max(θ₀), g₀ and δ(0) are computed; the first use
            draws at most ``max_rows`` rows at random (``seed``).
        loss: ``"ce"`` (mean cross-entropy on integer labels), ``"mse"`` (mean squared
            error; integer labels are one-hot encoded, as in lradvisor's engine) or a
            callable ``loss_fn(outputs, y)`` returning the mean loss. It must be the loss
            the objective trains on, or the prediction compares different things.
        max_rows: largest subsample used for the curvature.
        n_modes: Lanczos eigenpairs kept for the prediction.
        lanczos_iterations: most Hessian-vector products Lanczos may use.
        seed: seed of the subsample and of Lanczos' start vector.

    Attributes:
        lr_: the learning rate read from the optimizer at construction (the largest over
            parameter groups: the one the stability bound is about).
        lambda_max_: λ_max(θ₀) of the loss on the subsample.
        eos_lr_: 2/λ_max_, or None when λ_max_ ≤ 0.
        diverged_: whether a non-finite loss has been reported.

    .. note::
        The prediction is the one THEORY.md §4 makes, from θ₀ only: full-batch gradient
        descent at a constant rate on the quadratic model of the initial Hessian. It is
        exact at t = 1 for full-batch GD on the data given here and drifts away as the
        Hessian changes (fast for cross-entropy, §5) or with mini-batch noise; that
        departure is what ``ConservationPruner`` reads as "drift off prediction" (see
        its warning on how soon that happens at good rates). The
        remainder of ‖g₀‖² on the smallest kept eigenvalue is a cheap stand-in for the
        Lanczos quadrature ``advise`` uses: it slightly overstates the unconverged share.
        No prediction (None) is made when the identity does not hold, when the learning
        rate has changed since construction, or when no positive eigenvalue was found.
    """

    def __init__(
        self,
        trial: optuna.trial.Trial,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        data: tuple[torch.Tensor, torch.Tensor],
        loss: str | LossFunction = "ce",
        max_rows: int = 1024,
        n_modes: int = 10,
        lanczos_iterations: int = 40,
        seed: int = 0,
    ) -> None:
        if max_rows < 1:
            raise LRAdvisorError(f"max_rows must be at least 1, but got {max_rows}.")
        if n_modes < 1:
            raise LRAdvisorError(f"n_modes must be at least 1, but got {n_modes}.")
        self.trial = trial
        self.model = model
        self.optimizer = optimizer
        self.loss_name, loss_fn = _resolve_loss(loss)
        self.conservation = ConservationMonitor(
            model, optimizer=optimizer, per_unit=False, allow_empty=True
        )
        self.lr_ = _learning_rate(optimizer)
        self.diverged_ = False
        self._history: list[list[Any]] = []
        inputs, targets = _subsample(data, max_rows, seed)
        with _evaluation_mode(model):
            self._measure_curvature(
                inputs, targets, loss_fn, n_modes=n_modes, iterations=lanczos_iterations, seed=seed
            )
        self._write_initial_attrs()

    # -------------------------------------------------------------------- construction

    def _measure_curvature(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        loss_fn: LossFunction,
        *,
        n_modes: int,
        iterations: int,
        seed: int,
    ) -> None:
        operator = hessian_operator(self.model, [(inputs, targets)], loss_fn)
        spectrum = lanczos(
            operator.matvec,
            operator.dim,
            k=min(n_modes, operator.dim),
            max_iter=max(iterations, n_modes),
            seed=seed,
            device=operator.device,
        )
        gradient = operator.gradient()
        self.lambda_max_ = spectrum.lambda_max
        self.eos_lr_ = eos_learning_rate(self.lambda_max_) if self.lambda_max_ > 0 else None
        self._delta0 = _initial_imbalance(self.model, self.conservation, operator, gradient)
        self._eigenvalues, self._weights, self.outside_fraction_ = _mode_weights(
            spectrum.eigenvalues,
            spectrum.eigenvectors,
            gradient.detach().to(torch.float64).cpu().numpy(),
        )

    def _write_initial_attrs(self) -> None:
        self._set(KEY_LR, self.lr_)
        self._set(KEY_LAMBDA_MAX, _json_float(self.lambda_max_))
        self._set(KEY_EOS_LR, _json_float(self.eos_lr_))
        self._set(KEY_LOSS, self.loss_name)
        self._set(KEY_LAWS, [pair.name for pair in self.conservation.pairs])
        self._set(KEY_SKIPPED, [list(entry) for entry in self.conservation.skipped])
        self._set(KEY_IDENTITY_HOLDS, self.identity_holds)
        self._set(KEY_OUTSIDE_FRACTION, _json_float(self.outside_fraction_))

    # ------------------------------------------------------------------------ per step

    def observe(self) -> None:
        """Call after ``loss.backward()`` and before ``optimizer.step()``: O(parameters)."""
        self.conservation.observe()

    def should_prune(self) -> bool:
        """Ask the study's pruner now; before training this is the stability-bound check.

        Call right after construction: a trial beyond the bound is then pruned without a
        single training step (``ConservationPruner`` checks the bound while the trial has
        no intermediate value).
        """
        pruned = self.trial.should_prune()
        if pruned:
            self._record_foreign_prune("base_pruner", {})
        return pruned

    def report(self, step: int, loss: float | torch.Tensor) -> dict[str, Any]:
        """Report ``loss`` at ``step`` with the drift numbers; raise TrialPruned if pruned.

        Writes ``lradvisor.drift`` / ``predicted_drift`` / ``drift_ratio`` /
        ``identity_holds`` / ``steps_observed`` / ``drift_history``, then calls
        ``trial.report(loss, step)`` and ``trial.should_prune()`` once each. A non-finite
        loss sets ``lradvisor.diverged`` and prunes at once, whatever the study's pruner.

        Returns:
            The drift numbers written (JSON values).
        """
        # One host sync, at the caller's reporting cadence.
        value = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if not math.isfinite(value):
            self._diverge(step, value)
        numbers, observed, predicted = self._drift_numbers()
        self._history.append(
            [int(step), observed, predicted, numbers[KEY_DRIFT], numbers[KEY_PREDICTED_DRIFT]]
        )
        self._history = _thin(self._history, limit=HISTORY_LIMIT, exact_tail=EXACT_HISTORY_TAIL)
        numbers[KEY_DRIFT_HISTORY] = self.drift_history  # a copy: storage may keep the object
        for key, entry in numbers.items():
            self._set(key, entry)
        self.trial.report(value, step)
        if self.trial.should_prune():
            self._record_foreign_prune("base_pruner", {"step": int(step), "value": value})
            raise optuna.TrialPruned(f"pruned at step {step} (loss {value:.6g})")
        return numbers

    def _diverge(self, step: int, value: float) -> None:
        self.diverged_ = True
        self._set(KEY_DIVERGED, True)
        self.trial.report(value, step)
        self.trial.should_prune()
        self._record_foreign_prune(
            "diverged", {"cause": "non_finite_loss", "step": int(step), "value": repr(value)}
        )
        raise optuna.TrialPruned(f"loss is {value} at step {step}: diverged")

    def _record_foreign_prune(self, reason: str, detail: dict[str, Any]) -> None:
        # ConservationPruner writes its own reason; any other pruner does not.
        if isinstance(self.trial.study.pruner, ConservationPruner):
            return
        detail = {"pruner": type(self.trial.study.pruner).__name__, **detail}
        write_prune_reason(self.trial.study, self.trial._trial_id, reason, detail)

    def _drift_numbers(self) -> tuple[dict[str, Any], float | None, float | None]:
        """The per-report user_attrs, and the observed and predicted totals over laws."""
        reports = [r for r in self.conservation.report() if not r.name.endswith(":bias-free")]
        observed = {
            r.name: _json_float(r.drift_identity if r.identity_holds else r.drift_direct)
            for r in reports
        }
        predicted = self._predictions(reports)
        observed_total = _total(observed.values())
        predicted_total = None if predicted is None else _total(predicted.values())
        numbers = {
            KEY_IDENTITY_HOLDS: self.identity_holds,
            KEY_STEPS_OBSERVED: self.conservation.steps,
            KEY_DRIFT: observed,
            KEY_PREDICTED_DRIFT: predicted,
            KEY_DRIFT_RATIO: _ratio(observed_total, predicted_total),
        }
        return numbers, observed_total, predicted_total

    def _predictions(self, reports) -> dict[str, float | None] | None:
        steps = self.conservation.steps
        if not self.identity_holds or self._weights is None or steps == 0:
            return None
        if _learning_rate(self.optimizer) != self.lr_:
            return None
        with np.errstate(over="ignore"):
            unit_sum = float(
                gradient_imbalance_sum(self.lr_, self._eigenvalues, self._weights, steps=steps)
            )
        scale = self.lr_**2 * unit_sum
        return {
            r.name: _json_float(scale * self._delta0[r.name])
            if r.identity_holds and self._delta0.get(r.name) is not None
            else None
            for r in reports
        }

    # ------------------------------------------------------------------------- results

    @property
    def identity_holds(self) -> bool:
        """Whether the η²·S identity is exact so far (plain SGD, observe() in step)."""
        return bool(self.conservation.pairs) and self.conservation.identity_holds

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]:
        """``(module_name, reason)`` for every parameterised module no law covers."""
        return self.conservation.skipped

    def drift_numbers(self) -> dict[str, Any]:
        """Observed and predicted drift now (the numbers ``report`` writes), without reporting."""
        return self._drift_numbers()[0]

    @property
    def drift_history(self) -> list[list[Any]]:
        """``[step, observed, predicted, {law: observed}, {law: predicted}]`` per report.

        The first three are totals over laws; the per-law predictions are None where no
        prediction is made. Thinned to ``HISTORY_LIMIT`` entries.
        """
        return [list(entry) for entry in self._history]

    def summary(self) -> str:
        """The conservation monitor's summary plus the bound and the prediction's basis."""
        bound = "none (λ_max ≤ 0)" if self.eos_lr_ is None else f"{self.eos_lr_:.4g}"
        basis = (
            "no positive eigenvalue: no drift prediction"
            if self._weights is None
            else f"prediction from {len(self._eigenvalues) - 1} mode(s) + remainder "
            f"({self.outside_fraction_:.1%} of ‖g₀‖²) on the smallest"
        )
        return "\n".join(
            [
                self.conservation.summary(),
                f"lr {self.lr_:.4g}; λ_max(θ₀) {self.lambda_max_:.4g}; η_EoS = 2/λ_max {bound}",
                basis,
            ]
        )

    def _set(self, key: str, value: Any) -> None:
        self.trial.set_user_attr(key, value)


# ---------------------------------------------------------------------------- helpers


def _resolve_loss(loss: str | LossFunction) -> tuple[str, LossFunction]:
    if callable(loss):
        return getattr(loss, "__name__", type(loss).__name__), loss
    if loss == "ce":
        return "ce", nn.functional.cross_entropy
    if loss == "mse":
        return "mse", _mse
    raise LRAdvisorError(f"loss must be 'ce', 'mse' or a callable, but got {loss!r}.")


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if not targets.is_floating_point():
        targets = nn.functional.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
    return nn.functional.mse_loss(outputs, targets)


def _learning_rate(optimizer: torch.optim.Optimizer) -> float:
    return max(float(group["lr"]) for group in optimizer.param_groups)


def _subsample(
    data: tuple[torch.Tensor, torch.Tensor], max_rows: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        inputs, targets = data
    except (TypeError, ValueError):
        raise LRAdvisorError(
            f"data must be a pair (X, y) of tensors, but got {type(data).__name__}."
        ) from None
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise LRAdvisorError(
            f"data must hold as many targets as inputs (at least 1), but got "
            f"{len(inputs)} inputs and {len(targets)} targets."
        )
    if len(inputs) <= max_rows:
        return inputs, targets
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(inputs), generator=generator)[:max_rows].to(inputs.device)
    return inputs[rows], targets[rows.to(targets.device)]


@contextlib.contextmanager
def _evaluation_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout, frozen batch-norm statistics), then as it was."""
    modes = [module.training for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in zip(model.modules(), modes, strict=True):
            module.training = training


def _initial_imbalance(
    model: nn.Module, conservation: ConservationMonitor, operator, gradient: torch.Tensor
) -> dict[str, float | None]:
    """δ_l(0) per law from the full-subsample gradient at θ₀ (None for a frozen law)."""
    grads = {
        id(parameter): grad
        for parameter, grad in zip(operator.params, operator.unflatten(gradient), strict=True)
    }
    deltas: dict[str, float | None] = {}
    for pair in conservation.pairs:
        in_layer = model.get_submodule(pair.in_layer_name)
        out_layer = model.get_submodule(pair.out_layer_name)
        g_out, g_in = grads.get(id(out_layer.weight)), grads.get(id(in_layer.weight))
        g_bias = grads.get(id(in_layer.bias)) if pair.bias_aware else None
        if g_out is None or g_in is None or (pair.bias_aware and g_bias is None):
            deltas[pair.name] = None
            continue
        deltas[pair.name] = float(unit_balance(g_out, g_in, g_bias).sum())
    return deltas


def _mode_weights(
    eigenvalues: np.ndarray, eigenvectors: np.ndarray, gradient: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Kept eigenvalues (positive ones, then the smallest again) and weights summing to 1.

    w_k = (g₀·v_k)²/‖g₀‖² on the positive modes; the rest of ‖g₀‖² (outside the computed
    eigenvectors, or on non-positive ones) is the last weight, on the smallest kept λ.
    """
    mass = float(gradient @ gradient)
    positive = eigenvalues > 0
    if mass == 0 or not positive.any():
        return eigenvalues, None, None
    shares = (gradient @ eigenvectors[:, positive]) ** 2 / mass
    outside = max(0.0, 1.0 - float(shares.sum()))
    kept = eigenvalues[positive]
    weights = np.append(shares, outside)
    return np.append(kept, kept.min()), weights / weights.sum(), outside


def _thin(history: list[list[Any]], *, limit: int, exact_tail: int) -> list[list[Any]]:
    """At most ``limit`` entries: every other older entry goes, the newest stay exact."""
    if len(history) <= limit:
        return history
    older, tail = history[:-exact_tail], history[-exact_tail:]
    return older[::2] + tail


def _json_float(value: float | None) -> float | None:
    """A float JSON can hold (NaN and ±inf become None)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _total(values) -> float | None:
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return float(sum(values))


def _ratio(observed: float | None, predicted: float | None) -> float | None:
    if observed is None or predicted is None or predicted == 0:
        return None
    return observed / predicted
