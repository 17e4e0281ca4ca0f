"""Hostile and broken inputs: every one is a single ``lradvisor: error:`` line with exit code 2
and no traceback, or a stated, correct behaviour (named in the case).

The classes follow issue 12: file reading, values reaching torch/numpy, data files,
factories, storages, output paths, spool and permissions, memory, hangs, and values that
used to be silently wrong. Most cases run the CLI in-process (click's runner); the few that
need a real process (exit codes of a signal, import paths) live in ``test_security.py`` and
``test_signals.py``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result

from lradvisor.cli import main

TINY = {
    "name": "tiny",
    "model": {"hidden": [4]},
    "data": {"source": "gaussian_mixture", "n": 40, "dim": 3, "classes": 2},
    "training": {"steps": 3, "dtype": "float64"},
    "sweep": {"lrs": [0.01, 0.1], "seeds": [1]},
}


def study_of(model: object, **fields: object) -> dict:
    return {
        "name": "hostile",
        "model": model,
        "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
        "metric": "train_loss",
        "budget": {"n_trials": 1, "steps": 3},
        "sampler": {"type": "random"},
        "pruner": {"type": "none"},
        **fields,
    }


def run(args: list[str], **env: str) -> Result:
    return CliRunner().invoke(main, args, env=env or None)


def assert_one_line_error(result: Result, *words: str) -> str:
    """Exit 2, exactly one ``lradvisor: error:`` line on stderr, no traceback anywhere."""
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("lradvisor: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert len(errors[0]) < 2100, "echoed values are shortened"
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def write(path: Path, data: object) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, str):
        path.write_text(data)
    else:
        path.write_text(yaml.safe_dump(data))
    return path


def edited(base: dict, **sections: dict) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(base))
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` read-only even for root (the immutable attribute), or skip."""
    mode = path.stat().st_mode
    path.chmod(mode & 0o555)
    immutable = False
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        immutable = done.returncode == 0
        if not immutable:
            path.chmod(mode)
            pytest.skip("running as root without chattr: nothing is read-only")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


# ------------------------------------------------------------------------- file reading

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)

FILES: list[tuple[str, Callable[[Path], Path], list[str]]] = [
    ("missing", lambda d: d / "nope.yaml", ["a readable YAML file", "No such file"]),
    ("folder", lambda d: (d / "folder.yaml").mkdir() or d / "folder.yaml", ["folder.yaml"]),
    ("dev-zero", lambda d: Path("/dev/zero"), ["a regular YAML file", "not a regular file"]),
    ("dev-null", lambda d: Path("/dev/null"), ["a regular YAML file"]),
    ("fifo", lambda d: os.mkfifo(d / "f.yaml") or d / "f.yaml", ["not a regular file"]),
    ("huge", lambda d: write(d / "h.yaml", "#" * (5 * 1024 * 1024)), ["at most"]),
    ("latin-1", lambda d: write(d / "l.yaml", "name: caf\xe9\n".encode("latin-1")), ["UTF-8"]),
    ("utf16-no-bom", lambda d: write(d / "u.yaml", "a: 1\n".encode("utf-16-le")), ["NUL"]),
    ("binary", lambda d: write(d / "b.yaml", bytes(range(256)) * 4), ["UTF-8"]),
    ("empty", lambda d: write(d / "e.yaml", ""), ["'<root>'", "mapping"]),
    ("list", lambda d: write(d / "s.yaml", "- 1\n- 2\n"), ["'<root>'", "mapping"]),
    ("scalar", lambda d: write(d / "s.yaml", "just text\n"), ["'<root>'"]),
    ("syntax", lambda d: write(d / "s.yaml", "model: [unclosed\n"), ["valid YAML"]),
    ("tab", lambda d: write(d / "s.yaml", "model:\n\t- 1\n"), ["valid YAML"]),
    (
        "python-tag",
        lambda d: write(d / "s.yaml", "model: !!python/object/apply:os.system ['true']\n"),
        ["valid YAML"],
    ),
    (
        "duplicate-key",
        lambda d: write(d / "s.yaml", "model: {hidden: [4]}\nmodel: {hidden: [8]}\n"),
        ["duplicate key 'model'"],
    ),
    (
        "duplicate-nested-key",
        lambda d: write(d / "s.yaml", "model: {hidden: [4]}\ntraining: {steps: 3, steps: 4}\n"),
        ["duplicate key 'steps'"],
    ),
    ("alias-bomb", lambda d: write(d / "s.yaml", ALIAS_BOMB), ["aliases are expanded"]),
    (
        "alias-bomb-in-field",
        lambda d: write(d / "s.yaml", ALIAS_BOMB.replace("a: &a", "x: &a") + "model: *i\n"),
        ["aliases are expanded"],
    ),
    ("deep-nesting", lambda d: write(d / "s.yaml", "a: " + "[" * 3000 + "]" * 3000), ["nesting"]),
    ("nesting-70", lambda d: write(d / "s.yaml", "a: " + "[" * 70 + "]" * 70), ["nesting"]),
]


