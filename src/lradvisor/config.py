"""Model / sweep configuration files (YAML), validated into frozen pydantic models.

Every problem with a file becomes one :class:`~lradvisor.errors.ConfigError` whose message
names the file, the dotted field and what was expected. Files are read defensively
(:func:`read_yaml`): regular files only, at most :data:`MAX_FILE_BYTES`, UTF-8 (or UTF-16
with a byte-order mark), no duplicate keys, no alias bombs or deep nesting. Numbers are
finite, integers are not booleans, and a model that cannot fit in memory is refused by an
estimate before anything is allocated (:func:`check_memory`).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lradvisor.errors import ConfigError, LRAdvisorError, shorten

ACTIVATIONS = ("relu", "leaky_relu", "identity")
LOSSES = ("ce", "mse", "mix")
OPTIMIZERS = ("sgd", "adam", "adamw")
DATA_SOURCES = ("gaussian_mixture", "sklearn", "file")
SKLEARN_SETS = ("digits", "wine", "breast_cancer", "iris")
DTYPES = ("float32", "float64")

#: Largest model / study file read (a config is a few kB; /dev/zero is endless).
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Most YAML nodes a file may expand to once aliases are followed (an alias bomb of 1 kB
#: expands to billions) and the deepest nesting it may have.
MAX_YAML_NODES = 200_000
MAX_YAML_DEPTH = 64
#: Seeds reach torch and numpy as signed 64-bit integers.
MAX_SEED = 2**63 - 1
#: More training steps than any run could take (the duration estimate warns far earlier).
MAX_STEPS = 10**15
_DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps|xpu(:\d+)?)$")


def _whole_number(value: Any) -> Any:
    """An integer field's input: ints, integral floats (``1.0e+12``) and numeric strings
    (``1e12``, which YAML 1.1 reads as a string) become ``int``; booleans are refused."""
    if isinstance(value, bool):
        raise ValueError("an integer, not true/false")
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _real_number(value: Any) -> Any:
    """A float field's input: booleans are refused (pydantic would read true as 1.0)."""
    if isinstance(value, bool):
        raise ValueError("a number, not true/false")
    return value


