r"""Smith's learning-rate range test, with torch-lr-finder's published suggestion rule.

One short training run from the config's initial weights (:func:`initial_state`, the same
weights as the batched engine) with the learning rate growing exponentially from
``start_lr`` to ``end_lr``; the loss of every iteration's batch is smoothed, the run stops
when the smoothed loss exceeds ``diverge_th`` times the best one, and the suggested rate is
the point of steepest descent of the smoothed loss curve. It is the peer lradvisor's advice
is benchmarked against (docs/theory.md §8).

.. math::

    \eta_i = \eta_0 \, (\eta_1 / \eta_0)^{i / (N - 1)}, \qquad
    \bar\ell_0 = \ell_0, \quad
    \bar\ell_i = \beta \, \ell_i + (1 - \beta) \, \bar\ell_{i-1},

    \text{stop at the first } i \text{ with } \bar\ell_i > \theta \min_{j \le i} \bar\ell_j,
    \qquad
    \hat\eta = \eta_{k^*}, \quad
    k^* = \operatorname{argmin}_k \, \nabla \bar\ell_k
    \text{ over } k \in [s, \text{len} - e),

where η₀ = ``start_lr``, η₁ = ``end_lr``, N = ``num_iter``, β = ``smooth_f``,
θ = ``diverge_th``, s = ``skip_start``, e = ``skip_end``, ℓ_i the loss of iteration i's
batch before its update, and ∇ numpy's second-order central difference over the index
(``np.gradient``).

Example::

    >>> from lradvisor.config import load_config
    >>> result = range_test(load_config("examples/e5.yaml"), seed=0)  # doctest: +SKIP
    >>> result.suggested_lr, result.stopped_early  # doctest: +SKIP

References:
    L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017,
    arXiv:1506.01186 (the range test).
    torch-lr-finder 0.2.2 (D. Silva, github.com/davidtvs/pytorch-lr-finder):
    ``LRFinder.range_test`` (``ExponentialLR``, ``smooth_f``, ``diverge_th``) and
    ``LRFinder.plot(suggest_lr=True)`` (steepest gradient, ``skip_start=10``,
    ``skip_end=5``) — the rule implemented here, with its defaults.
    PyTorch Lightning ``Tuner.lr_find`` / ``_LRFinder.suggestion`` (the same
    steepest-gradient rule with different defaults; see the note).

.. note::
    Where this implementation departs, or may depart, from the two libraries:

    - A non-finite loss stops the test here. torch-lr-finder only stops on
      ``loss > diverge_th * best_loss``, which is never true for NaN, so it keeps training
      on NaN and its ``argmin`` of a gradient holding NaN returns the first NaN position.
      The suggestion here uses the finite points only (as Lightning does).
    - With fewer than ``skip_start + skip_end + 2`` recorded iterations torch-lr-finder
      raises ``RuntimeError`` instead of suggesting. Here the steepest point is taken over
      all finite recorded points instead, and ``suggestion_rule`` says so; with fewer than
      two finite points there is no gradient and :class:`LRAdvisorError` is raised
      (Lightning returns ``None`` there).
    - Lightning 2.x differs in defaults and details, not in the rule: rates 1e-8 → 1,
      stop at 4 × the best loss, a bias-corrected exponential average with β = 0.98 (our
      ``smooth_f`` is its 1 − β, without the bias correction), ``skip_end = 1``, and its
      exponential schedule divides by ``num_training`` rather than ``num_iter − 1``.
      Use those arguments to approximate it; the results will not match bit for bit.
    - Mini-batches follow the engine's :func:`batch_indices` schedule for ``seed`` (a fresh
      permutation per epoch, incomplete last batch dropped), not a user DataLoader; in full
      batch every iteration sees the whole training set. Both libraries use whatever
      loader they are given, so they agree when given the same batches (tested).
    - Gradient accumulation, AMP and validation-loss mode (``val_loader``) are not offered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import batch_indices
from lradvisor.engine.training import loss_function, make_optimizer
from lradvisor.errors import LRAdvisorError

__all__ = [
    "RangeTestResult",
    "exponential_lrs",
    "range_test",
    "run_range_test",
    "smooth_losses",
    "smooth_next",
    "steepest_point",
]

STEEPEST_RULE = "steepest"

TrainStep = Callable[[int, float], float]


@dataclass(frozen=True)
class RangeTestResult:
    """One range test: the rate and loss of every recorded iteration, and the suggestion.

    ``losses`` are smoothed (what the suggestion is read from), ``raw_losses`` are the
    per-batch losses. ``suggestion_rule`` is ``"steepest"`` when torch-lr-finder's rule
    applied as published, otherwise it names the fallback that was used.
    """

    lrs: np.ndarray
    losses: np.ndarray
    raw_losses: np.ndarray
    suggested_lr: float
    stopped_early: bool
    suggestion_rule: str = STEEPEST_RULE

    @property
    def n_iterations(self) -> int:
        return len(self.lrs)


def exponential_lrs(start_lr: float, end_lr: float, num_iter: int) -> np.ndarray:
    """torch-lr-finder's ``ExponentialLR``: η_i = start_lr · (end_lr / start_lr)^(i / (N − 1)).

    The first iteration runs at ``start_lr`` and the last at ``end_lr`` exactly.
    """
    _check_schedule(start_lr, end_lr, num_iter)
    ratio = np.arange(num_iter) / (num_iter - 1)
    return start_lr * (end_lr / start_lr) ** ratio


def smooth_next(previous: float | None, loss: float, smooth_f: float) -> float:
    """One step of torch-lr-finder's smoothing; ``smooth_f = 0`` disables it."""
    if previous is None or smooth_f == 0.0:
        return loss
    return smooth_f * loss + (1.0 - smooth_f) * previous