@pytest.mark.parametrize(("make", "words"), [c[1:] for c in FILES], ids=[c[0] for c in FILES])
@pytest.mark.parametrize("command", ["sweep", "study"])
def test_file_reading(tmp_path: Path, command: str, make, words: list[str]) -> None:
    path = make(tmp_path)
    args = ["sweep", "--model", str(path)] if command == "sweep" else ["study", "run", str(path)]
    started = time.perf_counter()
    result = run([*args, "--no-mlflow"] if command == "study" else args)
    assert_one_line_error(result, *words)
    assert time.perf_counter() - started < 10, "refused fast, never hangs"


def test_utf16_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Stated behaviour: YAML allows UTF-16 with a BOM, so the file is read (here: one
    error later, on the unknown field, which proves the text was decoded)."""
    path = write(tmp_path / "u.yaml", "model: {hidden: [4]}\nbogus: 1\n".encode("utf-16"))
    assert_one_line_error(run(["sweep", "--model", str(path)]), "'bogus'", "a known field")


# --------------------------------------------------- values that reach torch and numpy

VALUES = [
    # (id, sections, field, words)
    ("seed-2^64", {"sweep": {"seeds": [2**64]}}, "sweep.seeds.0", ["9223372036854775807"]),
    ("seed-negative", {"sweep": {"seeds": [-1]}}, "sweep.seeds.0", ["greater than or equal"]),
    ("seed-float", {"sweep": {"seeds": [1.5]}}, "sweep.seeds.0", []),
    ("seed-bool", {"sweep": {"seeds": [True]}}, "sweep.seeds.0", ["not true/false"]),
    ("seed-repeated", {"sweep": {"seeds": [1, 1]}}, "sweep.seeds", ["distinct"]),
    ("device-toaster", {"training": {"device": "toaster"}}, "training.device", ["cpu, cuda"]),
    ("device-meta", {"training": {"device": "meta"}}, "training.device", ["cpu, cuda"]),
    ("device-empty", {"training": {"device": ""}}, "training.device", []),
    ("device-cuda-index", {"training": {"device": "cuda:x"}}, "training.device", []),
    ("lr-inf", {"sweep": {"lrs": [float("inf")]}}, "sweep.lrs.0", ["finite"]),
    ("lr-nan", {"sweep": {"lrs": [float("nan")]}}, "sweep.lrs.0", ["finite"]),
    ("lr-zero", {"sweep": {"lrs": [0.0]}}, "sweep.lrs.0", ["greater than 0"]),
    ("lr-bool", {"sweep": {"lrs": [True]}}, "sweep.lrs.0", ["not true/false"]),
    ("lr-repeated", {"sweep": {"lrs": [0.1, 0.1]}}, "sweep.lrs", ["distinct"]),
    ("lr-text", {"sweep": {"lrs": ["fast"]}}, "sweep.lrs.0", []),
    ("lrs-empty", {"sweep": {"lrs": []}}, "sweep.lrs", []),
    ("steps-true", {"training": {"steps": True}}, "training.steps", ["not true/false"]),
    ("steps-zero", {"training": {"steps": 0}}, "training.steps", ["greater than 0"]),
    ("steps-fraction", {"training": {"steps": 2.5}}, "training.steps", []),
    ("steps-1e20", {"training": {"steps": "1e20"}}, "training.steps", ["less than or equal"]),
    ("hidden-true", {"model": {"hidden": [True]}}, "model.hidden.0", ["not true/false"]),
    ("hidden-zero", {"model": {"hidden": [0]}}, "model.hidden.0", ["greater than 0"]),
    ("hidden-empty", {"model": {"hidden": []}}, "model.hidden", []),
    ("hidden-deep", {"model": {"hidden": [2] * 1001}}, "model.hidden", []),
    ("hidden-400GB", {"model": {"hidden": [200_000, 200_000, 200_000]}}, "model.hidden", ["GB"]),
    (
        "slope-nan",
        {"model": {"negative_slope": float("nan"), "activation": "leaky_relu"}},
        "model.negative_slope",
        ["finite"],
    ),
    ("separation-inf", {"data": {"separation": float("inf")}}, "data.separation", ["finite"]),
    ("separation-bool", {"data": {"separation": True}}, "data.separation", ["not true/false"]),
    ("classes-one", {"data": {"classes": 1}}, "data.classes", []),
    ("n-huge", {"data": {"n": 10**13}}, "model.hidden", ["fits in memory"]),
    ("dim-huge", {"data": {"dim": 10**12}}, "model.hidden", ["fits in memory"]),
    (
        "val-all",
        {"data": {"validation_fraction": 0.99}},
        "data.validation_fraction",
        ["training rows"],
    ),
    ("val-one", {"data": {"validation_fraction": 1.0}}, "data.validation_fraction", []),
    ("val-negative", {"data": {"validation_fraction": -0.1}}, "data.validation_fraction", []),
    (
        "batch-equals-n",
        {"training": {"batch_size": 40}},
        "training.batch_size",
        ["smaller than the 40 training rows"],
    ),
    ("batch-above-n", {"training": {"batch_size": 500}}, "training.batch_size", ["training rows"]),
    ("batch-true", {"training": {"batch_size": True}}, "training.batch_size", []),
    ("momentum-one", {"training": {"momentum": 1.0}}, "training.momentum", []),
    ("momentum-nan", {"training": {"momentum": float("nan")}}, "training.momentum", ["finite"]),
    (
        "weight-decay-inf",
        {"training": {"weight_decay": float("inf")}},
        "training.weight_decay",
        ["finite"],
    ),
    ("divergence-one", {"training": {"divergence_factor": 1.0}}, "training.divergence_factor", []),
    ("dtype-float16", {"training": {"dtype": "float16"}}, "training.dtype", ["float32"]),
    ("loss-hinge", {"training": {"loss": "hinge"}}, "training.loss", []),
    ("unknown-section", {"trainnig": {"steps": 3}}, "trainnig", ["a known field"]),
    ("unknown-field", {"training": {"stpes": 3}}, "training.stpes", ["a known field"]),
    ("name-long", {"name": "n" * 500}, "name", []),
    ("name-number", {"name": 7}, "name", []),
    ("sweep-list", {"sweep": [1, 2]}, "sweep", []),
    (
        "data-path-missing",
        {"data": {"source": "file", "path": "none.csv"}},
        "data.path",
        ["an existing file"],
    ),
    (
        "data-path-suffix",
        {"data": {"source": "file", "path": "x.parquet"}},
        "data.path",
        [".npz or .csv"],
    ),
    ("factory-pattern", {"model": {"factory": "not a reference"}}, "model", []),
    ("factory-and-hidden", {"model": {"factory": "m:f"}}, "model.factory", ["not both"]),
]


@pytest.mark.parametrize(
    ("sections", "field", "words"), [c[1:] for c in VALUES], ids=[c[0] for c in VALUES]
)
def test_config_values(tmp_path: Path, sections: dict, field: str, words: list[str]) -> None:
    raw = edited(TINY, **sections)
    path = write(tmp_path / "m.yaml", raw)
    line = assert_one_line_error(run(["sweep", "--model", str(path)]), *words)
    assert f"'{field}" in line, line


def test_steps_1e12_gets_an_estimate_and_a_warning(tmp_path: Path) -> None:
    """Stated behaviour: a run of years is not refused, but said, with its estimate, before
    any training (here the JSON path then stops the run at once)."""
    path = write(tmp_path / "m.yaml", edited(TINY, training={"steps": "1e12"}))
    result = run(["sweep", "--model", str(path), "--law", "9"])
    assert_one_line_error(result, "--law")
    study = write(tmp_path / "s.yaml", study_of("m.yaml", budget={"n_trials": 2, "steps": "1e12"}))
    result = run(["study", "run", str(study), "--no-mlflow", "--storage", "sqlite:////proc/x.db"])
    assert_one_line_error(result, "storage")
    assert "lradvisor: warning: 2 trial(s) × 1,000,000,000,000 steps" in result.stderr
    assert "years" in result.stderr


def test_a_sweep_that_runs_for_hours_is_announced(tmp_path: Path, monkeypatch) -> None:
    import lradvisor.sweep

    monkeypatch.setattr(
        lradvisor.sweep,
        "run",
        lambda *a, **k: (_ for _ in ()).throw(
            __import__("lradvisor").LRAdvisorError("stopped before training")
        ),
    )
    path = write(tmp_path / "m.yaml", edited(TINY, training={"steps": 10**12}))
    result = run(["sweep", "--model", str(path)])
    assert_one_line_error(result, "stopped before training")
    assert "lradvisor: warning: 2 trial(s) × 1,000,000,000,000 steps" in result.stderr


# ------------------------------------------------------------------------ command line

OPTIONS = [
    ("seeds-repeated", ["--seeds", "1,1"], ["--seeds", "distinct"]),
    ("seeds-2^64", ["--seeds", str(2**64)], ["--seeds", "2^63"]),
    ("seeds-negative", ["--seeds", "-1"], ["--seeds"]),
    ("seeds-text", ["--seeds", "a,b"], ["--seeds", "int"]),
    ("seeds-empty", ["--seeds", ","], ["--seeds", "at least one"]),
    ("lrs-inf", ["--lrs", "inf"], ["--lrs", "> 0"]),
    ("lrs-nan", ["--lrs", "nan"], ["--lrs"]),
    ("lrs-overflow", ["--lrs", "1e400"], ["--lrs"]),
    ("lrs-negative", ["--lrs", "0.1,-1"], ["--lrs"]),
    ("lrs-repeated", ["--lrs", "0.1,0.1"], ["--lrs", "distinct"]),
    ("device-toaster", ["--device", "toaster"], ["training.device"]),
    ("device-meta", ["--device", "meta"], ["training.device"]),
    ("device-cuda", ["--device", "cuda"], ["training.device"]),
    ("steps-zero", ["--steps", "0"], ["--steps"]),
    ("steps-text", ["--steps", "many"], ["--steps"]),
    ("law-too-big", ["--law", "9"], ["--law"]),
    ("steps-1e20", ["--steps", str(10**20)], ["--steps", "at most"]),
    ("unknown-option", ["--bogus"], ["No such option"]),
    ("extra-argument", ["extra"], ["unexpected extra argument"]),
]


@pytest.mark.parametrize(
    ("options", "words"), [c[1:] for c in OPTIONS], ids=[c[0] for c in OPTIONS]
)
def test_sweep_options(tmp_path: Path, options: list[str], words: list[str]) -> None:
    if options == ["--device", "cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    path = write(tmp_path / "m.yaml", TINY)
    assert_one_line_error(run(["sweep", "--model", str(path), *options]), *words)


SUGGEST_OPTIONS = [
    ("seeds-repeated", ["--seeds", "3,3"], ["--seeds"]),
    ("batch-negative", ["--batch-size", "-1"], ["--batch-size"]),
    ("batch-above-n", ["--batch-size", "100"], ["training.batch_size", "training rows"]),
    ("momentum-one", ["--momentum", "1"], ["training.momentum"]),
    ("momentum-nan", ["--momentum", "nan"], ["training.momentum"]),
    ("weight-decay-inf", ["--weight-decay", "inf"], ["training.weight_decay"]),
    ("device-toaster", ["--device", "toaster"], ["training.device"]),
    ("optimizer-unknown", ["--optimizer", "lion"], ["--optimizer"]),
    ("missing-model", ["--model"], ["--model"]),
]


@pytest.mark.parametrize(
    ("options", "words"), [c[1:] for c in SUGGEST_OPTIONS], ids=[c[0] for c in SUGGEST_OPTIONS]
)
def test_suggest_options(tmp_path: Path, options: list[str], words: list[str]) -> None:
    path = write(tmp_path / "m.yaml", TINY)
    args = ["suggest", *options] if options == ["--model"] else ["suggest", "--model", str(path)]
    assert_one_line_error(run(args if options == ["--model"] else [*args, *options]), *words)


def test_no_command_and_unknown_command() -> None:
    assert_one_line_error(run(["nonsense"]), "No such command")
    assert run(["--version"]).output.startswith("lradvisor, version ")


# -------------------------------------------------------------------------- data files


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


RNG = np.random.default_rng(0)
X40 = RNG.normal(size=(40, 3))
Y40 = np.arange(40) % 2


def _with_value(array: np.ndarray, index: tuple, value: float) -> np.ndarray:
    copy = np.array(array, dtype=float)
    copy[index] = value
    return copy


DATA = [
    ("labels-2d", lambda d: _npz(d / "d.npz", X=X40, y=np.stack([Y40, Y40], 1)), ["1-D label"]),
    ("garbage-zip", lambda d: write(d / "d.npz", b"PK\x03\x04" + b"\x00" * 64), ["zip"]),
    ("text-as-npz", lambda d: write(d / "d.npz", "X,y\n1,2\n"), ["not a zip archive"]),
    (
        "npy-as-npz",
        lambda d: (np.save(d / "a.npy", X40), os.replace(d / "a.npy", d / "d.npz"), d / "d.npz")[
            -1
        ],
        ["not a zip archive"],
    ),
    (
        "object-arrays",
        lambda d: _npz(d / "d.npz", X=np.array([[1], [2, 3]], dtype=object), y=np.array([0, 1])),
        ["allow_pickle"],
    ),
    ("no-X", lambda d: _npz(d / "d.npz", features=X40, y=Y40), ["'X' and 'y'"]),
    (
        "string-features",
        lambda d: _npz(d / "d.npz", X=np.array([["a"]] * 40), y=Y40),
        ["numeric feature"],
    ),
    ("rows-mismatch", lambda d: _npz(d / "d.npz", X=X40, y=Y40[:10]), ["as many labels"]),
    ("X-1d", lambda d: _npz(d / "d.npz", X=X40[:, 0], y=Y40), ["2-D feature"]),
    (
        "X-nan",
        lambda d: _npz(d / "d.npz", X=_with_value(X40, (3, 1), np.nan), y=Y40),
        ["finite features"],
    ),
    (
        "X-inf",
        lambda d: _npz(d / "d.npz", X=_with_value(X40, (0, 0), np.inf), y=Y40),
        ["finite features"],
    ),
    (
        "y-nan",
        lambda d: _npz(d / "d.npz", X=X40, y=_with_value(Y40, (2,), np.nan)),
        ["finite class labels"],
    ),
    ("y-fraction", lambda d: _npz(d / "d.npz", X=X40, y=Y40 + 0.5), ["integer class labels"]),
    ("one-class", lambda d: _npz(d / "d.npz", X=X40, y=np.zeros(40)), ["two classes"]),
    (
        "standardise-overflow",
        lambda d: _npz(
            d / "d.npz", X=_with_value(_with_value(X40, (0, 0), 1e308), (1, 0), -1e308), y=Y40
        ),
        ["data.standardize", "overflows"],
    ),
    (
        "float32-overflow",
        lambda d: write(
            d / "d.csv", "\n".join(f"{1e39 if i == 0 else i},{i % 2}" for i in range(40))
        ),
        ["stay finite in float32"],
    ),
    ("csv-empty", lambda d: write(d / "d.csv", ""), ["at least one row"]),
    ("csv-header-only", lambda d: write(d / "d.csv", "a,b,label\n"), ["at least one row"]),
    ("csv-text", lambda d: write(d / "d.csv", "1,2,a\n3,4,b\n"), ["numeric .csv"]),
    ("csv-empty-field", lambda d: write(d / "d.csv", "1,,0\n3,4,1\n"), ["numeric .csv"]),
    ("csv-one-column", lambda d: write(d / "d.csv", "1\n2\n3\n"), ["numeric .csv"]),
    ("csv-nan", lambda d: write(d / "d.csv", "1,nan,0\n3,4,1\n"), ["numeric .csv"]),
    ("csv-inf", lambda d: write(d / "d.csv", "1,inf,0\n3,4,1\n2,2,0\n"), ["finite features"]),
    ("csv-label-nan", lambda d: write(d / "d.csv", "1,2,nan\n3,4,1\n"), ["numeric .csv"]),
    ("csv-fifo", lambda d: os.mkfifo(d / "d.csv") or d / "d.csv", ["existing"]),
    ("csv-too-large", lambda d: write(d / "d.csv", "1,0\n2,1\n" * 10), ["fits in memory"]),
]


@pytest.mark.parametrize(("make", "words"), [c[1:] for c in DATA], ids=[c[0] for c in DATA])
def test_data_files(tmp_path: Path, monkeypatch, make, words: list[str]) -> None:
    path = make(tmp_path)
    if "fits in memory" in words:
        import lradvisor.config

        monkeypatch.setattr(lradvisor.config, "available_memory", lambda: 100)
    data = {"source": "file", "path": path.name, "standardize": "float32" not in " ".join(words)}
    raw = edited(TINY, data=data, training={"dtype": "float32"})
    model = write(tmp_path / "m.yaml", raw)
    assert_one_line_error(run(["sweep", "--model", str(model), "--no-predict"]), *words)


def test_file_data_checks_the_split_and_the_batch(tmp_path: Path) -> None:
    _npz(tmp_path / "d.npz", X=X40, y=Y40)
    for sections, words in [
        ({"data": {"validation_fraction": 0.99}}, ["training rows", "40 rows leave 0"]),
        ({"training": {"batch_size": 40}}, ["training.batch_size", "40 training rows"]),
    ]:
        data = {"source": "file", "path": "d.npz", **sections.get("data", {})}
        raw = edited(TINY, data=data, training=sections.get("training", {}))
        model = write(tmp_path / "m.yaml", raw)
        assert_one_line_error(run(["sweep", "--model", str(model), "--no-predict"]), *words)


# --------------------------------------------------------------------------- factories

FACTORIES = """
from torch import nn

