"""lradvisor.suggest on your own model: a small CNN on scikit-learn's 8×8 digits with AdamW.

    python examples/suggest_cnn.py

Everything below the data loading is what you would add to your own training script.
"""

from __future__ import annotations

import functools

import torch
from sklearn.datasets import load_digits
from torch import nn

import lradvisor
from lradvisor.render import render_advice

X, y = load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
y = torch.tensor(y)
train, val = (X[:1400], y[:1400]), (X[1400:], y[1400:])

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
    nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
    nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
)  # fmt: skip
advice = lradvisor.suggest(
    model,
    train,
    nn.CrossEntropyLoss(),
    functools.partial(torch.optim.AdamW, weight_decay=0.01),
    val_data=val,
    batch_size=64,
    steps=400,
)
print(render_advice(advice))
