"""Model / sweep configuration files (YAML), validated into frozen pydantic models.

Every problem with a file becomes one :class:`~lradvisor.errors.ConfigError` whose message
names the file, the dotted field and what was expected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lradvisor.errors import ConfigError, LRAdvisorError

ACTIVATIONS = ("relu", "leaky_relu", "identity")
LOSSES = ("ce", "mse", "mix")
OPTIMIZERS = ("sgd", "adam", "adamw")
DATA_SOURCES = ("gaussian_mixture", "sklearn", "file")
SKLEARN_SETS = ("digits", "wine", "breast_cancer", "iris")
DTYPES = ("float32", "float64")

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    hidden: Annotated[list[PositiveInt], Field(min_length=1)] | None = None
    activation: Literal["relu", "leaky_relu", "identity"] = "relu"
    negative_slope: float = 0.01
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

    ``gaussian_mixture`` is the paper's protocol (THEORY.md §3); ``sklearn`` one of
    scikit-learn's bundled sets; ``file`` a user ``.npz`` (arrays ``X``, ``y``) or ``.csv``
    (last column = integer class label).
    """

    source: Literal["gaussian_mixture", "sklearn", "file"] = "gaussian_mixture"
    n: PositiveInt = 200
    dim: PositiveInt = 20
    classes: Annotated[int, Field(ge=2)] = 5
    separation: PositiveFloat = 2.0
    name: Literal["digits", "wine", "breast_cancer", "iris"] | None = None
    path: str | None = None
    standardize: bool = True
    validation_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

    @model_validator(mode="after")
    def _source_fields(self) -> DataSpec:
        if self.source == "sklearn" and self.name is None:
            raise ValueError(f"data.name: one of {', '.join(SKLEARN_SETS)} when source is sklearn")
        if self.source == "file" and self.path is None:
            raise ValueError("data.path: a .npz or .csv file when source is file")
        return self


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
    ce_weight: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    nesterov: bool = False
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    batch_size: PositiveInt | None = None
    steps: PositiveInt = 2000
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "cpu"
    divergence_factor: Annotated[float, Field(gt=1.0)] = 1e3

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
        default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 0.5, 1.0], min_length=1
    )
    seeds: list[int] = Field(default=[42, 137, 256, 512, 1024], min_length=1)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("distinct integer seeds")
        return seeds


class ModelConfig(_Strict):
    """A whole model file: what to train, on what, how, and over which (η, seed) grid."""

    name: str = "model"
    model: ModelSpec
    data: DataSpec = DataSpec()
    training: TrainingSpec = TrainingSpec()
    sweep: SweepSpec = SweepSpec()
    source_file: str = Field(default="<memory>", exclude=True)


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
    return error["msg"].replace("Input should be", "").strip() or kind


def _allowed_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = ModelConfig
    for part in loc[:-1]:
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
    """Validate an already-loaded mapping; raise :class:`ConfigError` on the first problem."""
    if not isinstance(raw, dict):
        raise ConfigError(file, "<root>", "a YAML mapping with at least a 'model' section")
    try:
        config = ModelConfig.model_validate({**raw, "source_file": file})
    except ValidationError as exc:
        raise _from_validation_error(file, exc) from None
    _check_data_file(config, file)
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


def read_yaml(path: str | Path) -> object:
    """A YAML file's contents; an unreadable file or bad YAML is a one-line ConfigError."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(file, "<file>", "a readable YAML file", exc.strerror) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<file>"
        raise ConfigError(file, where, "valid YAML") from None


def load_config(path: str | Path) -> ModelConfig:
    """Read and validate a model YAML file."""
    return parse_config(read_yaml(path), file=str(path))
