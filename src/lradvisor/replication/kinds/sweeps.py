"""Experiment kinds built on batched (η, seed) sweeps: drift laws, α over a model grid.

``drift_sweep`` trains one model (or a few variants of it) over an η grid and reports the
drift exponent α, relative drifts |ΔC|/|C(0)|, the bias-free formula beside the bias-aware
law, the float32 rounding error of the direct drift, drift ratios between learning rates
and switch rates. ``grid_sweep`` fits α at every point of a grid over model parameters
(depth, width, activation ε, loss ε, data dimension, …) and reports trends, contrasts,
interaction with an additive model and transition points.

Every sweep is one :func:`~lradvisor.engine.batched.run_sweep` call (all (η, seed) trials of
one model as one batched computation). Identical sweeps asked for by several experiments of
one process (E13, E14) run once.

Protocol keys shared by both kinds: ``model`` (a model file mapping, examples/e5.yaml),
``lrs``, ``seeds``, and optionally ``steps`` and ``dtype`` (override ``training.steps`` /
``training.dtype``, so that ``quick`` can replace them alone).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lradvisor.config import ModelConfig, parse_config
from lradvisor.engine.batched import Observables, SweepResult, run_sweep
from lradvisor.errors import ConfigError
from lradvisor.prediction import predict_imbalance_sum
from lradvisor.records import PowerLawFit
from lradvisor.studies.paper.outcome import Figure, Outcome, Progress, Series
from lradvisor.sweep import fit_drift
from lradvisor.theory import additive_interaction, fit_power_law

PROTOCOL = "protocol"  # the file name in errors; reproduce() puts the study file in front
_CACHE_SIZE = 32
_cache: dict[tuple, SweepResult] = {}


# ----------------------------------------------------------------------------- protocol


_SHARED_KEYS = ("model", "lrs", "seeds", "steps", "dtype")
_DRIFT_KEYS = (*_SHARED_KEYS, "compare", "fit_max_lr", "ratio", "eos", "switch_rate")
_GRID_KEYS = (*_SHARED_KEYS, "grid", "contrast", "excess_law", "transition", "plot_against")


def _known_keys(protocol: dict, allowed: tuple[str, ...]) -> None:
    for key in protocol:
        if key not in allowed:
            raise ConfigError(PROTOCOL, str(key), f"a known field ({', '.join(allowed)})")


def _require(protocol: dict, key: str, expected: str) -> Any:
    if key not in protocol or protocol[key] is None:
        raise ConfigError(PROTOCOL, key, expected)
    return protocol[key]


def _number_list(protocol: dict, key: str, kind: type) -> list:
    values = _require(protocol, key, f"a list of {kind.__name__} values")
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
    raw = _require(protocol, "model", "a model file mapping (see examples/e5.yaml)")
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
class _Runner:
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


def clear_cache() -> None:
    """Forget the sweeps kept for reuse within a process."""
    _cache.clear()


# ----------------------------------------------------------------------------- measures


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _per_lr_mean(result: SweepResult, per_trial: np.ndarray) -> list[float]:
    _, table = result.grid(per_trial)
    return [_finite_mean(row) for row in table]


def _relative(drift: np.ndarray, c_initial: np.ndarray) -> np.ndarray:
    """|ΔC_l|/|C_l(0)| per trial, the largest over laws."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.max(np.abs(drift) / np.abs(c_initial), axis=1)


def _fit_values(fit: PowerLawFit | None) -> dict[str, Any]:
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


def _fit_up_to(result: SweepResult, max_lr: float | None) -> PowerLawFit | None:
    """α of law 1 over the η ≤ ``max_lr`` (all η when None)."""
    if max_lr is None:
        return fit_drift(result)
    lrs, table = result.grid(np.abs(result.drift(0)))
    keep = lrs <= max_lr
    usable = keep & np.isfinite(table).any(axis=1)
    return fit_power_law(lrs[keep], table[keep]) if usable.sum() >= 3 else None


