"""What ``suggest`` is asked about, normalised: model, data, loss, optimizer, budget.

Users bring an ``nn.Module`` (or a function building one per seed), data as an ``(X, y)``
pair, a ``torch.utils.data.Dataset`` or a ``DataLoader`` of any input shape, any loss
callable and any optimizer. :func:`build_problem` turns that into one :class:`Problem`, checks
it on two samples (forward, loss, backward) and turns every failure into one
:class:`~lradvisor.errors.LRAdvisorError` line naming the model and the failing call.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lradvisor.advisor.optimizers import OptimizerSpec, optimizer_spec
from lradvisor.errors import LRAdvisorError

__all__ = ["Problem", "build_problem", "model_error"]

MAX_SAMPLES = 100_000  # data sets larger than this are subsampled (stated in the advice)
DEFAULT_SEEDS = (0, 1)
DEFAULT_PROBE_STEPS = 500
Schedule = Callable[[int, int], float]
SCHEDULES = ("constant", "cosine", "linear", "warmup-cosine")
WARMUP_FRACTION = 0.05


@dataclass
class Problem:
    """One training set-up to advise on. Tensors live on ``device``; inputs keep their dtype
    (token ids stay integer), floating inputs and targets take the model's dtype."""

    name: str
    make_model: Callable[[int], nn.Module]
    X: torch.Tensor
    y: torch.Tensor
    X_val: torch.Tensor | None
    y_val: torch.Tensor | None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: OptimizerSpec
    batch_size: int | None
    steps: int
    probe_steps: int
    seeds: tuple[int, ...]
    device: torch.device
    schedule: Schedule
    schedule_name: str
    classification: bool
    cross_entropy: bool
    score: str  # "val" or "train": the split whose loss ranks the probe's rates
    notes: list[str] = field(default_factory=list)
    loop_reason: str | None = None  # why probe trials run one by one, when they do

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def full_batch(self) -> bool:
        return self.batch_size is None or self.batch_size >= self.n

    @property
    def model_name(self) -> str:
        return self.name


def model_error(name: str, call: str, error: BaseException) -> LRAdvisorError:
    """One line naming the model, the failing call and the error (never a traceback)."""
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:300] + " …"
    return LRAdvisorError(f"model {name}: {call} failed: {type(error).__name__}: {text}")


def build_problem(
    model: nn.Module | Callable[..., nn.Module],
    train_data: object,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: object = "sgd",
    *,
    val_data: object = None,
    batch_size: int | None = None,
    steps: int = 1000,
    probe_steps: int | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    device: str | torch.device = "cpu",
    schedule: str | Schedule | None = None,
    momentum: float | None = None,
    score: str = "auto",
    name: str | None = None,
) -> Problem:
    """Normalise the arguments of :func:`lradvisor.suggest` (see there) into a :class:`Problem`."""
    device = _device(device)
    steps = _positive_int("steps", steps)
    probe_steps = min(
        steps,
        DEFAULT_PROBE_STEPS if probe_steps is None else _positive_int("probe_steps", probe_steps),
    )
    seeds = _seeds(seeds)
    spec = optimizer_spec(optimizer, momentum=momentum)
    make_model, label, notes = _model_factory(model, name, first_seed=seeds[0])
    first = make_model(seeds[0]).to(device)
    dtype = _floating_dtype(first)
    loader_batch = getattr(train_data, "batch_size", None) if _is_loader(train_data) else None
    X, y, data_notes = _tensors(train_data, "train_data", dtype, device)
    notes += data_notes
    X_val = y_val = None
    if val_data is not None:
        X_val, y_val, val_notes = _tensors(val_data, "val_data", dtype, device)
        notes += val_notes
    if batch_size is None:
        batch_size = loader_batch
    if batch_size is not None:
        batch_size = _positive_int("batch_size", batch_size)
        if batch_size >= len(X):
            notes.append(f"batch_size {batch_size} ≥ {len(X)} training samples: full batch")
            batch_size = None
    schedule_fn, schedule_name = _schedule(schedule)
    if score not in ("auto", "val", "train"):
        raise LRAdvisorError(f"score must be 'auto', 'val' or 'train', but got {score!r}.")
    if score == "val" and X_val is None:
        raise LRAdvisorError("score 'val' needs val_data (validation data to score on).")
    split = "train" if score == "train" or X_val is None else "val"
    outputs = _check_model(first, label, X, y, loss_fn)
    classification = _is_classification(outputs, y)
    return Problem(
        name=label,
        make_model=lambda seed: make_model(seed).to(device),
        X=X,
        y=y,
        X_val=X_val,
        y_val=y_val,
        loss_fn=loss_fn,
        optimizer=spec,
        batch_size=batch_size,
        steps=steps,
        probe_steps=probe_steps,
        seeds=seeds,
        device=device,
        schedule=schedule_fn,
        schedule_name=schedule_name,
        classification=classification,
        cross_entropy=classification and _is_cross_entropy(loss_fn),
        score=split,
        notes=notes + list(spec.notes),
    )


