r"""TheoryPriorSampler: the learning rate from lradvisor's advice first, then any sampler."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import TrialState

from lradvisor.errors import LRAdvisorError

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

    from lradvisor.records import Advice

__all__ = ["TheoryPriorSampler"]

KEY_PRIOR = "lradvisor.prior"  # = _attrs.PRIOR

# Draws outside [low, high] are redrawn this many times before being clipped, so the prior
# is a truncated log-normal in practice and piles no mass on the edges.
_REDRAWS = 16


class TheoryPriorSampler(BaseSampler):
    r"""Draw the learning rate from a log-normal prior around advice, then hand over to ``base``.

    For the first ``n_prior_trials`` trials, ``param_name`` is drawn as

    .. math::

        \eta = \eta_c \, e^{\sigma z}, \quad z \sim \mathcal N(0, 1),
        \quad \eta \in [\max(\ell, a), \min(h, b)]

    with η_c = ``center``, σ = ``sigma`` (natural-log units), ℓ = ``low``, h = ``high`` and
    [a, b] the range of the parameter's own distribution; draws outside are redrawn (up
    to 16 times, then clipped), and a stepped distribution gets the nearest grid point.
    Every other parameter, and everything after the prior phase, comes from ``base``.

    The prior phase lasts while fewer than ``n_prior_trials`` earlier trials (lower
    number) are COMPLETE or RUNNING: pruned and failed trials do not use it up. Whether a
    trial is in the phase is decided once, in :meth:`before_trial`. A trial whose
    learning rate the prior drew has ``lradvisor.prior = True`` in its user_attrs.

    Args:
        base: sampler for everything else (default ``TPESampler(seed=seed)``).
        param_name: the parameter the prior is for.
        center: η_c, e.g. ``Advice.recommended_lr``.
        low, high: the prior's range, e.g. ``Advice.lr_range``.
        n_prior_trials: how many trials get the prior.
        sigma: spread of the prior in natural-log units (0.5: ×/÷ 1.65 for one σ).
        seed: seed of the prior's draws (and of the default base sampler).
        width_param: in a study that searches width, the parameter holding it (sampled
            before ``param_name``); the prior then follows the stability bound per width.
        reference_width: the width the advice was made for.

    Width (``width_param``): once the study's monitors have measured λ_max(θ₀) at three
    widths (``TrialMonitor(width=...)``), the fitted law λ_max(m) = a·m^b moves the prior's
    centre and range for a trial of width m by the bound's ratio (m/m₀)^(−b), m₀ =
    ``reference_width``; before that, and for trials whose width is not sampled yet, the
    advice is used as it is.

    Example::

        sampler = TheoryPriorSampler.from_advice(advice, n_prior_trials=8, seed=0)
        study = optuna.create_study(sampler=sampler)

    .. note::
        Multivariate samplers (TPE in Optuna 5 by default) sample a relative search space
        jointly; while the prior is active, ``param_name`` is removed from that space
        (as ``PartialFixedSampler`` does for fixed parameters), so the joint model covers
        the other parameters only. Under Hyperband the study a sampler sees is the
        trial's bracket, so the prior phase is counted per bracket.
    """

    def __init__(
        self,
        base: BaseSampler | None = None,
        *,
        param_name: str = "lr",
        center: float,
        low: float,
        high: float,
        n_prior_trials: int = 10,
        sigma: float = 0.5,
        seed: int | None = None,
        width_param: str | None = None,
        reference_width: int | None = None,
    ) -> None:
        if base is not None and not isinstance(base, BaseSampler):
            raise LRAdvisorError(
                f"base must be an optuna BaseSampler or None, but got {type(base).__name__}."
            )
        for name, value in (("center", center), ("low", low), ("high", high), ("sigma", sigma)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise LRAdvisorError(f"{name} must be a finite number > 0, but got {value!r}.")
        if not low <= center <= high:
            raise LRAdvisorError(
                f"center must lie in [low, high] = [{low}, {high}], but got {center}."
            )
        if isinstance(n_prior_trials, bool) or not isinstance(n_prior_trials, int):
            raise LRAdvisorError(f"n_prior_trials must be an integer, but got {n_prior_trials!r}.")
        if n_prior_trials < 0:
            raise LRAdvisorError(f"n_prior_trials must be >= 0, but got {n_prior_trials}.")
        self._base = base if base is not None else TPESampler(seed=seed)
        self._param_name = param_name
        self._center = float(center)
        self._low = float(low)
        self._high = float(high)
        self._n_prior_trials = n_prior_trials
        self._sigma = float(sigma)
        self._rng = np.random.RandomState(seed)
        self._in_prior_phase: dict[int, bool] = {}
        if (width_param is None) != (reference_width is None):
            raise LRAdvisorError("width_param and reference_width go together (both or neither).")
        if reference_width is not None and not (
            isinstance(reference_width, int) and reference_width > 0
        ):
            raise LRAdvisorError(
                f"reference_width must be a positive integer, but got {reference_width!r}."
            )
        self._width_param = width_param
        self._reference_width = reference_width

    @classmethod
    def from_advice(cls, advice: Advice, param_name: str = "lr", **kw: Any) -> TheoryPriorSampler:
        """The prior of an :class:`~lradvisor.records.Advice`: ``recommended_lr`` in ``lr_range``."""
        low, high = advice.lr_range
        return cls(param_name=param_name, center=advice.recommended_lr, low=low, high=high, **kw)

    @property
    def base(self) -> BaseSampler:
        """The sampler everything but the prior draws comes from."""
        return self._base

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._base.reseed_rng()

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._in_prior_phase[trial._trial_id] = self._count_phase(study, trial)
        self._base.before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._in_prior_phase.pop(trial._trial_id, None)
        self._base.after_trial(study, trial, state, values)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        search_space = self._base.infer_relative_search_space(study, trial)
        if self._prior_active(study, trial):
            search_space.pop(self._param_name, None)
        return search_space

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        # param_name is already out of search_space while the prior is active.
        return self._base.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if param_name == self._param_name and self._prior_active(study, trial):
            value = self._draw(param_distribution, self._width_factor(study, trial))
            if value is not None:
                # A sampler only holds a FrozenTrial copy: write through the storage.
                study._storage.set_trial_user_attr(trial._trial_id, KEY_PRIOR, True)
                return value
        return self._base.sample_independent(study, trial, param_name, param_distribution)

    def _prior_active(self, study: Study, trial: FrozenTrial) -> bool:
        decided = self._in_prior_phase.get(trial._trial_id)
        return self._count_phase(study, trial) if decided is None else decided

    def _count_phase(self, study: Study, trial: FrozenTrial) -> bool:
        if self._n_prior_trials == 0:
            return False
        states = (TrialState.COMPLETE, TrialState.RUNNING)
        earlier = sum(
            1
            for other in study.get_trials(deepcopy=False, states=states)
            if other.number < trial.number
        )
        return earlier < self._n_prior_trials

    def _width_factor(self, study: Study, trial: FrozenTrial) -> float:
        """(m/m₀)^(−b) from the study's measured widths, or 1 (no law yet, width unknown)."""
        if self._width_param is None or self._width_param not in trial.params:
            return 1.0
        from lradvisor.integrations import _attrs
        from lradvisor.theory import fit_width_law

        points = _attrs.decode(study.user_attrs.get(_attrs.STUDY_WIDTH_POINTS)) or []
        measured = {int(p[0]): float(p[1]) for p in points if p[1] is not None and p[1] > 0}
        if len(measured) < 3:
            return 1.0
        widths = np.array(sorted(measured), dtype=float)
        _, exponent, _ = fit_width_law(widths, np.array([measured[int(w)] for w in widths]))
        width = float(trial.params[self._width_param])
        return float((width / self._reference_width) ** (-exponent))

    def _draw(self, distribution: BaseDistribution, factor: float = 1.0) -> float | None:
        """One prior draw inside the distribution, or None when the prior cannot apply."""
        if not isinstance(distribution, FloatDistribution):
            warnings.warn(
                f"TheoryPriorSampler: {self._param_name!r} is not a float parameter "
                f"({type(distribution).__name__}); sampling it with the base sampler",
                stacklevel=3,
            )
            return None
        low = max(self._low * factor, distribution.low)
        high = min(self._high * factor, distribution.high)
        if low > high:
            warnings.warn(
                f"TheoryPriorSampler: prior range [{self._low:.4g}, {self._high:.4g}] and "
                f"{self._param_name!r} range [{distribution.low:.4g}, {distribution.high:.4g}] "
                "do not overlap; sampling it with the base sampler",
                stacklevel=3,
            )
            return None
        for _ in range(_REDRAWS):
            value = self._center * factor * math.exp(self._sigma * self._rng.standard_normal())
            if low <= value <= high:
                break
        value = min(max(value, low), high)
        if distribution.step is not None:
            grid = round((value - distribution.low) / distribution.step)
            value = min(distribution.low + grid * distribution.step, distribution.high)
        return float(value)
