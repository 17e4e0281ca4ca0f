"""Lightning and Hugging Face callbacks: drift written to the trial and the MLflow run, beside
optuna-integration's pruning callback in one Trainer; the examples run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def _quiet():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


def _data(n=128):
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(n, 8, generator=generator)
    return X, (X[:, 0] > 0).long()


def test_lightning_callback_works_beside_optunas_pruning_callback(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from optuna_integration import PyTorchLightningPruningCallback

    from lradvisor.lightning import ConservationCallback
    from lradvisor.optuna import ConservationPruner

    X, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=16)

    class Module(pl.LightningModule):
        def __init__(self, lr):
            super().__init__()
            self.lr = lr
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, _):
            self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    def objective(trial):
        torch.manual_seed(trial.number)
        trainer = pl.Trainer(
            max_epochs=3,
            logger=pl.loggers.CSVLogger(tmp_path),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[
                ConservationCallback(trial, data=(X, y), every_n_steps=4),
                PyTorchLightningPruningCallback(trial, monitor="val_loss"),
            ],
        )
        trainer.fit(Module(trial.suggest_float("lr", 1e-3, 1e3, log=True)), loader, loader)
        return float(trainer.callback_metrics["val_loss"])

    study = optuna.create_study(pruner=ConservationPruner(optuna.pruners.MedianPruner()))
    study.enqueue_trial({"lr": 0.05})
    study.enqueue_trial({"lr": 800.0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(objective, n_trials=2)
    good, beyond = study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert sorted(good.intermediate_values) == [0, 1, 2]  # the pruning callback's epochs
    assert good.user_attrs["lradvisor.steps_observed"] == 24  # 3 epochs × 8 batches
    history = json.loads(good.user_attrs["lradvisor.drift_history.0"])
    assert [entry[0] for entry in history] == [4, 8, 12, 16, 20, 24]
    assert good.user_attrs["lradvisor.drift_ratio"] is not None  # plain SGD: predicted too
    assert beyond.state == optuna.trial.TrialState.PRUNED
    assert beyond.user_attrs["lradvisor.prune_reason"] == "beyond_stability_bound"
    assert not any("reported multiple times" in str(w.message) for w in caught)
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "lradvisor/drift_observed" in logged  # and the trainer's loggers got the numbers


def test_hugging_face_callback_writes_the_trial_and_the_active_mlflow_run(tmp_path):
    transformers = pytest.importorskip("transformers")
    import mlflow

    from lradvisor.hf import ConservationCallback

    X, y = _data()

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return {"x": X[i], "labels": y[i]}

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

        def forward(self, x, labels=None):
            logits = self.net(x)
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = nn.functional.cross_entropy(logits, labels)
            return out

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    study = optuna.create_study()
    trial = study.ask()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        learning_rate=1e-3,
        per_device_train_batch_size=16,
        max_steps=20,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    callback = ConservationCallback(trial, data=(X, y), every_n_steps=5)
    trainer = transformers.Trainer(
        model=Classifier(), args=args, train_dataset=Pairs(), callbacks=[callback]
    )
    with mlflow.start_run() as run:
        trainer.train()
    attrs = study.trials[0].user_attrs
    assert attrs["lradvisor.steps_observed"] == 20
    assert attrs["lradvisor.bound_kind"].startswith("none (AdamW")
    assert "net.0->net.2" in json.loads(attrs["lradvisor.final_drift"])
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "lradvisor/drift_observed")
    assert [m.step for m in history] == [5, 10, 15, 20]


@pytest.mark.parametrize(("script", "budget"), [("lightning_study.py", 60), ("hf_study.py", 60)])
def test_framework_examples_run(script, budget):
    pytest.importorskip("lightning" if "lightning" in script else "transformers")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--n-trials", "3"],
        capture_output=True,
        text=True,
        timeout=budget * 2,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"^best validation loss: \d+\.\d+ at lr", proc.stdout, re.MULTILINE), (
        proc.stdout
    )
    assert "user_attrs_lradvisor" not in proc.stderr