def _device(device: str | torch.device) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise LRAdvisorError(
            f"device must be a torch device such as 'cpu' or 'cuda', but got {device!r} ({error})."
        ) from None
    if resolved.type == "meta":
        raise LRAdvisorError("device 'meta' holds no data; use 'cpu' or 'cuda'.")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LRAdvisorError(f"device {device!r}: no CUDA device is available here; use 'cpu'.")
    return resolved


def _positive_int(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise LRAdvisorError(f"{what} must be a positive integer, but got {value!r}.")
    return int(value)


def _seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    values = tuple(seeds) if not isinstance(seeds, int) else (seeds,)
    if not values:
        raise LRAdvisorError("seeds must hold at least one integer seed.")
    for seed in values:
        if (
            isinstance(seed, bool)
            or not isinstance(seed, int | np.integer)
            or not 0 <= seed < 2**63
        ):
            raise LRAdvisorError(f"seeds must be integers in [0, 2^63), but got {seed!r}.")
    if len(set(values)) != len(values):
        raise LRAdvisorError(f"seeds must be distinct, but got {list(values)}.")
    return tuple(int(s) for s in values)


def _model_factory(
    model: object, name: str | None, *, first_seed: int
) -> tuple[Callable[[int], nn.Module], str, list[str]]:
    """seed → module: copies of a given module (the first seed keeps its weights, the others
    are re-drawn by each module's ``reset_parameters()``), or the user's factory."""
    if isinstance(model, nn.Module):
        label = name or type(model).__name__
        template = copy.deepcopy(model)
        resettable = _resettable(template)
        notes = []
        if not resettable:
            notes.append(
                f"{label} has parameters outside modules with reset_parameters(): every probe "
                "seed starts from your weights (seeds change the batch order only)"
            )

        def from_module(seed: int) -> nn.Module:
            copy_ = copy.deepcopy(template)
            if seed != first_seed and resettable:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    for module in copy_.modules():
                        if hasattr(module, "reset_parameters") and list(
                            module.parameters(recurse=False)
                        ):
                            module.reset_parameters()
            return copy_

        return from_module, label, notes
    if callable(model):
        label = name or getattr(model, "__name__", type(model).__name__)
        takes_seed = _takes_one_argument(model)

        def from_factory(seed: int) -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                try:
                    built = model(seed) if takes_seed else model()
                except Exception as error:  # the user's factory can raise anything
                    raise model_error(label, "building the model", error) from None
            if not isinstance(built, nn.Module):
                raise LRAdvisorError(
                    f"model {label}: the factory returned a {type(built).__name__}, not an nn.Module"
                )
            return built

        return from_factory, label, []
    raise LRAdvisorError(
        f"model must be an nn.Module or a function returning one, but got a {type(model).__name__}."
    )


def _resettable(model: nn.Module) -> bool:
    """True when every parameter belongs to a module that can re-draw it (reset_parameters)."""
    for module in model.modules():
        if list(module.parameters(recurse=False)) and not hasattr(module, "reset_parameters"):
            return False
    return True


def _takes_one_argument(factory: Callable) -> bool:
    try:
        parameters = [
            p
            for p in inspect.signature(factory).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return False
    return len(parameters) == 1


def _floating_dtype(model: nn.Module) -> torch.dtype:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    raise LRAdvisorError(f"model {type(model).__name__} has no floating-point parameters to train.")


def _is_loader(data: object) -> bool:
    return isinstance(data, torch.utils.data.DataLoader)


def _tensors(
    data: object, what: str, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    notes: list[str] = []
    if _is_loader(data):
        data = data.dataset
    if isinstance(data, torch.utils.data.IterableDataset):
        raise LRAdvisorError(
            f"{what}: an IterableDataset has no length to sample batches from; pass an (X, y) pair or a map-style Dataset."
        )
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
        X, y = data.tensors
    elif isinstance(data, torch.utils.data.Dataset):
        X, y, notes = _materialise(data, what)
    elif isinstance(data, tuple | list) and len(data) == 2:
        X, y = (_as_tensor(part, f"{what}[{i}]") for i, part in enumerate(data))
    else:
        raise LRAdvisorError(
            f"{what} must be an (X, y) pair, a torch Dataset or a DataLoader, but got a {type(data).__name__}."
        )
    if X.ndim == 0 or y.ndim == 0 or len(X) != len(y):
        raise LRAdvisorError(
            f"{what}: X and y must have one row per sample, but got shapes {tuple(X.shape)} and {tuple(y.shape)}."
        )
    if len(X) < 2:
        raise LRAdvisorError(f"{what}: at least 2 samples are needed, but got {len(X)}.")
    if len(X) > MAX_SAMPLES:
        keep = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:MAX_SAMPLES]
        notes.append(f"{what}: {len(X)} samples, a random {MAX_SAMPLES} are used by the probe")
        X, y = X[keep], y[keep]
    if X.is_floating_point():
        X = X.to(dtype)
    if y.is_floating_point():
        y = y.to(dtype)
    for part, label in ((X, "X"), (y, "y")):
        if part.is_floating_point() and not torch.isfinite(part).all():
            bad = int((~torch.isfinite(part)).sum())
            raise LRAdvisorError(
                f"{what}: {label} holds {bad} NaN or infinite values; clean the data first."
            )
    return X.to(device), y.to(device), notes


def _as_tensor(value: object, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        array = np.asarray(value)
    except Exception as error:  # any array-like may fail to convert
        raise LRAdvisorError(f"{what}: not an array ({type(error).__name__}: {error}).") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise LRAdvisorError(f"{what}: expected numbers, but got an array of {array.dtype}.")
    return torch.from_numpy(np.ascontiguousarray(array))


def _materialise(
    dataset: torch.utils.data.Dataset, what: str
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise LRAdvisorError(
            f"{what}: the Dataset has no __len__; pass an (X, y) pair instead."
        ) from None
    notes = []
    indices = range(size)
    if size > MAX_SAMPLES:
        indices = torch.randperm(size, generator=torch.Generator().manual_seed(0))[
            :MAX_SAMPLES
        ].tolist()
        notes.append(f"{what}: {size} samples, a random {MAX_SAMPLES} are used by the probe")
    inputs, targets = [], []
    for index in indices:
        try:
            item = dataset[index]
        except Exception as error:  # a user's __getitem__ can raise anything
            raise LRAdvisorError(
                f"{what}: dataset[{index}] raised {type(error).__name__}: {error}"
            ) from None
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise LRAdvisorError(
                f"{what}: each item must be an (input, target) pair, but item {index} is a {type(item).__name__}."
            )
        inputs.append(_as_tensor(item[0], f"{what} input {index}"))
        targets.append(_as_tensor(item[1], f"{what} target {index}"))
    try:
        return torch.stack(inputs), torch.stack(targets), notes
    except RuntimeError as error:
        raise LRAdvisorError(
            f"{what}: items of different shapes cannot form batches ({error})."
        ) from None


def _schedule(schedule: str | Schedule | None) -> tuple[Schedule, str]:
    if schedule is None or schedule == "constant":
        return (lambda step, steps: 1.0), "constant"
    if callable(schedule):
        return schedule, getattr(schedule, "__name__", "custom")
    if schedule == "cosine":
        return (lambda step, steps: 0.5 * (1 + math.cos(math.pi * step / steps))), "cosine"
    if schedule == "linear":
        return (lambda step, steps: 1.0 - step / steps), "linear"
    if schedule == "warmup-cosine":

        def warmup_cosine(step: int, steps: int) -> float:
            warm = max(1, round(WARMUP_FRACTION * steps))
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

        return warmup_cosine, "warmup-cosine"
    raise LRAdvisorError(
        f"schedule must be one of {', '.join(SCHEDULES)} or a function (step, steps) → multiplier, but got {schedule!r}."
    )


def _check_model(
    model: nn.Module, name: str, X: torch.Tensor, y: torch.Tensor, loss_fn: Callable
) -> torch.Tensor:
    """Forward, loss and backward on two samples: every failure is one line naming the call."""
    inputs, targets = X[:2], y[:2]
    model = copy.deepcopy(model).train()
    try:
        outputs = model(inputs)
    except Exception as error:  # the user's forward can raise anything
        raise model_error(
            name, f"forward on inputs of shape {tuple(inputs.shape)} ({inputs.dtype})", error
        ) from None
    if not isinstance(outputs, torch.Tensor):
        raise LRAdvisorError(
            f"model {name}: forward returned a {type(outputs).__name__}; lradvisor needs a tensor of outputs (wrap models that return dicts or tuples)."
        )
    try:
        loss = loss_fn(outputs, targets)
    except Exception as error:  # any loss callable
        raise model_error(
            name,
            f"loss_fn(outputs of shape {tuple(outputs.shape)}, targets of shape {tuple(targets.shape)})",
            error,
        ) from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise LRAdvisorError(
            f"model {name}: loss_fn must return a scalar (a mean over the batch), but returned {shape}."
        )
    try:
        loss.backward()
    except Exception as error:
        raise model_error(name, "backward of the loss", error) from None
    return outputs.detach()


def _is_classification(outputs: torch.Tensor, y: torch.Tensor) -> bool:
    return outputs.ndim == 2 and outputs.shape[1] >= 2 and not y.is_floating_point() and y.ndim == 1


def _is_cross_entropy(loss_fn: Callable) -> bool:
    if isinstance(loss_fn, nn.CrossEntropyLoss) or loss_fn is nn.functional.cross_entropy:
        return True
    return getattr(loss_fn, "__name__", "") in ("cross_entropy", "ce")