Integer = Annotated[int, BeforeValidator(_whole_number)]
Real = Annotated[float, BeforeValidator(_real_number)]
PositiveInt = Annotated[int, BeforeValidator(_whole_number), Field(gt=0)]
PositiveFloat = Annotated[float, BeforeValidator(_real_number), Field(gt=0)]
Seed = Annotated[int, BeforeValidator(_whole_number), Field(ge=0, le=MAX_SEED)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_FACTORY_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_MLP_ONLY_FIELDS = ("activation", "negative_slope", "bias")
_FACTORY_ONLY_FIELDS = ("kwargs", "width_kwarg")
_DATA_KWARGS = ("in_features", "num_classes")


class ModelSpec(_Strict):
    """The model of every trial: a built-in MLP (``hidden``) or the user's own (``factory``).

    A built-in MLP is input → hidden… → output, one activation between layers. A factory
    ``"package.module:function"`` is called as
    ``function(in_features=d, num_classes=K, **kwargs)`` and must return an ``nn.Module``
    mapping (n, d) inputs to (n, K) logits; the module is also looked up next to the model
    file. ``width_kwarg`` names the keyword that sets the model's width.
    """

    hidden: Annotated[list[PositiveInt], Field(min_length=1, max_length=1000)] | None = None
    activation: Literal["relu", "leaky_relu", "identity"] = "relu"
    negative_slope: Real = 0.01
    bias: bool = False
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    width_kwarg: str | None = None

    @field_validator("factory")
    @classmethod
    def _factory_reference(cls, factory: str | None) -> str | None:
        if factory is not None and not _FACTORY_PATTERN.match(factory):
            raise ValueError("a factory reference 'package.module:function'")
        return factory

    @model_validator(mode="after")
    def _one_kind(self) -> ModelSpec:
        if self.hidden is None and self.factory is None:
            raise ValueError(
                "model.hidden: this required field (hidden widths of a built-in MLP), "
                "or model.factory 'package.module:function' for your own model"
            )
        if self.hidden is not None and self.factory is not None:
            raise ValueError("model.factory: either model.hidden or model.factory, not both")
        wrong = _FACTORY_ONLY_FIELDS if self.hidden is not None else _MLP_ONLY_FIELDS
        owner = "factory models (model.factory)" if self.hidden is not None else "built-in MLPs"
        for name in wrong:
            if name in self.model_fields_set:
                raise ValueError(f"model.{name}: a field of {owner} only, not of this model")
        for name in _DATA_KWARGS:
            if name in self.kwargs:
                raise ValueError(f"model.kwargs: no '{name}' (it is set from the data)")
        return self

    @property
    def is_factory(self) -> bool:
        """True for a user model built by ``factory``; False for a built-in MLP."""
        return self.factory is not None

    @property
    def depth(self) -> int:
        """Number of weight layers (built-in MLPs only)."""
        if self.hidden is None:
            raise LRAdvisorError(
                "depth is defined for built-in MLPs (model.hidden) only; "
                "a factory model's laws come from discovery"
            )
        return len(self.hidden) + 1


class DataSpec(_Strict):
    """Where the training data come from.

    ``gaussian_mixture`` is the paper's protocol (docs/theory.md §3); ``sklearn`` one of
    scikit-learn's bundled sets; ``file`` a user ``.npz`` (arrays ``X``, ``y``) or ``.csv``
    (last column = integer class label).
    """

    source: Literal["gaussian_mixture", "sklearn", "file"] = "gaussian_mixture"
    n: PositiveInt = 200
    dim: PositiveInt = 20
    classes: Annotated[Integer, Field(ge=2)] = 5
    separation: PositiveFloat = 2.0
    name: Literal["digits", "wine", "breast_cancer", "iris"] | None = None
    path: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    standardize: bool = True
    validation_fraction: Annotated[Real, Field(ge=0.0, lt=1.0)] = 0.0

    @model_validator(mode="after")
    def _source_fields(self) -> DataSpec:
        if self.source == "sklearn" and self.name is None:
            raise ValueError(f"data.name: one of {', '.join(SKLEARN_SETS)} when source is sklearn")
        if self.source == "file" and self.path is None:
            raise ValueError("data.path: a .npz or .csv file when source is file")
        if self.source == "gaussian_mixture" and self.validation_fraction > 0:
            n_train = self.n - validation_rows(self.n, self.validation_fraction)
            if n_train < 1:
                raise ValueError(
                    f"data.validation_fraction: a fraction that leaves training rows "
                    f"(data.n = {self.n} leaves {n_train} for training)"
                )
        return self

    def training_rows(self) -> int | None:
        """Rows left for training (None until a file or scikit-learn set is loaded)."""
        if self.source != "gaussian_mixture":
            return None
        return self.n - validation_rows(self.n, self.validation_fraction)


def validation_rows(n: int, fraction: float) -> int:
    """How many of ``n`` rows a validation ``fraction`` holds out (at least one when > 0)."""
    return 0 if fraction == 0.0 else max(1, round(fraction * n))


class TrainingSpec(_Strict):
    """How every trial trains: loss, optimiser, batch, steps, precision, device.

    ``optimizer``: ``sgd`` (with ``momentum``, ``nesterov``, coupled ``weight_decay``),
    ``adam`` (coupled L2 ``weight_decay``) or ``adamw`` (decoupled ``weight_decay``), all
    with torch.optim's defaults otherwise.

    ``loss: mix`` is (1 − w)·MSE + w·CE with w = ``ce_weight`` (the paper's E12 loss
    interpolation); it is implemented by the batched MLP engine, its reference loop and the
    dense Hessian, and refused elsewhere.
    """

    loss: Literal["ce", "mse", "mix"] = "ce"
    ce_weight: Annotated[Real, Field(ge=0.0, le=1.0)] | None = None
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: Annotated[Real, Field(ge=0.0, lt=1.0)] = 0.0
    nesterov: bool = False
    weight_decay: Annotated[Real, Field(ge=0.0)] = 0.0
    batch_size: PositiveInt | None = None
    steps: Annotated[PositiveInt, Field(le=MAX_STEPS)] = 2000
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "cpu"
    divergence_factor: Annotated[Real, Field(gt=1.0)] = 1e3

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        if not _DEVICE_PATTERN.match(device):
            raise ValueError("a torch device for training: cpu, cuda, cuda:N, mps or xpu")
        return device

    @model_validator(mode="after")
    def _nesterov(self) -> TrainingSpec:
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0.0):
            raise ValueError(
                "training.nesterov: Nesterov momentum needs optimizer: sgd and momentum > 0"
            )
        if self.optimizer != "sgd" and self.momentum:
            raise ValueError(
                f"training.momentum: a field of SGD; {self.optimizer}'s β₁ is fixed at 0.9"
            )
        return self

    @model_validator(mode="after")
    def _mixed_loss(self) -> TrainingSpec:
        if self.loss == "mix" and self.ce_weight is None:
            raise ValueError(
                "training.ce_weight: the weight w in [0, 1] of the mixed loss (1 − w)·MSE + w·CE"
            )
        if self.loss != "mix" and self.ce_weight is not None:
            raise ValueError("training.ce_weight: a field of the mixed loss (loss: mix) only")
        return self

    @property
    def full_batch(self) -> bool:
        return self.batch_size is None

    @property
    def loss_weights(self) -> tuple[float, float]:
        """(CE weight, MSE weight) of the training loss: (1, 0) for CE, (0, 1) for MSE."""
        if self.loss == "mix":
            return float(self.ce_weight), 1.0 - float(self.ce_weight)
        return (1.0, 0.0) if self.loss == "ce" else (0.0, 1.0)

    def require_plain_loss(self, where: str) -> None:
        """Raise when the mixed loss reaches code that implements CE and MSE only."""
        if self.loss == "mix":
            raise LRAdvisorError(
                f"the mixed loss (training.loss: mix) is not supported by {where}; "
                "it runs on the built-in MLP engine (lradvisor sweep) only"
            )


