"""`lradvisor sweep` as a library call: batched trials, α fit, spectral prediction, records.

The CLI only parses arguments and renders what :func:`run` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import ProgressCallback, SweepResult
from lradvisor.engine.data import data_shape
from lradvisor.engine.dispatch import run_trials
from lradvisor.errors import LRAdvisorError
from lradvisor.measure.hessian import DENSE_LIMIT
from lradvisor.prediction import SpectralPrediction, parameter_count, predict_imbalance_sum
from lradvisor.records import PowerLawFit
from lradvisor.theory import fit_power_law


@dataclass(frozen=True)
class SweepReport:
    """Everything `lradvisor sweep` prints and writes."""

    result: SweepResult
    fits: list[PowerLawFit | None]
    prediction: SpectralPrediction | None
    prediction_note: str

    def per_lr(self, law: int = 0) -> list[dict]:
        """One summary row per learning rate for ``law``."""
        result = self.result
        lrs, drift = result.grid(np.abs(result.drift(law)))
        _, imbalance = result.grid(np.abs(result.imbalance_sum[:, law]))
        _, residual = result.grid(identity_residual(result)[:, law])
        _, loss = result.grid(result.final_loss)
        _, diverged = result.grid(result.diverged.astype(float))
        rows = []
        for i, lr in enumerate(lrs):
            finite = drift[i][np.isfinite(drift[i])]
            predicted = self.predicted_s(law)
            row = {
                "lr": float(lr),
                "drift_mean": _mean(finite),
                "drift_std": float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan"),
                "imbalance_sum_mean": _nanmean(imbalance[i]),
                "identity_residual_max": _nanmax(residual[i]),
                "final_loss_mean": _nanmean(loss[i]),
                "diverged": int(np.nansum(diverged[i])),
                "seeds": len(drift[i]),
            }
            if predicted is not None:
                row["predicted_imbalance_sum"] = float(predicted[i])
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
        primary = self.fits[0] if self.fits else None
        residual = identity_residual(result)
        records = []
        for k in range(result.n_trials):
            records.append(
                {
                    "lr": float(result.lrs[k]),
                    "seed": int(result.seeds[k]),
                    "drift": _floats(
                        result.drift_identity[k]
                        if result.identity_holds
                        else result.drift_direct[k]
                    ),
                    "drift_identity": _floats(result.drift_identity[k]),
                    "drift_direct": _floats(result.drift_direct[k]),
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
        return {
            "name": result.config.name,
            "config_file": result.config.source_file,
            "laws": result.law_names,
            "identity_holds": result.identity_holds,
            "steps": result.steps,
            "alpha": None if primary is None else primary.alpha,
            "alpha_ci": None if primary is None else list(primary.alpha_ci),
            "r2": None if primary is None else primary.r2,
            "fit": None if primary is None else primary.as_dict(),
            "fits_by_law": {
                name: None if fit is None else fit.as_dict()
                for name, fit in zip(result.law_names, self.fits, strict=True)
            },
            "per_lr": {name: self.per_lr(i) for i, name in enumerate(result.law_names)},
            "prediction": None
            if self.prediction is None
            else {
                "lambda_max_by_seed": self.prediction.lambda_max.tolist(),
                "eos_lr": self.prediction.eos_lr,
                "outside_fraction": self.prediction.outside_fraction,
            },
            "prediction_note": self.prediction_note,
            "notes": result.notes,
            "wall_time_s": result.wall_time,
            "records": records,
        }


def identity_residual(result: SweepResult) -> np.ndarray:
    """|C(T) − C(0) − η²S| / max(1, |C(T) − C(0)|) per trial and law (NaN without identity)."""
    direct = result.drift_direct
    return np.abs(direct - result.drift_identity) / np.maximum(1.0, np.abs(direct))


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


def fit_drift(result: SweepResult, law: int = 0) -> PowerLawFit | None:
    """α of one law's drift over the sweep's η (None with fewer than 3 usable η)."""
    lrs, table = result.grid(np.abs(result.drift(law)))
    usable = np.isfinite(table).any(axis=1) & (np.nan_to_num(table, nan=0.0) > 0).any(axis=1)
    if usable.sum() < 3:
        return None
    return fit_power_law(lrs, table)


def run(
    config: ModelConfig,
    *,
    lrs: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
    predict: bool = True,
    progress: ProgressCallback | None = None,
) -> SweepReport:
    """Run the sweep, fit α per law, and predict S(η) from the Hessian at init when small enough."""
    result = run_trials(config, lrs=lrs, seeds=seeds, steps=steps, progress=progress)
    fits = [fit_drift(result, law) for law in range(len(result.law_names))]
    prediction, note = None, "spectral prediction skipped (--no-predict)"
    if predict:
        prediction, note = _predict(result)
    return SweepReport(result=result, fits=fits, prediction=prediction, prediction_note=note)


def _predict(result: SweepResult) -> tuple[SpectralPrediction | None, str]:
    config = result.config
    if config.model.is_factory:
        return None, "spectral prediction for a factory model: use `lradvisor suggest --probe`"
    if not result.law_names:
        return None, "no conservation law in this model: nothing to predict"
    in_dim, out_dim = data_shape(config)
    count = parameter_count(config, in_dim, out_dim)
    if count > DENSE_LIMIT:
        return (
            None,
            f"spectral prediction needs the dense Hessian here: {count} parameters > {DENSE_LIMIT} (use `lradvisor suggest` for Lanczos)",
        )
    if config.training.batch_size is not None:
        note = "prediction uses the full-batch Hessian at init; the trials are mini-batch SGD"
    else:
        note = "S(η) predicted from the Hessian at init (dense), c_k from the initial-gradient projection"
    seeds = list(dict.fromkeys(result.seeds.tolist()))
    try:
        prediction = predict_imbalance_sum(
            config, lrs=np.unique(result.lrs), seeds=seeds, steps=result.steps
        )
    except LRAdvisorError as exc:
        return None, f"spectral prediction unavailable: {exc}"
    return prediction, note