def smooth_losses(raw_losses: object, *, smooth_f: float = 0.05) -> np.ndarray:
    """ℓ̄_0 = ℓ_0, ℓ̄_i = smooth_f · ℓ_i + (1 − smooth_f) · ℓ̄_{i−1} over a whole sequence."""
    _check_smoothing(smooth_f)
    smoothed: list[float] = []
    for loss in np.asarray(raw_losses, dtype=float):
        smoothed.append(smooth_next(smoothed[-1] if smoothed else None, float(loss), smooth_f))
    return np.array(smoothed)


def steepest_point(
    lrs: object, losses: object, *, skip_start: int = 10, skip_end: int = 5
) -> tuple[float, str]:
    """The rate at argmin ``np.gradient(losses[skip_start:-skip_end])`` and the rule used.

    This is ``LRFinder.plot(suggest_lr=True)``; ``skip_end = 0`` keeps the tail, as there.
    With fewer than ``skip_start + skip_end + 2`` points (where torch-lr-finder raises) the
    steepest point over all finite points is returned, with the rule saying so.
    """
    lr_values = np.asarray(lrs, dtype=float)
    loss_values = np.asarray(losses, dtype=float)
    if lr_values.shape != loss_values.shape or lr_values.ndim != 1:
        raise LRAdvisorError(
            f"lrs and losses must be 1-D of one length, but got shapes {lr_values.shape} and {loss_values.shape}."
        )
    if skip_start < 0 or skip_end < 0:
        raise LRAdvisorError(
            f"skip_start and skip_end must be >= 0, but got {skip_start} and {skip_end}."
        )
    needed = skip_start + skip_end + 2
    rule = STEEPEST_RULE
    window = slice(skip_start, len(lr_values) - skip_end)
    if len(lr_values) < needed:
        rule = (
            f"fallback: {len(lr_values)} iterations recorded, torch-lr-finder needs {needed} "
            "(skip_start + skip_end + 2) and raises; steepest point over all finite points"
        )
        window = slice(0, len(lr_values))
    lr_window, loss_window = lr_values[window], loss_values[window]
    finite = np.isfinite(loss_window)
    if finite.sum() < 2:
        raise LRAdvisorError(
            f"the range test needs at least 2 finite losses to take a gradient, but got {int(finite.sum())}; lower start_lr or raise num_iter."
        )
    if not finite.all() and rule == STEEPEST_RULE:
        rule = f"{STEEPEST_RULE} over the {int(finite.sum())} finite points of the window"
    steepest = int(np.argmin(np.gradient(loss_window[finite])))
    return float(lr_window[finite][steepest]), rule


def run_range_test(
    train_step: TrainStep,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    smooth_f: float = 0.05,
    diverge_th: float = 5.0,
    skip_start: int = 10,
    skip_end: int = 5,
) -> RangeTestResult:
    """The range test around any training step: ``train_step(step, lr)`` updates the model
    once at rate ``lr`` and returns the loss of that step's batch before the update.

    This is torch-lr-finder's ``range_test`` loop followed by ``plot(suggest_lr=True)``;
    :func:`range_test` supplies the step for a model config.
    """
    _check_schedule(start_lr, end_lr, num_iter)
    _check_smoothing(smooth_f)
    if not diverge_th >= 1.0:
        raise LRAdvisorError(f"diverge_th must be at least 1, but got {diverge_th!r}.")
    rates = exponential_lrs(start_lr, end_lr, num_iter)
    raw: list[float] = []
    smoothed: list[float] = []
    best = np.inf
    stopped_early = False
    for step, lr in enumerate(rates):
        raw.append(float(train_step(step, float(lr))))
        smoothed.append(smooth_next(smoothed[-1] if smoothed else None, raw[-1], smooth_f))
        best = min(best, smoothed[-1])
        if not np.isfinite(smoothed[-1]) or smoothed[-1] > diverge_th * best:
            stopped_early = True
            break
    lrs = rates[: len(raw)]
    suggested, rule = steepest_point(lrs, smoothed, skip_start=skip_start, skip_end=skip_end)
    return RangeTestResult(
        lrs=lrs,
        losses=np.array(smoothed),
        raw_losses=np.array(raw),
        suggested_lr=suggested,
        stopped_early=stopped_early,
        suggestion_rule=rule,
    )


def range_test(
    config: ModelConfig,
    *,
    seed: int,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    smooth_f: float = 0.05,
    diverge_th: float = 5.0,
    skip_start: int = 10,
    skip_end: int = 5,
    threads: int = 1,
) -> RangeTestResult:
    """Run the range test on ``config``'s model from seed ``seed``'s initial weights.

    Trains with the config's optimiser (SGD with momentum and weight decay, or Adam, as
    ``torch.optim`` implements them), loss, dtype and batch size (full batch when
    ``batch_size`` is None or not below n) for up to ``num_iter`` iterations at the rates of
    :func:`exponential_lrs`, recording each iteration's batch loss before its update.
    Defaults are torch-lr-finder's, except ``start_lr`` (its default is the optimiser's
    rate; the range test needs a value here).

    ``threads`` sets torch's intra-op threads for the test (restored afterwards). One is the
    default because the tensors are small: on a loaded two-core machine two threads made a
    46-iteration test 250× slower (4.4 s against 0.017 s), every kernel waiting at a barrier
    for a descheduled thread.
    """
    config.training.require_plain_loss("the learning-rate range test")
    _check_schedule(start_lr, end_lr, num_iter)
    if threads < 1:
        raise LRAdvisorError(f"threads must be at least 1, but got {threads!r}.")
    model, X, y = _trial_model(config, seed)
    optimizer = make_optimizer(config, model, start_lr)
    schedule = _batch_schedule(config, len(y), num_iter, seed)
    loss_fn = loss_function(config.training)

    def train_step(step: int, lr: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, labels = (X, y) if schedule is None else (X[schedule[step]], y[schedule[step]])
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), labels)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run_range_test(
            train_step,
            start_lr=start_lr,
            end_lr=end_lr,
            num_iter=num_iter,
            smooth_f=smooth_f,
            diverge_th=diverge_th,
            skip_start=skip_start,
            skip_end=skip_end,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _check_schedule(start_lr: float, end_lr: float, num_iter: int) -> None:
    if not start_lr > 0.0:
        raise LRAdvisorError(f"start_lr must be positive, but got {start_lr!r}.")
    if not end_lr > start_lr:
        raise LRAdvisorError(
            f"end_lr must be greater than start_lr = {start_lr!r}, but got {end_lr!r}."
        )
    if num_iter < 2:
        raise LRAdvisorError(f"num_iter must be at least 2, but got {num_iter!r}.")


def _check_smoothing(smooth_f: float) -> None:
    if not 0.0 <= smooth_f < 1.0:
        raise LRAdvisorError(f"smooth_f must be in [0, 1), but got {smooth_f!r}.")


def _trial_model(
    config: ModelConfig, seed: int
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The module carrying seed ``seed``'s initial weights, and its training data."""
    from lradvisor.engine.dispatch import build_model

    model, data = build_model(config, seed)
    dtype = getattr(torch, config.training.dtype)
    return model, data.X.to(dtype), data.y


def _batch_schedule(config: ModelConfig, n: int, num_iter: int, seed: int) -> torch.Tensor | None:
    batch_size = config.training.batch_size
    if batch_size is None or batch_size >= n:
        return None
    return batch_indices(n, batch_size, num_iter, seed)