def drift_values(result: SweepResult, *, fit_max_lr: float | None = None) -> dict[str, Any]:
    """α fit and per-η summaries of one sweep (law 1 for α; the worst law for relative drift).

    With ``fit_max_lr`` α is fitted over η ≤ fit_max_lr, and the fit over every η is kept
    as ``alpha_all_lrs`` / ``r2_all_lrs``.
    """
    lrs = np.unique(result.lrs)
    drift = np.stack([result.drift(law) for law in range(len(result.law_names))], axis=1)
    values: dict[str, Any] = {
        **_fit_values(_fit_up_to(result, fit_max_lr)),
        "lrs": lrs.tolist(),
        "drift": _per_lr_mean(result, np.abs(drift[:, 0])),
        "relative_drift": _per_lr_mean(result, _relative(drift, result.c_initial)),
        "identity_holds": result.identity_holds,
        "diverged": [int(v) for v in result.grid(result.diverged.astype(float))[1].sum(axis=1)],
        "final_loss": _per_lr_mean(result, result.final_loss),
    }
    if fit_max_lr is not None:
        full = fit_drift(result)
        values["fit_max_lr"] = fit_max_lr
        values["alpha_all_lrs"] = None if full is None else full.alpha
        values["r2_all_lrs"] = None if full is None else full.r2
    if result.identity_holds:
        # float32 rounding of the direct difference against the float64-accumulated η²·S
        error = np.abs(result.drift_direct[:, 0] - result.drift_identity[:, 0])
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = error / np.abs(result.drift_identity[:, 0])
        values["direct_minus_identity"] = _per_lr_mean(result, error)
        values["rounding_error"] = _per_lr_mean(result, relative)
    if len(result.law_names) > 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            by_law = np.abs(drift) / np.abs(result.c_initial)
        values["relative_drift_by_law"] = {
            name: _per_lr_mean(result, by_law[:, law]) for law, name in enumerate(result.law_names)
        }
    if result.bias_free_direct is not None:
        bias_free = _per_lr_mean(result, _relative(result.bias_free_direct, result.c_initial))
        values["bias_free_relative_drift"] = bias_free
        values["bias_free_over_bias_aware"] = [
            b / a if a > 0 else math.nan
            for b, a in zip(bias_free, values["relative_drift"], strict=True)
        ]
    if result.switch_rate is not None:
        values["switch_rate"] = _per_lr_mean(result, np.nanmean(result.switch_rate, axis=0))
    return values


def _fit_line(lrs: list[float], fit: dict[str, Any]) -> Series | None:
    if fit.get("alpha") is None:
        return None
    x = [min(lrs), min(max(lrs), fit.get("fit_max_lr") or math.inf)]
    y = [math.exp(fit["intercept"]) * v ** fit["alpha"] for v in x]
    return Series(x, y, label=f"fit α = {fit['alpha']:.3f}", style="fit")


# ----------------------------------------------------------------------------- drift_sweep


def _variants(protocol: dict, base: dict) -> list[tuple[str, dict, float | None]]:
    """(label, model mapping, fit_max_lr) of every variant; one "model" without ``compare``."""
    compare = protocol.get("compare")
    if compare is None:
        return [("model", base, protocol.get("fit_max_lr"))]
    if not isinstance(compare, list) or not compare:
        raise ConfigError(PROTOCOL, "compare", "a list of {label, model} variants", compare)
    variants = []
    for i, item in enumerate(compare):
        if not isinstance(item, dict) or "label" not in item:
            raise ConfigError(PROTOCOL, f"compare.{i}", "a mapping with a label", item)
        merged = deep_merge(base, item.get("model") or {})
        variants.append((str(item["label"]), merged, item.get("fit_max_lr")))
    return variants


def _ratios(protocol: dict, lrs: list[float], drift: list[float]) -> dict[str, Any] | None:
    """Mean drift at ``ratio.at`` over the mean drift at each reference η (E4's "5500×")."""
    spec = protocol.get("ratio")
    if spec is None:
        return None
    at = float(_require(spec, "at", "the η of the numerator"))
    references = [float(v) for v in _require(spec, "references", "reference learning rates")]
    for lr in (at, *references):
        if lr not in lrs:
            raise ConfigError(PROTOCOL, "ratio", f"learning rates among lrs {lrs}", lr)
    top = drift[lrs.index(at)]
    values: dict[str, Any] = {
        "at": at,
        "references": references,
        "by_reference": {f"{r:g}": top / drift[lrs.index(r)] for r in references},
    }
    target = spec.get("target")
    if target is not None:
        values["target"] = float(target)
        values["reference_for_target"] = _reference_for_ratio(lrs, drift, at, float(target))
    return values


