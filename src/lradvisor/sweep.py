"""`lradvisor sweep` as a library call: batched trials, α fit, spectral prediction, records.

The CLI only parses arguments and renders what :func:`run` returns.

Two drifts can be fitted (``drift``):

* ``"exact"`` (default): η²·S with S the per-step gradient imbalance summed in float64 — the
  identity C(T) − C(0) = η²·S holds exactly for plain (S)GD (docs/theory.md §2); for momentum,
  Adam or weight decay the direct difference from float64 norms of the weights.
* ``"direct"``: C(T) − C(0) with C read from the weights *in the run's dtype* at step 0 and
  step T, as the paper measured it. In float32 this difference carries the rounding of C
  itself: its floor is ε·(‖W_{l+1}‖² + ‖W_l‖² + ‖b_l‖²) with ε the dtype's machine epsilon
  (1.19e-7), and a drift within 10× of it is mostly rounding noise — the table says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import Observables, ProgressCallback, SweepResult
from lradvisor.engine.data import data_shape
from lradvisor.engine.dispatch import run_trials
from lradvisor.errors import LRAdvisorError
from lradvisor.measure.hessian import DENSE_LIMIT
from lradvisor.prediction import SpectralPrediction, parameter_count, predict_imbalance_sum
from lradvisor.records import PowerLawFit
from lradvisor.theory import fit_power_law

DRIFTS = ("exact", "direct")
DIVERGED_RULES = ("exclude", "drop-rate")
FLOOR_MARGIN = 10.0  # a drift within this factor of the rounding floor is flagged
PREDICTION_METHODS = ("quadrature", "dense")


@dataclass(frozen=True)
class SweepReport:
    """Everything `lradvisor sweep` prints and writes.

    ``drift`` ("exact" or "direct") is the drift that ``fits`` and the table use;
    ``law`` the law of the top-level α; ``fit_lrs`` the (low, high) window of the fit or
    None; ``diverged`` how diverged trials enter the fit ("exclude": left out of their
    rate's mean; "drop-rate": a rate with any diverged trial leaves the fit). ``direct`` and
    ``floor`` are per trial and law (None for a factory model): C(T) − C(0) in the run's
    dtype and its rounding floor.
    """

    result: SweepResult
    fits: list[PowerLawFit | None]
    prediction: SpectralPrediction | None
    prediction_note: str
    drift: str = "exact"
    law: int = 0
    fit_lrs: tuple[float, float] | None = None
    diverged: str = "exclude"
    direct: np.ndarray | None = None
    floor: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def fit(self) -> PowerLawFit | None:
        """The fit of the selected law (the JSON's top-level ``alpha``)."""
        return self.fits[self.law] if self.fits else None

    def drift_values(self, law: int = 0) -> np.ndarray:
        """Per-trial drift of ``law`` as this report fits it."""
        return drift_of(self.result, law, self.drift, self.direct)

    def near_floor(self, law: int = 0) -> np.ndarray | None:
        """Per distinct η: True where the mean |direct drift| is within 10× of the floor."""
        if self.floor is None or self.direct is None:
            return None
        _, direct = self.result.grid(np.abs(self.direct[:, law]))
        _, floor = self.result.grid(self.floor[:, law])
        with np.errstate(invalid="ignore"):
            return np.nanmean(direct, axis=1) < FLOOR_MARGIN * np.nanmean(floor, axis=1)

    def per_lr(self, law: int = 0) -> list[dict]:
        """One summary row per learning rate for ``law``."""
        result = self.result
        lrs, drift = result.grid(np.abs(self.drift_values(law)))
        _, imbalance = result.grid(np.abs(result.imbalance_sum[:, law]))
        _, residual = result.grid(identity_residual(result)[:, law])
        _, loss = result.grid(result.final_loss)
        _, diverged = result.grid(result.diverged.astype(float))
        floor = None if self.floor is None else result.grid(self.floor[:, law])[1]
        near = self.near_floor(law)
        used = fit_mask(lrs, diverged > 0, self.fit_lrs, self.diverged)
        predicted = self.predicted_s(law)
        rows = []
        for i, lr in enumerate(lrs):
            finite = drift[i][np.isfinite(drift[i])]
            row = {
                "lr": float(lr),
                "drift_mean": _mean(finite),
                "drift_std": float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan"),
                "imbalance_sum_mean": _nanmean(imbalance[i]),
                "identity_residual_max": _nanmax(residual[i]),
                "final_loss_mean": _nanmean(loss[i]),
                "diverged": int(np.nansum(diverged[i])),
                "seeds": len(drift[i]),
                "in_fit": bool(used[i]),
            }
            if floor is not None:
                row["rounding_floor"] = _nanmean(floor[i])
                row["near_floor"] = bool(near[i])
            if predicted is not None:
                row["predicted_imbalance_sum"] = float(predicted[i])
                row["predicted_drift"] = float(lr**2 * predicted[i])
                row["predicted_relative_error"] = _relative_error(
                    predicted[i], row["imbalance_sum_mean"]
                )
                row["beyond_eos"] = bool(self.prediction.eos_lr <= lr)
            rows.append(row)
        return rows

    def predicted_s(self, law: int) -> np.ndarray | None:
        if self.prediction is None:
            return None
        return self.prediction.imbalance_sum[:, law]

    def to_json(self) -> dict:
        result = self.result
        primary = self.fit
        residual = identity_residual(result)
        drifts = self.drift_values_all()
        records = []
        for k in range(result.n_trials):
            records.append(
                {
                    "lr": float(result.lrs[k]),
                    "seed": int(result.seeds[k]),
                    "drift": _floats(drifts[k]),
                    "drift_identity": _floats(result.drift_identity[k]),
                    "drift_direct": _floats(result.drift_direct[k]),
                    "drift_direct_dtype": None if self.direct is None else _floats(self.direct[k]),
                    "rounding_floor": None if self.floor is None else _floats(self.floor[k]),
                    "imbalance_sum": _floats(result.imbalance_sum[k]),
                    "identity_residual": _floats(residual[k]),
                    "bias_free_drift_direct": None
                    if result.bias_free_direct is None
                    else _floats(result.bias_free_direct[k]),
                    "c_initial": _floats(result.c_initial[k]),
                    "initial_loss": _float(result.initial_loss[k]),
                    "final_loss": _float(result.final_loss[k]),
                    "final_val_loss": _float(result.final_val_loss[k]),
                    "diverged": bool(result.diverged[k]),
                    "diverged_step": int(result.diverged_step[k]) if result.diverged[k] else None,
                }
            )
        law_names = result.law_names
        return {
            "name": result.config.name,
            "config_file": result.config.source_file,
            "laws": law_names,
            "law": law_names[self.law] if law_names else None,
            "drift_kind": self.drift,
            "fit_lrs": None if self.fit_lrs is None else list(self.fit_lrs),
            "diverged_rule": self.diverged,
            "identity_holds": result.identity_holds,
            "steps": result.steps,
            "dtype": result.config.training.dtype,
            "alpha": None if primary is None else primary.alpha,
            "alpha_ci": None if primary is None else list(primary.alpha_ci),
            "r2": None if primary is None else primary.r2,
            "fit": None if primary is None else primary.as_dict(),
            "fits_by_law": {
                name: None if fit is None else fit.as_dict()
                for name, fit in zip(law_names, self.fits, strict=True)
            },
            "per_lr": {name: self.per_lr(i) for i, name in enumerate(law_names)},
            "prediction": None
            if self.prediction is None
            else {
                "method": self.prediction.method,
                "lambda_max_by_seed": self.prediction.lambda_max.tolist(),
                "eos_lr": self.prediction.eos_lr,
                "outside_fraction": self.prediction.outside_fraction,
            },
            "prediction_note": self.prediction_note,
            "warnings": self.warnings,
            "notes": result.notes,
            "wall_time_s": result.wall_time,
            "records": records,
        }

    def drift_values_all(self) -> np.ndarray:
        """Per-trial drift of every law as this report fits it, shape (trial, law)."""
        laws = range(len(self.result.law_names))
        if not laws:
            return np.zeros((self.result.n_trials, 0))
        return np.stack([self.drift_values(law) for law in laws], axis=1)


def drift_of(result: SweepResult, law: int, kind: str, direct: np.ndarray | None) -> np.ndarray:
    """Per-trial drift of ``law``: the exact one, or C(T) − C(0) in the run's dtype."""
    if kind == "direct":
        if direct is None:
            raise LRAdvisorError("the direct drift in the run's dtype needs a built-in MLP")
        return direct[:, law]
    return result.drift(law)


def identity_residual(result: SweepResult) -> np.ndarray:
    """|C(T) − C(0) − η²S| / max(1, |C(T) − C(0)|) per trial and law (NaN without identity)."""
    direct = result.drift_direct
    return np.abs(direct - result.drift_identity) / np.maximum(1.0, np.abs(direct))


def fit_mask(
    lrs: np.ndarray,
    diverged: np.ndarray,
    fit_lrs: tuple[float, float] | None,
    rule: str,
) -> np.ndarray:
    """Which distinct η enter the fit: inside ``fit_lrs`` and, for "drop-rate", no divergence.

    ``diverged`` is the (η, seed) table of divergence flags.
    """
    keep = np.ones(len(lrs), dtype=bool)
    if fit_lrs is not None:
        low, high = fit_lrs
        keep &= (lrs >= low * (1 - 1e-12)) & (lrs <= high * (1 + 1e-12))
    if rule == "drop-rate":
        keep &= ~np.asarray(diverged, dtype=bool).any(axis=1)
    return keep


def fit_table(
    result: SweepResult,
    drift: np.ndarray,
    *,
    fit_lrs: tuple[float, float] | None = None,
    diverged: str = "exclude",
) -> PowerLawFit | None:
    """α of a per-trial drift over the sweep's η (None with fewer than 3 usable η)."""
    if diverged not in DIVERGED_RULES:
        raise LRAdvisorError(f"diverged must be one of {DIVERGED_RULES}, but got {diverged!r}.")
    lrs, table = result.grid(np.abs(drift))
    _, flags = result.grid(result.diverged.astype(float))
    keep = fit_mask(lrs, flags > 0, fit_lrs, diverged)
    lrs, table = lrs[keep], table[keep]
    usable = np.isfinite(table).any(axis=1) & (np.nan_to_num(table, nan=0.0) > 0).any(axis=1)
    if usable.sum() < 3:
        return None
    return fit_power_law(lrs, table)


def fit_drift(result: SweepResult, law: int = 0) -> PowerLawFit | None:
    """α of one law's exact drift over the sweep's η (None with fewer than 3 usable η)."""
    return fit_table(result, result.drift(law))


def _float(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _floats(values: np.ndarray) -> list[float | None]:
    return [_float(v) for v in values]


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return _mean(finite)


def _nanmax(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.max(finite)) if len(finite) else float("nan")


def _relative_error(predicted: float, measured: float) -> float:
    if not (np.isfinite(predicted) and np.isfinite(measured)) or measured == 0:
        return float("nan")
    return abs(predicted - measured) / abs(measured)


def direct_in_dtype(result: SweepResult) -> tuple[np.ndarray, np.ndarray] | None:
    """(C(T) − C(0) with C summed in the run's dtype, its rounding floor), per trial and law.

    C_l = ‖W_{l+1}‖² − ‖W_l‖² − ‖b_l‖², each squared norm summed by torch in the weights'
    dtype (as ``(w ** 2).sum()`` in a training script); the floor is ε·(‖W_{l+1}‖² + ‖W_l‖² +
    ‖b_l‖²) at step 0, ε the dtype's machine epsilon. None without the step-0 and step-T
    weights (factory models). Diverged trials are NaN.
    """
    import torch

    steps = result.steps
    if 0 not in result.checkpoints or steps not in result.checkpoints:
        return None
    (w0, b0), (w1, b1) = result.checkpoints[0], result.checkpoints[steps]
    eps = float(torch.finfo(w0[0].dtype).eps)

    def norms(weights, biases):
        squares = [(w * w).sum((-2, -1)) for w in weights]
        bias_squares = None if biases is None else [(b * b).sum(-1) for b in biases]
        return squares, bias_squares

    def laws(squares, bias_squares):
        out = []
        for i in range(len(squares) - 1):
            c = squares[i + 1] - squares[i]
            if bias_squares is not None:
                c = c - bias_squares[i]
            out.append(c)
        return out

    start, start_bias = norms(w0, b0)
    end, end_bias = norms(w1, b1)
    before, after = laws(start, start_bias), laws(end, end_bias)
    direct = np.stack(
        [
            a.double().cpu().numpy() - b.double().cpu().numpy()
            for a, b in zip(after, before, strict=True)
        ],
        axis=1,
    )
    scale = []
    for i in range(len(start) - 1):
        total = start[i + 1].double() + start[i].double()
        if start_bias is not None:
            total = total + start_bias[i].double()
        scale.append(eps * total.cpu().numpy())
    direct[result.diverged] = np.nan
    return direct, np.stack(scale, axis=1)


def run(
    config: ModelConfig,
    *,
    lrs: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
    predict: bool = True,
    progress: ProgressCallback | None = None,
    drift: str = "exact",
    law: int = 0,
    fit_lrs: tuple[float, float] | None = None,
    diverged: str = "exclude",
    prediction_method: str = "quadrature",
) -> SweepReport:
    """Run the sweep, fit α per law, and predict S(η) from the Hessian at initialisation.

    ``drift``: "exact" (η²·S) or "direct" (C(T) − C(0) in the run's dtype, the paper's
    measurement); ``law``: the law of the top-level α (0-based); ``fit_lrs``: fit only over
    low ≤ η ≤ high; ``diverged``: "exclude" or "drop-rate" (see :class:`SweepReport`);
    ``prediction_method``: "quadrature" (Lanczos on Hessian-vector products, the default)
    or "dense" (exact Hessians, O(P²) memory).
    """
    if drift not in DRIFTS:
        raise LRAdvisorError(f"drift must be one of {DRIFTS}, but got {drift!r}.")
    if diverged not in DIVERGED_RULES:
        raise LRAdvisorError(f"diverged must be one of {DIVERGED_RULES}, but got {diverged!r}.")
    if prediction_method not in PREDICTION_METHODS:
        raise LRAdvisorError(
            f"prediction method must be one of {PREDICTION_METHODS}, but got {prediction_method!r}."
        )
    if fit_lrs is not None and not (0 < fit_lrs[0] <= fit_lrs[1]):
        raise LRAdvisorError(f"fit_lrs must be (low, high) with 0 < low ≤ high, but got {fit_lrs}.")
    options = {}
    if not config.model.is_factory:
        total = steps if steps is not None else config.training.steps
        options["observe"] = Observables(checkpoints=(0, total))
    elif drift == "direct":
        raise LRAdvisorError(
            "--drift direct reads C in the run's dtype from the built-in engine's weights; "
            "for a factory model (model.factory) use --drift exact"
        )
    result = run_trials(config, lrs=lrs, seeds=seeds, steps=steps, progress=progress, **options)
    if law >= max(1, len(result.law_names)):
        raise LRAdvisorError(
            f"law must be between 1 and {len(result.law_names)}, but got {law + 1}."
        )
    measured = direct_in_dtype(result)
    direct, floor = (None, None) if measured is None else measured
    fits = [
        fit_table(result, drift_of(result, i, drift, direct), fit_lrs=fit_lrs, diverged=diverged)
        for i in range(len(result.law_names))
    ]
    prediction, note = None, "spectral prediction skipped (--no-predict)"
    if predict:
        prediction, note = _predict(result, prediction_method)
    report = SweepReport(
        result=result,
        fits=fits,
        prediction=prediction,
        prediction_note=note,
        drift=drift,
        law=law,
        fit_lrs=fit_lrs,
        diverged=diverged,
        direct=direct,
        floor=floor,
    )
    report.warnings.extend(_floor_warnings(report))
    return report


def _floor_warnings(report: SweepReport) -> list[str]:
    if not report.result.law_names:
        return []
    near = report.near_floor(report.law)
    if near is None or not near.any():
        return []
    lrs = np.unique(report.result.lrs)[near]
    dtype = report.result.config.training.dtype
    name = report.result.law_names[report.law]
    shown = ", ".join(f"{lr:g}" for lr in lrs)
    if report.drift == "direct":
        return [
            f"at η = {shown} the direct drift of {name} is within {FLOOR_MARGIN:g}× of {dtype}'s "
            "rounding floor of C (ε·(‖W_{l+1}‖² + ‖W_l‖²)): it is mostly rounding noise, "
            "which flattens the log–log line and pulls α down; --drift exact gives η²·S"
        ]
    return [
        f"at η = {shown} the direct difference C(T) − C(0) of {name} in {dtype} would be within "
        f"{FLOOR_MARGIN:g}× of its rounding floor (JSON drift_direct_dtype): a float32 script that "
        "differences C measures rounding noise there; the exact η²·S in this table is not affected"
    ]


def _predict(result: SweepResult, method: str) -> tuple[SpectralPrediction | None, str]:
    config = result.config
    if config.model.is_factory:
        return None, "spectral prediction for a factory model: use `lradvisor suggest --probe`"
    if not result.law_names:
        return None, "no conservation law in this model: nothing to predict"
    in_dim, out_dim = data_shape(config)
    count = parameter_count(config, in_dim, out_dim)
    if method == "dense" and count > DENSE_LIMIT:
        return (
            None,
            f"the dense prediction needs the Hessian: {count} parameters > {DENSE_LIMIT} "
            "(the default quadrature has no such limit)",
        )
    how = (
        "by Gauss quadrature of g₀'s spectral measure (Lanczos on Hessian-vector products)"
        if method == "quadrature"
        else "from its dense eigendecomposition"
    )
    note = (
        f"S(η) predicted from the Hessian at init {how}, c_k from the initial-gradient projection"
    )
    if config.training.batch_size is not None:
        note += "; the prediction is full-batch, the trials mini-batch SGD"
    seeds = list(dict.fromkeys(result.seeds.tolist()))
    try:
        prediction = predict_imbalance_sum(
            config, lrs=np.unique(result.lrs), seeds=seeds, steps=result.steps, method=method
        )
    except (LRAdvisorError, ValueError) as exc:
        return None, f"spectral prediction unavailable: {exc}"
    return prediction, note