def exits(in_features, num_classes):
    raise SystemExit(0)

def returns_int(in_features, num_classes):
    return 3

class Quits(nn.Module):
    def forward(self, x):
        raise SystemExit(0)

def quits(in_features, num_classes):
    return Quits()

def huge_message(in_features, num_classes):
    raise ValueError("x" * 100000)
"""

FACTORY_CASES = [
    ("system-exit-0", "hostile_factories:exits", ["SystemExit"]),
    ("forward-system-exit", "hostile_factories:quits", ["'data'", "SystemExit"]),
    ("not-a-module", "hostile_factories:returns_int", ["torch.nn.Module"]),
    ("huge-message", "hostile_factories:huge_message", ["ValueError"]),
    ("import-exits", "hostile_exit_on_import:f", ["SystemExit: 3"]),
    ("missing-module", "hostile_nowhere:f", ["ModuleNotFoundError"]),
    ("missing-function", "hostile_factories:nothing", ["no attribute"]),
    ("torch-hub", "torch.hub:load", ["LRADVISOR_TRUSTED_FACTORIES=torch"]),
    ("builtins", "builtins:exec", ["LRADVISOR_TRUSTED_FACTORIES=builtins"]),
    ("shadows-stdlib", "json:loads", ["rename json.py"]),
]


@pytest.mark.parametrize(
    ("factory", "words"), [c[1:] for c in FACTORY_CASES], ids=[c[0] for c in FACTORY_CASES]
)
def test_factories(tmp_path: Path, factory: str, words: list[str]) -> None:
    (tmp_path / "hostile_factories.py").write_text(textwrap.dedent(FACTORIES))
    (tmp_path / "hostile_exit_on_import.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "json.py").write_text("raise RuntimeError('a json.py next to the model ran')\n")
    raw = {**edited(TINY), "model": {"factory": factory}}
    model = write(tmp_path / "m.yaml", raw)
    result = run(["sweep", "--model", str(model), "--no-predict"])
    line = assert_one_line_error(result, *words)
    assert len(line) < 1200


def test_trusted_installed_factory_runs(tmp_path: Path) -> None:
    """Stated behaviour: an installed package's factory runs once the environment trusts it
    (torch.nn:Linear is called as Linear(in_features=d, num_classes=K) and fails on the
    keyword: the import was allowed)."""
    raw = {**edited(TINY), "model": {"factory": "torch.nn:Linear"}}
    model = write(tmp_path / "m.yaml", raw)
    result = run(["sweep", "--model", str(model)], LRADVISOR_TRUSTED_FACTORIES="torch")
    assert_one_line_error(result, "it raised TypeError")


# ----------------------------------------------------------------------------- storages

STORAGES = [
    ("unknown-scheme", "foo://bar", ["unknown database scheme 'foo'"]),
    ("malformed-port", "postgresql://u@:badport/db", ["not a database URL"]),
    ("folder", "{tmp}", ["is a folder"]),
    ("sqlite-folder", "sqlite:///{tmp}", ["is a folder"]),
    ("mysql-without-driver", "mysql://u@localhost/db", ["driver is not installed"]),
    ("sqlite-memory", "sqlite:///:memory:", ["in-memory SQLite"]),
    ("sqlite-memory-short", "sqlite://", ["in-memory SQLite"]),
    ("postgres-refused", "postgresql://u@127.0.0.1:1/db", ["Connection refused"]),
    ("sqlite-unwritable", "sqlite:////proc/lradvisor.db", ["storage sqlite:////proc"]),
    ("journal-unwritable", "/proc/lradvisor.journal", ["storage /proc/lradvisor.journal"]),
    ("not-a-database", "sqlite:///{tmp}/garbage.db", ["not a database"]),
    ("journal-is-fifo", "{tmp}/fifo.journal", ["not a regular file"]),
    ("empty", " ", ["storage"]),
]


@pytest.mark.parametrize(
    ("storage", "words"), [c[1:] for c in STORAGES], ids=[c[0] for c in STORAGES]
)
def test_storages(tmp_path: Path, storage: str, words: list[str]) -> None:
    if "mysql" in storage:
        import importlib.util

        if importlib.util.find_spec("MySQLdb"):
            pytest.skip("a MySQL driver is installed here")
    write(tmp_path / "garbage.db", b"this is not SQLite" * 100)
    os.mkfifo(tmp_path / "fifo.journal")
    write(tmp_path / "m.yaml", TINY)
    study = write(tmp_path / "s.yaml", study_of("m.yaml"))
    args = ["study", "run", str(study), "--no-mlflow", "--no-predict"]
    result = run([*args, "--storage", storage.format(tmp=tmp_path)])
    assert_one_line_error(result, *words)


def test_read_only_study_database(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path / "m.yaml", TINY)
    study = write(tmp_path / "s.yaml", study_of("m.yaml"))
    args = ["study", "run", str(study), "--no-mlflow", "--no-predict"]
    monkeypatch.chdir(tmp_path)
    assert run(args).exit_code == 0  # creates runs/studies.db
    with read_only(tmp_path / "runs" / "studies.db"), read_only(tmp_path / "runs"):
        result = run([*args, "--n-trials", "2"])
    assert_one_line_error(result, "storage sqlite:///runs/studies.db", "readonly")


def test_read_only_working_folder(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path / "m.yaml", TINY)
    study = write(tmp_path / "s.yaml", study_of("m.yaml"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("LRADVISOR_MLFLOW_SPOOL")
    with read_only(work):
        result = run(["study", "run", str(study), "--no-predict"])
    assert_one_line_error(result, "runs/mlflow-spool", "--no-mlflow")
    with read_only(work):
        result = run(["study", "run", str(study), "--no-predict", "--no-mlflow"])
    assert_one_line_error(result, "storage sqlite:///runs/studies.db")


def test_an_objective_error_is_one_line_without_optuna_traceback(tmp_path: Path) -> None:
    """A trial failing with a library error (a factory refusing a sampled width) is one
    line: Optuna's own "Trial 0 failed" warning and traceback are not printed first."""
    (tmp_path / "picky.py").write_text(
        "from torch import nn\n"
        "def build(in_features, num_classes, width=4):\n"
        "    if width > 2:\n"
        "        raise ValueError('width above 2')\n"
        "    return nn.Linear(in_features, num_classes)\n"
    )
    raw = {**edited(TINY), "model": {"factory": "picky:build", "width_kwarg": "width"}}
    space = {
        "lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
        "width": {"type": "categorical", "choices": [8]},
    }
    study = write(tmp_path / "s.yaml", study_of(raw, search_space=space))
    result = run(
        [
            "study",
            "run",
            str(study),
            "--no-mlflow",
            "--no-predict",
            "--storage",
            f"sqlite:///{tmp_path / 's.db'}",
        ]
    )
    assert_one_line_error(result, "width above 2")
    assert "Trial 0 failed" not in result.output


