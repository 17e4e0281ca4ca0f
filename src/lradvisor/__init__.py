"""lradvisor: learning-rate advice from the spectral theory of conservation-law breaking.

Importing the package is cheap: torch, Optuna and MLflow load only with the modules that
need them (``lradvisor.theory`` never imports them).
"""

from __future__ import annotations

from lradvisor.errors import ConfigError, LRAdvisorError

__version__ = "0.1.0"
__all__ = ["ConfigError", "LRAdvisorError", "__version__", "suggest"]


def __getattr__(name: str):
    # ``lradvisor.suggest`` without importing torch at ``import lradvisor``.
    if name == "suggest":
        from lradvisor.advisor import suggest

        return suggest
    raise AttributeError(f"module 'lradvisor' has no attribute {name!r}")
