"""The plain PyTorch loop, one trial at a time: the baseline the batched engine is checked against.

It builds an ordinary ``nn.Sequential``, trains it with ``torch.optim`` and autograd, and
measures the conservation laws with :class:`~lradvisor.measure.monitor.ConservationMonitor`,
which is how a user would do it by hand. It starts from the same initial state and sees the
same mini-batches as the batched engine, so the two must agree to round-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import batch_indices
from lradvisor.engine.dispatch import build_model
from lradvisor.engine.training import make_optimizer, module_loss
from lradvisor.measure.monitor import ConservationMonitor


@dataclass(frozen=True)
class ReferenceTrial:
    lr: float
    seed: int
    drift_identity: np.ndarray
    drift_direct: np.ndarray
    final_loss: float
    diverged: bool


def run_reference_trial(config: ModelConfig, lr: float, seed: int) -> ReferenceTrial:
    """Train one (η, seed) trial with nn.Module + torch.optim + the monitor."""
    dtype = getattr(torch, config.training.dtype)
    model, data = build_model(config, seed)
    optimizer = make_optimizer(config, model, lr)
    monitor = ConservationMonitor(model, optimizer=optimizer, per_unit=False)
    steps = config.training.steps
    batch_size = config.training.batch_size
    schedule = None
    if batch_size is not None and batch_size < data.n:
        schedule = batch_indices(data.n, batch_size, steps, seed)
    X, y = data.X.to(dtype), data.y
    initial_loss = None
    diverged = False
    for t in range(steps):
        xb, yb = (X, y) if schedule is None else (X[schedule[t]], y[schedule[t]])
        optimizer.zero_grad(set_to_none=True)
        loss = module_loss(model(xb), yb, config.training.loss_weights)
        value = float(loss.detach())
        initial_loss = value if initial_loss is None else initial_loss
        if not np.isfinite(value) or value > config.training.divergence_factor * max(
            initial_loss, 1e-12
        ):
            diverged = True
            break
        loss.backward()
        monitor.observe()
        optimizer.step()
    with torch.no_grad():
        final = float(module_loss(model(X), y, config.training.loss_weights))
    laws = [law for law in monitor.report() if law.bias_aware or not config.model.bias]
    return ReferenceTrial(
        lr=lr,
        seed=seed,
        drift_identity=np.array([law.drift_identity for law in laws]),
        drift_direct=np.array([law.drift_direct for law in laws]),
        final_loss=final,
        diverged=diverged,
    )