class SweepSpec(_Strict):
    """The (η, seed) grid of a sweep."""

    lrs: list[PositiveFloat] = Field(
        default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 0.5, 1.0],
        min_length=1,
        max_length=10_000,
    )
    seeds: list[Seed] = Field(default=[42, 137, 256, 512, 1024], min_length=1, max_length=10_000)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("distinct integer seeds (a repeated seed repeats the same trial)")
        return seeds

    @field_validator("lrs")
    @classmethod
    def _distinct_lrs(cls, lrs: list[float]) -> list[float]:
        if len(set(lrs)) != len(lrs):
            raise ValueError("distinct learning rates (a repeated rate repeats the same trials)")
        return lrs


class ModelConfig(_Strict):
    """A whole model file: what to train, on what, how, and over which (η, seed) grid."""

    name: Annotated[str, Field(min_length=1, max_length=200)] = "model"
    model: ModelSpec
    data: DataSpec = DataSpec()
    training: TrainingSpec = TrainingSpec()
    sweep: SweepSpec = SweepSpec()
    source_file: str = Field(default="<memory>", exclude=True)

    @model_validator(mode="after")
    def _batch_below_rows(self) -> ModelConfig:
        rows = self.data.training_rows()
        check_batch_size(self.training.batch_size, rows)
        return self


def check_batch_size(batch_size: int | None, rows: int | None) -> None:
    """A mini-batch must be smaller than the training set (else it is the full batch)."""
    if batch_size is None or rows is None or batch_size < rows:
        return
    raise ValueError(
        f"training.batch_size: a mini-batch smaller than the {rows} training rows "
        "(null trains on the full batch)"
    )


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def _expected(error: dict) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "this required field"
    if kind == "extra_forbidden":
        return f"a known field ({', '.join(_allowed_fields(error['loc']))})"
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '')}".replace("'", "")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return error["msg"].replace("Input should be", "a value").strip()
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "finite_number":
        return "a finite number (not .nan or .inf)"
    return error["msg"].replace("Input should be", "").strip() or kind


def _allowed_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = ModelConfig
    for part in loc[:-1]:
        if str(part) not in model.model_fields:
            break
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return [name for name in model.model_fields if name != "source_file"]