STUDY_VALUES = [
    ("n-trials-bool", {"budget": {"n_trials": True, "steps": 3}}, "budget.n_trials"),
    ("steps-nan", {"budget": {"n_trials": 1, "steps": float("nan")}}, "budget.steps"),
    ("seed-negative", {"budget": {"n_trials": 1, "steps": 3, "seed": -1}}, "budget.seed"),
    ("seed-2^64", {"budget": {"n_trials": 1, "steps": 3, "seed": 2**64}}, "budget.seed"),
    (
        "lr-high-inf",
        {"search_space": {"lr": {"type": "float", "low": 0.1, "high": float("inf")}}},
        "search_space.lr.high",
    ),
    (
        "lr-choice-inf",
        {"search_space": {"lr": {"type": "categorical", "choices": [float("inf")]}}},
        "search_space.lr.choices.0",
    ),
    (
        "width-choice-bool",
        {
            "search_space": {
                "lr": {"type": "categorical", "choices": [0.1]},
                "width": {"type": "categorical", "choices": [True]},
            }
        },
        "search_space.width.choices.0",
    ),
    (
        "width-tens-of-GB",
        {
            "search_space": {
                "lr": {"type": "categorical", "choices": [0.1]},
                "width": {"type": "int", "low": 4, "high": 2_000_000},
                "depth": {"type": "int", "low": 1, "high": 3},
            }
        },
        "search_space.width",
    ),
    (
        "depth-huge",
        {
            "search_space": {
                "lr": {"type": "categorical", "choices": [0.1]},
                "depth": {"type": "int", "low": 1, "high": 10**9},
            }
        },
        "search_space.depth.high",
    ),
    (
        "batch-above-rows",
        {
            "search_space": {
                "lr": {"type": "categorical", "choices": [0.1]},
                "batch_size": {"type": "categorical", "choices": [16, 64]},
            }
        },
        "search_space.batch_size",
    ),
    ("name-long", {"name": "s" * 300}, "name"),
    (
        "duplicate-choices",
        {"search_space": {"lr": {"type": "categorical", "choices": [0.1, 0.1]}}},
        "search_space.lr.choices",
    ),
]


