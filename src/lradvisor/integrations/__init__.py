"""Bridges to outside tools: ``lradvisor.integrations.optuna``, ``lradvisor.integrations.mlflow``.

Importing this package imports neither Optuna nor MLflow: each submodule loads its tool
only when it is itself imported (``from lradvisor.integrations.optuna import …``) or first
reached as an attribute of this package.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["mlflow", "optuna"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
