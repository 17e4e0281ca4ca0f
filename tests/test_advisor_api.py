"""lradvisor.suggest on the objects users bring: their modules (CNN + BatchNorm, LayerNorm +
GELU, attention), their data (tensors of any shape, Dataset, DataLoader), losses and optimizers;
and every failure inside their code as one line naming the model and the call."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import lradvisor
from lradvisor.errors import LRAdvisorError
from lradvisor.render import render_advice


def _images(n=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    X = torch.randn(n, 1, 6, 6, generator=generator) * 0.5
    X[:, 0, y, y] += 2.0  # a class-dependent bright pixel
    return X, y


class _CNN(nn.Module):
    def __init__(self, batchnorm=False):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4) if batchnorm else nn.Identity()
        self.fc1 = nn.Linear(4 * 36, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.norm(self.conv(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(8, 16)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens):
        h = self.embed(tokens)
        h = self.norm(h + self.attention(h, h, h, need_weights=False)[0])
        return self.head(h.mean(1))


SMALL = {"steps": 40, "seeds": (0, 1)}


def test_cnn_with_batchnorm_and_momentum_from_a_dataloader():
    X, y = _images()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=16)
    torch.manual_seed(0)
    advice = lradvisor.suggest(
        _CNN(batchnorm=True),
        loader,
        nn.CrossEntropyLoss(),
        "momentum",
        val_data=_images(48, 1),
        **SMALL,
    )
    assert advice.batch_size == 16 and advice.score == "validation loss"
    assert advice.bound["kind"] == "heavy-ball momentum"
    assert advice.bound["value"] == pytest.approx(2 * 1.9 / advice.batch_lambda_max)
    assert any("BatchNorm" in w for w in advice.warnings)
    assert advice.lr_range[0] < advice.recommended_lr <= advice.lr_range[1]
    rows = {r["lr"]: r for r in advice.probe["rows"]}
    assert rows[advice.recommended_lr]["status"] == "finalist"
    assert rows[advice.lr_range[1]]["status"] not in ("diverged", "no progress", "unstable")
    text = render_advice(advice)
    assert "recommended" in text and "probe: mean validation loss" in text


def test_layernorm_gelu_mlp_with_adamw_partial_has_no_bound_at_init_and_says_why():
    X, y = _images()
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(36, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 3)
    )
    advice = lradvisor.suggest(
        model,
        (X, y),
        nn.CrossEntropyLoss(),
        functools.partial(torch.optim.AdamW, weight_decay=0.01),
        batch_size=16,
        **SMALL,
    )
    assert advice.bound["value"] is None and "adaptive" in advice.bound["kind"]
    assert advice.optimizer.startswith("AdamW(") and "weight_decay=0.01" in advice.optimizer
    assert advice.adaptive is not None and advice.adaptive["preconditioned_sharpness"] > 0
    assert advice.regime.startswith("adaptive")
    assert any("no rescaling-symmetric" in line for line in advice.does_not_apply)
    assert advice.score == "training loss"


def test_attention_model_gets_advice_instead_of_a_double_backward_crash():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 8, (64, 6), generator=generator)
    labels = (tokens == 1).sum(1).clamp(max=2)
    advice = lradvisor.suggest(
        _Attention(), (tokens, labels), nn.CrossEntropyLoss(), "adam", batch_size=16, **SMALL
    )
    assert advice.lambda_max is not None and advice.lambda_max > 0  # HVPs through attention
    assert advice.recommended_lr > 0


class _ResidualSiLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(36, 16)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.SiLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = nn.functional.silu(self.stem(x.flatten(1)))
        return self.head(h + self.block(h))


def test_residual_block_with_silu_gets_advice_and_says_no_law_applies():
    X, y = _images()
    advice = lradvisor.suggest(
        _ResidualSiLU(), (X, y), nn.CrossEntropyLoss(), "momentum", batch_size=16, **SMALL
    )
    assert advice.recommended_lr > 0 and advice.bound["kind"] == "heavy-ball momentum"
    assert any("SiLU" in line or "no rescaling-symmetric" in line for line in advice.does_not_apply)


def test_regression_with_a_dataset_and_nesterov():
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(80, 5, generator=generator)
    y = X @ torch.randn(5, 1, generator=generator) + 0.1 * torch.randn(80, 1, generator=generator)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(X)

        def __getitem__(self, i):
            return X[i], y[i]

    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))
    advice = lradvisor.suggest(model, Pairs(), nn.MSELoss(), "nesterov", batch_size=16, **SMALL)
    assert advice.bound["kind"] == "Nesterov momentum"
    assert advice.bound["value"] == pytest.approx(2 * 1.9 / (2.8 * advice.batch_lambda_max))
    assert advice.tau is None  # no cross-entropy compression for regression


def test_plain_sgd_on_a_relu_mlp_keeps_the_theory():
    X, y = _images()
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(36, 24, bias=False), nn.ReLU(), nn.Linear(24, 3, bias=False)
    )
    advice = lradvisor.suggest(model, (X, y), nn.CrossEntropyLoss(), "sgd", steps=400, seeds=(0, 1))
    assert advice.bound["kind"] == "gradient descent"
    assert advice.bound["value"] == pytest.approx(advice.eos_lr)
    assert 1.0 <= advice.alpha_predicted <= 2.0 and advice.drift_curve
    assert advice.tau is not None and advice.tau["lambda_max_trajectory"]  # fitted: test_advisor
    assert any("conservation laws" in line for line in advice.applies)


def test_a_schedule_is_trained_and_named():
    X, y = _images()
    advice = lradvisor.suggest(
        _CNN(),
        (X, y),
        nn.CrossEntropyLoss(),
        "sgd",
        schedule="warmup-cosine",
        batch_size=32,
        **SMALL,
    )
    assert any("warmup-cosine" in w and "peak rate" in w for w in advice.warnings)


def test_probe_extends_the_bracket_when_the_best_rate_is_at_its_edge():
    X, y = _images()
    # Adam's bracket is centred on 1e-3; this tiny linear model wants far larger rates.
    advice = lradvisor.suggest(
        nn.Sequential(nn.Flatten(), nn.Linear(36, 3)),
        (X, y),
        nn.CrossEntropyLoss(),
        "adam",
        steps=30,
        seeds=(0,),
    )
    assert advice.probe["extensions"], advice.probe
    assert max(r["lr"] for r in advice.probe["rows"]) > 64e-3


class _Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(36, 3)

    def forward(self, x):
        raise ValueError("no coffee")


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (
            (_Raises(), _images(), nn.CrossEntropyLoss()),
            "model _Raises: forward on inputs of shape \\(2, 1, 6, 6\\).*ValueError: no coffee",
        ),
        ((nn.Linear(5, 3), _images(), nn.CrossEntropyLoss()), "model Linear: forward"),
        (
            (_CNN(), _images(), nn.CrossEntropyLoss(reduction="none")),
            "loss_fn must return a scalar",
        ),
        ((_CNN(), _images(), nn.MSELoss()), "loss_fn\\(outputs of shape"),
        (
            (_CNN(), (torch.zeros(4, 1, 6, 6), torch.zeros(3)), nn.CrossEntropyLoss()),
            "X and y must have one row per sample",
        ),
        ((_CNN(), "data.csv", nn.CrossEntropyLoss()), "train_data must be an \\(X, y\\) pair"),
        (
            (
                _CNN(),
                (torch.full((4, 1, 6, 6), float("nan")), torch.zeros(4, dtype=torch.long)),
                nn.CrossEntropyLoss(),
            ),
            "NaN or infinite",
        ),
        (("not a model", _images(), nn.CrossEntropyLoss()), "model must be an nn.Module"),
    ],
    ids=[
        "forward-raises",
        "wrong-input-shape",
        "loss-not-scalar",
        "loss-raises",
        "ragged-data",
        "bad-data-type",
        "nan-data",
        "bad-model",
    ],
)
def test_bad_input_and_failing_user_code_are_one_line_errors(arguments, match):
    with pytest.raises(LRAdvisorError, match=match) as info:
        lradvisor.suggest(*arguments, steps=10)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"seeds": (1, 1)}, "seeds must be distinct"),
        ({"seeds": (True,)}, "seeds must be integers"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"device": "toaster"}, "device must be a torch device"),
        ({"device": "meta"}, "device 'meta'"),
        ({"schedule": "sawtooth"}, "schedule must be one of"),
    ],
)
def test_bad_options_name_the_option_and_the_value(options, match):
    with pytest.raises(LRAdvisorError, match=match):
        lradvisor.suggest(_CNN(), _images(), nn.CrossEntropyLoss(), **{"steps": 10, **options})


def test_importing_lradvisor_does_not_import_torch():
    code = "import sys, lradvisor; assert 'torch' not in sys.modules; print(callable(lradvisor.suggest))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_a_failure_inside_training_reaches_the_cli_as_one_line(tmp_path):
    (tmp_path / "nets.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Flaky(nn.Module):
                def __init__(self, in_features, num_classes):
                    super().__init__()
                    self.fc = nn.Linear(in_features, num_classes)
                    self.calls = 0

                def forward(self, x):
                    self.calls += 1
                    if self.calls > 3 and x.shape[0] > 2:
                        raise RuntimeError("the GPU fell over")
                    return self.fc(x)

            def flaky(in_features, num_classes):
                return Flaky(in_features, num_classes)
            """
        )
    )
    (tmp_path / "m.yaml").write_text(
        "model: {factory: 'nets:flaky'}\ndata: {n: 40, dim: 4, classes: 2}\ntraining: {steps: 20}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "lradvisor.cli", "suggest", "--model", str(tmp_path / "m.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lradvisor: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "model model" in errors[0] or "Flaky" in errors[0] or "flaky" in errors[0]
    assert "the GPU fell over" in errors[0]
