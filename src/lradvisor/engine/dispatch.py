"""One entry point for both kinds of model: built-in MLPs (``model.hidden``) and factories.

Built-in MLPs train on the hand-written batched engine
(:func:`lradvisor.engine.batched.run_sweep`); the user's own models on the ``torch.func``
engine (:func:`lradvisor.engine.functional.run_functional_sweep`). Both return a
:class:`~lradvisor.engine.batched.SweepResult`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import SweepResult, run_sweep
from lradvisor.engine.data import Dataset, load_shared_dataset
from lradvisor.engine.factory import initial_factory_state
from lradvisor.engine.functional import run_functional_sweep
from lradvisor.engine.models import build_mlp, initial_state, linear_layers
from lradvisor.errors import LRAdvisorError

__all__ = ["build_model", "run_trials"]

# run_sweep options the functional engine has no use for (it is one vmapped computation).
_BATCHED_ONLY = ("workers",)


def run_trials(config: ModelConfig, **options: Any) -> SweepResult:
    """Run the (η, seed) trials of ``config`` on the engine that fits its model.

    ``options`` are those of :func:`~lradvisor.engine.batched.run_sweep` (``lrs``, ``seeds``,
    ``steps``, ``progress``, ``history_points``, ``workers``, …). For a factory model
    ``workers`` is ignored; probe observables (``observe``) are not available.
    """
    if not config.model.is_factory:
        return run_sweep(config, **options)
    observe = options.pop("observe", None)
    if _requests_anything(observe):
        raise LRAdvisorError(
            "probe observables (concentration, switch rate, checkpoints) are measured for "
            "built-in MLPs (model.hidden) only, not for a factory model (model.factory)"
        )
    for name in _BATCHED_ONLY:
        options.pop(name, None)
    return run_functional_sweep(config, **options)


def build_model(
    config: ModelConfig, seed: int, shared: Dataset | None = None
) -> tuple[nn.Module, Dataset]:
    """One trial's starting point as a real module (in the config's dtype) and its data.

    The same weights and data as trial ``seed`` of :func:`run_trials`, for measurement code
    that needs an ``nn.Module`` (Hessian-vector products, the conservation monitor).
    ``shared`` is the seed-independent data set, loaded here when None and needed.
    """
    dtype = getattr(torch, config.training.dtype)
    if shared is None and config.data.source != "gaussian_mixture":
        shared = load_shared_dataset(config, dtype=dtype)
    if config.model.is_factory:
        state = initial_factory_state(config, seed, shared, dtype=dtype)
        return state.model, state.data
    mlp_state = initial_state(config, seed, shared, dtype=dtype)
    data = mlp_state.data
    # Building draws from the global generator; the weights are overwritten just below.
    with torch.random.fork_rng(devices=[]):
        model = build_mlp(config.model, data.dim, data.classes).to(dtype)
    with torch.no_grad():
        for index, layer in enumerate(linear_layers(model)):
            layer.weight.copy_(mlp_state.weights[index])
            if mlp_state.biases is not None:
                layer.bias.copy_(mlp_state.biases[index])
    return model, data


def _requests_anything(observe: object) -> bool:
    if observe is None:
        return False
    return any(
        getattr(observe, name, None) for name in ("concentration", "switch_rate", "checkpoints")
    )
