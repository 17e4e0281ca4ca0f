"""The study file (YAML): a model template, a search space, a metric, a budget, sampler, pruner.

Every problem becomes one :class:`~lradvisor.errors.ConfigError` naming the study file, the
dotted field and what was expected, raised by :func:`load_study` before any trial runs.
Which parameters can be searched, with which types and bounds, is declared once in
:data:`PARAMETERS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from lradvisor.config import (
    MAX_SEED,
    MAX_STEPS,
    Integer,
    ModelConfig,
    Real,
    _whole_number,
    check_memory,
    load_config,
    parse_config,
    read_yaml,
    training_rows_estimate,
)
from lradvisor.errors import ConfigError

__all__ = [
    "DEFAULT_VALIDATION_FRACTION",
    "PARAMETERS",
    "Budget",
    "ParameterRule",
    "ParameterSpec",
    "PrunerSpec",
    "SamplerSpec",
    "StudySpec",
    "load_study",
    "parse_study",
]

DEFAULT_VALIDATION_FRACTION = 0.2
#: More trials than any study could finish (the duration estimate warns far earlier).
MAX_TRIALS = 10**9
PARAMETER_TYPES = ("float", "int", "categorical")
SAMPLERS = ("tpe", "random", "lradvisor")
PRUNERS = ("none", "median", "hyperband", "lradvisor")
BASE_PRUNERS = ("none", "median", "hyperband")
METRICS = ("val_loss", "train_loss")


@dataclass(frozen=True)
class ParameterRule:
    """What one searchable parameter accepts: its types, and the bound every value must obey."""

    types: tuple[str, ...]
    meaning: str
    lower: float | None = None
    lower_inclusive: bool = True
    upper: float | None = None
    choices: tuple[Any, ...] | None = None
    integer: bool = False
    nullable: bool = False

    def admits(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self.integer and value != int(value):
            return False
        if self.lower is not None and (
            value < self.lower or (value == self.lower and not self.lower_inclusive)
        ):
            return False
        return self.upper is None or value < self.upper

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        kind = "an integer" if self.integer else "a number"
        bounds = []
        if self.lower is not None:
            bounds.append(f"{'≥' if self.lower_inclusive else '>'} {self.lower:g}")
        if self.upper is not None:
            bounds.append(f"< {self.upper:g}")
        text = f"{kind} {' and '.join(bounds)}".strip()
        return text + (" or null" if self.nullable else "")


#: The searchable parameters: how each one changes the template, and the values it admits.
PARAMETERS: dict[str, ParameterRule] = {
    "lr": ParameterRule(
        ("float", "categorical"), "learning rate", lower=0.0, lower_inclusive=False
    ),
    "momentum": ParameterRule(("float", "categorical"), "SGD momentum", lower=0.0, upper=1.0),
    "weight_decay": ParameterRule(("float", "categorical"), "weight decay", lower=0.0),
    "width": ParameterRule(
        ("int", "categorical"), "width of every hidden layer", lower=1, integer=True
    ),
    "depth": ParameterRule(
        ("int", "categorical"), "number of hidden layers", lower=1, upper=1001, integer=True
    ),
    "batch_size": ParameterRule(
        ("int", "categorical"),
        "mini-batch size (null: full batch)",
        lower=1,
        integer=True,
        nullable=True,
    ),
    "loss": ParameterRule(("categorical",), "loss", choices=("ce", "mse")),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _field_error(field: str, expected: str, got: object = None) -> PydanticCustomError:
    return PydanticCustomError(
        "study_field", "{field}: {expected}", {"field": field, "expected": expected, "got": got}
    )


class ParameterSpec(_Strict):
    """One dimension of the search space, in Optuna's terms (``suggest_float`` / ``_int`` /
    ``_categorical``)."""

    type: Literal["float", "int", "categorical"]
    low: Real | None = None
    high: Real | None = None
    log: bool = False
    step: Real | None = None
    choices: Annotated[list[Any], Field(max_length=1000)] | None = None

    def bounds(self) -> tuple[Any, Any]:
        """(low, high) as ints for an ``int`` parameter, floats otherwise."""
        cast = int if self.type == "int" else float
        return cast(self.low), cast(self.high)

    def extremes(self) -> list[Any]:
        """The values that bound what a trial can draw (for checks before any trial runs)."""
        return list(self.choices or []) if self.type == "categorical" else list(self.bounds())


class Budget(_Strict):
    """How many finished trials the study aims for and how long each one trains."""

    n_trials: Annotated[Integer, Field(gt=0, le=MAX_TRIALS)]
    steps: Annotated[Integer, Field(gt=0, le=MAX_STEPS)]
    report_every: Annotated[Integer, Field(gt=0)] = 1
    seed: Annotated[Integer, Field(ge=0, le=MAX_SEED)] = 0

    @model_validator(mode="before")
    @classmethod
    def _default_report_grid(cls, raw: Any) -> Any:
        steps = raw.get("steps") if isinstance(raw, dict) else None
        steps = None if isinstance(steps, bool) else _whole_number(steps)
        if isinstance(steps, int) and steps > 0 and raw.get("report_every") is None:
            return {**raw, "report_every": max(1, steps // 10)}
        return raw

    @model_validator(mode="after")
    def _report_grid(self) -> Budget:
        if self.report_every > self.steps:
            raise _field_error(
                "budget.report_every", f"a value ≤ budget.steps ({self.steps})", self.report_every
            )
        return self


class SamplerSpec(_Strict):
    """``tpe``, ``random``, or ``lradvisor``: a theory prior on lr from ``advise()``, then TPE."""

    type: Literal["tpe", "random", "lradvisor"] = "tpe"
    n_prior_trials: Annotated[Integer, Field(gt=0)] = 10

    @model_validator(mode="after")
    def _prior_only(self) -> SamplerSpec:
        if "n_prior_trials" in self.model_fields_set and self.type != "lradvisor":
            raise _field_error(
                "sampler.n_prior_trials",
                f"a field of the lradvisor sampler only (sampler.type is {self.type})",
            )
        return self


class PrunerSpec(_Strict):
    """``none``, ``median``, ``hyperband``, or ``lradvisor`` wrapping a ``base`` pruner."""

    type: Literal["none", "median", "hyperband", "lradvisor"] = "median"
    base: Literal["none", "median", "hyperband"] = "median"

    @model_validator(mode="after")
    def _base_only(self) -> PrunerSpec:
        if "base" in self.model_fields_set and self.type != "lradvisor":
            raise _field_error(
                "pruner.base",
                f"a field of the lradvisor pruner only, which wraps a base (pruner.type is {self.type})",
            )
        return self


class _StudyFile(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    model: Any
    search_space: dict[str, ParameterSpec]
    metric: Literal["val_loss", "train_loss"] = "val_loss"
    budget: Budget
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()

    @model_validator(mode="after")
    def _space(self) -> _StudyFile:
        if not isinstance(self.model, (str, dict)):
            raise _field_error("model", "a model file path or an inline model mapping", self.model)
        for name, spec in self.search_space.items():
            _check_parameter(name, spec)
        if "lr" not in self.search_space:
            raise _field_error(
                "search_space.lr", "this required parameter (the learning rate to search)"
            )
        return self


def _check_parameter(name: str, spec: ParameterSpec) -> None:
    field = f"search_space.{name}"
    rule = PARAMETERS.get(name)
    if rule is None:
        raise _field_error(field, f"a known parameter ({', '.join(PARAMETERS)})", name)
    if spec.type not in rule.types:
        raise _field_error(f"{field}.type", f"one of {', '.join(rule.types)} for {name}", spec.type)
    if spec.type == "categorical":
        _check_choices(field, spec, rule)
    else:
        _check_range(field, spec, rule)


def _check_choices(field: str, spec: ParameterSpec, rule: ParameterRule) -> None:
    for extra in ("low", "high", "step"):
        if getattr(spec, extra) is not None:
            raise _field_error(f"{field}.{extra}", "no range on a categorical parameter (choices)")
    if spec.log:
        raise _field_error(f"{field}.log", "no log on a categorical parameter")
    if not spec.choices:
        raise _field_error(f"{field}.choices", "a non-empty list of choices", spec.choices)
    if len({repr(c) for c in spec.choices}) != len(spec.choices):
        raise _field_error(f"{field}.choices", "distinct choices", spec.choices)
    for index, choice in enumerate(spec.choices):
        if not rule.admits(choice):
            raise _field_error(f"{field}.choices.{index}", rule.describe(), choice)


def _check_range(field: str, spec: ParameterSpec, rule: ParameterRule) -> None:
    shown = (
        int
        if spec.type == "int"
        and all(v is None or (math.isfinite(v) and v == int(v)) for v in (spec.low, spec.high))
        else float
    )
    if spec.choices is not None:
        raise _field_error(f"{field}.choices", f"no choices on a {spec.type} parameter (low, high)")
    for end in ("low", "high"):
        value = getattr(spec, end)
        if value is None:
            raise _field_error(f"{field}.{end}", "this required field")
        if not math.isfinite(value):
            raise _field_error(f"{field}.{end}", "a finite number", value)
        if spec.type == "int" and value != int(value):
            raise _field_error(f"{field}.{end}", "an integer", value)
        if not rule.admits(value):
            raise _field_error(f"{field}.{end}", rule.describe(), shown(value))
    if spec.low > spec.high:
        raise _field_error(f"{field}.low", f"a value ≤ high ({spec.high:g})", shown(spec.low))
    if spec.low == spec.high:
        raise _field_error(
            f"{field}.high",
            f"a value > low ({spec.low:g}): the range is empty (use a categorical with one choice to fix a value)",
            shown(spec.high),
        )
    if spec.log and spec.low <= 0:
        raise _field_error(f"{field}.low", "a value > 0 (log: true)", shown(spec.low))
    if spec.log and spec.step is not None:
        raise _field_error(f"{field}.step", "no step with log: true (Optuna allows one of them)")
    if spec.step is not None and (spec.step <= 0 or (spec.type == "int" and spec.step % 1)):
        raise _field_error(f"{field}.step", f"a positive {spec.type} step", spec.step)


@dataclass(frozen=True)
class StudySpec:
    """A validated study: the template model config and everything the trials need.

    ``template`` already carries ``budget.steps`` as ``training.steps`` and, for the
    ``val_loss`` metric, a validation split; ``notes`` says what was filled in.
    """

    name: str
    source_file: str
    template: ModelConfig
    search_space: dict[str, ParameterSpec]
    metric: str
    budget: Budget
    sampler: SamplerSpec
    pruner: PrunerSpec
    notes: tuple[str, ...] = ()

    @property
    def architecture_parameters(self) -> tuple[str, ...]:
        """The searched parameters that define an architecture key (all but lr)."""
        return tuple(name for name in self.search_space if name != "lr")


def _validation_error(file: str, exc: ValidationError) -> ConfigError:
    error = exc.errors()[0]
    ctx = error.get("ctx") or {}
    if error["type"] == "study_field":
        return ConfigError(file, ctx["field"], ctx["expected"], ctx.get("got"))
    field = ".".join(str(part) for part in error["loc"]) or "<root>"
    kind = error["type"]
    got = error.get("input")
    if kind == "missing":
        return ConfigError(file, field, "this required field")
    if kind == "extra_forbidden":
        return ConfigError(file, field, "no such field (a typo?)")
    if kind == "literal_error":
        choices = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return ConfigError(file, field, f"one of {choices}", got)
    if isinstance(got, (dict, list)) and kind != "literal_error":
        got = None
    expected = error["msg"].replace("Input should be", "").strip() or kind
    return ConfigError(file, field, expected, got)


def parse_study(raw: object, *, file: str = "<memory>") -> StudySpec:
    """Validate a loaded study mapping (model paths resolve against ``file``'s folder)."""
    if not isinstance(raw, dict):
        raise ConfigError(file, "<root>", "a YAML mapping with model, search_space and budget")
    try:
        study = _StudyFile.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(file, exc) from None
    template = _load_template(study.model, file)
    notes: list[str] = []
    template = _prepare_template(template, study, notes)
    _check_template_fits(template, study, file)
    _check_batches(template, study, file)
    name = study.name or (Path(file).stem if file != "<memory>" else "study")
    spec = StudySpec(
        name=name,
        source_file=file,
        template=template,
        search_space=dict(study.search_space),
        metric=study.metric,
        budget=study.budget,
        sampler=study.sampler,
        pruner=study.pruner,
        notes=tuple(notes),
    )
    try:
        check_study_memory(spec)
    except ConfigError as exc:
        raise ConfigError(file, exc.field, exc.expected, exc.got) from None
    return spec


def _load_template(model: str | dict[str, Any], file: str) -> ModelConfig:
    if isinstance(model, str):
        path = Path(model)
        if not path.is_absolute() and file != "<memory>":
            path = Path(file).parent / path
        if not path.is_file():
            raise ConfigError(file, "model", "a model file (relative to the study file)", model)
        return load_config(path)
    try:
        return parse_config(model, file=file)
    except ConfigError as exc:
        raise ConfigError(file, f"model.{exc.field}", exc.expected, exc.got) from None


def _prepare_template(template: ModelConfig, study: _StudyFile, notes: list[str]) -> ModelConfig:
    data = template.data
    if study.metric == "val_loss" and data.validation_fraction == 0.0:
        if "validation_fraction" in data.model_fields_set:
            inline = isinstance(study.model, dict)
            raise ConfigError(
                template.source_file,
                "model.data.validation_fraction" if inline else "data.validation_fraction",
                "a value > 0 for the study metric val_loss (or metric: train_loss)",
                0.0,
            )
        data = data.model_copy(update={"validation_fraction": DEFAULT_VALIDATION_FRACTION})
        notes.append(
            f"metric val_loss: the template sets no data.validation_fraction, so "
            f"{DEFAULT_VALIDATION_FRACTION:g} of the data is held out for validation"
        )
    training = template.training.model_copy(update={"steps": study.budget.steps})
    return template.model_copy(update={"data": data, "training": training})


def _check_template_fits(template: ModelConfig, study: _StudyFile, file: str) -> None:
    space = study.search_space
    factory = template.model.is_factory
    if "depth" in space and factory:
        raise ConfigError(
            file,
            "search_space.depth",
            "a built-in MLP template (model.hidden); a factory model's depth is its own",
        )
    if "width" in space and factory and template.model.width_kwarg is None:
        raise ConfigError(
            file, "search_space.width", "a factory template with model.width_kwarg to set the width"
        )
    if "momentum" in space and template.training.optimizer != "sgd":
        raise ConfigError(
            file,
            "search_space.momentum",
            f"an SGD template (training.optimizer: sgd; it is {template.training.optimizer})",
        )


def _check_batches(template: ModelConfig, study: _StudyFile, file: str) -> None:
    """Every mini-batch a trial can draw is smaller than the training rows (once known)."""
    rows = training_rows_estimate(template.data)
    if rows is None:
        return  # a user file: checked when the trials load it
    space = study.search_space.get("batch_size")
    values = space.extremes() if space is not None else [template.training.batch_size]
    field = "search_space.batch_size" if space is not None else "model.training.batch_size"
    for value in values:
        if value is not None and value >= rows:
            raise ConfigError(
                file,
                field,
                f"mini-batches smaller than the {rows} training rows (null trains on the "
                "full batch)",
                value,
            )


def largest_model(spec: StudySpec) -> tuple[list[int] | None, list[int | None]]:
    """The widest and deepest hidden layers a trial can draw (None for a factory), and the
    batch sizes that bound its memory (the largest one, and None when full batch is drawn)."""
    template, space = spec.template, spec.search_space
    hidden = template.model.hidden
    if hidden is not None and ("width" in space or "depth" in space):
        width = max(space["width"].extremes()) if "width" in space else max(hidden)
        depth = max(space["depth"].extremes()) if "depth" in space else len(hidden)
        hidden = [int(width)] * int(depth)
    if "batch_size" not in space:
        return hidden, [template.training.batch_size]
    extremes = space["batch_size"].extremes()
    sized = [int(value) for value in extremes if value is not None]
    return hidden, ([max(sized)] if sized else []) + ([None] if None in extremes else [])


def check_study_memory(spec: StudySpec, *, workers: int = 1) -> None:
    """Refuse a study whose largest sampled model cannot fit in memory (``workers`` at once)."""
    hidden, batches = largest_model(spec)
    field = "search_space.width" if "width" in spec.search_space else "model.hidden"
    for batch_size in batches:
        check_memory(
            spec.template,
            trials=workers,
            hidden=hidden,
            batch_size=batch_size,
            field=field,
            what=f"the largest model a trial can draw ({len(hidden or [])} hidden layers of "
            f"{max(hidden or [0])}) × {workers} worker(s)",
        )


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study YAML file."""
    return parse_study(read_yaml(path), file=str(path))
