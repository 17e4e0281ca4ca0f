"""``grid_sweep``: α at every point of a grid over model parameters (E6, E11–E14, E17, E19, E22).

Trends, contrasts, the interaction against an additive model and transition points.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import SweepResult
from lradvisor.errors import ConfigError
from lradvisor.replication.kinds.sweeps import (
    PROTOCOL,
    SHARED_KEYS,
    SweepRunner,
    build_config,
    deep_merge,
    drift_values,
    fit_values,
    known_keys,
    model_mapping,
    number_list,
    require,
)
from lradvisor.replication.outcome import Figure, Outcome, Progress, Series
from lradvisor.sweep import fit_table
from lradvisor.theory import additive_interaction, fit_power_law

GRID_KEYS = (
    *SHARED_KEYS,
    "grid",
    "contrast",
    "excess_law",
    "transition",
    "plot_against",
    "variants",
    "common_range",
)


def _hidden(raw: dict) -> list[int]:
    return list(raw.get("model", {}).get("hidden") or [64])


def _set_depth(raw: dict, depth: Any) -> dict:
    return deep_merge(raw, {"model": {"hidden": [_hidden(raw)[0]] * (int(depth) - 1)}})


def _set_width(raw: dict, width: Any) -> dict:
    return deep_merge(raw, {"model": {"hidden": [int(width)] * len(_hidden(raw))}})


def _set_width_factor(raw: dict, factor: Any) -> dict:
    dim = raw.get("data", {}).get("dim", 20)
    return _set_width(raw, max(1, round(float(factor) * dim)))


def _set_activation_eps(raw: dict, eps: Any) -> dict:
    # σ_ε(z) = (1 − ε)z + ε·ReLU(z) is LeakyReLU with negative slope 1 − ε.
    model = {"activation": "leaky_relu", "negative_slope": 1.0 - float(eps)}
    return deep_merge(raw, {"model": model})


def _set_loss_eps(raw: dict, eps: Any) -> dict:
    return deep_merge(raw, {"training": {"loss": "mix", "ce_weight": float(eps)}})


AXES: dict[str, Callable[[dict, Any], dict]] = {
    "depth": _set_depth,
    "width": _set_width,
    "width_factor": _set_width_factor,
    "dim": lambda raw, d: deep_merge(raw, {"data": {"dim": int(d)}}),
    "activation": lambda raw, name: deep_merge(raw, {"model": {"activation": str(name)}}),
    "activation_eps": _set_activation_eps,
    "loss": lambda raw, name: deep_merge(raw, {"training": {"loss": str(name)}}),
    "loss_eps": _set_loss_eps,
}


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _grid_axes(protocol: dict) -> list[tuple[str, list]]:
    grid = require(protocol, "grid", f"a mapping of axes ({', '.join(AXES)}) to value lists")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(PROTOCOL, "grid", "a mapping of axes to value lists", grid)
    axes = []
    for name, points in grid.items():
        if name not in AXES:
            raise ConfigError(PROTOCOL, f"grid.{name}", f"one of the axes {', '.join(AXES)}")
        if not isinstance(points, list) or not points:
            raise ConfigError(PROTOCOL, f"grid.{name}", "a non-empty list of values", points)
        axes.append((name, points))
    return axes


def _coords_text(axes: list[tuple[str, list]], coords: tuple) -> str:
    return ", ".join(f"{name}={_label(v)}" for (name, _), v in zip(axes, coords, strict=True))


def _grid_configs(protocol: dict, axes: list[tuple[str, list]]) -> list[tuple[tuple, ModelConfig]]:
    base = model_mapping(protocol)
    configs = []
    for coords in itertools.product(*(points for _, points in axes)):
        raw = base
        for (name, _), value in zip(axes, coords, strict=True):
            raw = AXES[name](raw, value)
        configs.append((coords, build_config(raw, f"grid({_coords_text(axes, coords)})")))
    return configs


@dataclass(frozen=True)
class _Point:
    coords: tuple
    fit: dict[str, Any]
    result: SweepResult | None = None


def _nested(points: list[_Point], key: str) -> dict:
    table: dict = {}
    for point in points:
        level = table
        for value in point.coords[:-1]:
            level = level.setdefault(_label(value), {})
        level[_label(point.coords[-1])] = point.fit[key]
    return table


def grid_sweep(protocol: dict, *, quick: bool, progress: Progress | None) -> Outcome:
    """α at every point of a grid over model parameters (E6, E11–E14, E17, E19, E22).

    ``grid`` maps axes (depth, width, width_factor (width = factor × data dimension; list
    ``dim`` first), dim, activation, activation_eps (σ_ε = (1−ε)z + ε·ReLU(z)), loss,
    loss_eps ((1−ε)MSE + εCE)) to values; the grid is their product, in that order.

    Values: ``points`` (coords, α, R², CI), ``alpha``/``r2`` nested by axis value,
    ``alphas``/``r2s`` in grid order, ``alpha_range``, ``alpha_varies`` (qualitative: the
    range exceeds the typical 95 % interval width), ``alpha_by.<axis>.<value>`` (α of the
    points with that value), and when asked: ``contrast`` (α(of) − α(minus) along an axis,
    per combination of the other axes), ``non_additive`` (two axes: interaction beyond
    noise), ``excess_law`` (α − 1 ∝ axis^p) and ``transition`` (first axis value with
    α above a threshold, per group).
    """
    known_keys(protocol, GRID_KEYS)
    lrs = sorted(number_list(protocol, "lrs", float))
    seeds = number_list(protocol, "seeds", int)
    axes = _grid_axes(protocol)
    variants = _grid_variants(protocol)
    configs = {name: _grid_configs(over, axes) for name, over in variants.items()}
    total = sum(
        len(lrs) * len(seeds) * config.training.steps
        for grid in configs.values()
        for _, config in grid
    )
    runner = SweepRunner(progress, total, "grid sweep")
    by_variant: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    figures: dict = {}
    for name, grid in configs.items():
        prefix = "" if name == "model" else f"{name}: "
        points = []
        for coords, config in grid:
            result = runner.sweep(config, lrs, seeds, None)
            fit = drift_values(result)
            points.append(_Point(coords, fit, result))
            if any(fit["diverged"]):
                where = _coords_text(axes, coords)
                notes.append(
                    f"{prefix}{where}: {sum(fit['diverged'])} diverged trials left out of the fit"
                )
        values = _grid_values(axes, points)
        values.update(_grid_analyses(protocol, axes, points))
        by_variant[name] = values
        if name == "model":
            against = _axis_index(axes, protocol.get("plot_against", axes[0][0]), "plot_against")
            figures = _grid_figures(axes, points, against)
            if any(v is not None for v in values["alphas_direct"]):
                notes.append(_direct_note(axes, points))
    notes += runner.notes()
    values = by_variant.pop("model")
    if by_variant:
        values["variants"] = by_variant
    return Outcome(values=values, figures=figures, notes=notes)


def _grid_variants(protocol: dict) -> dict[str, dict]:
    """The protocol's model ("model") and each named variant merged over it (extra rows)."""
    variants = {"model": protocol}
    extra = protocol.get("variants") or {}
    if not isinstance(extra, dict):
        raise ConfigError(PROTOCOL, "variants", "a mapping of names to model overrides", extra)
    for name, overrides in extra.items():
        merged = dict(protocol)
        merged["model"] = deep_merge(protocol["model"], overrides or {})
        variants[str(name)] = merged
    return variants