def _from_validation_error(file: str, exc: ValidationError) -> ConfigError:
    error = exc.errors()[0]
    loc = error["loc"]
    expected = _expected(error)
    if error["type"] == "value_error" and ":" in expected.split(" ")[0]:
        field, _, expected = expected.partition(": ")
        return ConfigError(file, field, expected)
    got = None if error["type"] in ("missing",) else error.get("input")
    if isinstance(got, dict):
        got = None
    return ConfigError(file, _field_path(loc), expected, got)


def parse_config(raw: object, *, file: str = "<memory>") -> ModelConfig:
    """Validate an already-loaded mapping; raise :class:`ConfigError` on the first problem.

    Besides the schema: a ``file`` data source must exist, and a built-in MLP must fit in
    memory (:func:`check_memory`, one trial).
    """
    if not isinstance(raw, dict):
        raise ConfigError(file, "<root>", "a YAML mapping with at least a 'model' section")
    try:
        config = ModelConfig.model_validate({**raw, "source_file": file})
    except ValidationError as exc:
        raise _from_validation_error(file, exc) from None
    except RecursionError:
        raise ConfigError(file, "<root>", "a mapping nested less deeply") from None
    _check_data_file(config, file)
    check_memory(config)
    return config


def _check_data_file(config: ModelConfig, file: str) -> None:
    if config.data.source != "file":
        return
    path = resolve_data_path(config)
    if path.suffix not in (".npz", ".csv"):
        raise ConfigError(file, "data.path", "a .npz or .csv file", config.data.path)
    if not path.is_file():
        raise ConfigError(file, "data.path", "an existing file", str(path))


def resolve_data_path(config: ModelConfig) -> Path:
    """A relative ``data.path`` is read relative to the model file's folder."""
    path = Path(config.data.path or "")
    if path.is_absolute() or config.source_file == "<memory>":
        return path
    return Path(config.source_file).parent / path


# ------------------------------------------------------------------------------ reading


def read_bytes(path: str | Path, *, limit: int = MAX_FILE_BYTES, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or a one-line ConfigError.

    Opened without blocking and checked before reading: a FIFO, a device such as
    ``/dev/zero``, a folder, or a file larger than ``limit`` is refused instead of hanging
    or filling the memory.
    """
    file = str(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ConfigError(file, "<file>", f"a readable {what}", exc.strerror) from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ConfigError(file, "<file>", f"a regular {what}", kind)
        if info.st_size > limit:
            raise ConfigError(
                file,
                "<file>",
                f"a {what} of at most {format_bytes(limit)}",
                format_bytes(info.st_size),
            )
        with os.fdopen(descriptor, "rb") as handle:
            descriptor = -1  # the file object closes it
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(file, "<file>", f"a readable {what}", exc.strerror) from None
    finally:
        if descriptor >= 0:
            os.close(descriptor)
    if len(data) > limit:  # grew while being read
        raise ConfigError(file, "<file>", f"a {what} of at most {format_bytes(limit)}", "more")
    return data


def _decode(data: bytes, file: str) -> str:
    """UTF-8 (with or without a byte-order mark) or UTF-16 with a byte-order mark."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
        if b"\x00" in data:
            raise ConfigError(
                file,
                "<file>",
                "UTF-8 text (NUL bytes: binary, or UTF-16 without a byte-order mark)",
            )
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            file,
            "<file>",
            f"{encoding.removesuffix('-sig').upper()} text",
            f"undecodable bytes at offset {exc.start}",
        ) from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys, alias bombs and deep nesting."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: PyYAML's own error follows
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_quoted(key)}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)

    def construct_document(self, node: yaml.Node) -> Any:
        nodes, depth = _expanded_size(node, {}, 0)
        if nodes > MAX_YAML_NODES:
            raise _TooLarge(
                f"{nodes:,} values once aliases are expanded (limit {MAX_YAML_NODES:,})"
            )
        if depth > MAX_YAML_DEPTH:
            raise _TooLarge(f"nesting {depth} levels deep (limit {MAX_YAML_DEPTH})")
        return super().construct_document(node)


