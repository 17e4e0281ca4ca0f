"""The user's own models: ``model: {factory: "package.module:function", kwargs: {...}}``.

The factory is imported, called as ``function(in_features=d, num_classes=K, **kwargs)``
from a seeded global generator, and the module it returns is checked on two samples: it
must map (n, d) inputs to (n, K) logits. Every problem becomes one
:class:`~lradvisor.errors.ConfigError` naming the file and field; a factory that raises
anything, ``SystemExit`` included, is such an error.

A model file that names a factory is code, and is trusted like code: the factory module
runs when the file is used. Modules in the model file's folder (the file's own code) are
imported from there. A module found elsewhere (an installed package) runs only when the
environment says so: ``LRADVISOR_TRUSTED_FACTORIES`` lists trusted top-level packages,
comma-separated, or ``*`` for any; otherwise a model file could call, say,
``torch.hub:load`` and run a ``hubconf.py`` from elsewhere. Configs built in Python (no
file) are the caller's own code and need no such list.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lradvisor.config import ModelConfig
from lradvisor.engine.data import Dataset, mixture_dataset
from lradvisor.errors import ConfigError, shorten

__all__ = [
    "TRUSTED_FACTORIES_ENV",
    "FactoryState",
    "build_factory_model",
    "initial_factory_state",
    "resolve_factory",
]

_FIELD = "model.factory"
TRUSTED_FACTORIES_ENV = "LRADVISOR_TRUSTED_FACTORIES"
#: Top-level modules imported from a model file's folder, and from which folder.
_FOLDER_MODULES: dict[str, Path] = {}


@dataclass(frozen=True)
class FactoryState:
    """One seed's starting point for a factory model: the module (in the trial dtype), its data."""

    model: nn.Module
    data: Dataset


def resolve_factory(config: ModelConfig) -> Callable[..., object]:
    """Import ``model.factory`` and return the callable (checked, not called)."""
    reference = _reference(config)
    module_name, _, attribute_path = reference.partition(":")
    module = _import(config, module_name, reference)
    target: object = module
    for attribute in attribute_path.split("."):
        if not hasattr(target, attribute):
            raise ConfigError(
                config.source_file,
                _FIELD,
                f"a callable '{attribute_path}' in module '{module_name}' ({_file_of(module)})",
                f"{reference} (no attribute '{attribute}')",
            )
        target = getattr(target, attribute)
    if not callable(target):
        raise ConfigError(
            config.source_file,
            _FIELD,
            "a callable (function or class) that builds an nn.Module",
            f"{reference} is a {type(target).__name__}",
        )
    _check_width_kwarg(config, target)
    return target


def build_factory_model(config: ModelConfig, in_dim: int, out_dim: int, *, seed: int) -> nn.Module:
    """Build the user's model from ``seed`` (global generator forked, as for built-in MLPs).

    Raises:
        ConfigError: the factory cannot be imported or called, raises, returns no
            ``nn.Module``, or the module does not map (n, ``in_dim``) to (n, ``out_dim``).
    """
    factory = resolve_factory(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _call(config, factory, in_dim, out_dim)
    check_model_shapes(config, model, in_dim, out_dim)
    return model


def initial_factory_state(
    config: ModelConfig, seed: int, shared: Dataset | None, *, dtype: torch.dtype
) -> FactoryState:
    """Seed the global generator, build the model, then draw the data: the order of
    :func:`lradvisor.engine.models.initial_state`, so the mixture data of a seed are the
    same for a factory model as for a built-in MLP whose initialisation draws as many numbers.
    """
    factory = resolve_factory(config)
    in_dim = shared.dim if shared is not None else config.data.dim
    out_dim = shared.classes if shared is not None else config.data.classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _call(config, factory, in_dim, out_dim)
        data = shared if shared is not None else mixture_dataset(config.data, dtype=dtype)
    check_model_shapes(config, model, in_dim, out_dim)
    return FactoryState(model.to(dtype), data)


def check_model_shapes(config: ModelConfig, model: nn.Module, in_dim: int, out_dim: int) -> None:
    """Run ``model`` on two samples (own forked generator, no grad): (2, d) → (2, K) or raise."""
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.get_default_dtype()
    expected = (
        f"a model mapping inputs (n, {in_dim}) to logits (n, {out_dim}) ({_data_text(config)})"
    )
    field = "model.kwargs" if config.model.kwargs else "data"
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            out = model(torch.zeros(2, in_dim, dtype=dtype))
        except (Exception, SystemExit) as error:  # the user's forward can raise anything
            raise ConfigError(
                config.source_file, field, expected, f"on (2, {in_dim}): {_error_text(error)}"
            ) from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            config.source_file, field, expected, f"a {type(out).__name__} instead of a tensor"
        )
    if tuple(out.shape) != (2, out_dim):
        raise ConfigError(
            config.source_file, field, expected, f"output shape {tuple(out.shape)} on (2, {in_dim})"
        )
    if not out.is_floating_point():
        raise ConfigError(config.source_file, field, expected, f"{out.dtype} outputs")


