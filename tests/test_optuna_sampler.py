"""TheoryPriorSampler: the prior's draws, the hand-over to the base, and multivariate TPE."""

from __future__ import annotations

import dataclasses
import statistics

import optuna
import pytest
from optuna.samplers import PartialFixedSampler, RandomSampler, TPESampler

from lradvisor.errors import LRAdvisorError
from lradvisor.integrations.optuna import TheoryPriorSampler
from lradvisor.records import Advice

CENTER, LOW, HIGH = 0.02, 2e-3, 0.2


@pytest.fixture(autouse=True)
def _quiet_optuna():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


def _sampler(base=None, **kw) -> TheoryPriorSampler:
    settings = {"center": CENTER, "low": LOW, "high": HIGH, "seed": 0, **kw}
    return TheoryPriorSampler(base, **settings)


def _lr_and_width(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-5, 1.0, log=True)
    width = trial.suggest_int("width", 1, 64)
    return lr * width


def _prior_flags(study: optuna.Study) -> list[bool]:
    return [t.user_attrs.get("lradvisor.prior", False) for t in study.trials]


def test_prior_draws_are_centred_and_inside_the_range():
    study = optuna.create_study(sampler=_sampler(RandomSampler(seed=1), n_prior_trials=200))
    study.optimize(lambda t: t.suggest_float("lr", 1e-6, 1.0, log=True), n_trials=200)
    rates = [t.params["lr"] for t in study.trials]
    assert all(LOW <= lr <= HIGH for lr in rates)
    assert statistics.median(rates) == pytest.approx(CENTER, rel=0.2)
    assert all(_prior_flags(study))


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_other_parameters_come_from_base_and_base_takes_over_after_the_prior():
    # A base that always answers lr = 0.123 and width = 7 makes every source visible.
    base = PartialFixedSampler({"lr": 0.123, "width": 7}, RandomSampler(seed=0))
    study = optuna.create_study(sampler=_sampler(base, n_prior_trials=4))
    study.optimize(_lr_and_width, n_trials=8)
    rates = [t.params["lr"] for t in study.trials]
    assert [t.params["width"] for t in study.trials] == [7] * 8
    assert all(LOW <= lr <= HIGH and lr != 0.123 for lr in rates[:4])
    assert rates[4:] == [0.123] * 4
    assert _prior_flags(study) == [True] * 4 + [False] * 4


