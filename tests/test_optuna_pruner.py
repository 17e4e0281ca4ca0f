"""ConservationPruner: each check on hand-written trial attributes, then its Optuna manners."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from types import SimpleNamespace

import optuna
import pytest
from optuna.pruners import HyperbandPruner, MedianPruner, NopPruner, _filter_study
from optuna.trial import TrialState

from lradvisor.errors import LRAdvisorError
from lradvisor.integrations.optuna import ConservationPruner

EOS_LR = 0.5


@pytest.fixture(autouse=True)
def _quiet_optuna():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


def _ask(study: optuna.Study, **attrs) -> optuna.Trial:
    """A running trial carrying ``lradvisor.<name>`` user_attrs, as TrialMonitor writes them
    (``bound`` given without ``bound_kind`` is a plain gradient-descent bound)."""
    if "bound" in attrs:
        attrs.setdefault("bound_kind", "gradient descent")
    trial = study.ask()
    for name, value in attrs.items():
        trial.set_user_attr(f"lradvisor.{name}", value)
    return trial


def _report_drift(trial: optuna.Trial, history: list, step: int, ratio: float | None) -> bool:
    """Report loss 1.0 with one recent-drift entry of the given observed/predicted ratio."""
    predicted = None if ratio is None else 1e-3
    history.append([step, None if ratio is None else ratio * 1e-3, predicted])
    trial.set_user_attr("lradvisor.drift_recent", json.dumps(history[-8:]))
    trial.report(1.0, step)
    return trial.should_prune()


def _detail(frozen: optuna.trial.FrozenTrial) -> dict:
    return json.loads(frozen.user_attrs["lradvisor.prune_detail"])


def _finish(study: optuna.Study, trial: optuna.Trial, pruned: bool) -> optuna.trial.FrozenTrial:
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, 1.0)
    return study.trials[trial.number]


def test_beyond_bound_prunes_before_any_report():
    study = optuna.create_study(pruner=ConservationPruner())
    trial = _ask(study, lr=20 * EOS_LR, bound=EOS_LR, lambda_max=2 / EOS_LR, loss="mse")
    frozen = _finish(study, trial, trial.should_prune())
    assert frozen.state == TrialState.PRUNED
    assert frozen.intermediate_values == {}
    assert frozen.user_attrs["lradvisor.prune_reason"] == "beyond_stability_bound"
    detail = _detail(frozen)
    assert detail["lr_over_bound"] == pytest.approx(20.0)
    assert detail["margin"] == 12.0 and detail["margin_kind"] == "stability_margin"
    assert detail["bound_kind"] == "gradient descent" and "catapult" in detail["why"]


@pytest.mark.parametrize(
    ("loss", "factor", "pruned"),
    [
        ("mse", 11.0, False),
        ("mse", 13.0, True),
        ("ce", 15.0, False),
        ("ce", 17.0, True),
        ("cross_entropy", 17.0, True),
        ("CrossEntropyLoss", 17.0, True),
    ],
)
def test_bound_margin_is_wider_for_cross_entropy(loss, factor, pruned):
    study = optuna.create_study(pruner=ConservationPruner())
    trial = _ask(study, lr=factor * EOS_LR, bound=EOS_LR, loss=loss)
    assert trial.should_prune() is pruned


def test_bound_applies_at_step_zero_but_not_once_training_has_been_reported():
    study = optuna.create_study(pruner=ConservationPruner())
    at_zero = _ask(study, lr=20 * EOS_LR, bound=EOS_LR, loss="mse")
    at_zero.report(1.0, 0)
    assert at_zero.should_prune()
    later = _ask(study, lr=20 * EOS_LR, bound=EOS_LR, loss="mse")
    later.report(1.0, 5)
    assert not later.should_prune()


def test_check_before_training_works_whatever_the_study_pruner():
    study = optuna.create_study(pruner=NopPruner())
    beyond = _ask(study, lr=20 * EOS_LR, bound=EOS_LR, loss="mse")
    below = _ask(study, lr=0.5 * EOS_LR, bound=EOS_LR, loss="mse")
    pruner = ConservationPruner()
    assert pruner.check_before_training(beyond)
    assert not pruner.check_before_training(below)
    reasons = [t.user_attrs.get("lradvisor.prune_reason") for t in study.trials]
    assert reasons == ["beyond_stability_bound", None]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_value_prunes_as_diverged(value):
    study = optuna.create_study(pruner=ConservationPruner())
    trial = _ask(study, lr=0.1, bound=EOS_LR, loss="ce")
    trial.report(1.0, 0)
    assert not trial.should_prune()
    trial.report(value, 1)
    frozen = _finish(study, trial, trial.should_prune())
    assert frozen.state == TrialState.PRUNED
    assert frozen.user_attrs["lradvisor.prune_reason"] == "diverged"
    assert _detail(frozen)["cause"] == "non_finite_value"
    assert _detail(frozen)["value"] == repr(value)


@pytest.mark.parametrize(("latest", "pruned"), [(999.0, False), (1001.0, True)])
def test_blowup_relative_to_the_first_value_prunes_as_diverged(latest, pruned):
    study = optuna.create_study(pruner=ConservationPruner())
    trial = _ask(study)
    trial.report(1.0, 0)
    trial.report(latest, 10)
    assert trial.should_prune() is pruned
    frozen = _finish(study, trial, pruned)
    if pruned:
        assert _detail(frozen)["cause"] == "blowup"


def test_blowup_is_not_checked_when_maximising():
    study = optuna.create_study(direction="maximize", pruner=ConservationPruner())
    trial = _ask(study)
    trial.report(1.0, 0)
    trial.report(5000.0, 10)
    assert not trial.should_prune()


def test_diverged_flag_prunes():
    study = optuna.create_study(pruner=ConservationPruner())
    trial = _ask(study, diverged=True)
    trial.report(2.0, 3)
    frozen = _finish(study, trial, trial.should_prune())
    assert frozen.user_attrs["lradvisor.prune_reason"] == "diverged"
    assert _detail(frozen) == {"cause": "flag", "step": 3, "value": 2.0}


def test_drift_ratio_of_100_prunes_after_three_reports_not_two():
    study = optuna.create_study(pruner=ConservationPruner(drift_factor=10))
    trial = _ask(study, lr=0.1, bound=EOS_LR, loss="ce")
    history: list = []
    assert not _report_drift(trial, history, 0, 100.0)
    assert not _report_drift(trial, history, 1, 100.0)
    assert _report_drift(trial, history, 2, 100.0)
    frozen = _finish(study, trial, True)
    assert frozen.user_attrs["lradvisor.prune_reason"] == "drift_off_prediction"
    detail = _detail(frozen)
    assert detail["steps"] == [0, 1, 2]
    assert detail["ratios"] == pytest.approx([100.0] * 3)


@pytest.mark.parametrize(
    ("ratios", "pruned"),
    [
        ([100.0, 1.0, 100.0, 100.0], False),  # streak broken by an in-band report
        ([100.0, None, 100.0, 100.0], False),  # ... or by a report without prediction
        ([0.05, 0.05, 0.05], True),  # far below the prediction counts too
        ([-100.0, -100.0, -100.0], True),  # the size is compared, not the sign
        ([-2.0, -2.0, -2.0], False),
        ([9.9, 9.9, 9.9], False),
    ],
)
def test_drift_streak(ratios, pruned):
    study = optuna.create_study(pruner=ConservationPruner(drift_factor=10))
    trial = _ask(study, lr=0.1, bound=EOS_LR, loss="mse")
    history: list = []
    verdicts = [_report_drift(trial, history, step, ratio) for step, ratio in enumerate(ratios)]
    assert verdicts[-1] is pruned
    assert not any(verdicts[:-1])


def test_drift_is_not_checked_for_trials_started_beyond_the_bound():
    study = optuna.create_study(pruner=ConservationPruner(drift_factor=10))
    trial = _ask(study, lr=2 * EOS_LR, bound=EOS_LR, loss="ce")  # let through by the CE margin
    history: list = []
    assert not any(_report_drift(trial, history, step, 1e-30) for step in range(4))


def test_the_drift_check_is_off_by_default():
    study = optuna.create_study(pruner=ConservationPruner())
    trial = _ask(study, lr=0.1, bound=EOS_LR, loss="ce")
    history: list = []
    assert not any(_report_drift(trial, history, step, 100.0) for step in range(4))


def _median_study(base_of_conservation: bool) -> tuple[optuna.Study, optuna.Trial]:
    base = MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    pruner = ConservationPruner(base if base_of_conservation else None)
    study = optuna.create_study(pruner=pruner)
    for _ in range(2):
        good = _ask(study)
        for step in range(3):
            good.report(1.0, step)
        study.tell(good, 1.0)
    worse = _ask(study, lr=0.1, bound=EOS_LR, loss="ce")
    worse.report(5.0, 0)
    return study, worse


def test_base_median_pruner_still_prunes():
    study, worse = _median_study(base_of_conservation=True)
    frozen = _finish(study, worse, worse.should_prune())
    assert frozen.state == TrialState.PRUNED
    assert frozen.user_attrs["lradvisor.prune_reason"] == "base_pruner"
    detail = _detail(frozen)
    assert {k: detail[k] for k in ("pruner", "step")} == {"pruner": "MedianPruner", "step": 0}
    # the contender rule looked and found it hopeless: best 1.0, the completed trials
    # gained nothing after step 0, so 5.0 cannot get below 1.0
    assert detail["contender"]["could_win"] is False
    assert detail["contender"]["reachable"] == 5.0


def test_without_base_nothing_else_prunes():
    _study, worse = _median_study(base_of_conservation=False)
    assert not worse.should_prune()


def test_trials_dataframe_shows_the_reason():
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 0.01, 10.0, log=True)
        trial.set_user_attr("lradvisor.lr", lr)
        trial.set_user_attr("lradvisor.bound", EOS_LR)
        trial.set_user_attr("lradvisor.bound_kind", "gradient descent")
        trial.set_user_attr("lradvisor.loss", "mse")
        if trial.should_prune():
            raise optuna.TrialPruned()
        return lr

    study = optuna.create_study(pruner=ConservationPruner())
    study.enqueue_trial({"lr": 0.1})
    study.enqueue_trial({"lr": 9.0})
    study.optimize(objective, n_trials=2)
    frame = study.trials_dataframe()
    assert list(frame["state"]) == ["COMPLETE", "PRUNED"]
    reasons = frame["user_attrs_lradvisor.prune_reason"].tolist()
    assert reasons[1] == "beyond_stability_bound" and reasons[0] != reasons[0]  # NaN: no prune


def test_two_workers_prune_from_trial_attributes_alone():
    def objective(trial: optuna.Trial) -> float:
        beyond = trial.number % 2 == 1
        trial.set_user_attr("lradvisor.lr", (20 if beyond else 0.5) * EOS_LR)
        trial.set_user_attr("lradvisor.bound", EOS_LR)
        trial.set_user_attr("lradvisor.bound_kind", "heavy-ball momentum")
        trial.set_user_attr("lradvisor.loss", "mse")
        if trial.should_prune():
            raise optuna.TrialPruned()
        for step in range(3):
            trial.report(float("nan") if trial.number == 4 and step == 2 else 1.0, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 1.0

    study = optuna.create_study(pruner=ConservationPruner(MedianPruner()))
    study.optimize(objective, n_trials=8, n_jobs=2)
    reasons = {t.number: t.user_attrs.get("lradvisor.prune_reason") for t in study.trials}
    assert reasons == {
        0: None,
        1: "beyond_stability_bound",
        2: None,
        3: "beyond_stability_bound",
        4: "diverged",
        5: "beyond_stability_bound",
        6: None,
        7: "beyond_stability_bound",
    }


def test_pickle_round_trip_keeps_settings_and_verdicts():
    pruner = ConservationPruner(
        MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        stability_margin=2.0,
        drift_factor=4.0,
        drift_patience=2,
    )
    copy = pickle.loads(pickle.dumps(pruner))
    assert type(copy) is ConservationPruner
    assert isinstance(copy.base, MedianPruner)
    assert vars(copy).keys() == vars(pruner).keys()
    assert [getattr(copy, k) for k in vars(pruner) if k != "_base"] == [
        getattr(pruner, k) for k in vars(pruner) if k != "_base"
    ]
    study = optuna.create_study(pruner=copy)
    assert not _ask(study, lr=1.9 * EOS_LR, bound=EOS_LR, loss="mse").should_prune()
    assert _ask(study, lr=2.1 * EOS_LR, bound=EOS_LR, loss="mse").should_prune()  # margin 2
    trial = _ask(study, lr=0.1, bound=EOS_LR, loss="mse")
    history: list = []
    assert not _report_drift(trial, history, 0, 5.0)
    assert not _report_drift(trial, history, 1, 3.0)  # within drift_factor 4
    assert _report_drift(trial, history, 2, 5.0) is False
    assert _report_drift(trial, history, 3, 5.0) is True  # patience 2


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"bound_kind": "none (Adam: no bound at θ₀ for adaptive optimizers)"}, "adaptive"),
        ({"scale_invariant": True}, "batchnorm"),
    ],
)
def test_no_prune_before_training_where_the_bound_is_not_certain(extra, why):
    study = optuna.create_study(pruner=ConservationPruner())
    trial = _ask(study, lr=100 * EOS_LR, bound=EOS_LR, loss="mse", **extra)
    assert not trial.should_prune(), why


def _grace_study(pruner: ConservationPruner, lr: float) -> tuple[optuna.Study, optuna.Trial]:
    """Two finished trials at loss 1.0, then a cross-entropy trial at ``lr`` reporting 5.0."""
    study = optuna.create_study(pruner=pruner)
    for _ in range(2):
        good = _ask(study)
        for step in range(0, 100, 10):
            good.report(1.0, step)
        study.tell(good, 1.0)
    late = _ask(study, lr=lr, bound=0.25, loss="ce")
    return study, late


def test_no_grace_below_the_bound():
    median = MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    _study, late = _grace_study(ConservationPruner(median, tau=(10.0, 5.0)), lr=0.5)
    late.set_user_attr("lradvisor.bound", 1.0)  # η below it
    late.report(5.0, 20)
    assert late.should_prune()


def test_cross_entropy_grace_period_keeps_the_base_pruner_out_until_tau():
    median = MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    # τ(η) = 10/η + 5: at η = 0.5, 25 steps of grace (grace_factor 1)
    _study, late = _grace_study(
        ConservationPruner(median, tau=(10.0, 5.0), grace_factor=1.0), lr=0.5
    )
    late.set_user_attr("lradvisor.steps_observed", 20)
    late.report(5.0, 20)
    assert not late.should_prune()  # within the grace period
    late.set_user_attr("lradvisor.steps_observed", 30)
    late.report(5.0, 30)
    assert late.should_prune()  # after it the median rule speaks


def test_without_tau_there_is_no_grace_and_from_advice_reads_it():
    median = MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    _study, late = _grace_study(ConservationPruner(median), lr=0.5)
    late.report(5.0, 20)
    assert late.should_prune()
    advice = SimpleNamespace(tau={"a": 10.0, "b": 5.0})
    pruner = ConservationPruner.from_advice(advice, median)
    assert pruner._tau == (10.0, 5.0)
    assert ConservationPruner.from_advice(SimpleNamespace(tau=None), median)._tau is None


def test_the_study_can_carry_tau_for_every_worker():
    median = MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    study, late = _grace_study(ConservationPruner(median), lr=0.5)
    study.set_user_attr("lradvisor.tau", "[10.0, 5.0]")
    late.report(5.0, 20)
    assert not late.should_prune()


def _contender_study(
    gains: tuple[float, ...], direction: str = "minimize", **options
) -> optuna.Study:
    """Completed trials reporting at steps 10 and 20, each ending ``gain`` better than its
    step-10 value; the largest gainer ends at 1.0 (the best), the others at 1.2 (negated
    when maximising)."""
    median = MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(direction=direction, pruner=ConservationPruner(median, **options))
    sign = 1.0 if direction == "minimize" else -1.0
    for gain in gains:
        trial = study.ask()
        final = 1.0 if gain == max(gains) else 1.2
        trial.report(sign * (final + gain), 10)
        trial.report(sign * (final + gain / 2), 20)
        study.tell(trial, sign * final)
    return study


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_a_trial_that_could_still_win_is_not_pruned_by_the_base(direction):
    # completed trials gained up to 3.0 after step 10; twice that (the default safety
    # factor) from 3.5 reaches -2.5 < 1.0: it could still win
    study = _contender_study((3.0, 0.2), direction)
    sign = 1.0 if direction == "minimize" else -1.0
    slow = study.ask()
    slow.report(sign * 3.5, 10)
    assert not slow.should_prune()
    refused = json.loads(study.trials[slow.number].user_attrs["lradvisor.prune_refused"])
    assert refused["count"] == 1 and refused["could_win"] is True
    assert refused["largest_gain"] == pytest.approx(3.0)
    assert refused["reachable"] == pytest.approx(sign * -2.5)
    assert refused["contender_factor"] == 2.0
    # the trial's MLflow run says so, and a study summary counts it
    from lradvisor.integrations._mlflow_payloads import trial_payload

    study.tell(slow, sign * 0.9)
    tags = trial_payload(study, study.trials[slow.number], tracking_uri="x")["tags"]
    assert tags["lradvisor.prune_refused"].startswith("1 prune(s) of the base pruner refused")
    # the base pruner did want it gone: without the rule it goes
    plain = _contender_study((3.0, 0.2), direction, protect_contenders=False)
    again = plain.ask()
    again.report(sign * 3.5, 10)
    assert again.should_prune()


def test_a_trial_beyond_the_largest_gain_is_pruned_with_the_evidence():
    study = _contender_study((3.0, 0.2))
    hopeless = study.ask()
    hopeless.report(7.5, 10)  # 7.5 − 2 × 3.0 = 1.5 > best 1.0
    frozen = _finish(study, hopeless, hopeless.should_prune())
    assert frozen.state == TrialState.PRUNED
    contender = _detail(frozen)["contender"]
    assert contender["could_win"] is False
    assert contender["reachable"] == pytest.approx(1.5)
    assert contender["study_best"] == 1.0 and contender["evidence"] == 2


def test_the_rule_judges_a_trial_by_its_best_report_not_an_unlucky_last_one():
    # gains after step 20 are at most 1.5 (from the best value up to 20 to the end)
    study = _contender_study((3.0, 0.2))
    noisy = study.ask()
    noisy.report(2.0, 10)  # 2.0 − 1.5 < 1.0: could win
    noisy.report(9.0, 20)  # one bad mini-batch report
    assert not noisy.should_prune()
    refused = json.loads(study.trials[noisy.number].user_attrs["lradvisor.prune_refused"])
    assert refused["best_so_far"] == 2.0 and refused["step"] == 20


def test_a_trial_whose_value_still_moves_is_judged_by_its_own_movement_too():
    # no completed trial gained anything after step 20; this one still moves by 0.25
    # between reports (mini-batch noise, a catapult): 1.05 − 2 × 0.25 = 0.55 could beat 1.0
    study = _contender_study((0.0, 0.0))
    moving = study.ask()
    moving.report(1.3, 10)
    moving.report(1.05, 20)
    assert not moving.should_prune()
    refused = json.loads(study.trials[moving.number].user_attrs["lradvisor.prune_refused"])
    assert refused["own_movement"] == pytest.approx(0.25)
    assert refused["reachable"] == pytest.approx(0.55)
    still = study.ask()  # the same place without the movement is hopeless
    still.report(1.05, 10)
    still.report(1.05, 20)
    assert still.should_prune()


def test_the_gain_factor_and_the_evidence_needed_are_honoured():
    tight = _contender_study((3.0, 0.2), contender_factor=0.5)
    trial = tight.ask()
    trial.report(3.5, 10)  # 3.5 − 0.5·3.0 = 2.0 > 1.0
    assert trial.should_prune()
    wary = _contender_study((3.0, 0.2), min_contender_evidence=3)
    trial = wary.ask()
    trial.report(3.5, 10)  # two completed trials are not enough evidence to overrule
    assert trial.should_prune()


def test_the_rule_never_prunes_what_the_base_keeps():
    study = _contender_study((0.0, 0.0))  # no trial ever gained: the rule would prune all
    trial = study.ask()
    trial.report(0.5, 10)  # ahead of the median
    assert not trial.should_prune()
    assert "lradvisor.prune_refused" not in study.trials[trial.number].user_attrs


def test_pruners_pickled_before_the_contender_rule_load_with_its_defaults():
    pruner = ConservationPruner(MedianPruner())
    state = pruner.__dict__.copy()
    for key in ("_protect_contenders", "_contender_factor", "_min_contender_evidence"):
        del state[key]
    from lradvisor.integrations._optuna_pruner import _restore

    restored = _restore(ConservationPruner, state)
    assert restored._protect_contenders is True and restored._contender_factor == 2.0


def _hyperband() -> HyperbandPruner:
    return HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)


def _hyperband_objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    for step in range(9):
        trial.report(1.0 + x, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return 1.0 + x


def test_wrapped_hyperband_keeps_bracket_filtering_for_samplers():
    pruner = ConservationPruner(_hyperband())
    assert isinstance(pruner, ConservationPruner) and isinstance(pruner, HyperbandPruner)
    study = optuna.create_study(
        study_name="hb", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.optimize(_hyperband_objective, n_trials=16)
    reference = _hyperband()
    reference._try_initialization(study)
    assert pruner._n_brackets == reference._n_brackets == 3
    bracket_of = {t.number: reference._get_bracket_id(study, t) for t in study.trials}
    assert len(set(bracket_of.values())) > 1
    for trial in study.trials:
        filtered = _filter_study(study, trial)
        assert filtered is not study
        assert filtered._bracket_id == bracket_of[trial.number]
        expected = [n for n, bracket in bracket_of.items() if bracket == bracket_of[trial.number]]
        assert [t.number for t in filtered.get_trials()] == expected
    reasons = {t.user_attrs.get("lradvisor.prune_reason") for t in study.trials}
    assert any(t.state == TrialState.PRUNED for t in study.trials)
    assert reasons == {None, "base_pruner"}


def test_wrapped_hyperband_survives_pickle():
    pruner = ConservationPruner(_hyperband(), drift_patience=5)
    study = optuna.create_study(study_name="hb", pruner=pruner)
    study.optimize(_hyperband_objective, n_trials=4)
    copy = pickle.loads(pickle.dumps(pruner))
    assert type(copy) is type(pruner)
    assert isinstance(copy, HyperbandPruner)
    assert copy._drift_patience == 5
    assert copy._n_brackets == pruner._n_brackets
    trial = study.trials[-1]
    assert copy._get_bracket_id(study, trial) == pruner._get_bracket_id(study, trial)


def test_plain_base_is_not_turned_into_hyperband():
    assert not isinstance(ConservationPruner(MedianPruner()), HyperbandPruner)
    assert not isinstance(ConservationPruner(), HyperbandPruner)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stability_margin": 0.0}, "stability_margin must be a finite number > 0, but got 0.0"),
        ({"ce_stability_margin": -1.0}, "ce_stability_margin must be a finite number > 0"),
        ({"drift_factor": 1.0}, "drift_factor must be a finite number > 1, but got 1.0"),
        ({"blowup_factor": float("inf")}, "blowup_factor must be a finite number > 1"),
        ({"drift_patience": 0}, "drift_patience must be between 1 and 8 inclusive"),
        ({"drift_patience": 9}, "drift_patience must be between 1 and 8 inclusive"),
        ({"tau": (0.0, 1.0)}, "tau must be finite with a > 0"),
        ({"tau": "fast"}, "tau must be a pair"),
        ({"grace_factor": 0}, "grace_factor must be a finite number > 0"),
        ({"drift_patience": 2.5}, "drift_patience must be an integer, but got 2.5"),
        ({"base": "median"}, "base must be an optuna BasePruner or None, but got str"),
        ({"contender_factor": 0.0}, "contender_factor must be a finite number > 0, but got 0.0"),
        ({"protect_contenders": "yes"}, "protect_contenders must be True or False, but got 'yes'"),
        ({"min_contender_evidence": 0}, "min_contender_evidence must be an integer ≥ 1, but got 0"),
    ],
)
def test_bad_arguments_name_the_limit_and_the_value(kwargs, message):
    with pytest.raises(LRAdvisorError, match=message.replace("(", r"\(")):
        ConservationPruner(**kwargs)


def test_importing_integrations_loads_neither_optuna_nor_mlflow():
    code = (
        "import sys, lradvisor.integrations; "
        "loaded = [m for m in ('optuna', 'mlflow', 'torch') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
