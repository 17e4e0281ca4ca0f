"""The objective of a study-file trial: sample, build, train with a TrialMonitor, return the metric.

Every trial starts from the same seed, ``budget.seed``: trials of one architecture share
their initial weights, data split and mini-batch order, so what differs between them is the
sampled hyperparameters, not the draw (and the drift-vs-lr fit across trials sees no seed
noise). A retried trial is the same computation again.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from torch import nn

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import batch_indices
from lradvisor.engine.data import Dataset
from lradvisor.engine.training import LossFunction, loss_function, make_optimizer
from lradvisor.errors import ConfigError
from lradvisor.integrations._study_fits import ARCHITECTURE_ATTR, DRIFT_ATTR
from lradvisor.studies.schema import ParameterSpec, StudySpec

__all__ = [
    "ARCHITECTURE_ATTR",
    "DRIFT_ATTR",
    "STEPS_ATTR",
    "StudyObjective",
    "architecture_key",
    "suggest",
    "template_parameters",
    "trial_config",
]

STEPS_ATTR = "lradvisor.steps_trained"
TRAIN_LOSS_ATTR = "lradvisor.final_train_loss"
VAL_LOSS_ATTR = "lradvisor.final_val_loss"
PRUNE_REASON_ATTR = "lradvisor.prune_reason"
PRUNE_DETAIL_ATTR = "lradvisor.prune_detail"


def suggest(trial: optuna.trial.BaseTrial, name: str, spec: ParameterSpec) -> Any:
    """Draw one parameter through Optuna's ``suggest_*`` API."""
    if spec.type == "categorical":
        return trial.suggest_categorical(name, spec.choices)
    low, high = spec.bounds()
    if spec.type == "int":
        return trial.suggest_int(name, low, high, step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(name, low, high, step=spec.step, log=spec.log)


def architecture_key(params: dict[str, Any]) -> str:
    """Everything sampled except lr, as ``name=value`` sorted by name ("" when lr alone)."""
    return " ".join(f"{name}={params[name]}" for name in sorted(params) if name != "lr")


def template_parameters(template: ModelConfig, names: tuple[str, ...]) -> dict[str, Any]:
    """The template's own values of the searched parameters ``names`` (lr has none)."""
    model, training = template.model, template.training
    values: dict[str, Any] = {
        "momentum": training.momentum,
        "weight_decay": training.weight_decay,
        "batch_size": training.batch_size,
        "loss": training.loss,
    }
    if model.is_factory:
        values["width"] = model.kwargs.get(model.width_kwarg or "")
    else:
        values["width"], values["depth"] = model.hidden[0], len(model.hidden)
    return {name: values.get(name) for name in names if name != "lr"}


def trial_config(template: ModelConfig, params: dict[str, Any]) -> ModelConfig:
    """The template with the sampled parameters applied (lr is applied by the optimizer).

    ``width`` sets every hidden layer (or the factory's ``width_kwarg``); ``depth`` the number
    of hidden layers, each as wide as ``width`` or the template's first hidden layer.
    """
    model = template.model
    if "width" in params or "depth" in params:
        if model.is_factory:
            kwargs = {**model.kwargs, model.width_kwarg: int(params["width"])}
            model = model.model_copy(update={"kwargs": kwargs})
        else:
            width = int(params.get("width", model.hidden[0]))
            depth = int(params.get("depth", len(model.hidden)))
            model = model.model_copy(update={"hidden": [width] * depth})
    training = {
        name: params[name]
        for name in ("loss", "momentum", "weight_decay", "batch_size")
        if name in params
    }
    return template.model_copy(
        update={"model": model, "training": template.training.model_copy(update=training)}
    )


@dataclass
class _Evaluation:
    train_loss: float
    val_loss: float | None


@dataclass
class StudyObjective:
    """``objective(trial) -> metric`` for a :class:`~lradvisor.studies.schema.StudySpec`.

    Picklable (it holds the validated study only); the data set is loaded once per process.
    User attrs written besides the monitor's: ``lradvisor.architecture``,
    ``lradvisor.final_train_loss``, ``lradvisor.final_val_loss``, ``lradvisor.final_drift``
    (law → drift after the last step), ``lradvisor.steps_trained`` (0 when pruned before
    training).
    """

    study: StudySpec
    _shared: dict[str, Dataset] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"study": self.study, "_shared": {}}

    def __call__(self, trial: optuna.trial.Trial) -> float:
        from lradvisor.integrations.optuna import TrialMonitor

        params = {
            name: suggest(trial, name, spec) for name, spec in self.study.search_space.items()
        }
        trial.set_user_attr(ARCHITECTURE_ATTR, architecture_key(params))
        config = trial_config(self.study.template, params)
        model, data = self._build(config)
        optimizer = make_optimizer(config, model, float(params["lr"]))
        X, y = data.X, data.y
        with warnings.catch_warnings():
            # Said once per trial by the monitor; the study summary says it once.
            warnings.filterwarnings(
                "ignore", message=".*breaks the η²·S identity", category=UserWarning
            )
            monitor = TrialMonitor(
                trial,
                model,
                optimizer,
                data=(X, y),
                loss=loss_function(config.training),
                seed=self.study.budget.seed,
            )
        trial.set_user_attr(STEPS_ATTR, 0)
        if monitor.should_prune():
            raise optuna.TrialPruned("pruned before training")
        try:
            self._train(trial, config, model, optimizer, data, monitor)
        except optuna.TrialPruned:
            self._record_final(trial, model, data, config, monitor)
            raise
        trial.set_user_attr(STEPS_ATTR, self.study.budget.steps)
        value = self._metric(self._record_final(trial, model, data, config, monitor))
        if not math.isfinite(value):
            trial.set_user_attr(PRUNE_REASON_ATTR, "diverged")
            trial.set_user_attr(PRUNE_DETAIL_ATTR, '{"cause":"non_finite_final_metric"}')
            raise optuna.TrialPruned(f"the final {self.study.metric} is {value}: diverged")
        return value

    def _record_final(
        self,
        trial: optuna.trial.Trial,
        model: nn.Module,
        data: Dataset,
        config: ModelConfig,
        monitor: Any,
    ) -> _Evaluation:
        evaluation = _evaluate(model, data, loss_function(config.training))
        trial.set_user_attr(TRAIN_LOSS_ATTR, _json(evaluation.train_loss))
        trial.set_user_attr(VAL_LOSS_ATTR, _json(evaluation.val_loss))
        monitor.finish()  # lradvisor.final_drift and its prediction (JSON strings)
        return evaluation

    def _build(self, config: ModelConfig) -> tuple[nn.Module, Dataset]:
        from lradvisor.engine.data import load_shared_dataset
        from lradvisor.engine.dispatch import build_model

        dtype = getattr(torch, config.training.dtype)
        shared = None
        if config.data.source != "gaussian_mixture":
            if "data" not in self._shared:
                self._shared["data"] = load_shared_dataset(config, dtype=dtype)
            shared = self._shared["data"]
        model, data = build_model(config, seed=self.study.budget.seed, shared=shared)
        device = torch.device(config.training.device)
        return model.to(device), _to_device(data, device)

    def _train(
        self,
        trial: optuna.trial.Trial,
        config: ModelConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: Dataset,
        monitor: Any,
    ) -> None:
        budget = self.study.budget
        loss = loss_function(config.training)
        batch_size = config.training.batch_size
        if batch_size is not None and batch_size >= data.n:
            searched = "batch_size" in self.study.search_space
            raise ConfigError(
                self.study.source_file,
                "search_space.batch_size" if searched else "model.training.batch_size",
                f"mini-batches smaller than the {data.n} training rows (null trains on the "
                "full batch)",
                batch_size,
            )
        schedule = None
        if batch_size is not None:
            schedule = batch_indices(data.n, batch_size, budget.steps, budget.seed).to(
                data.X.device
            )
        for step in range(budget.steps):
            inputs, labels = (data.X, data.y) if schedule is None else _batch(data, schedule[step])
            optimizer.zero_grad(set_to_none=True)
            loss(model(inputs), labels).backward()
            monitor.observe()
            optimizer.step()
            done = step + 1
            # No report after the last step: pruning a trained trial would save nothing.
            if done % budget.report_every == 0 and done < budget.steps:
                trial.set_user_attr(STEPS_ATTR, done)
                monitor.report(self._metric(_evaluate(model, data, loss)), done)

    def _metric(self, evaluation: _Evaluation) -> float:
        if self.study.metric == "val_loss" and evaluation.val_loss is not None:
            return evaluation.val_loss
        return evaluation.train_loss


def _batch(data: Dataset, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return data.X[rows], data.y[rows]


@torch.no_grad()
def _evaluate(model: nn.Module, data: Dataset, loss: LossFunction) -> _Evaluation:
    train = float(loss(model(data.X), data.y))
    val = None
    if data.X_val is not None and len(data.X_val):
        val = float(loss(model(data.X_val), data.y_val))
    return _Evaluation(train, val)


def _to_device(data: Dataset, device: torch.device) -> Dataset:
    if data.X.device == device:
        return data
    move = {
        name: getattr(data, name).to(device)
        for name in ("X", "y", "X_val", "y_val")
        if getattr(data, name) is not None
    }
    return dataclasses.replace(data, **move)


def _json(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)
