"""What lradvisor sends to MLflow, as plain JSON data built from an Optuna study.

A *payload* is one unit of delivery, kept on disk until it is sent (see
:mod:`lradvisor.integrations.mlflow`): ``parent`` (the study's run), ``trial`` (one nested
run per finished trial) or ``summary`` (the study's fitted and predicted numbers and its
figures, on the parent run). Payloads hold numbers only; figures travel as specs that
:func:`lradvisor.plots.draw` turns into matplotlib figures at delivery.

Metric names (MLflow keys: letters, digits, ``_ - . / :`` and spaces; a law ``0->2``
becomes ``0_to_2``):

=====================================  ===================================================
child run, per report step             ``loss`` (the reported value), ``drift_observed``,
                                       ``drift_predicted`` (totals over laws),
                                       ``drift_observed/<law>``, ``drift_predicted/<law>``,
                                       ``S_observed/<law>`` = drift/η², ``S_predicted/<law>``
child run, step 0                      ``sharpness`` (λ_max(θ₀)), ``eos_lr``
child run, last step                   ``final_drift/<law>``, ``final_predicted_drift/<law>``,
                                       ``final_train_loss``, ``final_val_loss``, ``value``
parent run                             ``alpha_fitted``, ``alpha_ci_low``, ``alpha_ci_high``,
                                       ``alpha_r2`` (completed trials), the same fit below
                                       half the bound ``alpha_fitted_below_half_bound``
                                       (the range of ``alpha_predicted``),
                                       ``drift_correlation`` (of log |drift|) and
                                       ``drift_median_relative_error`` over trials below
                                       the bound, ``template_eos_lr``,
                                       ``template_lambda_max``, ``template_recommended_lr``
                                       (advise() on the template, full data), ``tau_a``,
                                       ``tau_b``, ``tau_r2`` (CE), best value, trial counts
=====================================  ===================================================
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from lradvisor.integrations import _attrs
from lradvisor.integrations._study_fits import ARCHITECTURE_ATTR, alpha_by_architecture, final_drift

__all__ = [
    "flatten_numbers",
    "metric_key",
    "parent_key",
    "parent_payload",
    "prediction_pairs",
    "replication_payloads",
    "summary_payload",
    "trial_payload",
]

ROLE_TAG = "lradvisor.role"
RUN_KEY_TAG = "lradvisor.run_key"
PARENT_KEY_TAG = "lradvisor.parent_key"
TRIAL_TAG = "lradvisor.trial_number"
COMPLETE_TAG = "lradvisor.logged"
SUMMARY_TAG = "lradvisor.summary_digest"
MODEL_ATTR = "lradvisor.model_summary"
ADVICE_ATTR = "lradvisor.advice"

_STATUS = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "KILLED",
    TrialState.FAIL: "FAILED",
}
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-./: ]")


def metric_key(*parts: str) -> str:
    """``parts`` joined by ``/`` with characters MLflow refuses replaced (``->`` → ``_to_``)."""
    return "/".join(_BAD_KEY_CHARS.sub("_", str(part).replace("->", "_to_")) for part in parts)


def parent_key(study_name: str) -> str:
    """The tag value that finds a study's parent run (hex: safe inside a search filter)."""
    return hashlib.sha256(study_name.encode()).hexdigest()[:24]


def _ms(moment) -> int:
    return int(moment.timestamp() * 1000) if moment is not None else int(time.time() * 1000)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any, limit: int = 500) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parent_payload(study: optuna.Study, *, tracking_uri: str) -> dict[str, Any]:
    """The study's parent run: created once, found again by its key tag."""
    attrs = study.user_attrs
    params = {
        "study_name": study.study_name,
        "direction": study.direction.name,
        "metric": attrs.get("lradvisor.metric", "objective"),
        "model": attrs.get(MODEL_ATTR, ""),
        "study_file": attrs.get("lradvisor.study_file", ""),
    }
    return {
        "kind": "parent",
        "tracking_uri": tracking_uri,
        "experiment": study.study_name,
        "parent_key": parent_key(study.study_name),
        "run_name": f"study {study.study_name}",
        "params": {k: _text(v) for k, v in params.items() if v != ""},
        "tags": {ROLE_TAG: "study", "lradvisor.study": study.study_name},
        "start_time": int(time.time() * 1000),
    }


def trial_payload(study: optuna.Study, trial: FrozenTrial, *, tracking_uri: str) -> dict[str, Any]:
    """A nested run for one finished trial: params, per-step metrics, tags."""
    attrs = trial.user_attrs
    lr = _finite(trial.params.get("lr", attrs.get("lradvisor.lr")))
    params: dict[str, str] = {name: _text(value) for name, value in trial.params.items()}
    for key, name in (
        (ARCHITECTURE_ATTR, "architecture"),
        ("lradvisor.loss", "loss"),
        ("lradvisor.identity_holds", "identity_holds"),
    ):
        if attrs.get(key) not in (None, ""):
            params[name] = _text(attrs[key])
    if study.user_attrs.get(MODEL_ATTR):
        params["model"] = _text(study.user_attrs[MODEL_ATTR])
    laws = _attrs.decode(attrs.get("lradvisor.laws"))
    if laws is not None:
        params["conservation_laws"] = _text(", ".join(laws) or "none")
    skipped = _attrs.decode(attrs.get("lradvisor.skipped"))
    if skipped:
        params["laws_skipped"] = _text("; ".join(f"{m}: {why}" for m, why in skipped))

    metrics: list[list[Any]] = []

    def add(key: str, value: Any, step: int) -> None:
        number = _finite(value)
        if number is not None:
            metrics.append([key, number, int(step)])

    for step, value in sorted(trial.intermediate_values.items()):
        add("loss", value, step)
    add("sharpness", attrs.get("lradvisor.lambda_max"), 0)
    add("eos_lr", attrs.get("lradvisor.eos_lr"), 0)
    scale = lr * lr if lr and attrs.get("lradvisor.identity_holds") else None
    # Beyond the bound the formula is the diverging quadratic model (values like 1e40):
    # no prediction is logged there, and the tag says so.
    predicts = _below_bound(trial, lr)
    kinds = ((3, "observed"), (4, "predicted")) if predicts else ((3, "observed"),)
    add("bound", attrs.get("lradvisor.bound"), 0)
    for entry in _attrs.drift_history(attrs):
        step = entry[0]
        add("drift_observed", entry[1], step)
        if predicts:
            add("drift_predicted", entry[2], step)
            if _finite(entry[1]) is not None and _finite(entry[2]):
                add("drift_ratio", entry[1] / entry[2], step)
        for index, name in kinds:
            by_law = entry[index] if len(entry) > index and entry[index] else {}
            for law, value in by_law.items():
                add(metric_key(f"drift_{name}", law), value, step)
                if scale is not None and _finite(value) is not None:
                    add(metric_key(f"S_{name}", law), value / scale, step)
    last = int(attrs.get("lradvisor.steps_trained", attrs.get("lradvisor.steps_observed", 0)) or 0)
    observed, predicted = final_drift(trial)
    for law, value in observed.items():
        add(metric_key("final_drift", law), value, last)
    for law, value in (predicted or {}).items() if predicts else ():
        add(metric_key("final_predicted_drift", law), value, last)
    add("final_train_loss", attrs.get("lradvisor.final_train_loss"), last)
    add("final_val_loss", attrs.get("lradvisor.final_val_loss"), last)
    if trial.state == TrialState.COMPLETE:
        add("value", trial.value, last)

    eos = _finite(attrs.get("lradvisor.eos_lr"))
    regime = "unknown"
    if lr is not None and eos is not None:
        regime = "sub-EoS" if lr < eos else "beyond EoS"
    tags = {
        ROLE_TAG: "trial",
        "lradvisor.study": study.study_name,
        TRIAL_TAG: str(trial.number),
        "optuna.trial_number": str(trial.number),
        "optuna.state": trial.state.name,
        "lradvisor.regime": regime,
        "lradvisor.prediction": "logged"
        if predicts
        else "none: lr at or beyond the trial's bound 2/sharpness (or no bound measured)",
    }
    if attrs.get("lradvisor.prune_reason"):
        tags["lradvisor.prune_reason"] = str(attrs["lradvisor.prune_reason"])
    refused = _attrs.decode(attrs.get(_attrs.PRUNE_REFUSED))
    if isinstance(refused, dict):
        tags[_attrs.PRUNE_REFUSED] = (
            f"{refused.get('count')} prune(s) of the base pruner refused: the trial could "
            "still become the best"
        )
    return {
        "kind": "trial",
        "tracking_uri": tracking_uri,
        "experiment": study.study_name,
        "parent_key": parent_key(study.study_name),
        "trial_number": trial.number,
        "run_name": f"trial {trial.number}",
        "status": _STATUS.get(trial.state, "FINISHED"),
        "start_time": _ms(trial.datetime_start),
        "end_time": _ms(trial.datetime_complete),
        "params": params,
        "tags": tags,
        "metrics": metrics,
    }