class _TooLarge(Exception):
    pass


def _expanded_size(
    node: yaml.Node, memo: dict[int, tuple[int, int]], level: int
) -> tuple[int, int]:
    """(values, depth) of ``node`` with aliases followed, counted without expanding them."""
    if id(node) in memo:
        return memo[id(node)]
    if level > MAX_YAML_DEPTH:
        raise _TooLarge(f"nesting deeper than {MAX_YAML_DEPTH} levels")
    children: list = []
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    size, depth = 1, 0
    for child in children:
        child_size, child_depth = _expanded_size(child, memo, level + 1)
        size += child_size
        depth = max(depth, child_depth)
        if size > MAX_YAML_NODES:
            break
    memo[id(node)] = (size, depth + 1)
    return memo[id(node)]


def _check_nesting(text: str) -> None:
    """Refuse deep nesting from the event stream, before PyYAML's recursive composer meets it
    (a few thousand brackets would exhaust Python's recursion limit, slowly)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise _TooLarge(f"nesting deeper than {MAX_YAML_DEPTH} levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _quoted(key: object) -> str:
    return shorten(key, 60)


def read_yaml(path: str | Path) -> object:
    """A YAML file's contents; anything unreadable or malformed is a one-line ConfigError."""
    file = str(path)
    text = _decode(read_bytes(path, what="YAML file"), file)
    try:
        _check_nesting(text)
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<file>"
        problem = getattr(exc, "problem", None) or ""
        detail = f" ({_clip(problem)})" if problem else ""
        raise ConfigError(file, where, f"valid YAML{detail}") from None
    except _TooLarge as exc:
        raise ConfigError(file, "<file>", "a config of ordinary size", str(exc)) from None
    except RecursionError:
        raise ConfigError(
            file, "<file>", f"YAML nested at most {MAX_YAML_DEPTH} levels deep"
        ) from None