def _reference_for_ratio(lrs: list[float], drift: list[float], at: float, target: float) -> float:
    """The η below ``at`` whose drift (log–log interpolated) is drift(at)/target."""
    wanted = math.log(drift[lrs.index(at)] / target)
    below = [(math.log(lr), math.log(d)) for lr, d in zip(lrs, drift, strict=True) if lr < at]
    for (x0, y0), (x1, y1) in itertools.pairwise(below):
        if min(y0, y1) <= wanted <= max(y0, y1) and y0 != y1:
            return math.exp(x0 + (wanted - y0) * (x1 - x0) / (y1 - y0))
    return math.nan


def _variant_configs(protocol: dict) -> list[tuple[str, ModelConfig, float | None]]:
    return [
        (label, build_config(raw, "model" if label == "model" else f"compare.{label}"), max_lr)
        for label, raw, max_lr in _variants(protocol, model_mapping(protocol))
    ]


def drift_sweep(protocol: dict, *, quick: bool, progress: Progress | None) -> Outcome:
    """Drift vs η for one model or several variants (``compare``), as in E1–E5, E7, E9.

    Protocol options beyond the shared keys: ``compare`` (a list of ``{label, model,
    fit_max_lr}``: ``model`` is merged over the base model mapping), ``fit_max_lr`` (fit α
    over η ≤ this only), ``ratio`` (``{at, references, target}``: drift(at) over
    drift(reference)), ``eos`` (also measure 2/λ_max(θ₀)), ``switch_rate``.

    Values: the first variant's α fit and per-η lists at the top level (``alpha``, ``r2``,
    ``drift``, ``relative_drift``, ``rounding_error``, ``bias_free_relative_drift``,
    ``switch_rate``), every variant under ``variants.<label>``, α differences and switch-rate
    relative differences to the first variant, and ``ratio`` / ``eos`` when asked for.
    """
    _known_keys(protocol, _DRIFT_KEYS)
    lrs = sorted(_number_list(protocol, "lrs", float))
    seeds = _number_list(protocol, "seeds", int)
    observe = Observables(switch_rate=True) if protocol.get("switch_rate") else None
    variants = _variant_configs(protocol)
    total = sum(len(lrs) * len(seeds) * config.training.steps for _, config, _ in variants)
    runner = _Runner(progress, total, "drift sweep")
    by_variant: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for label, config, max_lr in variants:
        result = runner.sweep(config, lrs, seeds, observe)
        by_variant[label] = drift_values(result, fit_max_lr=max_lr)
        notes += [f"{label}: {note}" for note in result.notes if f"{label}: {note}" not in notes]
    first_label = variants[0][0]
    first = by_variant[first_label]
    values: dict[str, Any] = dict(first)
    if len(variants) > 1:
        values["variants"] = by_variant
        values["alpha_difference"] = {
            label: _difference(v.get("alpha"), first.get("alpha"))
            for label, v in by_variant.items()
            if label != first_label
        }
        if observe is not None:
            values["switch_rate_relative_difference"] = {
                label: _relative_difference(v["switch_rate"], first["switch_rate"])
                for label, v in by_variant.items()
                if label != first_label
            }
    ratio = _ratios(protocol, lrs, first["drift"])
    if ratio is not None:
        values["ratio"] = ratio
        notes.append(_ratio_note(ratio))
    if protocol.get("eos"):
        values["eos"] = _initial_eos(variants[0][1], lrs, seeds)
        notes.append(
            f"2/λ_max(θ₀) = {values['eos']['eos_lr']:.3g} (mean λ_max over seeds, dense Hessian)"
        )
    for label, config, _ in variants:
        notes += _variant_notes(label, config, by_variant[label])
    notes += runner.notes()
    return Outcome(values=values, figures=_drift_figures(lrs, by_variant), notes=notes)


def _initial_eos(config: ModelConfig, lrs: list[float], seeds: list[int]) -> dict[str, Any]:
    """The Edge-of-Stability rate 2/λ_max at initialisation (dense Hessian, small nets)."""
    prediction = predict_imbalance_sum(
        config, lrs=np.array(lrs), seeds=seeds, steps=config.training.steps
    )
    return {"eos_lr": prediction.eos_lr, "lambda_max": prediction.lambda_max.tolist()}