@pytest.mark.parametrize(
    ("fields", "field"), [c[1:] for c in STUDY_VALUES], ids=[c[0] for c in STUDY_VALUES]
)
def test_study_values(tmp_path: Path, fields: dict, field: str) -> None:
    write(tmp_path / "m.yaml", TINY)
    study = write(tmp_path / "s.yaml", study_of("m.yaml", **fields))
    line = assert_one_line_error(run(["study", "run", str(study), "--no-mlflow"]))
    assert f"'{field}" in line, line


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--workers", "100000"], ["workers must be at most"]),
        (["--workers", "0"], ["--workers"]),
        (["--n-trials", "0"], ["--n-trials"]),
        (["--n-trials", str(10**12)], ["n_trials must be between"]),
        (["--study-name", "x" * 300], ["study name"]),
        (["--tracking-uri", "foo://bar"], ["MLflow has no store for 'foo://'"]),
        (["--tracking-uri", "sqlite:////proc/mlflow.db"], ["cannot create files in /proc"]),
    ],
    ids=[
        "workers-100000",
        "workers-0",
        "n-trials-0",
        "n-trials-1e12",
        "name-long",
        "tracking-scheme",
        "tracking-unwritable",
    ],
)
def test_study_options(tmp_path: Path, options: list[str], words: list[str]) -> None:
    write(tmp_path / "m.yaml", TINY)
    study = write(tmp_path / "s.yaml", study_of("m.yaml"))
    args = ["study", "run", str(study), "--no-predict", "--storage", f"sqlite:///{tmp_path}/s.db"]
    if "--tracking-uri" not in options:
        args.append("--no-mlflow")
    assert_one_line_error(run([*args, *options]), *words)