def _clip(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_config(path: str | Path) -> ModelConfig:
    """Read and validate a model YAML file."""
    return parse_config(read_yaml(path), file=str(path))


# -------------------------------------------------------------- devices, memory, time


def check_device(device: str, *, file: str = "<command line>") -> None:
    """Refuse a device name torch does not know, or a device this machine does not have."""
    if not _DEVICE_PATTERN.match(device):
        raise ConfigError(
            file,
            "training.device",
            "a torch device for training: cpu, cuda, cuda:N, mps or xpu",
            device,
        )
    if device == "cpu":
        return
    import torch

    kind, _, index = device.partition(":")
    backend = getattr(torch, kind, None)
    available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    if not available:
        raise ConfigError(
            file, "training.device", f"'cpu' (no {kind.upper()} device is available here)", device
        )
    count = getattr(backend, "device_count", lambda: 1)()
    if index and int(index) >= count:
        raise ConfigError(
            file,
            "training.device",
            f"a {kind} index below {count} (devices on this machine)",
            device,
        )


#: Rows and feature counts of scikit-learn's bundled sets, for estimates before loading.
_SKLEARN_SHAPES = {
    "digits": (1797, 64, 10),
    "wine": (178, 13, 3),
    "breast_cancer": (569, 30, 2),
    "iris": (150, 4, 3),
}


def _data_shape_estimate(data: DataSpec) -> tuple[int, int, int]:
    """(rows, features, classes) before loading; a user file counts as one feature."""
    if data.source == "gaussian_mixture":
        return data.n, data.dim, data.classes
    if data.source == "sklearn":
        return _SKLEARN_SHAPES.get(data.name or "", (1, 1, 2))
    return 1, 1, 2


def training_rows_estimate(data: DataSpec) -> int | None:
    """Training rows after the validation split, before loading (None for a user file)."""
    if data.source == "file":
        return None
    rows, _, _ = _data_shape_estimate(data)
    return rows - validation_rows(rows, data.validation_fraction)


def mlp_parameters(config: ModelConfig, *, hidden: list[int] | None = None) -> int | None:
    """Weights (and biases) of a built-in MLP, None for a factory model (unknown until built)."""
    widths_hidden = hidden if hidden is not None else config.model.hidden
    if widths_hidden is None:
        return None
    _, dim, classes = _data_shape_estimate(config.data)
    widths = [dim, *widths_hidden, classes]
    weights = sum(a * b for a, b in itertools.pairwise(widths))
    return weights + (sum(widths[1:]) if config.model.bias else 0)


def trial_memory(
    config: ModelConfig, *, hidden: list[int] | None = None, batch_size: int | None = -1
) -> int | None:
    """Estimated peak bytes of one trial of a built-in MLP; None for a factory model.

    Weights, gradients and two optimiser buffers, activations of a batch through every
    layer (forward values, pre-activations, gradients), the data, and the mini-batch
    schedule: an estimate within a small factor, made before anything is allocated.
    """
    parameters = mlp_parameters(config, hidden=hidden)
    if parameters is None:
        return None
    rows, dim, classes = _data_shape_estimate(config.data)
    widths = [dim, *(hidden if hidden is not None else config.model.hidden), classes]
    batch = config.training.batch_size if batch_size == -1 else batch_size
    batch_rows = min(rows, batch) if batch else rows
    item = 8 if config.training.dtype == "float64" else 4
    schedule = 8 * batch * config.training.steps if batch and batch < rows else 0
    return item * (4 * parameters + 3 * batch_rows * sum(widths) + rows * dim) + schedule


def available_memory() -> int | None:
    """Bytes a new allocation can get (MemAvailable, within a cgroup limit); None if unknown."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit.isdigit() and used.isdigit():
            found.append(int(limit) - int(used))
    except OSError:
        pass
    return min(found) if found else None


def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:.3g} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000
    return f"{count:.3g} PB"


def check_memory(
    config: ModelConfig,
    *,
    trials: int = 1,
    hidden: list[int] | None = None,
    batch_size: int | None = -1,
    field: str = "model.hidden",
    what: str | None = None,
) -> None:
    """Refuse, before any allocation, a built-in MLP whose trials cannot fit in memory.

    ``trials`` run at once (a batched sweep holds them all); ``hidden`` / ``batch_size``
    estimate a variant of the config (a study's largest sampled architecture).
    """
    per_trial = trial_memory(config, hidden=hidden, batch_size=batch_size)
    available = available_memory()
    if per_trial is None or available is None:
        return
    needed = per_trial * trials
    if needed <= available:
        return
    scope = what or ("one trial" if trials == 1 else f"{trials} trials at once")
    raise ConfigError(
        config.source_file,
        field,
        f"a model that fits in memory: about {format_bytes(needed)} for {scope} "
        f"(weights, gradients, optimiser state, activations), {format_bytes(available)} available",
    )


#: Assumed cost of one training step: a fixed overhead and a floating-point rate (a 2-core
#: CPU does better than this on the batched engine, so the estimate errs long).
_STEP_OVERHEAD_S = 5e-5
_FLOPS_PER_S = 5e9


def estimated_seconds(config: ModelConfig, *, trials: int = 1, steps: int | None = None) -> float:
    """A rough duration of ``trials`` trainings of ``steps`` steps (6 flops per weight and row)."""
    parameters = mlp_parameters(config) or 10_000
    rows, _, _ = _data_shape_estimate(config.data)
    batch = config.training.batch_size
    rows = min(rows, batch) if batch else rows
    per_step = _STEP_OVERHEAD_S + 6 * parameters * rows / _FLOPS_PER_S
    return trials * (steps or config.training.steps) * per_step


def format_duration(seconds: float) -> str:
    for unit, size in (("years", 3.156e7), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def duration_warning(
    config: ModelConfig, *, trials: int = 1, steps: int | None = None, limit: float = 3600.0
) -> str | None:
    """A warning when the run would take longer than ``limit`` seconds (None otherwise)."""
    seconds = estimated_seconds(config, trials=trials, steps=steps)
    if seconds <= limit:
        return None
    steps = steps or config.training.steps
    return (
        f"{trials} trial(s) × {steps:,} steps will take roughly {format_duration(seconds)} "
        "(an estimate from the model size); lower the steps, or stop with Ctrl-C"
    )
