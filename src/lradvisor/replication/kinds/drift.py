"""``drift_sweep``: drift against η for one model or a few variants (E1–E5, E7, E9).

Reports the drift exponent α, relative drifts |ΔC|/|C(0)|, the bias-free formula beside the
bias-aware law, the float32 rounding error of the direct drift, drift ratios between
learning rates and switch rates.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import Observables
from lradvisor.errors import ConfigError
from lradvisor.prediction import predict_imbalance_sum
from lradvisor.replication.kinds.sweeps import (
    PROTOCOL,
    SHARED_KEYS,
    SweepRunner,
    build_config,
    deep_merge,
    drift_values,
    fit_line,
    known_keys,
    model_mapping,
    number_list,
    require,
)
from lradvisor.replication.outcome import Figure, Outcome, Progress, Series

DRIFT_KEYS = (*SHARED_KEYS, "compare", "fit_max_lr", "ratio", "eos", "switch_rate")


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
    at = float(require(spec, "at", "the η of the numerator"))
    references = [float(v) for v in require(spec, "references", "reference learning rates")]
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
    known_keys(protocol, DRIFT_KEYS)
    lrs = sorted(number_list(protocol, "lrs", float))
    seeds = number_list(protocol, "seeds", int)
    observe = Observables(switch_rate=True) if protocol.get("switch_rate") else None
    variants = _variant_configs(protocol)
    total = sum(len(lrs) * len(seeds) * config.training.steps for _, config, _ in variants)
    runner = SweepRunner(progress, total, "drift sweep")
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
        line = fit_line(lrs, values)
        if line is not None:
            line.label = f"{name}{line.label}"
            series.append(line)
    figure = Figure("drift vs learning rate", "η", "|C(T) − C(0)|", series, logx=True, logy=True)
    return {"drift_vs_lr": figure}


def validate(protocol: dict) -> None:
    """Check a drift_sweep protocol without training (every model it would build)."""
    known_keys(protocol, DRIFT_KEYS)
    number_list(protocol, "lrs", float)
    number_list(protocol, "seeds", int)
    _variant_configs(protocol)
