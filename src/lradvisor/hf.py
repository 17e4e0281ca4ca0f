"""Hugging Face ``Trainer`` callback: conservation-law drift and the stability bound of a trial.

``pip install 'lradvisor[hf]'``::

    trainer = transformers.Trainer(model=model, args=args, train_dataset=train,
                                   callbacks=[ConservationCallback(trial, data=(X, y))])

Every ``every_n_steps`` optimizer steps the drift numbers go to the Optuna trial's
user_attrs (the same as ``TrialMonitor``) and, when an MLflow run is active (the Trainer's
own ``MLflowCallback`` starts one with ``report_to="mlflow"``), to that run as metrics
``lradvisor/drift_observed``, ``…/drift_predicted``, ``…/drift_ratio``. With a trial, the
study's pruner is asked once before the first step (the stability-bound check).
"""

from __future__ import annotations

from typing import Any

from lradvisor.errors import LRAdvisorError

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - exercised where transformers is absent
    raise ImportError(
        "lradvisor.hf needs Hugging Face transformers: pip install 'lradvisor[hf]'"
    ) from error

from lradvisor.integrations._callbacks import DriftRecorder, log_to_active_mlflow_run

__all__ = ["ConservationCallback"]


class ConservationCallback(TrainerCallback):
    """Measure the drift of the Trainer's model while it trains (see the module docstring).

    Args:
        trial: the Optuna trial to write to (None: only log to MLflow).
        data: ``(X, y)`` for λ_max(θ₀) and the bound, with ``loss`` the loss on the
            model's outputs; None: the drift is measured, no bound or prediction.
        loss: ``"ce"``, ``"mse"`` or ``loss_fn(outputs, y)``; a model returning a dict or a
            ``ModelOutput`` is read through its ``logits``.
        every_n_steps: how often (optimizer steps) the numbers are written and logged.
        monitor_options: further ``TrialMonitor`` options.
    """

    def __init__(
        self,
        trial: Any = None,
        *,
        data: Any = None,
        loss: Any = "ce",
        every_n_steps: int = 50,
        **monitor_options: Any,
    ) -> None:
        self.recorder = DriftRecorder(
            trial, data=data, loss=_on_logits(loss), every=every_n_steps, **monitor_options
        )

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            raise LRAdvisorError(
                "ConservationCallback needs the Trainer's model and optimizer at on_train_begin."
            )
        self.recorder.start(model, optimizer)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.recorder.observe()

    def on_step_end(self, args, state, control, **kwargs):
        metrics = self.recorder.maybe_record(state.global_step)
        if metrics:
            log_to_active_mlflow_run(metrics, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.recorder.finish()


def _on_logits(loss: Any) -> Any:
    """The loss applied to ``outputs.logits`` when a model returns a dict or ModelOutput."""
    import torch

    from lradvisor.integrations._optuna_monitor import _resolve_loss

    name, function = _resolve_loss(loss)

    def on_logits(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, torch.Tensor):
            outputs = outputs["logits"]
        return function(outputs, targets)

    on_logits.__name__ = name
    return on_logits
