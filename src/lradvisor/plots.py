"""Figures: matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_advice(advice, path: str | Path) -> Path:
    """Drift vs η on log–log axes: the predicted curve, the probe's points, the EoS line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 4.5))
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
            label=f"probe: observed drift (α = {v['alpha_fitted']:.2f})",
        )
    ax.axvline(
        advice.eos_lr, color="crimson", ls="--", label=f"EoS 2/λ_max(θ₀) = {advice.eos_lr:.3g}"
    )
    if advice.batch_eos_lr is not None:
        ax.axvline(
            advice.batch_eos_lr,
            color="darkorange",
            ls="--",
            label=f"mini-batch bound = {advice.batch_eos_lr:.3g}",
        )
    ax.axvline(
        advice.recommended_lr,
        color="green",
        ls="-",
        lw=2,
        label=f"recommended η = {advice.recommended_lr:.3g}",
    )
    ax.axvspan(*advice.lr_range, color="green", alpha=0.08, label="sweep range")
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("conservation-law drift |C(T) − C(0)|")
    ax.set_title(f"{advice.model}: drift vs learning rate")
    ax.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


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
