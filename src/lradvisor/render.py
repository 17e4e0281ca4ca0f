"""Plain-text rendering of reports for the terminal."""

from __future__ import annotations

import math

import numpy as np

from lradvisor.sweep import SweepReport


def _num(value: float | None, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("─" * w for w in widths)
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, rule, *body])


def _model_text(config) -> str:
    if config.model.is_factory:
        return f"factory {config.model.factory}({config.model.kwargs or {}})"
    return f"{config.model.activation} MLP hidden {config.model.hidden}, bias={config.model.bias}"


def _drift_text(report: SweepReport) -> str:
    result = report.result
    dtype = result.config.training.dtype
    if report.drift == "direct":
        return f"C(T) − C(0) with C summed in {dtype} (direct, as the paper measured)"
    if result.identity_holds:
        return "η²·S (float64, exact identity)"
    return "C(T) − C(0) (direct; identity does not apply)"


def _fit_text(report: SweepReport) -> str:
    parts = []
    if report.fit_lrs is not None:
        parts.append(f"η in [{report.fit_lrs[0]:g}, {report.fit_lrs[1]:g}]")
    parts.append(
        "diverged trials left out of their rate's mean"
        if report.diverged == "exclude"
        else "rates with a diverged trial left out"
    )
    return "; ".join(parts)


def render_sweep(report: SweepReport, *, law: int | None = None) -> str:
    result = report.result
    config = result.config
    if not result.law_names:
        return _render_lawless(report)
    law = report.law if law is None else law
    if law >= len(result.law_names):
        from lradvisor.errors import ConfigError

        raise ConfigError(
            "<command line>", "--law", f"a law between 1 and {len(result.law_names)}", law + 1
        )
    name = result.law_names[law]
    batch = (
        "full batch"
        if config.training.batch_size is None
        else f"batch {config.training.batch_size}"
    )
    lines = [
        f"lradvisor sweep: {config.name} ({config.source_file})",
        f"model {_model_text(config)}; "
        f"{config.training.loss.upper()} loss, {config.training.optimizer.upper()} {batch}, {result.steps} steps, {config.training.dtype}",
        f"{result.n_trials} trials in {result.wall_time:.2f} s (batched); law {name}; drift = {_drift_text(report)}",
        "",
    ]
    rows_data = report.per_lr(law)
    show_fit = report.fit_lrs is not None or report.diverged != "exclude"
    headers = ["η", "drift mean", "± std", "S mean", "id. resid", "final loss", "diverged"]
    if show_fit:
        headers.append("in fit")
    if report.prediction is not None:
        headers += ["S predicted", "rel err"]
    rows = []
    for row in rows_data:
        drift_cell = _num(row["drift_mean"])
        if report.drift == "direct" and row.get("near_floor"):
            drift_cell += " ≈floor"
        cells = [
            _num(row["lr"], "g"),
            drift_cell,
            _num(row["drift_std"], ".2g"),
            _num(row["imbalance_sum_mean"]),
            _num(row["identity_residual_max"], ".1e"),
            _num(row["final_loss_mean"], ".4g"),
            f"{row['diverged']}/{row['seeds']}",
        ]
        if show_fit:
            cells.append("yes" if row["in_fit"] else "no")
        if report.prediction is not None:
            if row["beyond_eos"]:
                cells += ["beyond EoS", "—"]
            else:
                cells += [
                    _num(row["predicted_imbalance_sum"]),
                    _num(row["predicted_relative_error"], ".0%"),
                ]
        rows.append(cells)
    lines.append(table(headers, rows))
    lines.append("")
    fit = report.fits[law]
    if fit is None:
        lines.append("α: not fitted (fewer than 3 learning rates with a finite drift)")
    else:
        lo, hi = fit.alpha_ci
        lines.append(
            f"α = {fit.alpha:.3f}  95% CI [{lo:.3f}, {hi:.3f}] ({fit.ci_method})  R² = {fit.r2:.4f}  "
            f"over {fit.n_points} learning rates   drift ∝ η^α"
        )
    lines.append(f"fit: {_fit_text(report)}")
    for other, other_fit in enumerate(report.fits):
        if other != law and other_fit is not None:
            lines.append(
                f"  law {result.law_names[other]}: α = {other_fit.alpha:.3f}, R² = {other_fit.r2:.4f}"
            )
    if report.prediction is not None:
        p = report.prediction
        lines.append(
            f"spectral prediction: λ_max(θ₀) = {p.lambda_max.mean():.4g} (seeds {p.lambda_max.min():.4g}–{p.lambda_max.max():.4g}), "
            f"EoS bound 2/λ_max = {p.eos_lr:.4g}"
        )
    lines.append(report.prediction_note)
    lines.extend(result.notes)
    if result.bias_free_direct is not None:
        lines.append(
            "biased net: the drift above is the bias-aware law C = ‖W_{l+1}‖² − ‖W_l‖² − ‖b_l‖²; see --json 'bias_free_drift_direct' for the bias-free formula"
        )
    lines.extend(f"warning: {warning}" for warning in report.warnings)
    return "\n".join(lines)


