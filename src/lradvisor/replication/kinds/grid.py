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
from lradvisor.errors import ConfigError
from lradvisor.replication.kinds.sweeps import (
    PROTOCOL,
    SHARED_KEYS,
    SweepRunner,
    build_config,
    deep_merge,
    drift_values,
    known_keys,
    model_mapping,
    number_list,
    require,
)
from lradvisor.replication.outcome import Figure, Outcome, Progress, Series
from lradvisor.theory import additive_interaction, fit_power_law

GRID_KEYS = (*SHARED_KEYS, "grid", "contrast", "excess_law", "transition", "plot_against")


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
    configs = _grid_configs(protocol, axes)
    total = sum(len(lrs) * len(seeds) * config.training.steps for _, config in configs)
    runner = SweepRunner(progress, total, "grid sweep")
    points = []
    notes: list[str] = []
    for coords, config in configs:
        result = runner.sweep(config, lrs, seeds, None)
        fit = drift_values(result)
        points.append(_Point(coords, fit))
        if any(fit["diverged"]):
            where = _coords_text(axes, coords)
            notes.append(f"{where}: {sum(fit['diverged'])} diverged trials left out of the fit")
    notes += runner.notes()
    values = _grid_values(axes, points)
    values.update(_grid_analyses(protocol, axes, points))
    against = _axis_index(axes, protocol.get("plot_against", axes[0][0]), "plot_against")
    figures = _grid_figures(axes, points, against)
    return Outcome(values=values, figures=figures, notes=notes)


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
        table = np.array([[p.fit["alpha"] for p in points]], dtype=float).reshape(
            len(axes[0][1]), len(axes[1][1])
        )
        widths = [p.fit["alpha_ci"][1] - p.fit["alpha_ci"][0] for p in points if p.fit["alpha_ci"]]
        noise = float(np.mean(widths)) / 2 if widths else math.nan
        interaction = additive_interaction(table) if np.isfinite(table).all() else math.nan
        values["interaction_rms"] = interaction
        values["non_additive"] = {
            "holds": bool(interaction > noise) if np.isfinite(interaction) else None,
            "reason": (
                f"α's {names[0]} × {names[1]} interaction (RMS residual of the additive fit) "
                f"{interaction:.3f} against a mean 95 % half-interval of {noise:.3f}"
            ),
        }
    if protocol.get("excess_law"):
        values["excess_law"] = _excess_law(axes, points)
    if "transition" in protocol:
        values["transition"] = _transition(protocol["transition"], axes, points)
    return values


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
    """Per value of ``by``: the first value of ``axis`` (in grid order) with α > threshold."""
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
        at.append(float(above[0]) if above else None)
    return {"by": list(axes[group][1]), "at": at, "threshold": threshold}


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
