"""Batched engine = plain per-trial PyTorch loop (nn.Module, torch.optim, ConservationMonitor)."""

from __future__ import annotations

import numpy as np
import pytest

from lradvisor.engine.batched import run_sweep
from lradvisor.engine.reference import run_reference_trial

from conftest import make_config

RTOL = 1e-6


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"model": {"hidden": [12, 10], "bias": True}, "training": {"loss": "mse"}},
        {"training": {"batch_size": 16}},
        {"training": {"optimizer": "adam"}},
        {"training": {"momentum": 0.9, "weight_decay": 1e-3}},
        {"training": {"momentum": 0.9, "nesterov": True}},
        {"training": {"optimizer": "adamw", "weight_decay": 0.05}},
        {"model": {"activation": "leaky_relu", "negative_slope": 0.1}},
        {"data": {"source": "sklearn", "name": "iris"}, "training": {"batch_size": 32}},
        {"training": {"loss": "mix", "ce_weight": 0.3}},
    ],
    ids=[
        "ce-full",
        "mse-biased-deep",
        "minibatch",
        "adam",
        "momentum-wd",
        "nesterov",
        "adamw",
        "leaky",
        "iris-minibatch",
        "mixed-loss",
    ],
)
def test_batched_engine_matches_the_reference_loop(sections):
    config = make_config(
        **{"training": {"steps": 120}, **sections} if "training" not in sections else sections
    )
    config = config.model_copy(
        update={"training": config.training.model_copy(update={"steps": 120})}
    )
    batched = run_sweep(config)
    for k in range(batched.n_trials):
        ref = run_reference_trial(config, float(batched.lrs[k]), int(batched.seeds[k]))
        assert not ref.diverged and not batched.diverged[k]
        # a CE loss near 1e-12 is resolved only to ~1e-16 absolute (log-sum-exp cancellation)
        np.testing.assert_allclose(batched.final_loss[k], ref.final_loss, rtol=RTOL, atol=1e-12)
        np.testing.assert_allclose(batched.drift_direct[k], ref.drift_direct, rtol=RTOL, atol=1e-12)
        if batched.identity_holds:
            np.testing.assert_allclose(
                batched.drift_identity[k], ref.drift_identity, rtol=RTOL, atol=1e-12
            )
        else:
            assert np.isnan(ref.drift_identity).all()
