"""The batched engine: exact drift identity in float64, divergence handling, limits."""

from __future__ import annotations

import numpy as np
import pytest

from lradvisor.engine.batched import batch_indices, run_sweep

from conftest import make_config

TOL = 1e-9


def _assert_identity(result, *, per_unit=True):
    direct, identity = result.drift_direct, result.drift_identity
    assert np.isfinite(direct).all() and np.isfinite(identity).all()
    bound = TOL * np.maximum(1.0, np.abs(direct))
    assert (np.abs(direct - identity) <= bound).all(), np.max(np.abs(direct - identity) / bound)
    if per_unit:
        for unit_direct, unit_identity in zip(
            result.unit_drift_direct, result.unit_drift_identity, strict=True
        ):
            unit_bound = TOL * np.maximum(1.0, np.abs(unit_direct))
            assert (np.abs(unit_direct - unit_identity) <= unit_bound).all()


@pytest.mark.parametrize("hidden", [[32], [24, 16], [16, 16, 12]])
@pytest.mark.parametrize("batch_size", [None, 16])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_identity_holds_to_round_off_in_float64(hidden, batch_size, loss):
    config = make_config(
        model={"hidden": hidden},
        training={"loss": loss, "steps": 300, "batch_size": batch_size},
        sweep={"lrs": [0.003, 0.03, 0.3], "seeds": [1, 2]},
    )
    result = run_sweep(config)
    assert len(result.law_names) == len(hidden)
    assert not result.diverged.any()
    # the drift is real, not zero: the test could fail
    assert (np.abs(result.drift_direct) > 1e-8).all()
    _assert_identity(result)


@pytest.mark.parametrize("activation", ["leaky_relu", "identity"])
def test_identity_for_other_homogeneous_activations(activation):
    config = make_config(
        model={"hidden": [16, 16], "activation": activation, "negative_slope": 0.2},
        training={"steps": 200},
    )
    _assert_identity(run_sweep(config))


def test_biased_nets_bias_aware_law_holds_and_bias_free_formula_drifts_at_order_eta():
    """E2 reproduced and explained: the bias-free formula breaks at O(η), the bias-aware law holds."""
    eta_t = 3.0
    config = make_config(
        model={"hidden": [16, 12], "bias": True}, sweep={"lrs": [0.01], "seeds": [1, 2, 3]}
    )
    drifts = {}
    for lr in (0.01, 0.001):
        result = run_sweep(config, lrs=[lr], steps=round(eta_t / lr))
        _assert_identity(result)
        drifts[lr] = result
    big, small = drifts[0.01], drifts[0.001]
    # The bias-free formula drifts by O(1) at fixed ηT (it is not conserved even by the flow) …
    assert (np.abs(small.bias_free_direct) > 100 * np.abs(small.drift_direct)).all()
    # … while the true law's drift falls with η at fixed ηT (∝ η).
    ratio = np.abs(big.drift_direct).mean() / np.abs(small.drift_direct).mean()
    assert 5 < ratio < 20


@pytest.mark.parametrize("ce_weight", [0.2, 0.5, 0.8])
def test_identity_holds_to_round_off_with_the_mixed_loss(ce_weight):
    config = make_config(
        model={"hidden": [16, 12]},
        training={"loss": "mix", "ce_weight": ce_weight, "steps": 300},
        sweep={"lrs": [0.003, 0.03, 0.3], "seeds": [1, 2]},
    )
    result = run_sweep(config)
    assert not result.diverged.any()
    assert (np.abs(result.drift_direct) > 1e-8).all()
    _assert_identity(result)


@pytest.mark.parametrize(("ce_weight", "plain"), [(1.0, "ce"), (0.0, "mse")])
def test_mixed_loss_at_the_end_points_is_ce_or_mse_exactly(ce_weight, plain):
    mixed = run_sweep(make_config(training={"loss": "mix", "ce_weight": ce_weight}))
    reference = run_sweep(make_config(training={"loss": plain}))
    np.testing.assert_array_equal(mixed.drift_identity, reference.drift_identity)
    np.testing.assert_array_equal(mixed.final_loss, reference.final_loss)


def test_mixed_loss_is_a_weighted_sum_of_ce_and_mse():
    sweeps = {
        w: run_sweep(make_config(training={"loss": "mix", "ce_weight": w, "steps": 1}))
        for w in (0.0, 0.4, 1.0)
    }
    np.testing.assert_allclose(
        sweeps[0.4].initial_loss,
        0.4 * sweeps[1.0].initial_loss + 0.6 * sweeps[0.0].initial_loss,
        rtol=1e-12,
    )


def test_gradient_flow_limit_drift_falls_linearly_in_eta_at_fixed_eta_t():
    config = make_config(training={"loss": "mse"}, sweep={"seeds": [1, 2]})
    lrs = [1e-2, 1e-3, 1e-4]
    drift = []
    for lr in lrs:
        result = run_sweep(config, lrs=[lr], steps=round(2.0 / lr))
        drift.append(np.abs(result.drift(0)).mean())
    slope = np.polyfit(np.log(lrs), np.log(drift), 1)[0]
    assert abs(slope - 1.0) < 0.05, slope


def test_divergence_is_marked_and_other_trials_go_on():
    config = make_config(
        training={"loss": "mse", "steps": 200}, sweep={"lrs": [0.01, 50.0], "seeds": [1, 2]}
    )
    result = run_sweep(config)
    assert result.diverged.tolist() == [False, False, True, True]
    assert (result.diverged_step[2:] >= 0).all() and (result.diverged_step[2:] < 200).all()
    assert np.isnan(result.drift_identity[2:]).all() and np.isnan(result.final_loss[2:]).all()
    assert (
        np.isfinite(result.final_loss[:2]).all()
        and (result.final_loss[:2] < result.initial_loss[:2]).all()
    )


def test_non_sgd_optimizers_report_direct_drift_only():
    for training in ({"optimizer": "adam"}, {"momentum": 0.9}, {"weight_decay": 1e-3}):
        result = run_sweep(make_config(training={**training, "steps": 50}))
        assert not result.identity_holds
        assert np.isnan(result.drift_identity).all()
        assert np.isfinite(result.drift_direct).all()
        assert "breaks the η²·S identity" in result.notes[0]


def test_batch_schedule_is_per_seed_epochs_without_repeats():
    idx = batch_indices(10, 3, 7, seed=5)
    assert idx.shape == (7, 3)
    first_epoch = idx[:3].reshape(-1)
    assert len(set(first_epoch.tolist())) == 9
    assert idx.equal(batch_indices(10, 3, 7, seed=5))
    assert not idx.equal(batch_indices(10, 3, 7, seed=6))


def test_validation_loss_when_split():
    config = make_config(data={"validation_fraction": 0.2}, training={"steps": 50})
    result = run_sweep(config)
    assert np.isfinite(result.final_val_loss).all()