def _ratio_note(ratio: dict[str, Any]) -> str:
    parts = ", ".join(f"η_ref = {r}: {v:.0f}×" for r, v in ratio["by_reference"].items())
    text = f"drift(η = {ratio['at']:g}) / drift(η_ref): {parts}"
    if "reference_for_target" in ratio:
        text += f"; {ratio['target']:g}× corresponds to η_ref ≈ {ratio['reference_for_target']:.2g}"
    return text


def _variant_notes(label: str, config: ModelConfig, values: dict[str, Any]) -> list[str]:
    """The measurements beyond the paper, in words: rounding floor, bias laws, fit range."""
    name = "" if label == "model" else f"{label}: "
    notes = []
    lrs = values["lrs"]
    if config.training.dtype == "float32" and "rounding_error" in values:
        shown = ", ".join(
            f"{100 * e:.2g} % at η = {lr:g}"
            for lr, e in list(zip(lrs, values["rounding_error"], strict=True))[:3]
        )
        floor = float(np.nanmedian(values["direct_minus_identity"]))
        notes.append(
            f"{name}float32 floor: the direct C(T) − C(0) misses the float64 η²·S by "
            f"~{floor:.1g} (median over η), i.e. {shown}"
        )
    if "bias_free_relative_drift" in values:
        notes.append(
            f"{name}bias-free formula drifts {values['bias_free_over_bias_aware'][0]:.0f}× more "
            f"than the bias-aware law at η = {lrs[0]:g} (relative drifts "
            f"{values['bias_free_relative_drift'][0]:.2g} vs {values['relative_drift'][0]:.2g}, "
            "both over the bias-aware |C(0)|)"
        )
    if values.get("fit_max_lr") is not None and values.get("alpha_all_lrs") is not None:
        notes.append(
            f"{name}α fitted over η ≤ {values['fit_max_lr']:g}; over every η "
            f"α = {values['alpha_all_lrs']:.3f} (R² = {values['r2_all_lrs']:.3f})"
        )
    return notes


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _relative_difference(values: list[float], reference: list[float]) -> float:
    """Mean over η of |v − r|/r."""
    pairs = [abs(v - r) / r for v, r in zip(values, reference, strict=True) if r > 0]
    return float(np.mean(pairs)) if pairs else math.nan


def _drift_figures(lrs: list[float], by_variant: dict[str, dict]) -> dict[str, Figure]:
    if len(lrs) < 2:
        labels = list(by_variant)
        series = [
            Series(
                list(range(len(labels))),
                [by_variant[label]["relative_drift"][0] for label in labels],
                label=", ".join(labels),
                style="points",
            )
        ]
        title = f"relative drift |ΔC|/|C(0)| at η = {lrs[0]:g}"
        return {"relative_drift": Figure(title, "variant", "|ΔC|/|C(0)|", series, logy=True)}
    series: list[Series] = []
    for label, values in by_variant.items():
        name = "" if label == "model" else f"{label}: "
        series.append(Series(lrs, values["drift"], label=f"{name}mean |drift|", style="points"))
        line = _fit_line(lrs, values)
        if line is not None:
            line.label = f"{name}{line.label}"
            series.append(line)
    figure = Figure("drift vs learning rate", "η", "|C(T) − C(0)|", series, logx=True, logy=True)
    return {"drift_vs_lr": figure}


# ----------------------------------------------------------------------------- grid_sweep


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
    grid = _require(protocol, "grid", f"a mapping of axes ({', '.join(AXES)}) to value lists")
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
    _known_keys(protocol, _GRID_KEYS)
    lrs = sorted(_number_list(protocol, "lrs", float))
    seeds = _number_list(protocol, "seeds", int)
    axes = _grid_axes(protocol)
    configs = _grid_configs(protocol, axes)
    total = sum(len(lrs) * len(seeds) * config.training.steps for _, config in configs)
    runner = _Runner(progress, total, "grid sweep")
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
    threshold = float(_require(spec, "threshold", "the α threshold"))
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


def validate(kind: str, protocol: dict) -> None:
    """Check a protocol of one of these kinds without training (every model it would build)."""
    _known_keys(protocol, _DRIFT_KEYS if kind == "drift_sweep" else _GRID_KEYS)
    _number_list(protocol, "lrs", float)
    _number_list(protocol, "seeds", int)
    if kind == "drift_sweep":
        _variant_configs(protocol)
    else:
        _grid_configs(protocol, _grid_axes(protocol))


KINDS = {"drift_sweep": drift_sweep, "grid_sweep": grid_sweep}
