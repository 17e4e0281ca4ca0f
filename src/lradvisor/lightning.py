"""PyTorch Lightning callback: conservation-law drift and the stability bound of a trial.

``pip install 'lradvisor[lightning]'``. Works beside optuna-integration's
``PyTorchLightningPruningCallback`` in the same ``Trainer``: that callback reports the
validation metric and asks the pruner; this one measures and writes (it never reports a
value, so the two never report the same step twice)::

    trainer = lightning.pytorch.Trainer(callbacks=[
        ConservationCallback(trial, data=(X, y)),
        PyTorchLightningPruningCallback(trial, monitor="val_loss"),
    ])

With a ``ConservationPruner`` in the study, the pruning callback's ``should_prune`` then
also reads what this callback wrote (the bound before training, divergence, the drift).
"""

from __future__ import annotations

from typing import Any

from lradvisor.errors import LRAdvisorError

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - exercised where lightning is absent
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as error:
        raise ImportError(
            "lradvisor.lightning needs PyTorch Lightning: pip install 'lradvisor[lightning]'"
        ) from error

from lradvisor.integrations._callbacks import DriftRecorder

__all__ = ["ConservationCallback"]


class ConservationCallback(pl.Callback):
    """Measure the drift of a Lightning module's conservation laws while it trains.

    Args:
        trial: the Optuna trial to write to (None: only log the drift to the loggers).
        data: ``(X, y)`` for λ_max(θ₀) and the bound (see ``TrialMonitor``); None: the
            drift is measured, no bound or prediction.
        loss: the loss the module trains on (``"ce"``, ``"mse"`` or a callable), for the
            curvature.
        every_n_steps: how often (optimizer steps) the numbers are written and logged.
        monitor_options: further ``TrialMonitor`` options (``max_rows``, ``width``, …).

    Every ``every_n_steps`` steps the drift numbers go to the trial's user_attrs and, as
    metrics ``lradvisor/drift_observed``, ``…/drift_predicted``, ``…/drift_ratio``, to the
    trainer's loggers (an ``MLFlowLogger`` puts them in the MLflow run).
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
        super().__init__()
        self.recorder = DriftRecorder(
            trial, data=data, loss=loss, every=every_n_steps, **monitor_options
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise LRAdvisorError(
                f"ConservationCallback follows one optimizer, but the trainer has {len(optimizers)}."
            )
        self.recorder.start(pl_module, optimizers[0])

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self.recorder.observe()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        metrics = self.recorder.maybe_record(trainer.global_step)
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder.finish()