def _direct_note(axes: list[tuple[str, list]], points: list[_Point]) -> str:
    shown = ", ".join(
        f"{_coords_text(axes, p.coords)}: {p.fit['alpha']:.3f} → {p.fit['alpha_direct']:.3f}"
        for p in points
        if p.fit.get("alpha_direct") is not None and p.fit.get("alpha") is not None
    )
    return (
        "paper-comparable α (C(T) − C(0) summed in the run's dtype) beside the exact one: " + shown
    )


def _grid_values(axes: list[tuple[str, list]], points: list[_Point]) -> dict[str, Any]:
    alphas = [p.fit["alpha"] for p in points]
    finite = [a for a in alphas if a is not None]
    widths = [p.fit["alpha_ci"][1] - p.fit["alpha_ci"][0] for p in points if p.fit["alpha_ci"]]
    spread = max(finite) - min(finite) if finite else math.nan
    noise = float(np.mean(widths)) if widths else math.nan
    values: dict[str, Any] = {
        "points": [
            {
                **{name: value for (name, _), value in zip(axes, p.coords, strict=True)},
                "alpha": p.fit["alpha"],
                "r2": p.fit["r2"],
                "alpha_ci": p.fit["alpha_ci"],
            }
            for p in points
        ],
        "alpha": _nested(points, "alpha"),
        "r2": _nested(points, "r2"),
        "alphas": alphas,
        "r2s": [p.fit["r2"] for p in points],
        "alphas_direct": [p.fit.get("alpha_direct") for p in points],
        "alpha_cis": [p.fit["alpha_ci"] for p in points],
        "alpha_ci_widths": [
            None if not p.fit["alpha_ci"] else p.fit["alpha_ci"][1] - p.fit["alpha_ci"][0]
            for p in points
        ],
        "alpha_range": spread,
        "alpha_varies": {
            "holds": bool(spread > noise) if finite and widths else None,
            "reason": f"α spans {spread:.3f} across the grid; mean 95 % interval width {noise:.3f}",
        },
        "alpha_by": {
            name: {
                _label(value): [p.fit["alpha"] for p in points if p.coords[i] == value]
                for value in axis_points
            }
            for i, (name, axis_points) in enumerate(axes)
        },
    }
    return values