def test_unwritable_spool_is_an_error_before_the_work(tmp_path: Path) -> None:
    write(tmp_path / "m.yaml", TINY)
    study = write(tmp_path / "s.yaml", study_of("m.yaml"))
    result = run(
        ["study", "run", str(study), "--no-predict", "--storage", f"sqlite:///{tmp_path}/s.db"],
        LRADVISOR_MLFLOW_SPOOL="/proc/lradvisor-spool",
    )
    assert_one_line_error(result, "MLflow spool", "/proc")
    assert not (tmp_path / "s.db").exists(), "refused before the study was created"


# ------------------------------------------------------------------------- output paths

OUTPUTS = [
    ("json-missing-folder", "sweep", ["--json", "{tmp}/no/such/out.json"], ["does not exist"]),
    ("json-proc", "sweep", ["--json", "/proc/out.json"], ["does not take new files"]),
    ("json-is-folder", "sweep", ["--json", "{tmp}"], ["is a folder"]),
    ("json-under-file", "sweep", ["--json", "{tmp}/m.yaml/out.json"], ["does not exist"]),
    ("json-fifo", "sweep", ["--json", "{tmp}/fifo"], ["not a regular file"]),
    ("json-read-only", "sweep", ["--json", "{tmp}/ro/out.json"], ["does not take new files"]),
    ("plot-extension", "suggest", ["--plot", "{tmp}/p.xyz"], [".png"]),
    ("plot-missing-folder", "suggest", ["--plot", "{tmp}/no/p.png"], ["does not exist"]),
    ("suggest-json-proc", "suggest", ["--json", "/proc/a.json"], ["does not take new files"]),
    ("report-extension", "reproduce", ["--report", "{tmp}/r.txt"], [".md"]),
    ("report-missing-folder", "reproduce", ["--report", "{tmp}/no/r.md"], ["does not exist"]),
    ("reproduce-json-folder", "reproduce", ["--json", "{tmp}"], ["is a folder"]),
    ("study-json-proc", "study", ["--json", "/proc/s.json"], ["does not take new files"]),
]


