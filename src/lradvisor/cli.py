"""The `lradvisor` command line: parse, call one library function, render.

Every error a user can cause is one line on stderr, ``lradvisor: error: …``, and exit code
2: an :class:`~lradvisor.errors.LRAdvisorError` from the library, a bad option (click's
usage errors), or an output path that cannot be written (checked before any work; a result
finished before a write fails is saved elsewhere and the line says where). SIGINT and
SIGTERM stop the command and its worker processes (exit 130 / 143).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path

import click
import numpy as np

from lradvisor import __version__
from lradvisor.errors import ConfigError, LRAdvisorError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
#: Longest error line printed (a library message echoing user values is already short).
MESSAGE_LIMIT = 2000


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    """Print ``lradvisor: error: message`` on one line of stderr and exit."""
    text = " ".join(str(message).split())
    if len(text) > MESSAGE_LIMIT:
        text = text[: MESSAGE_LIMIT - 1] + "…"
    click.echo(f"lradvisor: error: {text}", err=True)
    sys.exit(code)


def _friendly(command: Callable) -> Callable:
    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LRAdvisorError as exc:
            _fail(str(exc))
        except MemoryError:
            _fail("out of memory: a smaller model, data set, batch or fewer trials would fit")
        except RuntimeError as exc:
            if not _out_of_memory(exc):
                raise
            _fail(f"out of memory ({_first_line(exc)}): a smaller model, batch or fewer trials")

    return wrapper


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` (worker processes) runs."""


_terminated: list[int] = []  # set by the SIGTERM handler (code that re-raises loses the type)


def _raise_terminated(signum: int, frame: object) -> None:
    _terminated.append(signum)
    raise _Terminated()


