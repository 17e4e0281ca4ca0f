"""`lradvisor suggest` on users' own models: clear errors, and 'theory does not apply' advice."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from lradvisor.advisor import advise
from lradvisor.config import load_config

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    def gelu_mlp(in_features, num_classes, hidden=16):
        return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, num_classes))

    def broken(in_features, num_classes):
        raise RuntimeError("out of coffee")

    def wrong_input(in_features, num_classes):
        return nn.Linear(in_features + 3, num_classes)
    """
)


def _config(tmp_path, factory, **extra):
    (tmp_path / "my_models.py").write_text(MODELS)
    raw = {
        "name": "user",
        "model": {"factory": factory, **extra},
        "data": {"source": "gaussian_mixture", "n": 60, "dim": 8, "classes": 3},
        "training": {"loss": "ce", "steps": 60},
        "sweep": {"seeds": [1, 2]},
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _suggest(path):
    return subprocess.run(
        [sys.executable, "-m", "lradvisor.cli", "suggest", "--model", str(path)],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    ("factory", "field", "words"),
    [
        ("no_such_module_xyz:fn", "model.factory", "importable"),
        ("my_models:broken", "model.factory", "out of coffee"),
        ("my_models:wrong_input", "data", "inputs (n, 8) to logits (n, 3)"),
        ("not a path", "model.factory", "package.module:function"),
    ],
    ids=["unreadable-path", "factory-raises", "shape-mismatch", "malformed"],
)
def test_bad_user_models_are_one_line_errors_with_exit_2(tmp_path, factory, field, words):
    proc = _suggest(_config(tmp_path, factory))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert f"'{field}'" in lines[0] and words in lines[0]


def test_model_without_a_law_gets_the_parts_that_still_apply(tmp_path):
    config = load_config(
        _config(tmp_path, "my_models:gelu_mlp", kwargs={"hidden": 16}, width_kwarg="hidden")
    )
    advice = advise(config, widths=True)
    assert advice.recommended_lr > 0 and advice.eos_lr > 0
    assert advice.alpha_predicted is None and advice.drift_curve == []
    text = " ".join(advice.does_not_apply)
    assert "no rescaling-symmetric" in text and "GELU" in text
    assert any("stability bound" in line for line in advice.applies)
    assert len(advice.eos_lr_by_width) == 3
