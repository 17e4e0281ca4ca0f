"""What the sweep kinds share: protocol fields, the sweep runner and cache, drift summaries.

Every sweep is one :func:`~lradvisor.engine.batched.run_sweep` call (all (η, seed) trials of
one model as one batched computation). Identical sweeps asked for by several experiments of
one process (E13, E14) run once.

Protocol keys shared by both sweep kinds: ``model`` (a model file mapping, examples/e5.yaml),
``lrs``, ``seeds``, and optionally ``steps`` and ``dtype`` (override ``training.steps`` /
``training.dtype``, so that ``quick`` can replace them alone).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lradvisor.config import ModelConfig, parse_config
from lradvisor.engine.batched import Observables, SweepResult, run_sweep
from lradvisor.errors import ConfigError
from lradvisor.records import PowerLawFit
from lradvisor.replication.outcome import Progress, Series
from lradvisor.sweep import FLOOR_MARGIN, direct_in_dtype, fit_table

PROTOCOL = "protocol"  # the file name in errors; reproduce() puts the study file in front
_CACHE_SIZE = 32
_cache: dict[tuple, SweepResult] = {}


# ----------------------------------------------------------------------------- protocol


SHARED_KEYS = ("model", "lrs", "seeds", "steps", "dtype")


def known_keys(protocol: dict, allowed: tuple[str, ...]) -> None:
    for key in protocol:
        if key not in allowed:
            raise ConfigError(PROTOCOL, str(key), f"a known field ({', '.join(allowed)})")


def require(protocol: dict, key: str, expected: str) -> Any:
    if key not in protocol or protocol[key] is None:
        raise ConfigError(PROTOCOL, key, expected)
    return protocol[key]


def number_list(protocol: dict, key: str, kind: type) -> list:
    values = require(protocol, key, f"a list of {kind.__name__} values")
    if not isinstance(values, list) or not values:
        raise ConfigError(PROTOCOL, key, f"a non-empty list of {kind.__name__} values", values)
    return [kind(v) for v in values]


def deep_merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in, recursively for nested mappings (copies)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def model_mapping(protocol: dict) -> dict:
    """The protocol's model file mapping with the protocol-level ``steps``/``dtype`` applied."""
    raw = require(protocol, "model", "a model file mapping (see examples/e5.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(PROTOCOL, "model", "a model file mapping", raw)
    training = {key: protocol[key] for key in ("steps", "dtype") if key in protocol}
    return deep_merge(raw, {"training": training}) if training else copy.deepcopy(raw)


def build_config(raw: dict, where: str = "model") -> ModelConfig:
    """Validate a model mapping; errors name the protocol field."""
    try:
        return parse_config(raw, file=PROTOCOL)
    except ConfigError as exc:
        raise ConfigError(PROTOCOL, f"{where}.{exc.field}", exc.expected, exc.got) from None


# ----------------------------------------------------------------------------- running


@dataclass
class SweepRunner:
    """Runs sweeps, reuses identical ones, and reports progress over the whole experiment."""

    progress: Progress | None
    total: int
    label: str
    done: int = 0
    reused: int = 0

    def notes(self) -> list[str]:
        """Says when sweeps came from an earlier experiment of the same run (its time is 0)."""
        if not self.reused:
            return []
        return [f"{self.reused} sweep(s) reused from an earlier experiment of this run"]

    def sweep(
        self, config: ModelConfig, lrs: list[float], seeds: list[int], observe: Observables | None
    ) -> SweepResult:
        work = len(lrs) * len(seeds) * config.training.steps
        observe = with_end_points(observe, config.training.steps)
        key = (config.model_dump_json(exclude={"name"}), tuple(lrs), tuple(seeds), observe)
        result = _cache.get(key)
        self.reused += result is not None
        if result is None:
            offset = self.done

            def report(step: int, steps: int) -> None:
                if self.progress is not None:
                    self.progress(offset + work * step // steps, self.total, self.label)

            result = run_sweep(config, lrs=lrs, seeds=seeds, progress=report, observe=observe)
            if len(_cache) >= _CACHE_SIZE:
                _cache.pop(next(iter(_cache)))
            _cache[key] = result
        self.done += work
        if self.progress is not None:
            self.progress(self.done, self.total, self.label)
        return result


def with_end_points(observe: Observables | None, steps: int) -> Observables:
    """``observe`` plus the weights at step 0 and step T (for C summed in the run's dtype)."""
    observe = observe or Observables()
    points = tuple(sorted({*observe.checkpoints, 0, steps}))
    return dataclasses.replace(observe, checkpoints=points)


def clear_cache() -> None:
    """Forget the sweeps kept for reuse within a process."""
    _cache.clear()


# ----------------------------------------------------------------------------- measures


def finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def per_lr_mean(result: SweepResult, per_trial: np.ndarray) -> list[float]:
    _, table = result.grid(per_trial)
    return [finite_mean(row) for row in table]


def relative_drift(drift: np.ndarray, c_initial: np.ndarray) -> np.ndarray:
    """|ΔC_l|/|C_l(0)| per trial, the largest over laws."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.max(np.abs(drift) / np.abs(c_initial), axis=1)


def fit_values(fit: PowerLawFit | None) -> dict[str, Any]:
    if fit is None:
        return {"alpha": None, "r2": None, "alpha_ci": None, "intercept": None}
    return {
        "alpha": fit.alpha,
        "intercept": fit.intercept,
        "r2": fit.r2,
        "alpha_ci": list(fit.alpha_ci),
        "alpha_stderr": fit.alpha_stderr,
        "n_points": fit.n_points,
    }


def drift_values(result: SweepResult, *, fit_max_lr: float | None = None) -> dict[str, Any]:
    """α fit and per-η summaries of one sweep (law 1 for α; the worst law for relative drift).

    ``alpha`` is fitted over every η of the protocol (diverged trials left out of their
    rate's mean). With ``fit_max_lr`` the fit over η ≤ fit_max_lr is kept beside it as
    ``alpha_window`` / ``r2_window`` (a deviation from the protocol, never the verdict).
    ``alpha_direct``: the fit of C(T) − C(0) summed in the run's dtype (the paper's way),
    with ``rounding_floor`` (ε·(‖W_{l+1}‖² + ‖W_l‖²)) and ``near_floor`` per η.
    """
    lrs = np.unique(result.lrs)
    drift = np.stack([result.drift(law) for law in range(len(result.law_names))], axis=1)
    values: dict[str, Any] = {
        **fit_values(fit_table(result, result.drift(0))),
        "lrs": lrs.tolist(),
        "drift": per_lr_mean(result, np.abs(drift[:, 0])),
        "relative_drift": per_lr_mean(result, relative_drift(drift, result.c_initial)),
        "identity_holds": result.identity_holds,
        "diverged": [int(v) for v in result.grid(result.diverged.astype(float))[1].sum(axis=1)],
        "final_loss": per_lr_mean(result, result.final_loss),
    }
    measured = direct_in_dtype(result)
    if measured is not None:
        direct, floor = measured
        direct_fit = fit_table(result, direct[:, 0])
        values["alpha_direct"] = None if direct_fit is None else direct_fit.alpha
        values["r2_direct"] = None if direct_fit is None else direct_fit.r2
        values["direct_drift"] = per_lr_mean(result, np.abs(direct[:, 0]))
        values["rounding_floor"] = per_lr_mean(result, floor[:, 0])
        values["near_floor"] = [
            bool(d < FLOOR_MARGIN * f) if np.isfinite(d) else None
            for d, f in zip(values["direct_drift"], values["rounding_floor"], strict=True)
        ]
    if fit_max_lr is not None:
        window = fit_table(result, result.drift(0), fit_lrs=(float(lrs.min()), fit_max_lr))
        values["fit_max_lr"] = fit_max_lr
        values["alpha_window"] = None if window is None else window.alpha
        values["r2_window"] = None if window is None else window.r2
        values["alpha_window_ci"] = None if window is None else list(window.alpha_ci)
    if result.identity_holds:
        # rounding of the direct difference (float64 norms) against the float64-accumulated η²·S
        error = np.abs(result.drift_direct[:, 0] - result.drift_identity[:, 0])
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = error / np.abs(result.drift_identity[:, 0])
        values["direct_minus_identity"] = per_lr_mean(result, error)
        values["rounding_error"] = per_lr_mean(result, relative)
    if len(result.law_names) > 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            by_law = np.abs(drift) / np.abs(result.c_initial)
        values["relative_drift_by_law"] = {
            name: per_lr_mean(result, by_law[:, law]) for law, name in enumerate(result.law_names)
        }
    if result.bias_free_direct is not None:
        bias_free = per_lr_mean(result, relative_drift(result.bias_free_direct, result.c_initial))
        values["bias_free_relative_drift"] = bias_free
        values["bias_free_over_bias_aware"] = [
            b / a if a > 0 else math.nan
            for b, a in zip(bias_free, values["relative_drift"], strict=True)
        ]
    if result.switch_rate is not None:
        values["switch_rate"] = per_lr_mean(result, np.nanmean(result.switch_rate, axis=0))
    return values


def fit_line(lrs: list[float], fit: dict[str, Any]) -> Series | None:
    if fit.get("alpha") is None:
        return None
    x = [min(lrs), max(lrs)]
    y = [math.exp(fit["intercept"]) * v ** fit["alpha"] for v in x]
    return Series(x, y, label=f"fit α = {fit['alpha']:.3f}", style="fit")