def _render_lawless(report: SweepReport) -> str:
    result = report.result
    rows = []
    lrs, loss = result.grid(result.final_loss)
    _, diverged = result.grid(result.diverged.astype(float))
    for i, lr in enumerate(lrs):
        finite = loss[i][np.isfinite(loss[i])]
        rows.append(
            [
                _num(float(lr), "g"),
                _num(float(finite.mean()) if len(finite) else None, ".4g"),
                f"{int(np.nansum(diverged[i]))}/{loss.shape[1]}",
            ]
        )
    lines = [
        f"lradvisor sweep: {result.config.name} ({result.config.source_file})",
        f"model {_model_text(result.config)}: no rescaling-symmetric Linear→activation→Linear pair, so no conservation law to measure",
        "",
        table(["η", "final loss", "diverged"], rows),
        "",
        *result.notes,
    ]
    return "\n".join(lines)


def render_advice(advice) -> str:
    """The `lradvisor suggest` report: each number with its rule, the probe's evidence, the
    warnings, and which parts of the theory apply."""
    rules = advice.rules
    rows: list[list[str]] = []

    def add(name: str, value: str, rule_key: str | None = None) -> None:
        rows.append([name, value, rules.get(rule_key or name, "")])

    add("recommended_lr", f"{advice.recommended_lr:.4g}")
    add("lr_range", f"{advice.lr_range[0]:.3g} … {advice.lr_range[1]:.3g}")
    bound = advice.bound
    add(
        "bound",
        bound["kind"] if bound["value"] is None else f"{bound['value']:.4g} ({bound['kind']})",
    )
    if advice.lambda_max is not None:
        add("lambda_max", f"{advice.lambda_max:.4g}")
        add("eos_lr", f"{advice.eos_lr:.4g}")
    if advice.batch_eos_lr is not None:
        add("batch_eos_lr", f"{advice.batch_eos_lr:.4g}")
    if advice.eos_lr_by_width:
        widths = ", ".join(f"m={w}: {v:.3g}" for w, v in sorted(advice.eos_lr_by_width.items()))
        add("eos_lr_by_width", widths)
    add("regime", advice.regime)
    if advice.alpha_predicted is not None:
        add("alpha_predicted", f"{advice.alpha_predicted:.3f}")
    if advice.tau is not None and advice.tau.get("a") is not None:
        b = advice.tau["b"]
        sign = "+" if b >= 0 else "−"
        add("tau", f"{advice.tau['a']:.3g}/η {sign} {abs(b):.3g} (R² {advice.tau['r2']:.3f})")
    elif advice.tau is not None:
        add("tau", "not fitted (fewer than 3 sub-EoS rates whose 1 − q̄ fell by e)")
    if advice.schedule:
        add("schedule", ", ".join(f"t={p['step']}: {p['lr']:.3g}" for p in advice.schedule))
    add("probe", f"{len(advice.probe['rows'])} rates")
    width = max(len(r[0]) for r in rows)
    value_width = min(30, max(len(r[1]) for r in rows))
    batch = "full batch" if advice.full_batch else f"batch {advice.batch_size}"
    lines = [
        f"lradvisor suggest: {advice.model} ({advice.loss}, {advice.optimizer}, {batch}, {advice.steps} steps)",
        "",
    ]
    for name, value, rule in rows:
        lines.append(f"{name.ljust(width)}  {value.ljust(value_width)}  {rule}")
    lines += ["", *_probe_table(advice)]
    if advice.validation is not None:
        lines += ["", *_validation_lines(advice.validation)]
    if advice.warnings:
        lines += ["", "warnings:", *(f"  - {w}" for w in advice.warnings)]
    lines += ["", "theory applies: " + "; ".join(advice.applies)]
    if advice.does_not_apply:
        lines.append("does not apply: " + "; ".join(advice.does_not_apply))
    total = sum(advice.timings.values())
    lines.append(
        f"measured in {total:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in advice.timings.items())
        + ")"
    )
    return "\n".join(lines)


def _probe_table(advice) -> list[str]:
    probe = advice.probe
    body = []
    for row in probe["rows"]:
        mark = "  ← recommended" if row["lr"] == advice.recommended_lr else ""
        body.append(
            [
                f"{row['lr']:.3g}",
                _num(row.get("rung_score"), ".4g"),
                _num(row.get("final_score"), ".4g"),
                row["origin"],
                row["status"] + mark,
            ]
        )
    header = (
        f"probe: mean {probe['score']} over seeds {list(probe['seeds'])} "
        f"(start {probe['initial_score']:.4g}); {probe['mode']}"
    )
    headers = ["η", f"step {probe['rung']}", f"step {probe['steps']}", "origin", "status"]
    return [header, table(headers, body)]


def _validation_lines(v: dict) -> list[str]:
    lo, hi = v["alpha_ci"]
    inside = lo <= v["alpha_predicted"] <= hi
    rows = [
        [f"{lr:.3g}", f"{o:.3g}", f"{p:.3g}", f"{e:.0%}"]
        for lr, o, p, e in zip(
            v["lrs"], v["observed_drift"], v["predicted_drift"], v["relative_error"], strict=True
        )
    ]
    return [
        f"validation sweep ({len(v['lrs'])} rates × seeds {v['seeds']}): α fitted = "
        f"{v['alpha_fitted']:.3f} [{lo:.3f}, {hi:.3f}] (R² {v['alpha_r2']:.3f}), α predicted = "
        f"{v['alpha_predicted']:.3f} — {'inside' if inside else 'outside'} the CI",
        table(["η", "drift observed", "drift predicted", "rel err"], rows),
    ]
