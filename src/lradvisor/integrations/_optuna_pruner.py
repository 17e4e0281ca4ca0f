"""ConservationPruner: stability bound, divergence and drift checks in front of any pruner."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

from optuna.pruners import BasePruner, HyperbandPruner
from optuna.study import StudyDirection

from lradvisor.errors import LRAdvisorError

if TYPE_CHECKING:
    import optuna

__all__ = ["ConservationPruner"]

# The trial user_attrs lradvisor writes and reads (JSON values only). TrialMonitor writes
# the measurement keys; ConservationPruner reads them and writes the prune keys.
KEY_LR = "lradvisor.lr"
KEY_LAMBDA_MAX = "lradvisor.lambda_max"
KEY_EOS_LR = "lradvisor.eos_lr"
KEY_LOSS = "lradvisor.loss"
KEY_TAU = "lradvisor.tau"
KEY_DIVERGED = "lradvisor.diverged"
KEY_DRIFT_HISTORY = "lradvisor.drift_history"
KEY_PRUNE_REASON = "lradvisor.prune_reason"
KEY_PRUNE_DETAIL = "lradvisor.prune_detail"

PRUNE_REASONS = ("beyond_stability_bound", "diverged", "drift_off_prediction", "base_pruner")
CROSS_ENTROPY_NAMES = frozenset({"ce", "cross_entropy"})

# TrialMonitor thins old drift-history entries but keeps this many newest ones exact, so a
# streak of up to this many consecutive reports can always be read back.
EXACT_HISTORY_TAIL = 50


def write_prune_reason(
    study: optuna.study.Study, trial_id: int, reason: str, detail: dict[str, Any]
) -> None:
    """Store why a trial was pruned, straight into the study's storage.

    A pruner only receives a :class:`~optuna.trial.FrozenTrial` (a copy), whose
    ``user_attrs`` are not written back; ``study._storage.set_trial_user_attr`` is the one
    path that reaches the stored trial (the same call ``Trial.set_user_attr`` makes).
    """
    study._storage.set_trial_user_attr(trial_id, KEY_PRUNE_REASON, reason)
    study._storage.set_trial_user_attr(trial_id, KEY_PRUNE_DETAIL, detail)


class ConservationPruner(BasePruner):
    """Prune what the theory says is hopeless, then defer to a wrapped pruner.

    Checks, in order; the first that fires prunes the trial:

    1. ``"beyond_stability_bound"``: before any training (no intermediate value yet, or
       only step 0), the trial's learning rate ``lradvisor.lr`` exceeds
       ``margin × lradvisor.eos_lr``, with ``margin = ce_stability_margin`` for
       cross-entropy (``lradvisor.loss`` in {"ce", "cross_entropy"}) and
       ``stability_margin`` otherwise. The bound η_EoS = 2/λ_max(θ₀) is written by
       :class:`~lradvisor.integrations.optuna.TrialMonitor`.
    2. ``"diverged"``: ``lradvisor.diverged`` is true, an intermediate value is not
       finite, or (minimisation only, positive first value) the latest intermediate value
       exceeds ``blowup_factor`` × the first.
    3. ``"drift_off_prediction"``: the size of the drift, |observed/predicted|, lies
       outside [1/``drift_factor``, ``drift_factor``] for the last ``drift_patience``
       entries of ``lradvisor.drift_history`` (one entry per ``TrialMonitor.report``):
       the non-perturbative regime, where the spectral formula (THEORY.md §4) no longer
       describes the run. Entries without a prediction break the streak. Only trials
       that started below the bound (``lr < eos_lr``) are checked: beyond it the
       formula is the diverging quadratic model and predicts nothing (THEORY.md §6),
       so checks 1 and 2 decide there. ``drift_factor=None`` turns this check off.
    4. ``"base_pruner"``: ``base.prune(study, trial)``; ``base=None`` never prunes here.

    Every prune writes ``lradvisor.prune_reason`` (one of the four names above) and
    ``lradvisor.prune_detail`` (a dict with the numbers behind it) into the trial's
    user_attrs. The pruner keeps no per-trial state: everything is read from the trial,
    so it is safe with ``study.optimize(..., n_jobs=k)`` and picklable.

    Args:
        base: the pruner consulted when none of the checks fires (e.g. ``MedianPruner()``).
        stability_margin: how far above η_EoS(θ₀) a non-cross-entropy trial may start.
        ce_stability_margin: the same for cross-entropy.
        drift_factor: the drift ratio band is [1/``drift_factor``, ``drift_factor``];
            None disables the drift check.
        drift_patience: consecutive reports off the band before pruning.
        blowup_factor: latest/first intermediate value that counts as divergence.

    Example::

        study = optuna.create_study(pruner=ConservationPruner(optuna.pruners.MedianPruner()))

    .. note::
        The cross-entropy margin is wide on purpose. THEORY.md §5: for cross-entropy the
        Hessian compresses as the correct-class probabilities approach 1, so the bound
        2/λ_max(t) rises during training and rates above 2/λ_max(θ₀) pass through a short
        "catapult" phase and then train well. Our own measurements (THEORY.md §8) put the
        best constant full-batch rate at up to about 4× the initial bound for
        cross-entropy and at about 1× for MSE; the defaults (8× and 1.5×) prune only trials
        well past the best rate seen. ``lradvisor.tau`` (the compression timescale) is
        not used to move the margin.

    .. warning::
        The drift check prunes runs the θ₀ prediction no longer describes, not runs that
        train badly. On an 8 → 16 → 3 ReLU MLP (full batch, 500 steps, 60 samples) the
        ratio stayed within 10× only for η ≲ 0.05·η_EoS (CE) and η ≲ 0.2·η_EoS (MSE); the
        rates with the lowest final loss (0.5–1× η_EoS) left the band after 50–350 steps
        and would be pruned. Use ``drift_factor=None`` when the best rate is wanted
        rather than the regime where the formula holds.

    .. note::
        Hyperband. Optuna's samplers call ``optuna.pruners._filter_study``, which
        recognises a :class:`~optuna.pruners.HyperbandPruner` by ``isinstance`` and then
        restricts the sampler to the trial's bracket. A Hyperband merely held in ``base``
        would lose that filtering, so when ``base`` is a ``HyperbandPruner``, the
        constructor returns an instance of a subclass of both ``ConservationPruner`` and
        ``type(base)``, created on first use, whose bracket machinery
        (``_get_bracket_id``, ``_create_bracket_study``, ``_n_brackets``, ``_pruners``, …)
        is forwarded to ``base``. This depends on private Optuna names (checked against
        Optuna 5.0); and the sampler sees the bracket's trials only, so a sampler that
        counts trials (``TheoryPriorSampler``) counts per bracket.
    """

    def __new__(cls, base: BasePruner | None = None, *args: Any, **kwargs: Any):
        if isinstance(base, HyperbandPruner) and not issubclass(cls, HyperbandPruner):
            cls = _hyperband_variant(cls, type(base))
        return super().__new__(cls)

    def __init__(
        self,
        base: BasePruner | None = None,
        *,
        stability_margin: float = 1.5,
        ce_stability_margin: float = 8.0,
        drift_factor: float | None = 10.0,
        drift_patience: int = 3,
        blowup_factor: float = 1e3,
    ) -> None:
        if base is not None and not isinstance(base, BasePruner):
            raise LRAdvisorError(
                f"base must be an optuna BasePruner or None, but got {type(base).__name__}."
            )
        _check_positive("stability_margin", stability_margin)
        _check_positive("ce_stability_margin", ce_stability_margin)
        if drift_factor is not None:
            _check_above_one("drift_factor", drift_factor)
        _check_above_one("blowup_factor", blowup_factor)
        if isinstance(drift_patience, bool) or not isinstance(drift_patience, int):
            raise LRAdvisorError(f"drift_patience must be an integer, but got {drift_patience!r}.")
        if not 1 <= drift_patience <= EXACT_HISTORY_TAIL:
            raise LRAdvisorError(
                f"drift_patience must be between 1 and {EXACT_HISTORY_TAIL} inclusive "
                f"(the exact tail of the drift history), but got {drift_patience}."
            )
        self._base = base
        self._stability_margin = float(stability_margin)
        self._ce_stability_margin = float(ce_stability_margin)
        self._drift_factor = None if drift_factor is None else float(drift_factor)
        self._drift_patience = drift_patience
        self._blowup_factor = float(blowup_factor)

    def __reduce__(self):
        # The Hyperband variant is created at run time and cannot be found by name when
        # unpickling; rebuild it through __new__ from the class the user asked for.
        requested = getattr(type(self), "_lradvisor_requested_class", type(self))
        return (_restore, (requested, self.__dict__.copy()))

    @property
    def base(self) -> BasePruner | None:
        """The wrapped pruner."""
        return self._base

    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        verdict = self._verdict(study, trial)
        if verdict is None:
            return False
        write_prune_reason(study, trial._trial_id, *verdict)
        return True

    def check_before_training(self, trial: optuna.trial.Trial) -> bool:
        """Only the stability-bound check, on a live trial; writes the reason when it fires.

        ``TrialMonitor.should_prune()`` reaches the same check through
        ``trial.should_prune()`` (it is the first check of :meth:`prune`); this method is
        for callers that want the bound alone, whatever the study's pruner.
        """
        verdict = self._beyond_bound(trial.study, trial._get_latest_trial())
        if verdict is None:
            return False
        write_prune_reason(trial.study, trial._trial_id, *verdict)
        return True

    def _verdict(
        self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial
    ) -> tuple[str, dict[str, Any]] | None:
        for check in (self._beyond_bound, self._diverged, self._drift_off):
            verdict = check(study, trial)
            if verdict is not None:
                return verdict
        if self._base is not None and self._base.prune(study, trial):
            return "base_pruner", {"pruner": type(self._base).__name__, "step": trial.last_step}
        return None

    def _beyond_bound(
        self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial
    ) -> tuple[str, dict[str, Any]] | None:
        if trial.last_step not in (None, 0):
            return None
        attrs = trial.user_attrs
        lr, eos_lr = attrs.get(KEY_LR), attrs.get(KEY_EOS_LR)
        if not (_is_positive_number(lr) and _is_positive_number(eos_lr)):
            return None
        loss = attrs.get(KEY_LOSS)
        ce = loss in CROSS_ENTROPY_NAMES
        margin = self._ce_stability_margin if ce else self._stability_margin
        if lr <= margin * eos_lr:
            return None
        return "beyond_stability_bound", {
            "lr": lr,
            "eos_lr": eos_lr,
            "lambda_max": attrs.get(KEY_LAMBDA_MAX),
            "lr_over_eos_lr": lr / eos_lr,
            "margin": margin,
            "margin_kind": "ce_stability_margin" if ce else "stability_margin",
            "loss": loss,
        }

    def _diverged(
        self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial
    ) -> tuple[str, dict[str, Any]] | None:
        values = trial.intermediate_values
        if trial.user_attrs.get(KEY_DIVERGED):
            latest = values.get(trial.last_step) if trial.last_step is not None else None
            return "diverged", {
                "cause": "flag",
                "step": trial.last_step,
                "value": _json_number(latest),
            }
        for step in sorted(values):
            if not math.isfinite(values[step]):
                return "diverged", {
                    "cause": "non_finite_value",
                    "step": step,
                    "value": _json_number(values[step]),
                }
        if len(values) < 2 or study.direction != StudyDirection.MINIMIZE:
            return None
        steps = sorted(values)
        first, latest = values[steps[0]], values[steps[-1]]
        if first <= 0 or latest <= self._blowup_factor * first:
            return None
        return "diverged", {
            "cause": "blowup",
            "step": steps[-1],
            "value": latest,
            "first_step": steps[0],
            "first_value": first,
            "blowup_factor": self._blowup_factor,
        }

    def _drift_off(
        self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial
    ) -> tuple[str, dict[str, Any]] | None:
        attrs = trial.user_attrs
        if self._drift_factor is None or _started_beyond_bound(attrs):
            return None
        history = attrs.get(KEY_DRIFT_HISTORY) or []
        if len(history) < self._drift_patience:
            return None
        tail = history[-self._drift_patience :]
        ratios = [_drift_ratio(entry[1], entry[2]) for entry in tail]
        if any(ratio is None or self._in_band(ratio) for ratio in ratios):
            return None
        return "drift_off_prediction", {
            "steps": [entry[0] for entry in tail],
            "observed": [entry[1] for entry in tail],
            "predicted": [entry[2] for entry in tail],
            "ratios": ratios,
            "drift_factor": self._drift_factor,
            "drift_patience": self._drift_patience,
        }

    def _in_band(self, ratio: float) -> bool:
        # The size is compared, not the sign: δ(t) may change sign as training leaves θ₀.
        return 1.0 / self._drift_factor <= abs(ratio) <= self._drift_factor


def _restore(requested: type, state: dict[str, Any]) -> ConservationPruner:
    pruner = requested.__new__(requested, state.get("_base"))
    pruner.__dict__.update(state)
    return pruner


def _forwarded_attribute(name: str) -> property:
    def read(self):
        return getattr(self._base, name)

    def write(self, value) -> None:
        setattr(self._base, name, value)

    return property(read, write, doc=f"``base.{name}`` (bracket state lives in the base).")


def _forwarded_method(name: str):
    def method(self, *args, **kwargs):
        return getattr(self._base, name)(*args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"``base.{name}(...)``: bracket logic stays in the wrapped Hyperband."
    return method


_HYPERBAND_STATE = (
    "_min_resource",
    "_max_resource",
    "_reduction_factor",
    "_pruners",
    "_bootstrap_count",
    "_total_trial_allocation_budget",
    "_trial_allocation_budgets",
    "_n_brackets",
)
_HYPERBAND_METHODS = (
    "_try_initialization",
    "_calculate_trial_allocation_budget",
    "_get_bracket_id",
    "_create_bracket_study",
)


@functools.cache
def _hyperband_variant(requested: type, hyperband: type) -> type:
    """A subclass of ``requested`` (a ConservationPruner) and ``hyperband`` forwarding brackets."""
    namespace: dict[str, Any] = {
        "__module__": requested.__module__,
        "__doc__": requested.__doc__,
        "_lradvisor_requested_class": requested,
    }
    namespace.update({name: _forwarded_attribute(name) for name in _HYPERBAND_STATE})
    namespace.update(
        {name: _forwarded_method(name) for name in _HYPERBAND_METHODS if hasattr(hyperband, name)}
    )
    return type(f"{requested.__name__}[{hyperband.__name__}]", (requested, hyperband), namespace)


def _check_positive(name: str, value: float) -> None:
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise LRAdvisorError(f"{name} must be a finite number > 0, but got {value!r}.")


def _check_above_one(name: str, value: float) -> None:
    if not (_is_number(value) and math.isfinite(value) and value > 1):
        raise LRAdvisorError(f"{name} must be a finite number > 1, but got {value!r}.")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_positive_number(value: object) -> bool:
    return _is_number(value) and math.isfinite(value) and value > 0


def _started_beyond_bound(attrs: dict[str, Any]) -> bool:
    lr, eos_lr = attrs.get(KEY_LR), attrs.get(KEY_EOS_LR)
    return _is_positive_number(lr) and _is_positive_number(eos_lr) and lr >= eos_lr


def _drift_ratio(observed: object, predicted: object) -> float | None:
    """observed/predicted, or None where there is no usable prediction."""
    if not (_is_number(observed) and _is_number(predicted)):
        return None
    if predicted == 0 or not (math.isfinite(observed) and math.isfinite(predicted)):
        return None
    return observed / predicted


def _json_number(value: float | None) -> float | str | None:
    """A float JSON can hold: non-finite values become "nan", "inf" or "-inf"."""
    if value is None or math.isfinite(value):
        return value
    return repr(float(value))
