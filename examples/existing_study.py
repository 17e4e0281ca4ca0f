"""An ordinary Optuna study on scikit-learn's digits, without and with lradvisor.

``existing_study_plain.py`` searches the learning rate (log 1e-3 … 10), the hidden width and
the momentum of mini-batch SGD for an MLP 64 → hidden → 10, minimising the validation
cross-entropy after a few hundred steps; the validation loss is reported every
``REPORT_EVERY`` steps from step 0 (before training) on, and the median rule prunes.
``existing_study.py`` is the same file with lradvisor added in five lines, plus the blank
line the import sorter puts before a first-party import (see them with
``diff examples/existing_study_plain.py examples/existing_study.py``): a ``TrialMonitor``
per trial, and a ``ConservationPruner`` in front of the same median rule, which prunes rates
beyond the stability bound before they train, diverged runs at once, and runs whose
conservation-law drift left the spectral prediction.

    python examples/existing_study_plain.py [--n-trials 60] [--seed 0]
    python examples/existing_study.py [--n-trials 60] [--seed 0]
"""

from __future__ import annotations

import argparse

import optuna
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from lradvisor.optuna import ConservationPruner, TrialMonitor

STEPS = 300
REPORT_EVERY = 30
BATCH_SIZE = 64

features, labels = load_digits(return_X_y=True)
X_train, X_val, y_train, y_val = train_test_split(
    features, labels, test_size=0.2, random_state=0, stratify=labels
)
scaler = StandardScaler().fit(X_train)
X_train = torch.tensor(scaler.transform(X_train), dtype=torch.float32)
X_val = torch.tensor(scaler.transform(X_val), dtype=torch.float32)
y_train, y_val = torch.from_numpy(y_train), torch.from_numpy(y_val)


def validation_loss(model: nn.Module) -> float:
    with torch.no_grad():
        return nn.functional.cross_entropy(model(X_val), y_val).item()


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-3, 10.0, log=True)
    hidden = trial.suggest_int("hidden", 16, 256, log=True)
    momentum = trial.suggest_categorical("momentum", [0.0, 0.5, 0.9])
    torch.manual_seed(trial.number)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    monitor = TrialMonitor(trial, model, optimizer, data=(X_train, y_train), loss="ce")
    for step in range(STEPS):
        if step % REPORT_EVERY == 0:
            val_loss = validation_loss(model)
            monitor.report(val_loss, step)  # raises optuna.TrialPruned
        rows = torch.randint(len(X_train), (BATCH_SIZE,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X_train[rows]), y_train[rows]).backward()
        monitor.observe()
        optimizer.step()
    return validation_loss(model)


def summarise(study: optuna.Study) -> None:
    print(f"best validation loss: {study.best_value:.4f}")
    print(f"best params: {study.best_params}")
    trials = study.trials_dataframe()
    # How the trials ended; a pruner that records why it pruned adds a *prune_reason column.
    reasons = [column for column in trials if column.endswith("prune_reason")]
    print(trials.value_counts(["state", *reasons], dropna=False).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a tiny model: more threads only add synchronisation
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=args.seed),
        pruner=ConservationPruner(optuna.pruners.MedianPruner(n_warmup_steps=REPORT_EVERY)),
    )
    study.optimize(objective, n_trials=args.n_trials)
    summarise(study)


if __name__ == "__main__":
    main()