@pytest.mark.parametrize(
    ("command", "options", "words"), [c[1:] for c in OUTPUTS], ids=[c[0] for c in OUTPUTS]
)
def test_output_paths_are_checked_before_the_work(
    tmp_path: Path, command: str, options: list[str], words: list[str]
) -> None:
    model = write(tmp_path / "m.yaml", TINY)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "ro").mkdir()
    options = [part.format(tmp=tmp_path) for part in options]
    args = {
        "sweep": ["sweep", "--model", str(model)],
        "suggest": ["suggest", "--model", str(model)],
        "reproduce": ["reproduce", "E5", "--quick", "--no-mlflow"],
        "study": [
            "study",
            "run",
            str(write(tmp_path / "s.yaml", study_of("m.yaml"))),
            "--no-mlflow",
        ],
    }[command]
    started = time.perf_counter()
    with read_only(tmp_path / "ro") if "/ro/" in " ".join(options) else contextlib.nullcontext():
        result = run([*args, *options])
    assert_one_line_error(result, *words)
    assert time.perf_counter() - started < 5, "refused before any work"


def test_a_result_is_not_lost_when_the_late_write_fails(tmp_path: Path, monkeypatch) -> None:
    """Stated behaviour: the path was fine when checked but the write fails after the work:
    the JSON is saved in the current folder instead, and the error line says where."""
    model = write(tmp_path / "m.yaml", TINY)
    target = tmp_path / "out" / "sweep.json"
    target.parent.mkdir()
    real_write = Path.write_text

    def failing(self: Path, *args, **kwargs):
        if self == target:
            raise PermissionError(13, "Permission denied")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing)
    monkeypatch.chdir(tmp_path)
    result = run(["sweep", "--model", str(model), "--no-predict", "--json", str(target)])
    line = assert_one_line_error(result, "could not write --json", "Permission denied")
    saved = tmp_path / line.rsplit("saved it as ", 1)[1]
    assert saved.is_file() and '"records"' in saved.read_text()
    assert "α" in result.stdout, "the table was printed as well"


