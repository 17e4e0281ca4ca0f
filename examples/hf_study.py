"""An Optuna study of a Hugging Face ``Trainer`` with lradvisor's callback.

    python examples/hf_study.py [--n-trials 4]

Each trial fine-tunes a small classifier on scikit-learn's digits with ``transformers.Trainer``
(AdamW, the Trainer's default) and returns the evaluation loss. ``lradvisor.hf.ConservationCallback``
measures the conservation-law drift every 25 steps and writes it to the trial (and to the
active MLflow run when the Trainer reports to MLflow). AdamW has no stability bound at θ₀, so
nothing is pruned before training: the callback says so in ``lradvisor.bound_kind``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import optuna
import torch
from sklearn.datasets import load_digits
from torch import nn
from transformers import PrinterCallback, Trainer, TrainingArguments

from lradvisor.hf import ConservationCallback

X, y = load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32)
y = torch.tensor(y)
TRAIN, VAL = (X[:1400], y[:1400]), (X[1400:], y[1400:])


class Digits(torch.utils.data.Dataset):
    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.inputs[index], "labels": self.labels[index]}


class Classifier(nn.Module):
    """An MLP returning what the Trainer expects: a dict with ``loss`` and ``logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        logits = self.net(x)
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def objective(trial: optuna.Trial) -> float:
    torch.manual_seed(trial.number)
    with tempfile.TemporaryDirectory() as folder:
        args = TrainingArguments(
            output_dir=folder,
            learning_rate=trial.suggest_float("lr", 1e-4, 3e-2, log=True),
            per_device_train_batch_size=64,
            max_steps=150,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=Classifier(),
            args=args,
            train_dataset=Digits(*TRAIN),
            eval_dataset=Digits(*VAL),
            callbacks=[ConservationCallback(trial, data=TRAIN, every_n_steps=25)],
        )
        trainer.remove_callback(PrinterCallback)  # no metric dict printed per evaluation
        trainer.train()
        return float(trainer.evaluate()["eval_loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-trials", type=int, default=4)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=args.n_trials)
    print(f"best validation loss: {study.best_value:.4f} at lr {study.best_params['lr']:.4g}")
    columns = ["number", "value", "params_lr", "user_attrs_lradvisor.bound_kind",
               "user_attrs_lradvisor.steps_observed", "user_attrs_lradvisor.drift_observed"]  # fmt: skip
    print(study.trials_dataframe()[columns].to_string(index=False))


if __name__ == "__main__":
    main()