def _reference(config: ModelConfig) -> str:
    if config.model.factory is None:
        raise ConfigError(
            config.source_file, _FIELD, "a factory model (this file has a built-in MLP)"
        )
    return config.model.factory


def _model_folder(config: ModelConfig) -> Path | None:
    if config.source_file in ("<memory>", "") or config.source_file.startswith("<"):
        return None
    return Path(config.source_file).resolve().parent


def _is_local(folder: Path | None, module_name: str) -> bool:
    """True when the module's top-level package or file lies in the model file's folder."""
    if folder is None:
        return False
    top = module_name.split(".")[0]
    return (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file()


def _trusted(module_name: str) -> bool:
    names = {part.strip() for part in os.environ.get(TRUSTED_FACTORIES_ENV, "").split(",")}
    return "*" in names or module_name.split(".")[0] in names


@contextmanager
def _model_folder_on_path(folder: Path) -> Iterator[None]:
    """Put the model file's folder first on ``sys.path`` while importing its own module."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def _import(config: ModelConfig, module_name: str, reference: str) -> object:
    folder = _model_folder(config)
    local = _is_local(folder, module_name)
    if local:
        _forget_foreign(config, module_name, folder)
    elif folder is not None:
        _check_trusted(config, module_name, reference, folder)
    try:
        if not local:
            return importlib.import_module(module_name)
        with _model_folder_on_path(folder):
            module = importlib.import_module(module_name)
    except (Exception, SystemExit) as error:  # importing user code can raise anything
        raise ConfigError(
            config.source_file,
            _FIELD,
            "an importable module 'package.module:function'",
            f"{reference} ({_error_text(error)})",
        ) from None
    _FOLDER_MODULES[module_name.split(".")[0]] = folder
    return module


def _forget_foreign(config: ModelConfig, module_name: str, folder: Path) -> None:
    """Make room for this folder's own module when another model file's module of the same
    name (its ``user_models.py``) was imported before; refuse to shadow anything else."""
    top = module_name.split(".")[0]
    existing = sys.modules.get(top)
    if existing is None:
        return
    source = getattr(existing, "__file__", None)
    if source is not None and folder in Path(source).resolve().parents:
        return
    if _FOLDER_MODULES.get(top) is None:
        raise ConfigError(
            config.source_file,
            _FIELD,
            f"a module name not already in use ('{top}' is {_file_of(existing)}): "
            f"rename {top}.py in {folder}",
            module_name,
        )
    for name in [name for name in sys.modules if name == top or name.startswith(top + ".")]:
        del sys.modules[name]


def _check_trusted(config: ModelConfig, module_name: str, reference: str, folder: Path) -> None:
    if _trusted(module_name):
        return
    top = module_name.split(".")[0]
    if importlib.util.find_spec(top) is None:
        raise ConfigError(
            config.source_file,
            _FIELD,
            "an importable module 'package.module:function'",
            f"{reference} (ModuleNotFoundError: no module named '{top}' in {folder} "
            "or among the installed packages)",
        )
    raise ConfigError(
        config.source_file,
        _FIELD,
        f"a module in the model file's folder ({folder}); '{top}' is an installed package, "
        f"and a model file naming it runs its code: trust it with {TRUSTED_FACTORIES_ENV}={top}",
        reference,
    )


def _call(
    config: ModelConfig, factory: Callable[..., object], in_dim: int, out_dim: int
) -> nn.Module:
    try:
        model = factory(in_features=in_dim, num_classes=out_dim, **config.model.kwargs)
    except (Exception, SystemExit) as error:  # the user's factory can raise anything
        raise ConfigError(
            config.source_file,
            _FIELD,
            f"a factory that builds a model; it raised {_error_text(error)}",
            f"{config.model.factory}(in_features={in_dim}, num_classes={out_dim}"
            + "".join(f", {key}={shorten(value, 40)}" for key, value in config.model.kwargs.items())
            + ")",
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            config.source_file,
            _FIELD,
            "a factory returning a torch.nn.Module",
            f"a {type(model).__name__} from {config.model.factory}",
        )
    return model


def _check_width_kwarg(config: ModelConfig, factory: Callable[..., object]) -> None:
    name = config.model.width_kwarg
    if name is None:
        return
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if name not in parameters and not takes_any:
        raise ConfigError(
            config.source_file,
            "model.width_kwarg",
            f"a keyword argument of {config.model.factory} ({', '.join(parameters)})",
            name,
        )


def _data_text(config: ModelConfig) -> str:
    data = config.data
    if data.source == "gaussian_mixture":
        return f"data: gaussian_mixture, dim {data.dim}, {data.classes} classes"
    return f"data: {data.name or data.path}"


def _file_of(module: object) -> str:
    return str(getattr(module, "__file__", None) or "built-in")


def _error_text(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:299] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