def _grid_analyses(
    protocol: dict, axes: list[tuple[str, list]], points: list[_Point]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    names = [name for name, _ in axes]
    if "contrast" in protocol:
        values["contrast"] = _contrast(protocol["contrast"], axes, points)
    if len(axes) == 2:
        values.update(_interaction(axes, [p.fit for p in points], names))
        if protocol.get("common_range"):
            common = _common_fits(points)
            values["common_range"] = common["range"]
            values.update(
                {f"{k}_common": v for k, v in _interaction(axes, common["fits"], names).items()}
            )
    if protocol.get("excess_law"):
        values["excess_law"] = _excess_law(axes, points)
    if "transition" in protocol:
        values["transition"] = _transition(protocol["transition"], axes, points)
    return values


def _interaction(axes: list[tuple[str, list]], fits: list[dict], names: list[str]) -> dict:
    """Interaction of two axes in α (RMS residual of the additive fit) against the noise."""
    table = np.array([[f["alpha"] for f in fits]], dtype=float).reshape(
        len(axes[0][1]), len(axes[1][1])
    )
    widths = [f["alpha_ci"][1] - f["alpha_ci"][0] for f in fits if f["alpha_ci"]]
    noise = float(np.mean(widths)) / 2 if widths else math.nan
    interaction = additive_interaction(table) if np.isfinite(table).all() else math.nan
    return {
        "interaction_rms": interaction,
        "non_additive": {
            "holds": bool(interaction > noise) if np.isfinite(interaction) else None,
            "reason": (
                f"α's {names[0]} × {names[1]} interaction (RMS residual of the additive fit) "
                f"{interaction:.3f} against a mean 95 % half-interval of {noise:.3f}"
            ),
        },
    }


def _common_fits(points: list[_Point]) -> dict:
    """Every point refitted over the η range where no trial of any point diverged."""
    lrs = np.unique(points[0].result.lrs)
    clean = np.ones(len(lrs), dtype=bool)
    for p in points:
        _, flags = p.result.grid(p.result.diverged.astype(float))
        clean &= ~(flags > 0).any(axis=1)
    top = lrs[0]
    for lr, ok in zip(lrs, clean, strict=True):
        if not ok:
            break
        top = lr
    window = (float(lrs[0]), float(top))
    fits = [fit_values(fit_table(p.result, p.result.drift(0), fit_lrs=window)) for p in points]
    return {"range": list(window), "fits": fits}


def _axis_index(axes: list[tuple[str, list]], name: Any, field: str) -> int:
    names = [n for n, _ in axes]
    if name not in names:
        raise ConfigError(PROTOCOL, field, f"one of the grid's axes ({', '.join(names)})", name)
    return names.index(name)


def _contrast(spec: dict, axes: list[tuple[str, list]], points: list[_Point]) -> dict[str, list]:
    """α(axis = of) − α(axis = minus) along ``along``, per combination of the other axes."""
    axis = _axis_index(axes, spec.get("axis"), "contrast.axis")
    along = _axis_index(axes, spec.get("along"), "contrast.along")
    of, minus = spec.get("of"), spec.get("minus")
    alpha = {p.coords: p.fit["alpha"] for p in points}
    others = [i for i in range(len(axes)) if i not in (axis, along)]
    result: dict[str, list] = {}
    for fixed in itertools.product(*(axes[i][1] for i in others)):
        label = ",".join(_label(v) for v in fixed) or "all"
        series = []
        for value in axes[along][1]:
            coords = [None] * len(axes)
            for i, v in zip(others, fixed, strict=True):
                coords[i] = v
            coords[along] = value
            coords[axis] = of
            high = alpha.get(tuple(coords))
            coords[axis] = minus
            low = alpha.get(tuple(coords))
            series.append(None if high is None or low is None else high - low)
        result[label] = series
    return result


def _excess_law(axes: list[tuple[str, list]], points: list[_Point]) -> dict[str, Any]:
    """α − 1 ∝ x^p over a single numeric axis (E19: x = width)."""
    x = np.array(axes[0][1], dtype=float)
    excess = np.array([p.fit["alpha"] for p in points], dtype=float) - 1.0
    usable = np.isfinite(excess) & (excess > 0)
    if usable.sum() < 3:
        return {"exponent": None, "r2": None, "reason": "fewer than 3 points with α > 1"}
    fit = fit_power_law(x[usable], excess[usable])
    return {"exponent": fit.alpha, "r2": fit.r2, "points": int(usable.sum())}


def _transition(spec: dict, axes: list[tuple[str, list]], points: list[_Point]) -> dict[str, Any]:
    """Per value of ``by``: the first value of ``axis`` (in grid order) with α > threshold
    (``inf`` when no value of the grid crosses it: the transition lies beyond the grid)."""
    axis = _axis_index(axes, spec.get("axis"), "transition.axis")
    group = _axis_index(axes, spec.get("by"), "transition.by")
    threshold = float(require(spec, "threshold", "the α threshold"))
    at = []
    for value in axes[group][1]:
        above = [
            p.coords[axis]
            for p in points
            if p.coords[group] == value
            and p.fit["alpha"] is not None
            and p.fit["alpha"] > threshold
        ]
        at.append(float(above[0]) if above else math.inf)
    return {
        "by": list(axes[group][1]),
        "at": at,
        "threshold": threshold,
        "reached": [math.isfinite(v) for v in at],
    }


def _grid_figures(
    axes: list[tuple[str, list]], points: list[_Point], against: int
) -> dict[str, Figure]:
    """α against one axis (``plot_against``), one line per combination of the other axes."""
    name, xs = axes[against]
    numeric = all(isinstance(v, (int, float)) for v in xs)
    others = [i for i in range(len(axes)) if i != against]
    groups: dict[tuple, dict] = {}
    for p in points:
        key = tuple(p.coords[i] for i in others)
        groups.setdefault(key, {})[p.coords[against]] = p.fit["alpha"]
    series = []
    for key, by_x in groups.items():
        alphas = [by_x.get(v) for v in xs]
        label = ", ".join(f"{axes[i][0]}={_label(v)}" for i, v in zip(others, key, strict=True))
        series.append(
            Series(
                [float(v) for v in xs] if numeric else list(range(len(xs))),
                [math.nan if a is None else a for a in alphas],
                label=label,
                style="line",
            )
        )
    xlabel = name if numeric else f"{name} ({', '.join(_label(v) for v in xs)})"
    return {"alpha_grid": Figure(f"drift exponent α vs {name}", xlabel, "α", series)}


def validate(protocol: dict) -> None:
    """Check a grid_sweep protocol without training (every model it would build)."""
    known_keys(protocol, GRID_KEYS)
    number_list(protocol, "lrs", float)
    number_list(protocol, "seeds", int)
    _grid_configs(protocol, _grid_axes(protocol))
