"""Figures: matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_advice(advice, path: str | Path) -> Path:
    """The evidence for the pick: the probe's loss vs η (left) beside the theory (right).

    Left: mean probe score at the rung and at the end, diverged rates marked at the top, the
    optimizer-aware bound, the recommendation and the sweep range. Right (models with
    conservation laws under plain GD): the spectral formula's drift η²·S(η) and, with
    ``--probe``, the measured drift.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    theory = bool(advice.drift_curve) or advice.validation is not None
    figure, axes = plt.subplots(1, 2 if theory else 1, figsize=(12 if theory else 7, 4.5))
    axes = list(axes) if theory else [axes]
    _probe_panel(axes[0], advice)
    if theory:
        _drift_panel(axes[1], advice)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _probe_panel(ax, advice) -> None:
    import math

    probe = advice.probe
    rows = probe["rows"]
    for key, label, style in (
        ("rung_score", f"step {probe['rung']}", "o--"),
        ("final_score", f"step {probe['steps']}", "s-"),
    ):
        points = [(r["lr"], r[key]) for r in rows if math.isfinite(r.get(key, math.nan))]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=f"mean {probe['score']} at {label}")
    finite = [r["rung_score"] for r in rows if math.isfinite(r["rung_score"])]
    top = max([*finite, probe["initial_score"]])
    diverged = [r["lr"] for r in rows if r["status"] == "diverged"]
    if diverged:
        ax.plot(diverged, [top] * len(diverged), "x", color="crimson", ms=9, label="diverged")
    ax.axhline(probe["initial_score"], color="grey", lw=0.8, ls=":", label="at step 0")
    bound = advice.bound
    if bound["value"] is not None:
        ax.axvline(
            bound["value"],
            color="crimson",
            ls="--",
            label=f"{bound['kind']} bound {bound['value']:.3g}",
        )
    ax.axvline(
        advice.recommended_lr,
        color="green",
        lw=2,
        label=f"recommended η = {advice.recommended_lr:.3g}",
    )
    ax.axvspan(*advice.lr_range, color="green", alpha=0.08, label="sweep range")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate η")
    ax.set_ylabel(probe["score"])
    ax.set_title(f"{advice.model}: probe ({advice.optimizer})", fontsize=10)
    ax.legend(fontsize=7)


def _drift_panel(ax, advice) -> None:
    curve = [p for p in advice.drift_curve if not p["beyond_eos"] and p["drift"] > 0]
    if curve:
        ax.loglog(
            [p["lr"] for p in curve],
            [p["drift"] for p in curve],
            "-",
            label="spectral formula η²·S(η)",
        )
    if advice.validation is not None:
        v = advice.validation
        ax.loglog(
            v["lrs"],
            v["observed_drift"],
            "o",
            label=f"measured drift (α = {v['alpha_fitted']:.2f})",
        )
    if advice.eos_lr is not None:
        ax.axvline(
            advice.eos_lr, color="crimson", ls="--", label=f"EoS 2/λ_max(θ₀) = {advice.eos_lr:.3g}"
        )
    ax.axvline(
        advice.recommended_lr,
        color="green",
        lw=2,
        label=f"recommended η = {advice.recommended_lr:.3g}",
    )
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("conservation-law drift |C(T) − C(0)|")
    ax.set_title("theory: drift vs learning rate", fontsize=10)
    ax.legend(fontsize=7)


def draw(spec: dict, *, size: tuple[float, float] = (7.0, 4.5)):
    """A matplotlib figure from a figure spec (plain data, so it can be queued as JSON).

    ``spec``: ``title``, ``xlabel``, ``ylabel``, optional ``logx`` / ``logy`` and ``vlines``
    (``[{"x", "label"}]``), and ``series``: ``[{"x", "y", "label", "style"}]`` with style
    ``"line"``, ``"points"``, ``"fit"`` (dashed) or ``"prediction"`` (dotted). The caller
    closes the figure (``matplotlib.pyplot.close``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=size)
    formats = {"line": "-", "points": "o", "fit": "--", "prediction": ":"}
    for series in spec.get("series", []):
        style = series.get("style", "line")
        ax.plot(
            series["x"],
            series["y"],
            formats.get(style, "-"),
            label=series.get("label") or None,
            lw=2 if style == "prediction" else 1.5,
        )
    for line in spec.get("vlines", []):
        ax.axvline(line["x"], color="crimson", ls="--", label=line.get("label"))
    if spec.get("logx"):
        ax.set_xscale("log")
    if spec.get("logy"):
        ax.set_yscale("log")
    ax.set_xlabel(spec.get("xlabel", ""))
    ax.set_ylabel(spec.get("ylabel", ""))
    ax.set_title(spec.get("title", ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    if any(s.get("label") for s in spec.get("series", [])) or spec.get("vlines"):
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure
