"""Run a study file with Optuna: K worker processes on one storage, a progress bar, a summary.

"Finished" means COMPLETE or PRUNED. ``n_trials`` is a target on finished trials of the
whole study, across runs: resuming a study (same name, same storage) runs only what is
missing. Failed trials do not count; a trial whose worker died is failed (heartbeat, or
process liveness for file storages) and re-queued as a WAITING copy with the same
parameters, which counts once it finishes.

Exactly ``n_trials``: Optuna's ``MaxTrialsCallback`` stops a worker after its trial ends,
so K workers that all started a trial while the count was ``n_trials − 1`` overshoot by up
to K − 1. Here every worker, before each trial, takes the study's budget lock
(:func:`~lradvisor.studies.storage.budget_lock`), fails stale trials, counts
COMPLETE + PRUNED + RUNNING + WAITING, and creates the trial (``study.ask`` inside
``study.optimize``) before releasing it, so the count and the new trial are one step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from lradvisor.config import check_device, duration_warning
from lradvisor.errors import LRAdvisorError
from lradvisor.integrations._study_fits import MIN_DISTINCT_LRS, AlphaGroup, alpha_by_architecture
from lradvisor.studies.objective import (
    PRUNE_REASON_ATTR,
    STEPS_ATTR,
    StudyObjective,
    architecture_key,
    template_parameters,
)
from lradvisor.studies.schema import MAX_TRIALS, StudySpec, check_study_memory, load_study
from lradvisor.studies.storage import (
    OWNER_ATTR,
    StorageSpec,
    budget_lock,
    fail_dead_local_trials,
    owner_tag,
    resolve_storage,
    storage_errors,
)

__all__ = [
    "AlphaGroup",
    "StudySummary",
    "alpha_by_architecture",
    "render_summary",
    "run_study",
    "summarize",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_SECONDS = 0.5
#: More worker processes than this per CPU only thrash (and a typo of 10000 forks a storm).
MAX_WORKERS_PER_CPU = 4
IDENTITY_ATTR = "lradvisor.identity_holds"
ADVICE_ATTR = "lradvisor.advice"


@dataclass(frozen=True)
class StudySummary:
    """What a study holds after a run; ``as_dict()`` is the ``--json`` output."""

    study_name: str
    storage: str
    metric: str
    n_trials: int
    finished: int
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    steps_per_trial: int
    pruned_before_training: int
    steps_saved_before_training: int
    steps_saved_by_pruning: int
    prune_reasons: dict[str, int]
    retried: int
    alpha_groups: tuple[AlphaGroup, ...]
    alpha_predicted: float | None
    template_architecture: str
    workers: int
    wall_time: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    kept_as_contenders: int = 0  # trials in which the pruner refused a prune of the base

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["alpha_groups"] = [asdict(group) for group in self.alpha_groups]
        data["notes"] = list(self.notes)
        return data


@dataclass(frozen=True)
class _Job:
    """Everything a worker process needs (picklable)."""

    objective: StudyObjective
    storage: StorageSpec
    study_name: str
    target: int
    sampler_seed: int
    prior: tuple[float, float, float] | None
    threads: int | None = None
    mlflow: Any = None  # an MLflowCallback (picklable) or None


def run_study(
    study_file: str | Path,
    *,
    n_trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    study_name: str | None = None,
    progress: bool = True,
    predict: bool = True,
    heartbeat_interval: int = 30,
    grace_period: int = 90,
    max_retry: int = 3,
    mlflow: bool = True,
    tracking_uri: str | None = None,
) -> StudySummary:
    """Run (or resume) the study of ``study_file`` until ``n_trials`` trials have finished.

    Args:
        study_file: the study YAML (see :mod:`lradvisor.studies.schema`).
        n_trials: target of finished (COMPLETE + PRUNED) trials; ``budget.n_trials`` if None.
        workers: worker processes (spawned); 1 runs the trials in this process.
        storage: an SQLAlchemy URL (``postgresql://…``, ``sqlite:///…``) or a journal file
            path; None: ``sqlite:///runs/studies.db`` for one worker,
            ``runs/studies.journal`` for more (an existing study is resumed where it is).
        study_name: the Optuna study name; the study file's ``name`` if None.
        progress: a tqdm bar and notes on stderr.
        predict: call ``advise()`` on the template for the predicted α in the summary.
        heartbeat_interval, grace_period: seconds, for RDB storages: a RUNNING trial whose
            heartbeat is older than ``grace_period`` is failed and retried.
        max_retry: how often one trial may be retried.
        mlflow: log the study to MLflow (a parent run, a nested run per trial, the
            summary's numbers and figures; :mod:`lradvisor.integrations.mlflow`).
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI``, else MLflow's
            default local store. A server that is away costs nothing but a warning: what
            could not be sent waits in ``runs/mlflow-spool`` for ``lradvisor mlflow sync``.
    """
    started = time.perf_counter()
    if workers < 1:
        raise LRAdvisorError(f"workers must be at least 1, but got {workers}.")
    most = max(8, MAX_WORKERS_PER_CPU * (os.cpu_count() or 1))
    if workers > most:
        raise LRAdvisorError(
            f"workers must be at most {most} ({MAX_WORKERS_PER_CPU} per CPU), but got {workers}."
        )
    if heartbeat_interval < 1 or grace_period <= heartbeat_interval:
        raise LRAdvisorError(
            "heartbeat_interval must be at least 1 s and grace_period longer than it, but got "
            f"heartbeat_interval={heartbeat_interval}, grace_period={grace_period}."
        )
    spec = load_study(study_file)
    target = n_trials if n_trials is not None else spec.budget.n_trials
    if not 1 <= target <= MAX_TRIALS:
        raise LRAdvisorError(f"n_trials must be between 1 and {MAX_TRIALS:.0e}, but got {target}.")
    check_device(spec.template.training.device, file=spec.source_file)
    check_study_memory(spec, workers=workers)
    name = study_name or spec.name
    if not 1 <= len(name) <= 200:
        raise LRAdvisorError(f"a study name has 1 to 200 characters, but got {len(name)}.")
    storage_spec, storage_note = resolve_storage(
        storage,
        workers=workers,
        study_name=name,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        max_retry=max_retry,
    )
    notes = [*spec.notes, *([storage_note] if storage_note else [])]
    say = _say if progress else (lambda _message: None)
    for note in notes:
        say(note)
    long_run = duration_warning(spec.template, trials=target)
    if long_run:
        _say(f"warning: {long_run}")  # said even when quiet: the user may want to stop now
    _quiet_library_errors()
    callback = None
    if mlflow:  # first: a bad tracking URI or spool is an error before any work
        from lradvisor.integrations.mlflow import MLflowCallback

        callback = MLflowCallback(tracking_uri, warn=_say)  # outages are said even when quiet
    with storage_errors(storage_spec):
        study = _create_study(storage_spec, name, spec)
    advice_first = spec.sampler.type == "lradvisor"  # the prior needs it; else after the trials
    advice = _advice(study, spec, notes, say) if advice_first else None
    prior = _prior(spec, advice, notes)
    objective = StudyObjective(spec)
    if callback is not None:
        callback.open(study)  # the parent run exists before any worker's first trial
    n_existing = len(study.get_trials(deepcopy=False))
    jobs = [
        _Job(
            objective=objective,
            storage=storage_spec,
            study_name=name,
            target=target,
            sampler_seed=_seed(spec.budget.seed, index, n_existing),
            prior=prior,
            threads=None if workers == 1 else max(1, (os.cpu_count() or 1) // workers),
            mlflow=callback,
        )
        for index in range(workers)
    ]
    with _Bar(study, target, enabled=progress) as bar:
        if workers == 1:
            _work_in(study, jobs[0], on_trial=bar.update)
        else:
            notes.extend(_run_processes(jobs, bar))
    if predict and not advice_first:
        advice = _advice(study, spec, notes, say)
    summary = summarize(
        study,
        spec,
        target=target,
        storage=storage_spec.display,
        workers=workers,
        alpha_predicted=advice.get("alpha_predicted") if predict and advice else None,
        wall_time=time.perf_counter() - started,
        notes=notes,
    )
    if callback is not None:
        sent = callback.finish(study, alpha_predicted=summary.alpha_predicted)
        note = f"MLflow: experiment '{name}' at {callback.tracking_uri}" + (
            f" ({sent.pending} payload(s) kept in {callback.spool})" if sent.pending else ""
        )
        summary = dataclasses.replace(summary, notes=(*summary.notes, note))
    if summary.finished < target:
        problems = "; ".join(note for note in notes if note.startswith("worker "))
        raise LRAdvisorError(
            f"study '{name}' has {summary.finished} of {target} finished trials after the run"
            + (f" ({problems})" if problems else "")
            + f"; run it again with the same study name and storage ({storage_spec.display}) to resume"
        )
    return summary


def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"lradvisor: {message}", file=sys.stderr)


def _seed(base: int, worker: int, n_existing: int) -> int:
    """Distinct sampler seeds per worker and per resume (same seeds would repeat draws)."""
    return int(np.random.SeedSequence([base, worker, n_existing]).generate_state(1)[0])


def _create_study(storage: StorageSpec, name: str, spec: StudySpec) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=storage.open(), direction="minimize", load_if_exists=True
    )
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise LRAdvisorError(
            f"study '{name}' in {storage.display} maximises; a study file's metric is minimised"
        )
    study.set_user_attr("lradvisor.study_file", spec.source_file)
    study.set_user_attr("lradvisor.metric", spec.metric)
    study.set_user_attr("lradvisor.model_summary", model_summary(spec.template))
    study.set_user_attr(
        "lradvisor.template_architecture",
        architecture_key(template_parameters(spec.template, spec.architecture_parameters)),
    )
    return study


def model_summary(config) -> str:
    """One line naming the template: layers, activation, biases, loss, optimiser, data."""
    model, training, data = config.model, config.training, config.data
    if model.is_factory:
        layers = f"{model.factory}({', '.join(f'{k}={v}' for k, v in model.kwargs.items())})"
    else:
        layers = f"MLP hidden {model.hidden} {model.activation}" + (
            " with biases" if model.bias else " bias-free"
        )
    source = data.name or data.path or data.source
    batch = "full batch" if training.batch_size is None else f"batch {training.batch_size}"
    return f"{layers}; {training.loss}, {training.optimizer}, {batch}; data {source}"


def _advice(
    study: optuna.Study, spec: StudySpec, notes: list[str], say: Callable[[str], None]
) -> dict[str, Any] | None:
    """``advise(template)``'s numbers, computed once per template and kept in the study.

    Any failure of ``advise`` only costs the prediction and the prior (a note says why).
    """
    digest = hashlib.sha256(spec.template.model_dump_json().encode()).hexdigest()[:16]
    kept = study.user_attrs.get(ADVICE_ATTR)
    if isinstance(kept, dict) and kept.get("template") == digest:
        return kept
    from lradvisor.advisor import advise

    say("advise() on the template (predicted α, lr prior)")
    try:
        advice = advise(spec.template)
    except Exception as exc:
        note = f"advise() failed on the template, so no predicted α or lr prior: {exc}"
        notes.append(note)
        say(note)
        return None
    numbers = {
        "template": digest,
        "alpha_predicted": advice.alpha_predicted,
        "recommended_lr": float(advice.recommended_lr),
        "lr_range": [float(v) for v in advice.lr_range],
        "eos_lr": advice.eos_lr,
        "lambda_max": advice.lambda_max,
        "loss": advice.loss,
        "tau": advice.tau,  # CE only: a/η + b, λ_max(t) and 1 − q̄(t) along the probe
    }
    study.set_user_attr(ADVICE_ATTR, numbers)
    tau = advice.tau or {}
    if tau.get("a") is not None and tau.get("b") is not None:
        # every worker's ConservationPruner reads it: the grace period of CE trials
        study.set_user_attr("lradvisor.tau", f"[{float(tau['a'])}, {float(tau['b'])}]")
    return numbers


def _prior(
    spec: StudySpec, advice: dict[str, Any] | None, notes: list[str]
) -> tuple[float, float, float] | None:
    if spec.sampler.type != "lradvisor":
        return None
    if advice is None:
        notes.append("sampler lradvisor: no advice, so the lr prior is off (plain TPE)")
        return None
    low, high = advice["lr_range"]
    return float(advice["recommended_lr"]), float(low), float(high)


def _sampler(spec: StudySpec, seed: int, prior: tuple[float, float, float] | None):
    if spec.sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    tpe = optuna.samplers.TPESampler(seed=seed)
    if prior is None:
        return tpe
    from lradvisor.integrations.optuna import TheoryPriorSampler

    center, low, high = prior
    return TheoryPriorSampler(
        tpe,
        param_name="lr",
        center=center,
        low=low,
        high=high,
        n_prior_trials=spec.sampler.n_prior_trials,
        seed=seed,
    )


def _pruner(kind: str, spec: StudySpec) -> optuna.pruners.BasePruner | None:
    budget = spec.budget
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=budget.report_every, max_resource=budget.steps
        )
    from lradvisor.integrations.optuna import ConservationPruner

    base = None if spec.pruner.base == "none" else _pruner(spec.pruner.base, spec)
    return ConservationPruner(base)


class _LibraryErrorFilter(logging.Filter):
    """Drops Optuna's "Trial N failed …" records (a traceback, then the value) for an
    LRAdvisorError or an interrupt: the error reaches the caller, and the CLI prints it as
    one line."""

    def __init__(self) -> None:
        super().__init__()
        self._quiet: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        trial = message.split(" failed ", 1)[0] if message.startswith("Trial ") else None
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (LRAdvisorError, KeyboardInterrupt)) and trial is not None:
            self._quiet.add(trial)
            return False
        if trial is not None and trial in self._quiet and "failed with value" in message:
            self._quiet.discard(trial)
            return False
        return True


def _quiet_library_errors() -> None:
    logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _LibraryErrorFilter) for f in logger.filters):
        logger.addFilter(_LibraryErrorFilter())


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (even by SIGKILL), so that workers
    never train on for a study nobody waits for."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # died before prctl
        os._exit(1)


def _worker_main(job: _Job, errors: Any = None) -> None:
    """Entry point of a spawned worker process.

    Ctrl-C reaches every process of the terminal's group: workers ignore it and the parent
    stops them. A library error is handed to the parent (one line there) and ends the
    worker with exit code 2.
    """
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    if job.threads is not None:
        torch.set_num_threads(job.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _quiet_library_errors()
    try:
        storage = job.storage.open()
        with storage_errors(job.storage):
            study = optuna.load_study(study_name=job.study_name, storage=storage)
        _work_in(study, job)
    except LRAdvisorError as exc:
        if errors is not None:
            errors.put(str(exc))
        sys.exit(2)


def _work_in(
    study: optuna.Study, job: _Job, *, on_trial: Callable[[optuna.Study], None] | None = None
) -> None:
    """Run trials until the study has ``job.target`` finished ones."""
    callbacks = [job.mlflow] if job.mlflow is not None else []
    try:
        with _database_errors(job.storage):
            _run_trials(study, job, callbacks, on_trial)
    finally:
        if job.mlflow is not None and on_trial is None:  # a worker process: send, then exit
            job.mlflow.flush()


@contextlib.contextmanager
def _database_errors(storage: StorageSpec):
    """A storage that fails during the trials (server gone, disk full) is one line too;
    errors of the user's own code in a trial are not blamed on the storage."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        with storage_errors(storage):
            raise exc


def _run_trials(
    study: optuna.Study,
    job: _Job,
    callbacks: list,
    on_trial: Callable[[optuna.Study], None] | None,
) -> None:
    spec = job.objective.study
    study.sampler = _sampler(spec, job.sampler_seed, job.prior)
    study.pruner = _pruner(spec.pruner.type, spec)
    lock = budget_lock(job.storage, study.study_name)
    retry = job.storage.retry_callback()
    owner = owner_tag()

    def gated(trial: optuna.Trial) -> float:
        # The trial exists (RUNNING) and carries its owner: the next worker may count.
        trial.set_user_attr(OWNER_ATTR, owner)
        lock.release()
        return job.objective(trial)

    while True:
        lock.acquire()
        try:
            _fail_stale(study, job.storage, retry)
            decision = _next_step(study, job.target)
            if decision == "done":
                return
            if decision == "run":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.optimize(gated, n_trials=1, gc_after_trial=False, callbacks=callbacks)
        finally:
            lock.release()
        if decision == "run":
            if on_trial is not None:
                on_trial(study)
            continue
        time.sleep(POLL_SECONDS)


def _fail_stale(study: optuna.Study, storage: StorageSpec, retry: Callable) -> None:
    if storage.heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    if storage.local:
        fail_dead_local_trials(study, retry)


def _next_step(study: optuna.Study, target: int) -> str:
    """``"done"``, ``"run"`` (a WAITING trial to take, or room for a new one) or ``"wait"``."""
    states = Counter(trial.state for trial in study.get_trials(deepcopy=False))
    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
    if finished >= target:
        return "done"
    if states[TrialState.WAITING] or finished + states[TrialState.RUNNING] < target:
        return "run"
    return "wait"  # the rest is RUNNING elsewhere (or stale, until the heartbeat fails it)


def _run_processes(jobs: list[_Job], bar: _Bar) -> list[str]:
    """Run the workers; stop them all when one reports a library error, on Ctrl-C or on
    SIGTERM (the CLI raises it as an interrupt), then raise that error here."""
    context = multiprocessing.get_context("spawn")
    failure = None
    with _safe_import_path():  # the queue's lock starts multiprocessing's resource tracker
        errors = context.SimpleQueue()
        processes = [
            context.Process(
                target=_worker_main, args=(job, errors), name=f"lradvisor-study-worker-{index}"
            )
            for index, job in enumerate(jobs)
        ]
        # Started with SIGINT ignored, which a child keeps through exec and Python's start
        # (it installs its Ctrl-C handler only over the default): a Ctrl-C that reaches the
        # group while a worker still imports torch prints no traceback there.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            for process in processes:
                process.start()
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
    try:
        while any(process.is_alive() for process in processes):
            bar.refresh()
            if not errors.empty():
                failure = errors.get()
                break
            time.sleep(POLL_SECONDS)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join()
    if failure is None and not errors.empty():
        failure = errors.get()
    if failure is not None:
        raise LRAdvisorError(failure)
    bar.refresh()
    return [
        f"worker {index} (pid {process.pid}) exited with code {process.exitcode}"
        for index, process in enumerate(processes)
        if process.exitcode != 0
    ]


@contextlib.contextmanager
def _safe_import_path():
    """Spawned workers (and multiprocessing's resource tracker) start as ``python -c …``,
    which puts the current folder first on the import path before multiprocessing restores
    the parent's path: a ``socket.py`` or ``pickle.py`` in the working folder would run.
    ``PYTHONSAFEPATH`` (Python ≥ 3.11) keeps the folder off the path in the child."""
    saved = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = saved


class _Bar:
    """A tqdm bar of finished trials, fed from the storage (hidden when stderr is no tty)."""

    def __init__(self, study: optuna.Study, target: int, *, enabled: bool) -> None:
        self.study = study
        self.target = target
        self.enabled = enabled
        self.bar: Any = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.target,
                initial=min(self.target, _finished(self.study)),
                desc="trials",
                unit="trial",
                file=sys.stderr,
                disable=None,
            )
        return self

    def update(self, study: optuna.Study) -> None:
        self.refresh()

    def refresh(self) -> None:
        if self.bar is not None:
            self.bar.update(min(self.target, _finished(self.study)) - self.bar.n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


# ---------------------------------------------------------------------------- summary


def summarize(
    study: optuna.Study,
    spec: StudySpec,
    *,
    target: int,
    storage: str,
    workers: int = 1,
    alpha_predicted: float | None = None,
    wall_time: float = 0.0,
    notes: list[str] | tuple[str, ...] = (),
) -> StudySummary:
    """Counts, best trial, pruning savings and α by architecture of a study's trials."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(trial.state.name for trial in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    steps = spec.budget.steps
    trained = [_steps_trained(t, steps) for t in pruned]
    best = min(complete, key=lambda t: t.value) if complete else None
    direct = sum(1 for t in complete if t.user_attrs.get(IDENTITY_ATTR) is False)
    if direct:
        notes = [
            *notes,
            f"{direct} completed trial(s) used an optimizer that breaks the η²·S identity "
            "(momentum, weight decay or Adam): their drift is the direct C(T) − C(0)",
        ]
    return StudySummary(
        study_name=study.study_name,
        storage=storage,
        metric=spec.metric,
        n_trials=target,
        finished=len(complete) + len(pruned),
        counts={state.name: counts.get(state.name, 0) for state in TrialState},
        best_value=None if best is None else float(best.value),
        best_trial=None if best is None else best.number,
        best_params={} if best is None else dict(best.params),
        steps_per_trial=steps,
        pruned_before_training=sum(1 for n in trained if n == 0),
        steps_saved_before_training=steps * sum(1 for n in trained if n == 0),
        steps_saved_by_pruning=sum(steps - n for n in trained),
        prune_reasons=dict(Counter(str(t.user_attrs.get(PRUNE_REASON_ATTR, "?")) for t in pruned)),
        kept_as_contenders=sum(1 for t in trials if "lradvisor.prune_refused" in t.user_attrs),
        retried=sum(1 for t in trials if "failed_trial" in t.system_attrs),
        alpha_groups=tuple(alpha_by_architecture(complete)),
        alpha_predicted=alpha_predicted,
        template_architecture=architecture_key(
            template_parameters(spec.template, spec.architecture_parameters)
        ),
        workers=workers,
        wall_time=wall_time,
        notes=tuple(notes),
    )


def _steps_trained(trial: FrozenTrial, steps: int) -> int:
    value = trial.user_attrs.get(STEPS_ATTR)
    return int(value) if isinstance(value, (int, float)) else steps


def render_summary(summary: StudySummary) -> str:
    """The summary as a short text table."""
    counts = "  ".join(f"{state} {n}" for state, n in summary.counts.items() if n)
    lines = [
        f"study      {summary.study_name}  ({summary.storage}, {summary.workers} worker(s), "
        f"{summary.wall_time:.1f} s)",
        f"finished   {summary.finished} of {summary.n_trials} (COMPLETE + PRUNED)",
        f"trials     {counts or 'none'}"
        + (f"  ({summary.retried} retried)" if summary.retried else ""),
    ]
    if summary.best_trial is not None:
        params = " ".join(f"{k}={_fmt(v)}" for k, v in summary.best_params.items())
        lines.append(
            f"best       {summary.metric} {summary.best_value:.6g} (trial {summary.best_trial}): {params}"
        )
    pruned = summary.counts.get("PRUNED", 0)
    if pruned:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.prune_reasons.items()))
        lines.append(
            f"pruned     {pruned}: {summary.pruned_before_training} before training "
            f"({summary.steps_saved_before_training} steps saved), "
            f"{summary.steps_saved_by_pruning} of {pruned * summary.steps_per_trial} steps saved "
            f"in all; reasons: {reasons}"
        )
    if summary.kept_as_contenders:
        lines.append(
            f"kept       {summary.kept_as_contenders} trial(s) the base pruner would have "
            "pruned while they could still become the best"
        )
    lines.append("")
    lines.append(_render_alpha(summary))
    lines.extend(f"note: {note}" for note in summary.notes)
    return "\n".join(lines)


def _render_alpha(summary: StudySummary) -> str:
    predicted = "n/a" if summary.alpha_predicted is None else f"{summary.alpha_predicted:.3f}"
    template = summary.template_architecture or "(lr only)"
    footer = f"α predicted by advise() for the template ({template}): {predicted}"
    if not summary.alpha_groups:
        return (
            f"α          no architecture has completed trials at {MIN_DISTINCT_LRS} distinct lr\n"
            + footer
        )
    names = [group.architecture or "(lr only)" for group in summary.alpha_groups]
    width = max(len("architecture"), *(len(name) for name in names))
    rows = [
        f"{'architecture':<{width}}  {'law':<8} {'trials':>6} {'lrs':>4}  "
        f"{'α fitted [95% CI]':<22} {'R²':>6}"
    ]
    for name, group in zip(names, summary.alpha_groups, strict=True):
        interval = f"{group.alpha:.3f} [{group.alpha_ci[0]:.2f}, {group.alpha_ci[1]:.2f}]"
        marker = "  ← the template" if group.architecture == summary.template_architecture else ""
        rows.append(
            f"{name:<{width}}  {group.law:<8} {group.n_trials:>6} {len(group.lrs):>4}  "
            f"{interval:<22} {group.r2:>6.3f}{marker}"
        )
    rows.append(footer)
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