# ------------------------------------------------------------------ MLflow spool and sync


def test_mlflow_sync_with_a_missing_spool_folder(tmp_path: Path) -> None:
    assert_one_line_error(run(["mlflow", "sync", "--spool", str(tmp_path / "none")]), "--spool")


def test_mlflow_sync_with_an_unknown_tracking_scheme(tmp_path: Path) -> None:
    result = run(["mlflow", "sync", "--spool", str(tmp_path), "--tracking-uri", "gopher://x"])
    assert_one_line_error(result, "gopher")


def test_mlflow_sync_quarantines_foreign_files(tmp_path: Path) -> None:
    """Stated behaviour: files that are not payloads move to bad/ and are named; exit 0."""
    (tmp_path / "0-1-a.json").write_text("{not json")
    (tmp_path / "1-2-b.json").write_text('{"kind": "trial"}')
    (tmp_path / "2-3-c.json").write_text("[1, 2]")
    result = run(["mlflow", "sync", "--spool", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "moved 3 file(s)" in result.output
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == [
        "0-1-a.json",
        "1-2-b.json",
        "2-3-c.json",
    ]


# ---------------------------------------------------------------------------- reproduce


def test_reproduce_with_an_unknown_id() -> None:
    assert_one_line_error(run(["reproduce", "E99", "--no-mlflow"]), "E99")


def test_reproduce_with_an_empty_studies_folder(tmp_path: Path) -> None:
    """An empty --studies folder is an error, not a run of zero experiments with exit 0."""
    result = run(["reproduce", "--studies", str(tmp_path), "--no-mlflow"])
    assert_one_line_error(result, str(tmp_path))


def test_learning_rates_that_overflow_diverge_and_say_so(tmp_path: Path) -> None:
    """Stated behaviour: rates of 1e200 … 1e300 are legal numbers; every trial diverges, is
    marked so, and no α is fitted (exit 0, no traceback)."""
    model = write(tmp_path / "m.yaml", TINY)
    result = run(["sweep", "--model", str(model), "--lrs", "1e200,1e250,1e300", "--no-predict"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "not fitted" in result.stdout
    assert result.stdout.count("1/1") == 3, "each rate's one seed diverged"
