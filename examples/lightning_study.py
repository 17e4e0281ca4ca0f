"""An Optuna study of a Lightning model with lradvisor's callback beside Optuna's own.

    python examples/lightning_study.py [--n-trials 6]

Each trial trains a small MLP on scikit-learn's digits with PyTorch Lightning. Two callbacks
share the Trainer: optuna-integration's ``PyTorchLightningPruningCallback`` reports the
validation loss every epoch and asks the pruner, and ``lradvisor.lightning.ConservationCallback``
measures the stability bound and the conservation-law drift and writes them to the trial.
The study's ``ConservationPruner`` wraps a ``MedianPruner``: it prunes trials far beyond the
bound before they train and diverged ones, then lets the median rule decide.
"""

from __future__ import annotations

import argparse
import logging
import warnings

import lightning.pytorch as pl
import optuna
import torch
from optuna_integration import PyTorchLightningPruningCallback
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lradvisor.lightning import ConservationCallback
from lradvisor.optuna import ConservationPruner

X, y = load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32)
y = torch.tensor(y)
TRAIN, VAL = (X[:1400], y[:1400]), (X[1400:], y[1400:])


class DigitsMLP(pl.LightningModule):
    def __init__(self, lr: float, width: int) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        return nn.functional.cross_entropy(self(inputs), labels)

    def validation_step(self, batch, batch_idx):
        inputs, labels = batch
        self.log("val_loss", nn.functional.cross_entropy(self(inputs), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-3, 200.0, log=True)
    torch.manual_seed(trial.number)
    model = DigitsMLP(lr, width=64)
    trainer = pl.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            ConservationCallback(trial, data=TRAIN, every_n_steps=20),
            PyTorchLightningPruningCallback(trial, monitor="val_loss"),
        ],
    )
    trainer.fit(
        model,
        DataLoader(TensorDataset(*TRAIN), batch_size=64, shuffle=True),
        DataLoader(TensorDataset(*VAL), batch_size=512),
    )
    return float(trainer.callback_metrics["val_loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-trials", type=int, default=6)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=ConservationPruner(optuna.pruners.MedianPruner(n_startup_trials=2)),
    )
    study.enqueue_trial({"lr": 150.0})  # far beyond the bound: pruned before training
    study.optimize(objective, n_trials=args.n_trials)
    print(f"best validation loss: {study.best_value:.4f} at lr {study.best_params['lr']:.4g}")
    columns = ["number", "state", "value", "params_lr", "user_attrs_lradvisor.bound",
               "user_attrs_lradvisor.drift_observed", "user_attrs_lradvisor.prune_reason"]  # fmt: skip
    frame = study.trials_dataframe()
    print(frame[[c for c in columns if c in frame]].to_string(index=False))


if __name__ == "__main__":
    main()