class _Main(click.Group):
    """The ``lradvisor`` group: click's usage errors and interrupts as one line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        previous = signal.getsignal(signal.SIGTERM)
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            hint = f" (see '{exc.ctx.command_path} -h')" if getattr(exc, "ctx", None) else ""
            _fail(exc.format_message() + hint, exc.exit_code if exc.exit_code else EXIT_USAGE)
        except (KeyboardInterrupt, click.exceptions.Abort) as exc:
            terminated = isinstance(exc, _Terminated) or bool(_terminated)
            click.echo(f"lradvisor: {'terminated' if terminated else 'interrupted'}", err=True)
            sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
        finally:
            if previous in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
        sys.exit(code if isinstance(code, int) else 0)


def _number_list(option: str, text: str | None, kind: type) -> list | None:
    if text is None:
        return None
    try:
        values = [kind(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ConfigError(
            "<command line>", option, f"a comma-separated list of {kind.__name__} values", text
        ) from None
    if not values:
        raise ConfigError("<command line>", option, "at least one value", text)
    if kind is float and any(not np.isfinite(v) or v <= 0 for v in values):
        raise ConfigError("<command line>", option, "learning rates > 0", text)
    if kind is int and any(not 0 <= v <= 2**63 - 1 for v in values):
        raise ConfigError("<command line>", option, "seeds between 0 and 2^63 − 1", text)
    if len(set(values)) != len(values):
        raise ConfigError(
            "<command line>", option, "distinct values (a repeat repeats trials)", text
        )
    return values


# ------------------------------------------------------------------------- output paths

#: What ``--plot`` can draw to (matplotlib picks the format from the extension).
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp")


class _OutputFile(click.ParamType):
    """An output path checked when the command line is parsed, before any work: its folder
    exists and takes a new file, the file (if any) is writable, the extension fits."""

    name = "file"

    def __init__(self, *suffixes: str, stdout: bool = False) -> None:
        self.suffixes = suffixes
        self.stdout = stdout

    def convert(self, value, param, ctx) -> Path:
        if isinstance(value, Path):
            return value
        if value == "-" and self.stdout:
            return Path("-")
        path = Path(value)
        if self.suffixes and path.suffix.lower() not in self.suffixes:
            self.fail(f"{value}: expected a {' / '.join(self.suffixes)} file", param, ctx)
        problem = output_problem(path)
        if problem:
            self.fail(f"{value}: {problem}", param, ctx)
        return path


def output_problem(path: Path) -> str | None:
    """Why ``path`` cannot be written now (None when it can), without leaving a file."""
    if path.is_dir():
        return "is a folder"
    if path.exists() or path.is_symlink():
        if not (path.is_file() or path.is_char_device()):
            return "exists and is not a regular file"
        if not os.access(path, os.W_OK):
            return "exists and is not writable"
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return f"the folder {folder} does not exist"
    if path.exists():
        return None
    try:
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".lradvisor-probe-")
    except OSError as exc:
        return f"the folder {folder} does not take new files ({exc.strerror})"
    probe.close()
    return None


_unsaved: list[str] = []


def _save(path: Path, write: Callable[[Path], object], option: str) -> Path:
    """``write(path)``; if that fails now, write beside in the current folder or the temp
    folder, and remember to say so (the command then ends with exit code 2)."""
    try:
        write(path)
        return path
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        fallback = folder / f"{path.stem}-{stamp}{path.suffix}"
        try:
            write(fallback)
        except OSError:
            continue
        _unsaved.append(f"could not write {option} {path} ({reason}); saved it as {fallback}")
        return fallback
    _unsaved.append(f"could not write {option} {path} ({reason}), nor a copy elsewhere")
    return path


def _text_writer(text: str) -> Callable[[Path], object]:
    return lambda path: path.write_text(text)


def _end() -> None:
    """Exit 2 with one line per output that went elsewhere than asked."""
    if _unsaved:
        message = "; ".join(_unsaved)
        _unsaved.clear()
        _fail(message)


def _lr_window(option: str, text: str | None) -> tuple[float, float] | None:
    """The window "LO:HI" as (LO, HI), with 0 < LO ≤ HI."""
    if text is None:
        return None
    parts = text.replace(" ", "").split(":")
    try:
        low, high = (float(parts[0]), float(parts[1])) if len(parts) == 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or not (np.isfinite(low) and np.isfinite(high) and 0 < low <= high):
        raise ConfigError("<command line>", option, "LO:HI with 0 < LO ≤ HI, e.g. 1e-3:0.1", text)
    return low, high


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="lradvisor")
def main() -> None:
    """Learning-rate advice from the spectral theory of conservation-law breaking."""


@main.command()
@click.option(
    "--model",
    "model_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Model YAML file (see README 'Model file').",
)
@click.option("--lrs", help="Comma-separated learning rates (overrides sweep.lrs).")
@click.option("--seeds", help="Comma-separated integer seeds (overrides sweep.seeds).")
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    help="Training steps per trial (overrides training.steps).",
)
@click.option(
    "--law",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Which law C_l the table shows and the JSON's top-level alpha fits.",
)
@click.option(
    "--drift",
    type=click.Choice(["exact", "direct"]),
    default="exact",
    show_default=True,
    help="exact: η²·S in float64; direct: C(T) − C(0) in the run's dtype (the paper's way).",
)
@click.option("--fit-lrs", help="Fit α only over LO ≤ η ≤ HI, e.g. 1e-3:0.1.")
@click.option(
    "--diverged",
    type=click.Choice(["exclude", "drop-rate"]),
    default="exclude",
    show_default=True,
    help="exclude: diverged trials leave their rate's mean; drop-rate: their rate leaves the fit.",
)
@click.option("--device", help="torch device, e.g. cuda (overrides training.device).")
@click.option("--no-predict", is_flag=True, help="Skip the spectral prediction of S(η).")
@click.option(
    "--json",
    "json_file",
    type=_OutputFile(stdout=True),
    help="Write per-η and per-seed records and the fit here ('-' for stdout).",
)
@_friendly
def sweep(
    model_file: Path,
    lrs: str | None,
    seeds: str | None,
    steps: int | None,
    law: int,
    drift: str,
    fit_lrs: str | None,
    diverged: str,
    device: str | None,
    no_predict: bool,
    json_file: Path | None,
) -> None:
    """Train an (η, seed) grid as one batched computation and fit the drift exponent α."""
    from lradvisor.config import load_config
    from lradvisor.render import render_sweep
    from lradvisor.sweep import run

    config = load_config(model_file)
    if device is not None:
        config = config.model_copy(
            update={"training": config.training.model_copy(update={"device": device})}
        )
    _check_device(config.training.device)
    lr_list = _number_list("--lrs", lrs, float)
    seed_list = _number_list("--seeds", seeds, int)
    if not config.model.is_factory and law > config.model.depth - 1:
        raise ConfigError(
            str(model_file), "--law", f"a law between 1 and {config.model.depth - 1}", law
        )
    _preflight(config, lrs=lr_list, seeds=seed_list, steps=steps)
    with _progress("training") as progress:
        report = run(
            config,
            lrs=lr_list,
            seeds=seed_list,
            steps=steps,
            predict=not no_predict,
            progress=progress,
            drift=drift,
            law=law - 1,
            fit_lrs=_lr_window("--fit-lrs", fit_lrs),
            diverged=diverged,
        )
    if json_file is not None and str(json_file) == "-":
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    click.echo(render_sweep(report))
    if json_file is not None:
        saved = _save(json_file, _text_writer(json.dumps(report.to_json(), indent=2)), "--json")
        click.echo(f"\nwrote {saved}")
    _end()


@main.command()
@click.option(
    "--model",
    "model_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Model YAML file (see README 'Model file').",
)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "momentum", "nesterov", "adam", "adamw"]),
    help="Override training.optimizer (momentum / nesterov: SGD with momentum 0.9 unless --momentum).",
)
@click.option("--momentum", type=float, help="Override training.momentum (SGD).")
@click.option("--weight-decay", type=float, help="Override training.weight_decay.")
@click.option("--steps", type=click.IntRange(min=1), help="Override training.steps.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=0),
    help="Override training.batch_size (0 = full batch).",
)
@click.option("--seeds", help="Comma-separated probe seeds (overrides sweep.seeds; 2 are used).")
@click.option("--device", help="torch device, e.g. cuda (overrides training.device).")
@click.option(
    "--score",
    type=click.Choice(["auto", "val", "train"]),
    default="auto",
    show_default=True,
    help="Loss that ranks the probe's rates (auto: validation loss when the file has a validation split).",
)
@click.option(
    "--widths",
    is_flag=True,
    help="Also measure λ_max(θ₀) at half and twice the width and fit the width law.",
)
@click.option(
    "--probe",
    is_flag=True,
    help="Also run a small batched sweep over the advised range: predicted vs observed α and drift.",
)
@click.option(
    "--json",
    "json_file",
    type=_OutputFile(stdout=True),
    help="Write the advice as JSON here ('-' for stdout).",
)
@click.option(
    "--plot",
    "plot_file",
    type=_OutputFile(*PLOT_SUFFIXES),
    help="Draw the probe's loss vs η beside the theory's drift vs η to this PNG.",
)
@_friendly
def suggest(
    model_file: Path,
    optimizer: str | None,
    momentum: float | None,
    weight_decay: float | None,
    steps: int | None,
    batch_size: int | None,
    seeds: str | None,
    device: str | None,
    score: str,
    widths: bool,
    probe: bool,
    json_file: Path | None,
    plot_file: Path | None,
) -> None:
    """Advise a learning rate and a sweep range for a model, with the reasoning shown."""
    from lradvisor.advisor import advise
    from lradvisor.config import load_config
    from lradvisor.render import render_advice

    config = _with_overrides(
        load_config(model_file),
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
        steps=steps,
        batch_size=batch_size,
        seeds=_number_list("--seeds", seeds, int),
        device=device,
    )
    _check_device(config.training.device)
    with _steps_progress() as say:
        advice = advise(config, probe=probe, widths=widths, score=score, progress=say)
    if json_file is not None and str(json_file) == "-":
        click.echo(json.dumps(advice.as_dict(), indent=2, default=float))
        return
    click.echo(render_advice(advice))
    if json_file is not None:
        text = json.dumps(advice.as_dict(), indent=2, default=float)
        click.echo(f"wrote {_save(json_file, _text_writer(text), '--json')}")
    if plot_file is not None:
        from lradvisor.plots import plot_advice

        click.echo(f"wrote {_save(plot_file, lambda path: plot_advice(advice, path), '--plot')}")
    _end()


def _with_overrides(config, **overrides):
    """The config with the command line's training / sweep overrides, validated like the file."""
    from lradvisor.config import parse_config

    raw = config.model_dump(mode="json", exclude_unset=True)
    training, sweep = raw.setdefault("training", {}), raw.setdefault("sweep", {})
    optimizer = overrides.pop("optimizer")
    if optimizer in ("momentum", "nesterov"):
        training.update(optimizer="sgd", momentum=0.9, nesterov=optimizer == "nesterov")
    elif optimizer is not None:
        training.update(optimizer=optimizer, momentum=0.0, nesterov=False)
    for key in ("momentum", "weight_decay", "steps", "device"):
        if overrides[key] is not None:
            training[key] = overrides[key]
    if overrides["batch_size"] is not None:
        training["batch_size"] = overrides["batch_size"] or None
    if overrides["seeds"] is not None:
        sweep["seeds"] = overrides["seeds"]
    return parse_config(raw, file=config.source_file)


class _steps_progress:
    """One line per stage on stderr: rewritten in place on a terminal, else one line each."""

    def __enter__(self) -> Callable[[str], None]:
        interactive = sys.stderr.isatty()

        def say(message: str) -> None:
            if interactive:
                click.echo(f"\r\033[K… {message}", err=True, nl=False)
            else:
                click.echo(f"lradvisor: {message}", err=True)

        self.interactive = interactive
        return say

    def __exit__(self, *exc: object) -> None:
        if self.interactive:
            click.echo("\r\033[K", err=True, nl=False)


def _check_device(device: str) -> None:
    from lradvisor.config import check_device

    check_device(device)


def _preflight(config, *, lrs: list | None, seeds: list | None, steps: int | None) -> None:
    """Before a sweep: refuse a grid that cannot fit in memory, warn of one that runs for
    hours (one line on stderr, with the estimate)."""
    from lradvisor.config import MAX_STEPS, check_memory, duration_warning

    if steps is not None and steps > MAX_STEPS:
        raise ConfigError("<command line>", "--steps", f"at most {MAX_STEPS:.0e} steps", steps)
    trials = len(lrs or config.sweep.lrs) * len(seeds or config.sweep.seeds)
    check_memory(config, trials=trials)
    warning = duration_warning(config, trials=trials, steps=steps)
    if warning:
        click.echo(f"lradvisor: warning: {warning}", err=True)


