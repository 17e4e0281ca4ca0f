r"""TrialMonitor: the stability bound and the conservation-law drift of one Optuna trial.

At construction the monitor reads the trial's optimizer and, given data, the sharpness
λ_max(θ₀) (measured once per configuration and reused across trials,
:mod:`~lradvisor.integrations._curvature`), and records the optimizer-aware stability bound
(docs/theory.md §9): 2/λ for SGD, 2(1 + β)/λ with heavy-ball momentum, 2(1 + β)/((1 + 2β)λ)
with Nesterov, none for adaptive optimizers. While the objective trains it accumulates the
exact drift identity (docs/theory.md §2) through
:class:`~lradvisor.measure.monitor.ConservationMonitor` and, for plain SGD, compares it at
each report with a cheap spectral prediction (docs/theory.md §4):

.. math::

    \hat D_l(t) = \eta^2 \, \delta_l(0) \sum_k w_k \sum_{s<t} \rho_k^{2s},
    \qquad \rho_k = 1 - \eta\lambda_k, \qquad \sum_k w_k = 1,

with t the number of observed steps, δ_l(0) the law's gradient imbalance at this trial's θ₀,
λ_k the top positive Lanczos eigenvalues of the configuration and w_k their share of the
initial gradient (the remainder on the smallest kept eigenvalue).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from lradvisor.errors import LRAdvisorError
from lradvisor.integrations import _attrs
from lradvisor.integrations._curvature import Curvature, curvature_for
from lradvisor.integrations._optuna_pruner import ConservationPruner, write_prune_reason
from lradvisor.measure.laws import unit_balance
from lradvisor.measure.monitor import ConservationMonitor
from lradvisor.theory import eos_learning_rate, gradient_imbalance_sum, momentum_threshold

__all__ = ["TrialMonitor", "optimizer_bound"]

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrialMonitor:
    """Stability bound, drift and its prediction for one trial, written to its user_attrs.

    A few lines in an existing objective::

        monitor = TrialMonitor(trial, model, optimizer, data=(X, y), loss="ce")
        if monitor.should_prune():              # before any training step
            raise optuna.TrialPruned()
        ...
        loss.backward(); monitor.observe(); optimizer.step()
        monitor.report(val_loss, step)          # Optuna's order; raises TrialPruned

    Args:
        trial: the live trial.
        model: the model the objective trains; conservation laws are discovered on it.
        optimizer: the optimizer that steps it; its class and first parameter group give
            the stability bound (plain ``torch.optim.SGD`` also keeps the drift identity
            exact; others are measured directly and get no prediction).
        data: ``(X, y)`` on which λ_max(θ₀) (and, for plain SGD, the prediction's modes and
            δ(0)) are computed, on a random subsample (``seed``): at most ``max_rows`` rows
            for plain SGD's modes, at most ``lambda_rows`` for λ_max alone (every other
            optimizer); None: no bound and no prediction, the drift is still measured.
        loss: ``"ce"``, ``"mse"`` (integer labels one-hot encoded) or a callable
            ``loss_fn(outputs, y)`` returning the mean loss the objective trains on.
        max_rows: largest subsample used for the modes of the drift prediction.
        lambda_rows: largest subsample used when only λ_max is needed (the bound of
            momentum, Nesterov; the diagnostic of Adam-type optimizers). λ_max on 256 rows
            was within 4 % of 512 rows on the digits CNN, at a third of the cost, far inside
            the pruner's 12× margin.
        n_modes: Lanczos eigenpairs kept for the prediction (plain SGD only).
        lanczos_iterations: most Hessian-vector products Lanczos may use.
        seed: seed of the subsample, of Lanczos' start vector and of the dropout mask.
        width: the trial's width, when the study searches it: the study's width law then
            predicts λ_max(θ₀) for new widths once three are measured.
        write_every: the drift numbers go to storage at reports 1, 2, 4, 8, … and every
            ``write_every``-th (one transaction each on an RDB storage), and always at a
            prune and at :meth:`finish`; at every report when the pruner's drift check needs
            them. 1 writes every report.

    Attributes:
        lr_: the learning rate at construction (the largest over parameter groups).
        lambda_max_: λ_max(θ₀), or None (no data, or not positive).
        eos_lr_: 2/λ_max_, or None.
        bound_: the optimizer-aware bound, or None (adaptive optimizer, no data).
        diverged_: whether a non-finite loss has been reported.

    .. note::
        λ_max(θ₀) and the modes are those of the first trial of the same configuration
        (architecture, data shape, loss) in the study, reused: the sharpness at θ₀ hardly
        depends on the seed, and a Lanczos run per trial cost more than the training of a
        small model. δ(0) is this trial's own. The prediction is full-batch gradient
        descent on the quadratic model at θ₀, exact at t = 1 and drifting away as the
        Hessian changes (cross-entropy compresses it) or with mini-batch noise; the
        pruner's drift check, off by default, reads that departure.
    """

    def __init__(
        self,
        trial: optuna.trial.Trial,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        data: tuple[torch.Tensor, torch.Tensor] | None = None,
        loss: str | LossFunction = "ce",
        max_rows: int = 512,
        lambda_rows: int = 256,
        n_modes: int = 10,
        lanczos_iterations: int = 40,
        seed: int = 0,
        width: int | None = None,
        write_every: int = 4,
    ) -> None:
        if max_rows < 1:
            raise LRAdvisorError(f"max_rows must be at least 1, but got {max_rows}.")
        if lambda_rows < 1:
            raise LRAdvisorError(f"lambda_rows must be at least 1, but got {lambda_rows}.")
        if n_modes < 1:
            raise LRAdvisorError(f"n_modes must be at least 1, but got {n_modes}.")
        if width is not None and (
            isinstance(width, bool) or not isinstance(width, int) or width < 1
        ):
            raise LRAdvisorError(f"width must be a positive integer, but got {width!r}.")
        self.trial = trial
        self.model = model
        self.optimizer = optimizer
        self.loss_name, self._loss_fn = _resolve_loss(loss)
        with warnings.catch_warnings():
            # Said by lradvisor.identity_holds and summary(); a warning per trial is noise.
            warnings.filterwarnings("ignore", message=".*breaks the η²·S identity")
            self.conservation = ConservationMonitor(
                model, optimizer=optimizer, per_unit=False, allow_empty=True
            )
        self.lr_ = _learning_rate(optimizer)
        self.diverged_ = False
        self._reports = 0
        self._written: dict[str, Any] = {}
        if isinstance(write_every, bool) or not isinstance(write_every, int) or write_every < 1:
            raise LRAdvisorError(
                f"write_every must be a positive integer, but got {write_every!r}."
            )
        self._write_every = write_every
        self._pending: dict[str, Any] = {}
        self._grace: float | None = None  # the pruner's grace period, read at the first report
        self._chunk: list[list[Any]] = []
        self._recent: list[list[Any]] = []
        self._delta0: dict[str, float | None] = {}
        self.curvature_ = Curvature(None, source="none (no data given)")
        if data is not None:
            modes = n_modes if self.identity_holds else 0
            inputs, targets = _subsample(data, max_rows if modes else lambda_rows, seed)
            self.curvature_ = curvature_for(
                trial,
                model,
                inputs,
                targets,
                self._loss_fn,
                loss_name=self.loss_name,
                modes=modes,
                iterations=lanczos_iterations,
                seed=seed,
                width=width,
            )
            if modes and self.curvature_.weights is not None:
                self._delta0 = _initial_imbalance(
                    model, self.conservation, inputs, targets, self._loss_fn, seed
                )
        self.lambda_max_ = self.curvature_.lambda_max
        self.eos_lr_ = eos_learning_rate(self.lambda_max_) if self.lambda_max_ else None
        self.bound_, self.bound_kind_ = optimizer_bound(optimizer, self.lambda_max_)
        self.scale_invariant_ = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
        )
        self._write_initial_attrs(width)

    def _write_initial_attrs(self, width: int | None) -> None:
        values = {
            _attrs.LR: self.lr_,
            _attrs.LAMBDA_MAX: self.lambda_max_,
            _attrs.EOS_LR: self.eos_lr_,
            _attrs.BOUND: self.bound_,
            _attrs.BOUND_KIND: self.bound_kind_,
            _attrs.OPTIMIZER: _describe(self.optimizer),
            _attrs.SCALE_INVARIANT: self.scale_invariant_,
            _attrs.CURVATURE: self.curvature_.source,
            _attrs.LOSS: self.loss_name,
            _attrs.LAWS: [pair.name for pair in self.conservation.pairs],
            _attrs.SKIPPED: [list(entry) for entry in self.conservation.skipped],
            _attrs.IDENTITY_HOLDS: self.identity_holds,
            _attrs.OUTSIDE_FRACTION: self.curvature_.outside_fraction,
        }
        if width is not None:
            values[_attrs.WIDTH] = width
        self._set_many(values)

    # ------------------------------------------------------------------------ per step

    def observe(self) -> None:
        """Call after ``loss.backward()`` and before ``optimizer.step()``: O(parameters)."""
        self.conservation.observe()

    def should_prune(self) -> bool:
        """Ask the study's pruner now; before training this is the stability-bound check."""
        pruned = self.trial.should_prune()
        if pruned:
            self._record_foreign_prune("base_pruner", {})
        return pruned

    def report(self, value: float | torch.Tensor, step: int) -> dict[str, Any]:
        """Report ``value`` at ``step`` (Optuna's order) with the drift numbers; raise
        ``optuna.TrialPruned`` if the study's pruner says so.

        Writes the drift numbers (:meth:`record`), then ``trial.report(value, step)`` and
        ``trial.should_prune()``. A non-finite value sets ``lradvisor.diverged`` and prunes
        at once, whatever the pruner.
        """
        value, step = _checked_report(value, step)
        if not math.isfinite(value):
            self._diverge(step, value)
        numbers = self.record(step)
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.flush()
            self._record_foreign_prune("base_pruner", {"step": step, "value": value})
            raise optuna.TrialPruned(f"pruned at step {step} (value {value:.6g})")
        return numbers

    def record(self, step: int) -> dict[str, Any]:
        """Write the drift numbers at ``step`` without reporting a value (framework callbacks
        whose pruning callback reports): a bounded set of user_attrs per call — the latest
        totals and ratio, the last ``RECENT`` entries, the open history chunk."""
        numbers, entry = self._drift_numbers(int(step))
        self._reports += 1
        self._chunk.append(entry)
        self._recent = [*self._recent, entry[:3]][-_attrs.RECENT :]
        numbers[_attrs.DRIFT_RECENT] = self._recent
        numbers[f"{_attrs.DRIFT_HISTORY}.{(self._reports - 1) // _attrs.CHUNK}"] = self._chunk
        if len(self._chunk) == _attrs.CHUNK:
            self._chunk = []
        self._pending.update(numbers)
        n = self._reports  # written at reports 1, 2, 4, 8, … and every write_every-th
        if n & (n - 1) == 0 or n % self._write_every == 0 or self._needs_every_report():
            self.flush()
        return numbers

    def flush(self) -> None:
        """Write the drift numbers of the reports not yet written (``report`` writes reports
        1, 2, 4, 8, … and every ``write_every``-th; a prune, :meth:`finish` and the end of the monitor
        write the rest; a monitor dropped without :meth:`finish` may leave the last
        ``write_every − 1`` reports' numbers unwritten)."""
        if self._pending:
            pending, self._pending = self._pending, {}
            self._set_many(pending)

    def _needs_every_report(self) -> bool:
        """The pruner's opt-in drift check reads the recent drift at every report, and its
        grace period the steps observed until the grace is over."""
        pruner = self.trial.study.pruner
        if getattr(pruner, "_drift_factor", None) is not None:
            return True
        if self._grace is None:
            self._grace = 0.0
            if isinstance(pruner, ConservationPruner):
                # The trial's own copy (params and the attrs this monitor wrote) is enough;
                # a storage read per trial cost ~4 ms on SQLite.
                frozen = getattr(self.trial, "_cached_frozen_trial", None)
                if frozen is None:
                    frozen = self.trial.study._storage.get_trial(self.trial._trial_id)
                self._grace = pruner.grace_steps(self.trial.study, frozen)
        written = self._written.get(_attrs.STEPS_OBSERVED)
        return self._grace > 0 and (written if isinstance(written, int) else 0) < self._grace

    def finish(self) -> dict[str, dict[str, float | None]]:
        """Write the drift after the last step (``lradvisor.final_drift`` and its prediction)."""
        observed, predicted = self._per_law()
        self._pending.update(
            {_attrs.FINAL_DRIFT: observed, _attrs.FINAL_PREDICTED_DRIFT: predicted or {}}
        )
        self.flush()
        return {"observed": observed, "predicted": predicted or {}}

    def _diverge(self, step: int, value: float) -> None:
        self.diverged_ = True
        self._pending[_attrs.DIVERGED] = True
        self.flush()
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

    def _per_law(self) -> tuple[dict[str, float | None], dict[str, float | None] | None]:
        reports = [r for r in self.conservation.report() if not r.name.endswith(":bias-free")]
        observed = {
            r.name: _attrs.finite(r.drift_identity if r.identity_holds else r.drift_direct)
            for r in reports
        }
        return observed, self._predictions(reports)

    def _drift_numbers(self, step: int) -> tuple[dict[str, Any], list[Any]]:
        """The per-report user_attrs and the history entry."""
        observed, predicted = self._per_law()
        observed_total = _total(observed.values())
        predicted_total = None if predicted is None else _total(predicted.values())
        numbers = {
            _attrs.IDENTITY_HOLDS: self.identity_holds,
            _attrs.STEPS_OBSERVED: self.conservation.steps,
            _attrs.DRIFT_OBSERVED: observed_total,
            _attrs.DRIFT_PREDICTED: predicted_total,
            _attrs.DRIFT_RATIO: _ratio(observed_total, predicted_total),
        }
        entry = [int(step), observed_total, predicted_total, observed, predicted]
        return numbers, entry

    def _predictions(self, reports) -> dict[str, float | None] | None:
        steps = self.conservation.steps
        weights = self.curvature_.weights
        if not self.identity_holds or weights is None or steps == 0 or not self._delta0:
            return None
        if _learning_rate(self.optimizer) != self.lr_:
            return None
        with np.errstate(over="ignore"):
            unit_sum = float(
                gradient_imbalance_sum(
                    self.lr_,
                    np.array(self.curvature_.eigenvalues),
                    np.array(weights),
                    steps=steps,
                )
            )
        scale = self.lr_**2 * unit_sum
        return {
            r.name: _attrs.finite(scale * self._delta0[r.name])
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
        """Observed and predicted drift now (the latest numbers ``report`` writes)."""
        observed, predicted = self._per_law()
        return {
            "observed": observed,
            "predicted": predicted,
            _attrs.DRIFT_OBSERVED: _total(observed.values()),
            _attrs.DRIFT_PREDICTED: None if predicted is None else _total(predicted.values()),
        }

    @property
    def drift_history(self) -> list[list[Any]]:
        """``[step, observed, predicted, {law: observed}, {law: predicted}]`` per report."""
        return _attrs.drift_history(self.trial.user_attrs) if self._reports else []

    def summary(self) -> str:
        """The conservation monitor's summary plus the bound and where λ_max came from."""
        bound = "none" if self.bound_ is None else f"{self.bound_:.4g}"
        lam = "not measured" if self.lambda_max_ is None else f"{self.lambda_max_:.4g}"
        return "\n".join(
            [
                self.conservation.summary(),
                f"lr {self.lr_:.4g}; λ_max(θ₀) {lam} ({self.curvature_.source}); "
                f"bound {bound} ({self.bound_kind_})",
            ]
        )

    def _set(self, key: str, value: Any) -> None:
        self._set_many({key: value})

    def _set_many(self, values: dict[str, Any]) -> None:
        """Write the values that changed since this monitor last wrote them, in one storage
        transaction where the storage allows (see :func:`_attrs.set_many`)."""
        encoded = {key: _attrs.encode(value) for key, value in values.items()}
        changed = {k: v for k, v in encoded.items() if self._written.get(k, _UNSET) != v}
        _attrs.set_many(self.trial, changed)
        self._written.update(changed)


# ---------------------------------------------------------------------------- helpers

_UNSET = object()


def optimizer_bound(
    optimizer: torch.optim.Optimizer, lambda_max: float | None
) -> tuple[float | None, str]:
    """The optimizer-aware bound on the local quadratic and its name (docs/theory.md §9)."""
    name = type(optimizer).__name__
    if not isinstance(optimizer, torch.optim.SGD):
        return None, f"none ({name}: no bound at θ₀ for adaptive optimizers)"
    if lambda_max is None:
        return None, "none (λ_max(θ₀) not measured)"
    group = optimizer.param_groups[0]
    momentum = float(group.get("momentum", 0.0) or 0.0)
    nesterov = bool(group.get("nesterov", False))
    bound = momentum_threshold(
        lambda_max,
        momentum=momentum,
        nesterov=nesterov,
        dampening=float(group.get("dampening", 0.0) or 0.0),
        weight_decay=float(group.get("weight_decay", 0.0) or 0.0),
    )
    kind = (
        "Nesterov momentum"
        if nesterov
        else "heavy-ball momentum"
        if momentum
        else "gradient descent"
    )
    return bound, kind


def _describe(optimizer: torch.optim.Optimizer) -> str:
    group = optimizer.param_groups[0]
    keys = ("momentum", "nesterov", "weight_decay", "betas", "eps")
    shown = ", ".join(f"{k}={group[k]}" for k in keys if k in group and group[k] not in (0, False))
    return f"{type(optimizer).__name__}({shown})"


def _checked_report(value: object, step: object) -> tuple[float, int]:
    """``report(value, step)`` in Optuna's order: refuse a float step (swapped arguments)."""
    if isinstance(step, bool) or not isinstance(step, int | np.integer):
        hint = " (Optuna's order is report(value, step): were the arguments swapped?)"
        raise LRAdvisorError(f"step must be an integer, but got {step!r}{hint}.")
    if step < 0:
        raise LRAdvisorError(f"step must be >= 0, but got {step}.")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise LRAdvisorError(
                f"value must be a scalar, but got a tensor of shape {tuple(value.shape)}."
            )
        value = value.detach()
    try:
        number = float(value)  # one host sync, at the caller's reporting cadence
    except (TypeError, ValueError):
        raise LRAdvisorError(f"value must be a number, but got {value!r}.") from None
    return number, int(step)


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


def _initial_imbalance(
    model: nn.Module,
    conservation: ConservationMonitor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFunction,
    seed: int,
) -> dict[str, float | None]:
    """δ_l(0) per law from the subsample gradient at this trial's θ₀ (None for a frozen law)."""
    copy_ = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        loss = loss_fn(copy_(inputs), targets)
        named = [(n, p) for n, p in copy_.named_parameters() if p.requires_grad]
        grads = dict(
            zip(
                (n for n, _ in named), torch.autograd.grad(loss, [p for _, p in named]), strict=True
            )
        )
    deltas: dict[str, float | None] = {}
    for pair in conservation.pairs:
        g_out = grads.get(f"{pair.out_layer_name}.weight")
        g_in = grads.get(f"{pair.in_layer_name}.weight")
        g_bias = grads.get(f"{pair.in_layer_name}.bias") if pair.bias_aware else None
        if g_out is None or g_in is None or (pair.bias_aware and g_bias is None):
            deltas[pair.name] = None
            continue
        deltas[pair.name] = float(unit_balance(g_out, g_in, g_bias).sum())
    return deltas


def _total(values) -> float | None:
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return float(sum(values))


def _ratio(observed: float | None, predicted: float | None) -> float | None:
    if observed is None or predicted is None or predicted == 0:
        return None
    return observed / predicted