def _below_bound(trial: FrozenTrial, lr: float | None, fraction: float = 1.0) -> bool:
    eos = _finite(trial.user_attrs.get("lradvisor.eos_lr"))
    return lr is not None and eos is not None and lr < fraction * eos


def prediction_pairs(trials: Iterable[FrozenTrial]) -> list[tuple[float, float, float]]:
    """``(lr, observed, predicted)`` summed over laws at each trial's last step.

    Finished trials below their stability bound only (lr < 2/λ_max(θ₀)): beyond it the
    spectral formula is the diverging quadratic model and predicts nothing (docs/theory.md §6).
    """
    pairs = []
    for trial in trials:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        lr = _finite(trial.params.get("lr", trial.user_attrs.get("lradvisor.lr")))
        observed, predicted = final_drift(trial)
        if not _below_bound(trial, lr) or not observed or not predicted:
            continue
        obs = [_finite(v) for v in observed.values()]
        pred = [_finite(predicted.get(law)) for law in observed]
        if any(v is None for v in obs + pred):
            continue
        total_obs, total_pred = sum(obs), sum(pred)
        if total_obs != 0 and total_pred != 0:
            pairs.append((lr, total_obs, total_pred))
    return pairs


def summary_payload(
    study: optuna.Study, *, tracking_uri: str, alpha_predicted: float | None = None
) -> dict[str, Any]:
    """The parent run's numbers (α fitted vs predicted, prediction quality) and figures."""
    trials = study.get_trials(deepcopy=False)
    advice = study.user_attrs.get(ADVICE_ATTR) or {}
    if alpha_predicted is None:
        alpha_predicted = _finite(advice.get("alpha_predicted"))
    counts = {state: sum(1 for t in trials if t.state == state) for state in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    groups = alpha_by_architecture(complete)
    template = study.user_attrs.get("lradvisor.template_architecture")
    group = next((g for g in groups if g.architecture == template), groups[0] if groups else None)
    pairs = prediction_pairs(trials)
    # MLflow lists a run's metrics in the order they were logged: theory vs practice first.
    numbers: dict[str, float | None] = {}
    if group is not None:
        numbers.update(
            alpha_fitted=group.alpha,
            alpha_ci_low=group.alpha_ci[0],
            alpha_ci_high=group.alpha_ci[1],
            alpha_r2=group.r2,
        )
    # advise()'s α is predicted over rates below half the bound: fit the same range too.
    calm = [t for t in complete if _below_bound(t, _finite(t.params.get("lr")), 0.5)]
    calm_group = next(
        (g for g in alpha_by_architecture(calm) if group and g.architecture == group.architecture),
        None,
    )
    if calm_group is not None:
        numbers.update(
            alpha_fitted_below_half_bound=calm_group.alpha,
            alpha_below_half_bound_ci_low=calm_group.alpha_ci[0],
            alpha_below_half_bound_ci_high=calm_group.alpha_ci[1],
        )
    numbers["alpha_predicted"] = alpha_predicted
    if pairs:
        observed = np.abs([p[1] for p in pairs])
        predicted = np.abs([p[2] for p in pairs])
        if len(pairs) >= 3 and np.ptp(np.log(observed)) > 0 and np.ptp(np.log(predicted)) > 0:
            numbers["drift_correlation"] = float(
                np.corrcoef(np.log(observed), np.log(predicted))[0, 1]
            )
        numbers["drift_median_relative_error"] = float(
            np.median(np.abs(predicted - observed) / observed)
        )
        numbers["drift_pairs"] = len(pairs)
    # advise() on the template: full data, the template's first seed. Each trial run has its
    # own `sharpness` / `eos_lr`, measured by its TrialMonitor on a subsample and its seed.
    numbers["template_eos_lr"] = _finite(advice.get("eos_lr"))
    numbers["template_lambda_max"] = _finite(advice.get("lambda_max"))
    numbers["template_recommended_lr"] = _finite(advice.get("recommended_lr"))
    tau = advice.get("tau") or {}
    for key in ("a", "b", "r2"):
        numbers[f"tau_{key}"] = _finite(tau.get(key))
    if complete:
        better = min if study.direction.name == "MINIMIZE" else max
        best = better(complete, key=lambda t: t.value)
        numbers["best_value"] = _finite(best.value)
        numbers["best_lr"] = _finite(best.params.get("lr"))
    numbers["trials_complete"] = counts[TrialState.COMPLETE]
    numbers["trials_pruned"] = counts[TrialState.PRUNED]
    numbers["trials_failed"] = counts[TrialState.FAIL]
    metrics = [[k, float(v), 0] for k, v in numbers.items() if _finite(v) is not None]
    figures = _figures(complete, pairs, group, alpha_predicted, advice)
    tags = {
        "lradvisor.alpha_architecture": group.architecture or "(lr only)" if group else "none",
        "lradvisor.alpha_law": group.law if group else "none",
    }
    digest = hashlib.sha256(repr((metrics, figures, tags)).encode()).hexdigest()[:16]
    return {
        "kind": "summary",
        "tracking_uri": tracking_uri,
        "experiment": study.study_name,
        "parent_key": parent_key(study.study_name),
        "run_name": f"study {study.study_name}",
        "step": counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
        "metrics": metrics,
        "tags": tags,
        "figures": figures,
        "digest": digest,
    }


def _figures(complete, pairs, group, alpha_predicted, advice) -> dict[str, dict]:
    figures: dict[str, dict] = {}
    finished_pairs = [p for p in pairs if p[0] > 0]
    if group is not None:
        by_lr: dict[float, list[float]] = {}
        for trial in complete:
            observed, _ = final_drift(trial)
            if str(trial.user_attrs.get(ARCHITECTURE_ATTR, "")) != group.architecture:
                continue
            value = _finite(observed.get(group.law)) if observed else None
            lr = _finite(trial.params.get("lr"))
            if value and lr:
                by_lr.setdefault(lr, []).append(abs(value))
        lrs = sorted(by_lr)
        means = [float(np.mean(by_lr[lr])) for lr in lrs]
        anchor_lr, anchor = (
            float(np.exp(np.mean(np.log(lrs)))),
            float(np.exp(np.mean(np.log(means)))),
        )
        series = [
            {
                "x": lrs,
                "y": means,
                "label": "observed |drift| (completed trials)",
                "style": "points",
            },
            {
                "x": lrs,
                "y": [anchor * (lr / anchor_lr) ** group.alpha for lr in lrs],
                "label": f"fit α = {group.alpha:.3f} [{group.alpha_ci[0]:.2f}, {group.alpha_ci[1]:.2f}]",
                "style": "fit",
            },
        ]
        predicted = sorted((p[0], abs(p[2])) for p in pairs if p[0] in by_lr)
        if predicted:
            series.append(
                {
                    "x": [p[0] for p in predicted],
                    "y": [p[1] for p in predicted],
                    "label": "spectral prediction η²·S(η)"
                    + (f" (α predicted {alpha_predicted:.3f})" if alpha_predicted else ""),
                    "style": "prediction",
                }
            )
        vlines = []
        if _finite(advice.get("eos_lr")):
            vlines.append({"x": float(advice["eos_lr"]), "label": "template's bound 2/λ_max(θ₀)"})
        figures["drift_vs_lr"] = {
            "title": f"drift vs learning rate ({group.architecture or 'lr only'}, law {group.law})",
            "xlabel": "learning rate η",
            "ylabel": "|C(T) − C(0)|",
            "logx": True,
            "logy": True,
            "series": series,
            "vlines": vlines,
        }
    if finished_pairs:
        observed = [abs(p[1]) for p in finished_pairs]
        predicted = [abs(p[2]) for p in finished_pairs]
        low, high = min(observed + predicted), max(observed + predicted)
        figures["predicted_vs_observed"] = {
            "title": "predicted vs observed drift (every finished trial, at its last step)",
            "xlabel": "observed |drift|",
            "ylabel": "predicted |drift|",
            "logx": True,
            "logy": True,
            "series": [
                {"x": observed, "y": predicted, "label": "trials", "style": "points"},
                {
                    "x": [low, high],
                    "y": [low, high],
                    "label": "prediction = observation",
                    "style": "fit",
                },
            ],
        }
    tau = advice.get("tau") or {}
    trajectory = tau.get("lambda_max_trajectory") or []
    if trajectory:
        figures["ce_lambda_max"] = {
            "title": f"CE: λ_max(t) along the probe at η = {tau.get('trajectory_lr', float('nan')):.3g}",
            "xlabel": "step",
            "ylabel": "λ_max",
            "logy": True,
            "series": [
                {
                    "x": [p["step"] for p in trajectory],
                    "y": [p["lambda_max"] for p in trajectory],
                    "label": "λ_max(t)",
                    "style": "line",
                }
            ],
        }
    curves = (tau.get("concentration") or {}).get("per_rate") or {}
    if curves:
        steps = tau["concentration"]["steps"]
        figures["ce_concentration"] = {
            "title": "CE: mean 1 − q̄(t) (softmax concentration) at the τ probe rates",
            "xlabel": "step",
            "ylabel": "mean(1 − q_i)",
            "logy": True,
            "series": [
                {"x": steps, "y": values, "label": f"η = {float(lr):.3g}", "style": "line"}
                for lr, values in curves.items()
            ],
        }
    return figures


# ------------------------------------------------------------------ lradvisor reproduce


def flatten_numbers(value: Any, prefix: str = "", *, limit: int = 400) -> dict[str, float]:
    """Finite numbers of a nested JSON value as ``{"a/b/0": 1.0}`` (at most ``limit``)."""
    found: dict[str, float] = {}

    def walk(item: Any, path: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(item, dict):
            for key, child in item.items():
                walk(child, f"{path}/{key}" if path else str(key))
        elif isinstance(item, (list, tuple)):
            for index, child in enumerate(item):
                walk(child, f"{path}/{index}" if path else str(index))
        else:
            number = _finite(item)
            if number is not None and path:
                found[metric_key(path)] = number

    walk(value, prefix)
    return found


def verdict_table(result: dict[str, Any]) -> str:
    """The verdict table of one ``lradvisor reproduce`` result, as markdown (an artifact)."""
    lines = [
        f"# lradvisor reproduce ({result.get('mode', '')}, commit {result.get('commit', '')}, "
        f"{result.get('date', '')})",
        "",
        "| exp | published claim | read as | measured | nulls | holds | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    mark = {True: "✓", False: "✗", None: "?"}
    for row in result.get("experiments", []):
        for i, claim in enumerate(row.get("claims") or [{}]):
            nulls = ", ".join(
                f"{name} {value:.4g}" for name, value in (claim.get("nulls") or {}).items()
            )
            extra = "*extra:* " if claim.get("extra") else ""
            measured = claim.get("measured")
            shown = f"{measured:.4g}" if _finite(measured) is not None else _text(measured, 60)
            lines.append(
                f"| {row['id'] if i == 0 else ''} | {extra}{claim.get('published', '')} "
                f"| {claim.get('reading', '')} | {shown} | {nulls} "
                f"| {mark.get(claim.get('holds'), '')} | {row['verdict'] if i == 0 else ''} |"
            )
    counts = ", ".join(f"{n} {v}" for v, n in (result.get("verdicts") or {}).items())
    return "\n".join([*lines, "", f"verdicts: {counts}", ""])


def _trial_payloads(
    row: dict[str, Any], key: str, experiment: str, tracking_uri: str
) -> list[dict[str, Any]]:
    """One nested run per (η, seed) of ``values.per_trial`` (else per η of ``values.per_lr``):
    observed and predicted drift and S, the nulls' S, and the regime as a tag."""
    values = row.get("values") or {}
    entries = values.get("per_trial") or values.get("per_lr") or []
    payloads = []
    for entry in entries:
        if not isinstance(entry, dict) or _finite(entry.get("lr")) is None:
            continue
        lr = float(entry["lr"])
        seed = entry.get("seed")
        name = f"η = {lr:g}" + ("" if seed is None else f", seed {seed}")
        numbers = {k: v for k, v in entry.items() if k not in ("beyond_eos", "seed")}
        metrics = [[k, v, 0] for k, v in flatten_numbers(numbers).items()]
        params = {"lr": f"{lr:g}"} | ({} if seed is None else {"seed": str(seed)})
        payloads.append(
            {
                "kind": "run",
                "tracking_uri": tracking_uri,
                "experiment": experiment,
                "run_key": f"{key}-{metric_key(name)}",
                "parent_run_key": key,
                "run_name": name,
                "params": params,
                "tags": {
                    ROLE_TAG: "trial" if seed is not None else "rate",
                    "lradvisor.regime": "beyond EoS" if entry.get("beyond_eos") else "sub-EoS",
                },
                "metrics": metrics,
                "figures": {},
                "status": "FINISHED",
            }
        )
    return payloads


def _claim_metrics(claim: dict[str, Any]) -> list[list]:
    metrics = [
        [metric_key("measured", k), v, 0] for k, v in flatten_numbers(claim.get("measured")).items()
    ]
    measured = _finite(claim.get("measured"))
    if measured is not None:
        metrics.append(["measured", measured, 0])
    for name, value in (claim.get("nulls") or {}).items():
        if _finite(value) is not None:
            metrics.append([metric_key("null", name), float(value), 0])
            metrics.append(
                [
                    metric_key("null_beaten", name),
                    float(bool((claim.get("beaten") or {}).get(name))),
                    0,
                ]
            )
    versus = _finite(claim.get("versus"))
    if versus is not None and claim.get("nulls"):
        metrics.append(["prediction_versus_nulls", versus, 0])
    return metrics


def replication_payloads(result: dict[str, Any], *, tracking_uri: str) -> list[dict[str, Any]]:
    """``lradvisor reproduce``'s result (``ReplicationResult.as_dict()``) as ``run`` payloads.

    Each paper experiment is an MLflow experiment (``paper E5 drift scaling law``); each
    reproduce invocation a parent run in it: its values as metrics (``alpha_fitted`` and
    ``alpha_predicted`` named as such where the experiment has them), verdict and reason as
    tags, its figures, and the whole invocation's verdict table as ``verdicts.md``. Nested
    under it: one run per trial (η, seed) for drift experiments with a prediction (observed
    and predicted drift and S, the nulls' S; trials beyond their seed's EoS bound have no
    prediction) and one run per published claim (measured value, holds, the nulls' values
    and whether each is beaten).
    """
    payloads = []
    stamp = f"{result.get('date', '')}|{result.get('commit', '')}|{result.get('mode', '')}"
    table = verdict_table(result)
    for row in result.get("experiments", []):
        experiment = f"paper {row['id']} {row['name']}"
        key = hashlib.sha256(f"{experiment}|{stamp}".encode()).hexdigest()[:24]
        tags = {
            ROLE_TAG: "replication",
            "lradvisor.verdict": str(row["verdict"]),
            "lradvisor.reason": _text(row.get("reason", "")),
            "lradvisor.mode": str(result.get("mode", "")),
            "lradvisor.commit": str(result.get("commit", "")),
        }
        params = {
            "experiment": row["id"],
            "kind": row.get("kind", ""),
            "study_file": row.get("file", ""),
            "published": _text(row.get("published", "")),
            "mode": result.get("mode", ""),
        }
        values = row.get("values") or {}
        metrics = [[k, v, 0] for k, v in flatten_numbers(values).items()]
        named = {
            "alpha_fitted": values.get("alpha_fitted_below_eos", values.get("alpha")),
            "alpha_fitted_all_rates": values.get("alpha"),
            "alpha_predicted": values.get("alpha_predicted"),
        }
        metrics += [[k, float(v), 0] for k, v in named.items() if _finite(v) is not None]
        metrics.append(["wall_time_s", float(row.get("wall_time_s") or 0.0), 0])
        payloads.append(
            {
                "kind": "run",
                "tracking_uri": tracking_uri,
                "experiment": experiment,
                "run_key": key,
                "run_name": f"reproduce {result.get('mode', '')} {result.get('date', '')}",
                "params": {k: _text(v) for k, v in params.items() if v != ""},
                "tags": tags,
                "metrics": metrics,
                "figures": row.get("figures") or {},
                "texts": {"verdicts.md": table},
                "status": "FAILED" if row["verdict"] == "error" else "FINISHED",
            }
        )
        payloads += _trial_payloads(row, key, experiment, tracking_uri)
        for claim in row.get("claims", []):
            payloads.append(
                {
                    "kind": "run",
                    "tracking_uri": tracking_uri,
                    "experiment": experiment,
                    "run_key": f"{key}-{metric_key(claim['id'])}",
                    "parent_run_key": key,
                    "run_name": f"claim {claim['id']}",
                    "params": {
                        "published": _text(claim.get("published", "")),
                        "metric": str(claim.get("metric", "")),
                        "check": str(claim.get("check", "")),
                        "reading": _text(claim.get("reading", "")),
                    },
                    "tags": {
                        ROLE_TAG: "claim",
                        "lradvisor.holds": str(claim.get("holds")),
                        "lradvisor.extra": str(bool(claim.get("extra"))),
                        "lradvisor.reason": _text(claim.get("reason", "")),
                    },
                    "metrics": _claim_metrics(claim),
                    "figures": {},
                    "status": "FINISHED",
                }
            )
    return payloads
