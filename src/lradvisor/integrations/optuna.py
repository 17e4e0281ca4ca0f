"""Optuna integration: a trial monitor, a theory-aware pruner and a prior sampler.

- :class:`TrialMonitor` measures λ_max(θ₀) and the conservation-law drift of one trial and
  writes them to the trial's user_attrs (five added lines in an existing objective).
- :class:`ConservationPruner` prunes trials beyond the stability bound before they train,
  diverged trials, and trials whose drift left the spectral prediction, then defers to any
  Optuna pruner.
- :class:`TheoryPriorSampler` draws the learning rate from a log-normal prior around
  lradvisor's advice for the first trials, then hands over to any Optuna sampler.

Trial user_attrs (JSON values; ``study.trials_dataframe()`` shows them as
``user_attrs_<key>`` columns):

================================  ==========================================================
``lradvisor.lr``                  learning rate at construction (largest over param groups)
``lradvisor.lambda_max``          λ_max(θ₀) by Lanczos on the data subsample
``lradvisor.eos_lr``              2/λ_max(θ₀) (None when λ_max ≤ 0)
``lradvisor.loss``                "ce", "mse" or the loss function's name
``lradvisor.laws``                names of the conservation laws found on the model
``lradvisor.skipped``             [module, reason] for every module no law covers
``lradvisor.identity_holds``      whether the η²·S identity is exact (plain SGD)
``lradvisor.outside_fraction``    share of ‖g₀‖² outside the kept Lanczos eigenvectors
``lradvisor.steps_observed``      optimizer steps observed at the latest report
``lradvisor.drift``               {law: latest observed drift}
``lradvisor.predicted_drift``     {law: η²·S_pred(t)}, or None without the identity
``lradvisor.drift_ratio``         observed/predicted over all laws (None: no prediction)
``lradvisor.drift_history``       [[step, observed, predicted, {law: obs}, {law: pred}], …],
                                  totals then per law, ≤ 200 entries, thinned
``lradvisor.diverged``            True once a non-finite loss was reported
``lradvisor.prune_reason``        "beyond_stability_bound", "diverged",
                                  "drift_off_prediction" or "base_pruner"
``lradvisor.prune_detail``        the numbers behind the prune (a dict)
``lradvisor.prior``               True when TheoryPriorSampler drew the learning rate
``lradvisor.final_drift``         {law: drift at the last step} (study-file objectives)
``lradvisor.final_predicted_drift`` {law: predicted drift at the last step}
================================  ==========================================================
"""

from __future__ import annotations

try:
    import optuna  # noqa: F401
except ImportError as error:  # pragma: no cover - optuna is a dependency of lradvisor
    raise ImportError(
        "lradvisor.integrations.optuna needs Optuna: pip install 'optuna>=4'"
    ) from error

from lradvisor.integrations._optuna_monitor import TrialMonitor
from lradvisor.integrations._optuna_pruner import ConservationPruner
from lradvisor.integrations._optuna_sampler import TheoryPriorSampler

__all__ = ["ConservationPruner", "TheoryPriorSampler", "TrialMonitor"]
