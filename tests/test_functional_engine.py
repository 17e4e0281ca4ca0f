"""The functional (torch.func) engine for factory models against a plain per-trial loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lradvisor.config import ModelConfig, load_config, parse_config
from lradvisor.engine.batched import batch_indices
from lradvisor.engine.data import load_shared_dataset
from lradvisor.engine.factory import initial_factory_state
from lradvisor.engine.functional import run_functional_sweep
from lradvisor.measure.monitor import ConservationMonitor

RTOL = 1e-6
IDENTITY_TOL = 1e-9
RESIDUAL_LAWS = ["blocks.0.fc1->blocks.0.fc2", "blocks.1.fc1->blocks.1.fc2"]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tensors are tiny: one thread is faster and does not spin on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _residual_example(**training) -> ModelConfig:
    """examples/residual_mlp.yaml in float64, shortened for a test."""
    config = load_config("examples/residual_mlp.yaml")
    update = {"dtype": "float64", "steps": 30, **training}
    return config.model_copy(update={"training": config.training.model_copy(update=update)})


def _mixture(model: dict, **training) -> ModelConfig:
    raw = {
        "model": {"factory": "user_models:residual_mlp", "kwargs": {"hidden": 12}, **model},
        "data": {"source": "gaussian_mixture", "n": 48, "dim": 6, "classes": 3},
        "training": {"dtype": "float64", "steps": 30, **training},
        "sweep": {"lrs": [0.05, 0.2], "seeds": [3, 4]},
    }
    return parse_config(raw, file="examples/test_in_memory.yaml")


def _per_trial_loop(config: ModelConfig, lr: float, seed: int) -> dict:
    """One trial the ordinary way: nn.Module, torch.optim, autograd, ConservationMonitor."""
    dtype = getattr(torch, config.training.dtype)
    shared = None
    if config.data.source != "gaussian_mixture":
        shared = load_shared_dataset(config, dtype=dtype)
    state = initial_factory_state(config, seed, shared, dtype=dtype)
    model, data = state.model, state.data
    training = config.training
    if training.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=training.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=lr,
            momentum=training.momentum,
            weight_decay=training.weight_decay,
        )
    monitor = ConservationMonitor(model, optimizer=optimizer, per_unit=False)
    schedule = None
    if training.batch_size is not None and training.batch_size < data.n:
        schedule = batch_indices(data.n, training.batch_size, training.steps, seed)
    for t in range(training.steps):
        xb, yb = (
            (data.X, data.y) if schedule is None else (data.X[schedule[t]], data.y[schedule[t]])
        )
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xb), yb).backward()
        monitor.observe()
        optimizer.step()
    with torch.no_grad():
        final = float(nn.functional.cross_entropy(model(data.X), data.y))
    laws = [law for law in monitor.report() if not law.name.endswith(":bias-free")]
    return {
        "final_loss": final,
        "names": [law.name for law in laws],
        "drift_direct": np.array([law.drift_direct for law in laws]),
    }


def _assert_matches_loop(config: ModelConfig) -> None:
    result = run_functional_sweep(config)
    assert not result.diverged.any()
    for k in range(result.n_trials):
        reference = _per_trial_loop(config, float(result.lrs[k]), int(result.seeds[k]))
        assert reference["names"] == result.law_names
        np.testing.assert_allclose(result.final_loss[k], reference["final_loss"], rtol=RTOL)
        np.testing.assert_allclose(
            result.drift_direct[k], reference["drift_direct"], rtol=RTOL, atol=1e-12
        )


def test_residual_example_matches_a_per_trial_loop_in_float64():
    config = _residual_example()
    config = config.model_copy(
        update={"sweep": config.sweep.model_copy(update={"lrs": [0.03, 0.3], "seeds": [0, 1]})}
    )
    _assert_matches_loop(config)


@pytest.mark.filterwarnings("ignore:optimizer .* breaks the η²·S identity")
@pytest.mark.parametrize(
    "training",
    [
        {"momentum": 0.9, "weight_decay": 1e-3},
        {"optimizer": "adam", "weight_decay": 1e-3},
        {"batch_size": 16},
    ],
    ids=["momentum-wd", "adam", "minibatch"],
)
def test_optimizers_and_per_seed_data_match_a_per_trial_loop(training):
    config = _mixture({}, **training)
    if training.get("optimizer") == "adam":
        config = config.model_copy(
            update={"sweep": config.sweep.model_copy(update={"lrs": [1e-3, 1e-2]})}
        )
    _assert_matches_loop(config)


def _assert_identity(result) -> None:
    direct, identity = result.drift_direct, result.drift_identity
    assert np.isfinite(direct).all()
    assert (np.abs(direct) > 1e-8).all(), "the drift is real: the test could fail"
    assert (np.abs(direct - identity) <= IDENTITY_TOL * np.maximum(1.0, np.abs(direct))).all()
    for unit_direct, unit_identity in zip(
        result.unit_drift_direct, result.unit_drift_identity, strict=True
    ):
        bound = IDENTITY_TOL * np.maximum(1.0, np.abs(unit_direct))
        assert (np.abs(unit_direct - unit_identity) <= bound).all()


@pytest.mark.parametrize("batch_size", [None, 16])
def test_identity_holds_for_the_pairs_inside_the_residual_model(batch_size):
    result = run_functional_sweep(_mixture({}, batch_size=batch_size, steps=60))
    assert result.law_names == RESIDUAL_LAWS
    assert result.identity_holds
    _assert_identity(result)
    assert result.bias_free_direct is not None
    # the bias-free formula is not conserved on a biased net
    assert (np.abs(result.bias_free_direct - result.drift_direct) > 1e-10).all()
    np.testing.assert_allclose(
        result.imbalance_sum * result.lrs[:, None] ** 2, result.drift_identity, rtol=1e-12
    )


def test_identity_does_not_apply_with_momentum():
    result = run_functional_sweep(_mixture({}, momentum=0.5, steps=10))
    assert not result.identity_holds
    assert np.isnan(result.drift_identity).all()
    assert np.isfinite(result.drift_direct).all()
    assert any("breaks the η²·S identity" in note for note in result.notes)


def test_divergence_is_marked_with_a_step_and_trials_stay_independent():
    config = _mixture({}, steps=40)
    diverging = run_functional_sweep(config, lrs=[0.05, 200.0], seeds=[3, 4])
    alone = run_functional_sweep(config, lrs=[0.05], seeds=[3, 4])
    assert not diverging.diverged[:2].any()
    assert diverging.diverged[2:].all()
    assert ((diverging.diverged_step[2:] >= 1) & (diverging.diverged_step[2:] <= 40)).all()
    assert np.isnan(diverging.final_loss[2:]).all()
    assert np.isnan(diverging.drift_direct[2:]).all()
    assert np.isnan(diverging.unit_drift_direct[0][2:]).all()
    np.testing.assert_array_equal(diverging.final_loss[:2], alone.final_loss)
    np.testing.assert_array_equal(diverging.drift_direct[:2], alone.drift_direct)


def test_trial_order_is_eta_major_and_history_is_recorded():
    result = run_functional_sweep(_mixture({}, steps=20), history_points=5)
    np.testing.assert_array_equal(result.lrs, [0.05, 0.05, 0.2, 0.2])
    np.testing.assert_array_equal(result.seeds, [3, 4, 3, 4])
    np.testing.assert_array_equal(result.history_steps, [0, 5, 10, 15, 20])
    assert result.loss_history.shape == (5, 4)
    np.testing.assert_allclose(result.loss_history[0], result.initial_loss)
    np.testing.assert_allclose(result.loss_history[-1], result.final_loss)
    assert (result.loss_history[-1] < result.loss_history[0]).all()


def test_validation_split_gives_a_validation_loss():
    config = _mixture({}, steps=5)
    config = config.model_copy(
        update={"data": config.data.model_copy(update={"validation_fraction": 0.25})}
    )
    result = run_functional_sweep(config)
    assert np.isfinite(result.final_val_loss).all()


def test_a_model_without_laws_still_trains_and_says_why(tmp_path):
    (tmp_path / "lra_gelu_model.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, d, k):\n"
        "        super().__init__()\n"
        "        self.fc1, self.act, self.fc2 = nn.Linear(d, 8), nn.GELU(), nn.Linear(8, k)\n"
        "    def forward(self, x):\n"
        "        return self.fc2(self.act(self.fc1(x)))\n"
        "def build(in_features, num_classes):\n"
        "    return Net(in_features, num_classes)\n"
    )
    raw = {
        "model": {"factory": "lra_gelu_model:build"},
        "data": {"n": 30, "dim": 4, "classes": 3},
        "training": {"steps": 10, "dtype": "float64"},
        "sweep": {"lrs": [0.1, 0.5], "seeds": [0]},
    }
    result = run_functional_sweep(parse_config(raw, file=str(tmp_path / "m.yaml")))
    assert result.law_names == []
    assert result.drift_direct.shape == (2, 0)
    assert result.bias_free_direct is None
    assert np.isfinite(result.final_loss).all()
    assert any("no rescaling-symmetric" in note for note in result.notes)
    assert any("GELU after fc1" in note for note in result.notes)


def test_progress_is_reported():
    calls = []
    run_functional_sweep(_mixture({}, steps=10), progress=lambda t, n: calls.append((t, n)))
    assert calls[-1] == (10, 10)
