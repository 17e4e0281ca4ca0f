"""ConservationPruner: stability bound, divergence and drift checks in front of any pruner."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

from optuna.pruners import BasePruner, HyperbandPruner
from optuna.study import StudyDirection
from optuna.trial import TrialState

from lradvisor.errors import LRAdvisorError
from lradvisor.integrations import _attrs

if TYPE_CHECKING:
    import optuna

__all__ = ["ConservationPruner"]

PRUNE_REASONS = (
    "beyond_stability_bound",
    "diverged",
    "drift_off_prediction",
    "base_pruner",
)
CROSS_ENTROPY_NAMES = frozenset({"ce", "cross_entropy", "CrossEntropyLoss"})
CERTAIN_BOUNDS = frozenset({"gradient descent", "heavy-ball momentum", "Nesterov momentum"})


def write_prune_reason(
    study: optuna.study.Study, trial_id: int, reason: str, detail: dict[str, Any]
) -> None:
    """Store why a trial was pruned, straight into the study's storage.

    A pruner only receives a :class:`~optuna.trial.FrozenTrial` (a copy), whose
    ``user_attrs`` are not written back; ``study._storage.set_trial_user_attr`` is the one
    path that reaches the stored trial (the same call ``Trial.set_user_attr`` makes).
    """
    study._storage.set_trial_user_attr(trial_id, _attrs.PRUNE_REASON, reason)
    study._storage.set_trial_user_attr(trial_id, _attrs.PRUNE_DETAIL, _attrs.encode(detail))


class ConservationPruner(BasePruner):
    """Prune what the theory says is hopeless, then defer to a wrapped pruner.

    Checks, in order; the first that fires prunes the trial:

    1. ``"beyond_stability_bound"``: before any training (no intermediate value yet, or
       only step 0), the trial's learning rate ``lradvisor.lr`` exceeds ``margin`` times
       the optimizer-aware bound ``lradvisor.bound`` that
       :class:`~lradvisor.integrations.optuna.TrialMonitor` wrote. Only where the bound is
       certain: SGD, heavy-ball or Nesterov momentum, and no BatchNorm (a scale-invariant
       loss makes the sharpness at θ₀ say little about later steps); adaptive optimizers
       have no bound at θ₀ and are never pruned here. ``margin`` is
       ``ce_stability_margin`` for cross-entropy and ``stability_margin`` otherwise; the
       prune detail states the margin, the bound and why.
    2. ``"diverged"``: ``lradvisor.diverged`` is true, an intermediate value is not
       finite, or (minimisation only, positive first value) the latest intermediate value
       exceeds ``blowup_factor`` × the first.
    3. ``"drift_off_prediction"`` (off unless ``drift_factor`` is given): |observed/
       predicted drift| outside [1/``drift_factor``, ``drift_factor``] for the last
       ``drift_patience`` reports of a trial that started below its bound. The drift ratio
       is always logged (``lradvisor.drift_ratio``) as a signal.
    4. Grace period (cross-entropy trials at or above their stability bound, when a
       compression timescale τ(η) = a/η + b is known: ``tau=``, :meth:`from_advice`, or the
       study user_attr ``lradvisor.tau``): while the trial has trained fewer than
       ``grace_factor``·τ(η) steps, the base pruner is not asked. Such a trial often loses
       early (a catapult) and wins once its Hessian has compressed; below the bound there is
       no catapult and no grace.
    5. ``"base_pruner"``: ``base.prune(study, trial)``; ``base=None`` never prunes here.
       With ``protect_contenders`` (the default) a prune the base pruner asks for is
       refused while the trial could still become the study's best: its best value so
       far, improved by ``contender_factor`` × the larger of the largest improvement any
       completed trial made from the same step to its end and the trial's own recent
       movement (see :meth:`contender`), would beat the best completed value. The evidence is
       the study's own trials, so the rule tightens as the study learns how much a trial
       can still gain; with fewer than ``min_contender_evidence`` completed trials reported
       at that step, the base pruner is not overruled. Refused prunes are counted in the
       trial's ``lradvisor.prune_refused`` user_attr (a JSON string: the count and the last
       refusal's evidence).

    Every prune writes ``lradvisor.prune_reason`` and ``lradvisor.prune_detail`` (a JSON
    string) into the trial's user_attrs. The pruner keeps no per-trial state: everything is
    read from the trial and the study, so it is safe with ``n_jobs`` and picklable.

    Args:
        base: the pruner consulted when none of the checks fires (e.g. ``MedianPruner()``).
        stability_margin: how far above its bound a non-cross-entropy trial may start.
        ce_stability_margin: the same for cross-entropy.
        drift_factor: None (default) turns the drift check off; else the ratio band.
        drift_patience: consecutive reports off the band before pruning.
        blowup_factor: latest/first intermediate value that counts as divergence.
        tau: ``(a, b)`` of τ(η) = a/η + b in optimizer steps, e.g. from ``suggest``.
        grace_factor: the grace period in units of τ(η) (τ is the e-folding time of
            1 − q̄, a few steps at such rates; the catapult lasts several of them).
        protect_contenders: refuse the base pruner's prune of a trial that could still
            become the study's best (see 5.).
        contender_factor: the safety factor on the largest improvement seen. 2 by default:
            the largest gain of a handful of completed trials understates what the next
            trial can gain, and mini-batch validation curves are noisy (at 1.0 the study
            benchmark still lost a trial that missed by 1 % of the best value).
        min_contender_evidence: completed trials needed before the rule can refuse.

    Example::

        advice = lradvisor.suggest(model, data, loss_fn, "sgd")
        pruner = ConservationPruner.from_advice(advice, optuna.pruners.MedianPruner())

    .. note::
        The default margins are wide on purpose: on our suites the best rate sat up to 14×
        above 2/λ_max(θ₀) for full-batch cross-entropy (the Hessian compresses, training
        passes a catapult) and catapults under MSE reach about 12× (Lewkowycz et al. 2020);
        a trial beyond them diverges within its first steps. The check saves those steps
        and never the trials a study is looking for.

    .. note::
        Hyperband. Optuna's samplers call ``optuna.pruners._filter_study``, which
        recognises a :class:`~optuna.pruners.HyperbandPruner` by ``isinstance`` and then
        restricts the sampler to the trial's bracket. When ``base`` is a
        ``HyperbandPruner`` the constructor returns an instance of a subclass of both
        ``ConservationPruner`` and ``type(base)`` whose bracket machinery is forwarded to
        ``base`` (private Optuna names, checked against Optuna 5.0).
    """

    def __new__(cls, base: BasePruner | None = None, *args: Any, **kwargs: Any):
        if isinstance(base, HyperbandPruner) and not issubclass(cls, HyperbandPruner):
            cls = _hyperband_variant(cls, type(base))
        return super().__new__(cls)

    def __init__(
        self,
        base: BasePruner | None = None,
        *,
        stability_margin: float = 12.0,
        ce_stability_margin: float = 16.0,
        drift_factor: float | None = None,
        drift_patience: int = 3,
        blowup_factor: float = 1e3,
        tau: tuple[float, float] | None = None,
        grace_factor: float = 10.0,
        protect_contenders: bool = True,
        contender_factor: float = 2.0,
        min_contender_evidence: int = 1,
    ) -> None:
        if base is not None and not isinstance(base, BasePruner):
            raise LRAdvisorError(
                f"base must be an optuna BasePruner or None, but got {type(base).__name__}."
            )
        _check_positive("stability_margin", stability_margin)
        _check_positive("ce_stability_margin", ce_stability_margin)
        _check_positive("grace_factor", grace_factor)
        _check_positive("contender_factor", contender_factor)
        if not isinstance(protect_contenders, bool):
            raise LRAdvisorError(
                f"protect_contenders must be True or False, but got {protect_contenders!r}."
            )
        if (
            isinstance(min_contender_evidence, bool)
            or not isinstance(min_contender_evidence, int)
            or min_contender_evidence < 1
        ):
            raise LRAdvisorError(
                "min_contender_evidence must be an integer ≥ 1, but got "
                f"{min_contender_evidence!r}."
            )
        if drift_factor is not None:
            _check_above_one("drift_factor", drift_factor)
        _check_above_one("blowup_factor", blowup_factor)
        if isinstance(drift_patience, bool) or not isinstance(drift_patience, int):
            raise LRAdvisorError(f"drift_patience must be an integer, but got {drift_patience!r}.")
        if not 1 <= drift_patience <= _attrs.RECENT:
            raise LRAdvisorError(
                f"drift_patience must be between 1 and {_attrs.RECENT} inclusive "
                f"(the recent drift entries kept per trial), but got {drift_patience}."
            )
        if tau is not None:
            tau = _checked_tau(tau)
        self._base = base
        self._stability_margin = float(stability_margin)
        self._ce_stability_margin = float(ce_stability_margin)
        self._drift_factor = None if drift_factor is None else float(drift_factor)
        self._drift_patience = drift_patience
        self._blowup_factor = float(blowup_factor)
        self._tau = tau
        self._grace_factor = float(grace_factor)
        self._protect_contenders = protect_contenders
        self._contender_factor = float(contender_factor)
        self._min_contender_evidence = min_contender_evidence

    def __setstate__(self, state: dict[str, Any]) -> None:
        # pruners pickled before the contender rule existed get its defaults
        self.__dict__.update(
            {"_protect_contenders": True, "_contender_factor": 2.0, "_min_contender_evidence": 1}
        )
        self.__dict__.update(state)

    @classmethod
    def from_advice(
        cls, advice: Any, base: BasePruner | None = None, **kwargs: Any
    ) -> ConservationPruner:
        """The pruner with the compression timescale of an :class:`~lradvisor.records.Advice`
        (cross-entropy probes fit τ(η) = a/η + b; other advice sets none)."""
        tau = getattr(advice, "tau", None) or {}
        if tau.get("a") is not None and tau.get("b") is not None and "tau" not in kwargs:
            kwargs["tau"] = (float(tau["a"]), float(tau["b"]))
        return cls(base, **kwargs)

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
        """Only the stability-bound check, on a live trial; writes the reason when it fires."""
        verdict = self._beyond_bound(trial.study, trial._get_latest_trial())
        if verdict is None:
            return False
        write_prune_reason(trial.study, trial._trial_id, *verdict)
        return True

    def grace_steps(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> float:
        """Steps before the base pruner may prune this trial: ``grace_factor``·τ(η) for a
        cross-entropy trial at or above its stability bound (the catapult regime, where a
        trial loses early and wins once the Hessian has compressed); 0 otherwise."""
        attrs = trial.user_attrs
        if attrs.get(_attrs.LOSS) not in CROSS_ENTROPY_NAMES:
            return 0.0
        lr = attrs.get(_attrs.LR, trial.params.get("lr"))
        bound = attrs.get(_attrs.BOUND, attrs.get(_attrs.EOS_LR))
        if not _is_positive_number(lr) or not _is_positive_number(bound) or lr < bound:
            return 0.0
        tau = self._tau or _study_tau(study)  # a storage read: only for trials that need it
        if tau is None:
            return 0.0
        return max(0.0, self._grace_factor * (tau[0] / lr + tau[1]))

    def _verdict(
        self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial
    ) -> tuple[str, dict[str, Any]] | None:
        for check in (self._beyond_bound, self._diverged, self._drift_off):
            verdict = check(study, trial)
            if verdict is not None:
                return verdict
        if self._base is None or self._in_grace(study, trial):
            return None
        if not self._base.prune(study, trial):
            return None
        contender = self.contender(study, trial) if self._protect_contenders else None
        if contender is not None and contender["could_win"]:
            _record_refusal(study, trial, contender)
            return None
        detail = {"pruner": type(self._base).__name__, "step": trial.last_step}
        if contender is not None:
            detail["contender"] = contender
        return "base_pruner", detail

    def contender(
        self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, Any] | None:
        """Could ``trial`` still become the study's best? None without the evidence to say.

        Each completed trial shows how much a trial gained after step ``s`` (the trial's
        latest step): from the best value it had reported up to ``s`` to its final value.
        The trial itself shows how much its value still moves: the spread of its last
        ``RECENT_REPORTS`` reports (a mini-batch curve fluctuates, and its final value is
        one more sample of that fluctuation; a catapult swings far). The larger of the two,
        times ``contender_factor``, is applied to the best value ``trial`` has reported so
        far and compared with the best completed value. Best values so far rather than the
        latest: a trial must not be judged on one unlucky report.
        """
        step = trial.last_step
        if step is None:
            return None
        minimize = study.direction == StudyDirection.MINIMIZE
        own = _best_up_to(trial.intermediate_values, step, minimize)
        if own is None:
            return None
        gains = []
        best = None
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            final = other.value
            if final is None or not math.isfinite(final):
                continue
            best = final if best is None else (min(best, final) if minimize else max(best, final))
            then = _best_up_to(other.intermediate_values, step, minimize)
            if then is not None:
                gains.append(then - final if minimize else final - then)
        if best is None or len(gains) < self._min_contender_evidence:
            return None
        movement = _recent_movement(trial.intermediate_values, step)
        gain = max(0.0, max(gains), movement) * self._contender_factor
        reach = own - gain if minimize else own + gain
        return {
            "step": step,
            "best_so_far": own,
            "largest_gain": max(gains),
            "own_movement": movement,
            "contender_factor": self._contender_factor,
            "reachable": reach,
            "study_best": best,
            "evidence": len(gains),
            "could_win": reach < best if minimize else reach > best,
        }

    def _in_grace(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        grace = self.grace_steps(study, trial)
        if grace <= 0:
            return False
        steps = trial.user_attrs.get(_attrs.STEPS_OBSERVED, trial.last_step)
        return _is_number(steps) and steps < grace

    def _beyond_bound(
        self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial
    ) -> tuple[str, dict[str, Any]] | None:
        if trial.last_step not in (None, 0):
            return None
        attrs = trial.user_attrs
        lr, bound = attrs.get(_attrs.LR), attrs.get(_attrs.BOUND)
        kind = attrs.get(_attrs.BOUND_KIND)
        if not (_is_positive_number(lr) and _is_positive_number(bound)):
            return None
        if kind not in CERTAIN_BOUNDS or attrs.get(_attrs.SCALE_INVARIANT):
            return None
        loss = attrs.get(_attrs.LOSS)
        ce = loss in CROSS_ENTROPY_NAMES
        margin = self._ce_stability_margin if ce else self._stability_margin
        if lr <= margin * bound:
            return None
        return "beyond_stability_bound", {
            "lr": lr,
            "bound": bound,
            "bound_kind": kind,
            "lambda_max": attrs.get(_attrs.LAMBDA_MAX),
            "lr_over_bound": lr / bound,
            "margin": margin,
            "margin_kind": "ce_stability_margin" if ce else "stability_margin",
            "why": (
                f"lr is {lr / bound:.3g}× the {kind} bound; beyond {margin:g}× no best rate was "
                "seen on our suites (catapults end there) and such trials diverge in a few steps"
            ),
            "loss": loss,
        }

    def _diverged(
        self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial
    ) -> tuple[str, dict[str, Any]] | None:
        values = trial.intermediate_values
        if trial.user_attrs.get(_attrs.DIVERGED):
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
        recent = _attrs.decode(attrs.get(_attrs.DRIFT_RECENT)) or []
        if len(recent) < self._drift_patience:
            return None
        tail = recent[-self._drift_patience :]
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


RECENT_REPORTS = 3  # reports whose spread measures how much a trial's value still moves


def _recent_movement(values: dict[int, float], step: int) -> float:
    """max − min of the last ``RECENT_REPORTS`` finite reports at or before ``step``."""
    recent = [values[s] for s in sorted(values) if s <= step and math.isfinite(values[s])]
    recent = recent[-RECENT_REPORTS:]
    return max(recent) - min(recent) if len(recent) > 1 else 0.0


def _best_up_to(values: dict[int, float], step: int, minimize: bool) -> float | None:
    """The best finite intermediate value reported at or before ``step``."""
    finite = [v for s, v in values.items() if s <= step and math.isfinite(v)]
    if not finite:
        return None
    return min(finite) if minimize else max(finite)


def _record_refusal(
    study: optuna.study.Study, trial: optuna.trial.FrozenTrial, contender: dict[str, Any]
) -> None:
    """One write: how many prunes were refused so far and the evidence of the last one."""
    previous = _attrs.decode(trial.user_attrs.get(_attrs.PRUNE_REFUSED))
    count = previous.get("count", 0) if isinstance(previous, dict) else 0
    record = {"count": count + 1 if _is_number(count) else 1, **contender}
    study._storage.set_trial_user_attr(trial._trial_id, _attrs.PRUNE_REFUSED, _attrs.encode(record))


def _checked_tau(tau: object) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in tau)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise LRAdvisorError(f"tau must be a pair (a, b) of numbers, but got {tau!r}.") from None
    if not (math.isfinite(a) and math.isfinite(b) and a > 0):
        raise LRAdvisorError(f"tau must be finite with a > 0, but got {tau!r}.")
    return a, b


def _study_tau(study: optuna.study.Study) -> tuple[float, float] | None:
    stored = _attrs.decode(study.user_attrs.get(_attrs.STUDY_TAU))
    if not isinstance(stored, list | tuple) or len(stored) != 2:
        return None
    try:
        return _checked_tau(stored)
    except LRAdvisorError:
        return None


def _restore(requested: type, state: dict[str, Any]) -> ConservationPruner:
    pruner = requested.__new__(requested, state.get("_base"))
    pruner.__setstate__(state)
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
    lr, bound = attrs.get(_attrs.LR), attrs.get(_attrs.BOUND, attrs.get(_attrs.EOS_LR))
    return _is_positive_number(lr) and _is_positive_number(bound) and lr >= bound


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
