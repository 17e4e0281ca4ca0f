"""``suggest``: the advice pipeline on the user's own objects, in five named stages.

    problem   = build_problem(model, data, loss_fn, optimizer, …)     what is asked
    sharpness = measure_sharpness(problem)                            1. λ_max at θ₀ (HVPs)
    bound     = stability_bound(problem, sharpness, model)            2. optimizer-aware bound, bracket
    probe     = run_probe(problem, bound)                             3. short runs decide
    choice    = choose(probe)                                         4. rate, range, warnings
    theory    = theory(problem, sharpness, bound, probe, choice)      5. laws, α, τ, regime

Each stage returns a record (``lradvisor.records``); :func:`assemble` turns them into one
:class:`~lradvisor.records.Advice` with a line of reasoning per number.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch
from torch import nn

from lradvisor.advisor.bound import stability_bound
from lradvisor.advisor.choice import choose
from lradvisor.advisor.probe import run_probe
from lradvisor.advisor.problem import Problem, Schedule, build_problem
from lradvisor.advisor.sharpness import measure_sharpness
from lradvisor.advisor.theory import Theory, theory
from lradvisor.records import Advice, Bound, Choice, ProbeResult, Sharpness

__all__ = ["advise_problem", "suggest"]

Progress = Callable[[str], None]
TRAJECTORY_FRACTION = 0.25  # λ_max(t) is followed at a quarter of the bound (sub-EoS)


def suggest(
    model: nn.Module | Callable[..., nn.Module],
    train_data: object,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: object = "sgd",
    *,
    val_data: object = None,
    batch_size: int | None = None,
    steps: int = 1000,
    probe_steps: int | None = None,
    seeds: Sequence[int] = (0, 1),
    device: str | torch.device = "cpu",
    schedule: str | Schedule | None = None,
    momentum: float | None = None,
    score: str = "auto",
    name: str | None = None,
    progress: Progress | None = None,
) -> Advice:
    """Advise a learning rate and a sweep range for your model, data, loss and optimizer.

    Args:
        model: an ``nn.Module`` at its initialisation (probe seeds after the first re-draw
            copies with each layer's ``reset_parameters()``), or a function building one
            (called with the seed if it takes one argument, else under ``torch.manual_seed``).
        train_data: ``(X, y)`` tensors or arrays of any input shape, a map-style
            ``torch.utils.data.Dataset`` of ``(input, target)`` pairs, or a ``DataLoader``
            (its dataset is read once; its ``batch_size`` is used unless given).
        loss_fn: ``loss_fn(outputs, targets)`` → scalar mean loss (classification or
            regression), e.g. ``nn.CrossEntropyLoss()``.
        optimizer: a name (``"sgd"``, ``"momentum"``, ``"nesterov"``, ``"adam"``,
            ``"adamw"``, any ``torch.optim`` class name), a class, a factory such as
            ``functools.partial(torch.optim.AdamW, weight_decay=0.01)``, or an instance.
        val_data: like ``train_data``; when given, the probe ranks rates by validation loss.
        batch_size: mini-batch size (None: the DataLoader's, else full batch).
        steps: the training steps you plan; the probe trains ``probe_steps`` (default
            ``min(steps, 500)``) of them.
        seeds: probe seeds (more seeds: steadier ranking, proportionally more compute).
        schedule: ``"constant"``, ``"cosine"``, ``"linear"``, ``"warmup-cosine"`` or a
            function ``(step, steps) → multiplier``; the advice is then the peak rate.
        momentum: override the optimizer's momentum (SGD).
        score: which loss ranks the probe's rates: ``"val"``, ``"train"``, or ``"auto"``
            (validation loss when ``val_data`` is given, else training loss).
        progress: called with one line per stage.

    Returns:
        :class:`~lradvisor.records.Advice`; ``render_advice`` prints it with its reasoning.

    Raises:
        LRAdvisorError: bad input, or a failure inside the model (one line naming the call).

    Example::

        advice = lradvisor.suggest(model, (X, y), nn.CrossEntropyLoss(),
                                   functools.partial(torch.optim.AdamW, weight_decay=0.01),
                                   val_data=(X_val, y_val), batch_size=64, steps=600)
        print(advice.recommended_lr, advice.lr_range)
    """
    say = progress or (lambda _message: None)
    say("checking the model, data, loss and optimizer")
    problem = build_problem(
        model,
        train_data,
        loss_fn,
        optimizer,
        val_data=val_data,
        batch_size=batch_size,
        steps=steps,
        probe_steps=probe_steps,
        seeds=seeds,
        device=device,
        schedule=schedule,
        momentum=momentum,
        score=score,
        name=name,
    )
    loss_name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    advice, _ = advise_problem(problem, loss_name=loss_name, progress=say)
    return advice


def advise_problem(
    problem: Problem, *, loss_name: str, progress: Progress | None = None
) -> tuple[Advice, Theory]:
    """Run the five stages on ``problem``; the theory record comes back for the YAML route."""
    say = progress or (lambda _message: None)
    clock = _Clock()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        say("1/5 sharpness at θ₀ (Lanczos on Hessian-vector products)")
        model = problem.make_model(problem.seeds[0])
        sharpness = measure_sharpness(problem)
        clock.lap("sharpness")
        say("2/5 optimizer-aware stability bound")
        bound = stability_bound(problem, sharpness, model)
        trajectory = None
        if problem.cross_entropy and problem.optimizer.plain_gradient_descent and bound.value:
            trajectory = TRAJECTORY_FRACTION * bound.value
        say(f"3/5 probe ({problem.probe_steps} steps, seeds {list(problem.seeds)})")
        probe, state = run_probe(problem, bound, trajectory_rate=trajectory, say=say)
        clock.lap("probe")
        say("4/5 choice of the rate")
        choice = choose(probe, steps=problem.steps)
        say("5/5 theory: laws, spectral formula, τ, regime")
        result = theory(problem, sharpness, bound, probe, state, choice)
        clock.lap("theory")
    return assemble(
        problem, loss_name, sharpness, bound, probe, choice, result, clock.timings
    ), result


def assemble(
    problem: Problem,
    loss_name: str,
    sharpness: Sharpness,
    bound: Bound,
    probe: ProbeResult,
    choice: Choice,
    result: Theory,
    timings: dict[str, float],
) -> Advice:
    """One :class:`Advice` from the stage records, a rule line per number."""
    rules = {
        "bound": bound.rule,
        "recommended_lr": choice.rule,
        "lr_range": choice.range_rule,
        "probe": (
            f"{len(probe.rows)} rates ({bound.bracket_rule}"
            + (f"; {'; '.join(probe.extensions)}" if probe.extensions else "")
            + f"), {len(probe.seeds)} seeds, to step {probe.rung}; the best {len(_finalists(probe))} to step {probe.steps}; "
            + probe.mode
            + f"; {probe.trial_steps} training steps in all (≈ {probe.trial_steps / problem.steps:.1f} runs of your {problem.steps} steps)"
        ),
        **result.rules,
    }
    if sharpness.lambda_max is not None:
        rules["lambda_max"] = (
            f"top Hessian eigenvalue at θ₀ ({sharpness.samples} training samples, seed "
            f"{problem.seeds[0]}) by Lanczos: {sharpness.n_hvp} HVPs, relative residual {sharpness.residual:.1e}"
        )
        rules["eos_lr"] = (
            "2/λ_max(θ₀): plain gradient descent on the local quadratic diverges above it"
        )
    if sharpness.batch_lambda_max is not None:
        rules["batch_eos_lr"] = (
            f"2/λ_mb, λ_mb = {sharpness.batch_lambda_max:.4g} the mean top eigenvalue over single "
            f"batches of {problem.batch_size} samples"
        )
    warnings = [*problem.notes, *bound.warnings, *choice.warnings, *result.notes]
    if problem.loop_reason:
        warnings.append(problem.loop_reason)
    if sharpness.note:
        warnings.append(sharpness.note)
    return Advice(
        model=problem.name,
        loss=loss_name,
        optimizer=problem.optimizer.describe(),
        full_batch=problem.full_batch,
        batch_size=None if problem.full_batch else problem.batch_size,
        steps=problem.steps,
        score=probe.score,
        lambda_max=sharpness.lambda_max,
        lambda_max_method=f"lanczos ({sharpness.n_hvp} HVPs, {sharpness.samples} samples)",
        eos_lr=bound.eos_lr,
        batch_lambda_max=sharpness.batch_lambda_max,
        batch_eos_lr=None
        if sharpness.batch_lambda_max is None
        else 2.0 / sharpness.batch_lambda_max,
        bound=asdict(bound),
        recommended_lr=choice.recommended_lr,
        lr_range=choice.lr_range,
        regime=result.regime,
        probe=asdict(probe),
        rules=rules,
        warnings=tuple(dict.fromkeys(warnings)),
        applies=result.applies,
        does_not_apply=result.does_not_apply,
        alpha_predicted=result.alpha_predicted,
        drift_curve=result.drift_curve,
        outside_fraction=result.outside_fraction,
        tau=result.tau,
        schedule=result.schedule,
        adaptive=result.adaptive,
        timings=timings,
    )


def _finalists(probe: ProbeResult) -> list[dict]:
    return [r for r in probe.rows if "final_score" in r]


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self.last
        self.last = now