class _progress:
    """A tqdm bar on stderr (hidden when stderr is not a terminal) fed by the engine's callback."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar = None

    def __enter__(self) -> Callable[[int, int], None]:
        from tqdm import tqdm

        def update(done: int, total: int) -> None:
            if self.bar is None:
                self.bar = tqdm(
                    total=total,
                    desc=self.label,
                    unit="step",
                    file=sys.stderr,
                    disable=None,
                    leave=False,
                )
            self.bar.update(done - self.bar.n)

        return update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def _environment(**defaults: str):
    """Environment variables set (unless the user set them) for the duration of a call."""
    added = [name for name in defaults if name not in os.environ]
    os.environ.update({name: defaults[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _tracking_options(command: Callable) -> Callable:
    """``--tracking-uri`` and ``--no-mlflow`` for commands that log to MLflow."""
    command = click.option("--no-mlflow", is_flag=True, help="Do not log to MLflow.")(command)
    return click.option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: $MLFLOW_TRACKING_URI, "
        "else MLflow's local store sqlite:///mlflow.db).",
    )(command)


@main.group("study")
def study_group() -> None:
    """Optuna studies from a study file (search space, budget, sampler, pruner)."""


@study_group.command("run")
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    help="Finished trials (COMPLETE + PRUNED) to reach (overrides budget.n_trials).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes sharing the study.",
)
@click.option(
    "--storage",
    help="postgresql://… (any SQLAlchemy URL) or a journal file path; default "
    "sqlite:///runs/studies.db (1 worker) or runs/studies.journal (more).",
)
@click.option("--study-name", help="Optuna study name (default: the study file's name).")
@click.option("--no-predict", is_flag=True, help="Skip advise() on the template (predicted α).")
@click.option(
    "--json",
    "json_file",
    type=_OutputFile(stdout=True),
    help="Write the summary as JSON here ('-' for stdout).",
)
@_tracking_options
@_friendly
def study_run(
    study_file: Path,
    n_trials: int | None,
    workers: int,
    storage: str | None,
    study_name: str | None,
    no_predict: bool,
    json_file: Path | None,
    tracking_uri: str | None,
    no_mlflow: bool,
) -> None:
    """Run or resume a study until it has n_trials finished trials; print the summary."""
    from lradvisor.studies import render_summary, run_study

    summary = run_study(
        study_file,
        n_trials=n_trials,
        workers=workers,
        storage=storage,
        study_name=study_name,
        predict=not no_predict,
        mlflow=not no_mlflow,
        tracking_uri=tracking_uri,
    )
    if json_file is not None and str(json_file) == "-":
        click.echo(json.dumps(summary.as_dict(), indent=2, default=float))
        return
    click.echo(render_summary(summary))
    if json_file is not None:
        text = json.dumps(summary.as_dict(), indent=2, default=float)
        click.echo(f"wrote {_save(json_file, _text_writer(text), '--json')}")
    _end()


@main.group("mlflow")
def mlflow_group() -> None:
    """MLflow logging: send what an unreachable tracking server could not take."""


@mlflow_group.command("sync")
@click.option(
    "--spool",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of kept payloads (default: $LRADVISOR_MLFLOW_SPOOL, else runs/mlflow-spool).",
)
@click.option(
    "--tracking-uri",
    help="Send everything here instead of to the tracking URI each payload was meant for.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_friendly
def mlflow_sync(spool: Path | None, tracking_uri: str | None, as_json: bool) -> None:
    """Send the kept MLflow payloads (parent runs, trials, summaries) in order.

    A file that is not a payload, or that the store refuses, is moved to the spool's bad/
    folder and named. Exit code 1 while payloads are still pending.
    """
    from lradvisor.integrations.mlflow import check_tracking_uri, spool_folder, sync

    folder = spool_folder(spool)
    if spool is not None and not folder.is_dir():
        raise LRAdvisorError(f"--spool {spool}: no such folder")
    if tracking_uri is not None:
        check_tracking_uri(tracking_uri)
    with _progress("payloads") as update, _environment(MLFLOW_HTTP_REQUEST_TIMEOUT="30"):
        # by hand, a slow server may take its time (a study's logging gives up after 3 s)
        result = sync(folder, tracking_uri=tracking_uri, progress=update)
    if as_json:
        payload = {"spool": str(folder), "sent": result.sent, "pending": result.pending}
        payload.update(errors=result.errors, quarantined=result.quarantined)
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(f"sent {result.sent} payload(s) from {folder}; {result.pending} still pending")
        if result.quarantined:
            click.echo(
                f"moved {len(result.quarantined)} file(s) that cannot be sent to {folder / 'bad'}"
            )
        for error in result.errors[:5]:
            click.echo(f"  {error}")
    if result.pending:
        sys.exit(1)


@main.command()
@click.argument("ids", nargs=-1)
@click.option("--quick", is_flag=True, help="Fewer seeds, steps and grid points (CI); says so.")
@click.option(
    "--json",
    "json_file",
    type=_OutputFile(stdout=True),
    help="Write every experiment's verdict, claims and measured values here ('-' for stdout).",
)
@click.option(
    "--report",
    "report_file",
    type=_OutputFile(".md"),
    help="Write a markdown report (table and figures) here, PNGs in a folder beside it.",
)
@click.option(
    "--studies",
    "studies_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of study files (default: the repository's studies/).",
)
@click.option(
    "--stability",
    is_flag=True,
    help="Run everything twice more (1 thread; other CPU vector code) and judge every run.",
)
@_tracking_options
@_friendly
def reproduce(
    ids: tuple[str, ...],
    quick: bool,
    json_file: Path | None,
    report_file: Path | None,
    studies_dir: Path | None,
    stability: bool,
    tracking_uri: str | None,
    no_mlflow: bool,
) -> None:
    """Run the paper's experiments (E5 E7 … or all) and judge their published claims."""
    from tqdm import tqdm

    from lradvisor.replication.reproduce import ERROR, render_table
    from lradvisor.replication.reproduce import UNITS_PER_EXPERIMENT as UNITS
    from lradvisor.replication.reproduce import reproduce as run_reproduce

    bar = None

    def progress(done: int, total: int, label: str) -> None:
        # the bar counts experiments, in fractions
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total // UNITS, file=sys.stderr, disable=None, leave=False, unit="exp")
        bar.set_description(label, refresh=False)
        bar.update(done / UNITS - bar.n)

    try:
        result = run_reproduce(
            ids or "all",
            quick=quick,
            progress=progress,
            studies_dir=studies_dir,
            stability=stability,
        )
    finally:
        if bar is not None:
            bar.close()
    if not no_mlflow:
        from lradvisor.integrations.mlflow import log_replication

        log_replication(result.as_dict(), tracking_uri=tracking_uri)
    if json_file is not None and str(json_file) == "-":
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(render_table(result))
    if json_file is not None:
        text = json.dumps(result.as_dict(), indent=2)
        click.echo(f"wrote {_save(json_file, _text_writer(text), '--json')}")
    if report_file is not None:
        from lradvisor.replication.report import write_report

        saved = _save(report_file, lambda path: write_report(result, path), "--report")
        click.echo(f"wrote {saved}")
    _end()
    failed = [row.id for row in result.rows if row.verdict == ERROR]
    if failed:  # a claim that does not reproduce is a finding; a crashed experiment is not
        click.echo(f"lradvisor: error: experiment(s) {', '.join(failed)} could not run", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