class _SpyTPE(TPESampler):
    """TPE recording the relative search space it is asked to sample, per trial number."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.spaces: dict[int, set[str]] = {}

    def sample_relative(self, study, trial, search_space):
        self.spaces[trial.number] = set(search_space)
        return super().sample_relative(study, trial, search_space)


def test_multivariate_tpe_samples_the_other_parameters_jointly_without_the_lr():
    tpe = _SpyTPE(n_startup_trials=2, seed=0, multivariate=True)
    study = optuna.create_study(sampler=_sampler(tpe, n_prior_trials=5))
    study.optimize(_lr_and_width, n_trials=9)
    assert all(tpe.spaces[n] == {"width"} for n in range(2, 5))
    assert all(tpe.spaces[n] == {"lr", "width"} for n in range(5, 9))
    assert _prior_flags(study) == [True] * 5 + [False] * 4
    assert all(LOW <= t.params["lr"] <= HIGH for t in study.trials[:5])


def test_default_base_is_tpe_in_optunas_default_mode():
    sampler = _sampler()
    assert isinstance(sampler.base, TPESampler)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_lr_and_width, n_trials=12)  # TPE leaves its startup phase at trial 10
    assert _prior_flags(study) == [True] * 10 + [False] * 2


def test_pruned_trials_do_not_use_up_the_prior():
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-5, 1.0, log=True)
        if trial.number < 3:
            raise optuna.TrialPruned()
        return lr

    study = optuna.create_study(sampler=_sampler(RandomSampler(seed=0), n_prior_trials=2))
    study.optimize(objective, n_trials=7)
    assert _prior_flags(study) == [True] * 5 + [False] * 2


def test_draws_respect_the_parameters_own_range_and_step():
    study = optuna.create_study(sampler=_sampler(RandomSampler(seed=0), n_prior_trials=30))
    study.optimize(lambda t: t.suggest_float("lr", 0.03, 0.05, step=0.005), n_trials=30)
    rates = [t.params["lr"] for t in study.trials]
    grid = [0.03, 0.035, 0.04, 0.045, 0.05]
    assert all(any(lr == pytest.approx(point, abs=1e-12) for point in grid) for lr in rates)
    assert len({round(lr, 6) for lr in rates}) > 1
    assert all(_prior_flags(study))


def test_non_float_or_disjoint_parameter_falls_back_to_base():
    disjoint = optuna.create_study(sampler=_sampler(RandomSampler(seed=0), n_prior_trials=5))
    with pytest.warns(UserWarning, match="do not overlap"):
        disjoint.optimize(lambda t: t.suggest_float("lr", 0.5, 0.9), n_trials=1)
    integer = optuna.create_study(sampler=_sampler(RandomSampler(seed=0), n_prior_trials=5))
    with pytest.warns(UserWarning, match="not a float parameter"):
        integer.optimize(lambda t: t.suggest_int("lr", 1, 4), n_trials=1)
    assert 0.5 <= disjoint.trials[0].params["lr"] <= 0.9
    assert _prior_flags(disjoint) == _prior_flags(integer) == [False]


class _CountingSampler(RandomSampler):
    def __init__(self) -> None:
        super().__init__(seed=0)
        self.calls = {"before_trial": 0, "after_trial": 0, "reseed_rng": 0}

    def before_trial(self, study, trial):
        self.calls["before_trial"] += 1

    def after_trial(self, study, trial, state, values):
        self.calls["after_trial"] += 1

    def reseed_rng(self):
        self.calls["reseed_rng"] += 1
        super().reseed_rng()


def test_trial_hooks_and_reseeding_reach_the_base():
    base = _CountingSampler()
    sampler = _sampler(base, n_prior_trials=1)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_lr_and_width, n_trials=3)
    sampler.reseed_rng()
    assert base.calls == {"before_trial": 3, "after_trial": 3, "reseed_rng": 1}


def _advice(recommended_lr: float, lr_range: tuple[float, float]) -> Advice:
    required = [
        f.name
        for f in dataclasses.fields(Advice)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    values = dict.fromkeys(required)
    return Advice(**{**values, "recommended_lr": recommended_lr, "lr_range": lr_range})


def test_from_advice_uses_recommended_rate_and_range():
    base = RandomSampler(seed=0)
    sampler = TheoryPriorSampler.from_advice(
        _advice(0.05, (0.01, 0.1)), param_name="eta", base=base, n_prior_trials=20, seed=0
    )
    assert sampler.base is base
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_float("eta", 1e-5, 1.0, log=True), n_trials=20)
    rates = [t.params["eta"] for t in study.trials]
    assert all(0.01 <= lr <= 0.1 for lr in rates)
    assert statistics.median(rates) == pytest.approx(0.05, rel=0.35)


def test_same_seed_same_draws():
    def draws() -> list[float]:
        study = optuna.create_study(sampler=_sampler(RandomSampler(seed=0), n_prior_trials=5))
        study.optimize(lambda t: t.suggest_float("lr", 1e-5, 1.0, log=True), n_trials=5)
        return [t.params["lr"] for t in study.trials]

    assert draws() == draws()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"center": 0.0}, "center must be a finite number > 0, but got 0.0"),
        ({"low": -1.0}, "low must be a finite number > 0, but got -1.0"),
        ({"high": float("nan")}, "high must be a finite number > 0"),
        ({"sigma": 0.0}, "sigma must be a finite number > 0, but got 0.0"),
        ({"center": 1.0}, r"center must lie in \[low, high\] = \[0.002, 0.2\], but got 1.0"),
        ({"n_prior_trials": -1}, "n_prior_trials must be >= 0, but got -1"),
        ({"n_prior_trials": 2.0}, "n_prior_trials must be an integer, but got 2.0"),
        ({"base": "tpe"}, "base must be an optuna BaseSampler or None, but got str"),
    ],
)
def test_bad_arguments_name_the_limit_and_the_value(kwargs, message):
    base = kwargs.pop("base", None)
    with pytest.raises(LRAdvisorError, match=message):
        _sampler(base, **kwargs)
