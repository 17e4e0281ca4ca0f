"""The learning-rate range test: schedule, smoothing, stopping and suggestion rules, and
agreement with torch-lr-finder 0.2.2 (when installed) on the same model, data and batches."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lradvisor.engine.batched import batch_indices, run_sweep
from lradvisor.engine.models import build_mlp, initial_state, linear_layers
from lradvisor.errors import LRAdvisorError
from lradvisor.rangetest import (
    exponential_lrs,
    range_test,
    run_range_test,
    smooth_losses,
    steepest_point,
)

from conftest import make_config

EXACT = 1e-12


def test_exponential_schedule_is_exact():
    lrs = exponential_lrs(1e-7, 10.0, 100)
    expected = np.array([1e-7 * (10.0 / 1e-7) ** (i / 99) for i in range(100)])
    assert len(lrs) == 100
    np.testing.assert_allclose(lrs, expected, rtol=EXACT)
    assert lrs[0] == 1e-7
    np.testing.assert_allclose(lrs[-1], 10.0, rtol=EXACT)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], (1e8) ** (1 / 99), rtol=1e-10)


def test_smoothing_formula_on_a_synthetic_sequence():
    raw = [4.0, 2.0, 8.0, 0.0]
    # 4; 0.25·2 + 0.75·4 = 3.5; 0.25·8 + 0.75·3.5 = 4.625; 0.75·4.625 = 3.46875
    np.testing.assert_allclose(
        smooth_losses(raw, smooth_f=0.25), [4.0, 3.5, 4.625, 3.46875], rtol=EXACT
    )
    np.testing.assert_array_equal(smooth_losses(raw, smooth_f=0.0), raw)


def test_steepest_point_on_a_synthetic_curve():
    lrs = exponential_lrs(1e-5, 1.0, 60)
    index = np.arange(60, dtype=float)
    losses = 2.0 - np.tanh((index - 37.0) / 4.0)  # steepest descent at index 37
    suggested, rule = steepest_point(lrs, losses)
    assert rule == "steepest"
    assert suggested == lrs[37]


def test_steepest_point_ignores_the_skipped_ends():
    lrs = exponential_lrs(1e-4, 1.0, 40)
    losses = np.linspace(3.0, 1.0, 40)
    losses[2] -= 1.0  # steepest drop inside skip_start
    losses[37] -= 5.0  # and inside skip_end
    losses[20] -= 0.3  # the steepest point of the window [10, 35)
    assert steepest_point(lrs, losses)[0] == lrs[19]
    assert steepest_point(lrs, losses, skip_start=0, skip_end=0)[0] == lrs[36]


def test_too_few_points_fall_back_and_say_so():
    lrs = exponential_lrs(1e-4, 1.0, 8)
    losses = np.array([5.0, 4.0, 2.0, 1.5, 1.4, 1.3, 1.2, 1.1])  # np.gradient is −1.5 at 1
    suggested, rule = steepest_point(lrs, losses)
    assert rule.startswith("fallback: 8 iterations recorded, torch-lr-finder needs 17")
    assert suggested == lrs[1]
    with pytest.raises(LRAdvisorError, match=r"at least 2 finite losses .* got 1"):
        steepest_point(lrs[:2], [1.0, np.nan])


def test_early_stop_on_a_diverging_quadratic():
    # Gradient descent on ℓ(w) = λw²/2 multiplies w by (1 − ηλ): it diverges once ηλ > 2.
    curvature = 4.0
    weight = [1.0]

    def train_step(step: int, lr: float) -> float:
        loss = 0.5 * curvature * weight[0] ** 2
        weight[0] *= 1.0 - lr * curvature
        return loss

    result = run_range_test(train_step, start_lr=1e-3, end_lr=10.0, num_iter=100)
    # The same loss sequence by hand, and the first iteration past 5 × the best smoothed loss.
    rates, w, raw = exponential_lrs(1e-3, 10.0, 100), 1.0, []
    for lr in rates:
        raw.append(0.5 * curvature * w**2)
        w *= 1.0 - lr * curvature
    smoothed = smooth_losses(raw, smooth_f=0.05)
    stop = int(np.argmax(smoothed > 5.0 * np.minimum.accumulate(smoothed)))
    assert result.stopped_early
    assert result.n_iterations == stop + 1 < 100
    assert rates[stop] > 2.0 / curvature
    np.testing.assert_allclose(result.losses, smoothed[: stop + 1], rtol=EXACT)
    assert 1e-3 <= result.suggested_lr < 2.0 / curvature


def test_a_non_finite_loss_stops_the_test():
    def train_step(step: int, lr: float) -> float:
        return 1.0 / (step + 1) if step < 30 else float("nan")

    result = run_range_test(train_step, num_iter=100)
    assert result.stopped_early and result.n_iterations == 31
    assert np.isfinite(result.suggested_lr)


def test_range_test_on_a_config_suggests_inside_the_range_and_is_deterministic():
    # A linear network with MSE blows up once η passes its stability bound.
    config = make_config(model={"activation": "identity"}, training={"loss": "mse"})
    first = range_test(config, seed=3, start_lr=1e-5, end_lr=50.0, num_iter=60)
    again = range_test(config, seed=3, start_lr=1e-5, end_lr=50.0, num_iter=60)
    np.testing.assert_array_equal(first.raw_losses, again.raw_losses)
    assert first.stopped_early and first.n_iterations < 60
    best_before = np.minimum.accumulate(first.losses)
    assert first.losses[-1] > 5.0 * best_before[-1]
    assert (first.losses[:-1] <= 5.0 * best_before[:-1]).all()
    assert 1e-5 <= first.suggested_lr <= 50.0
    assert first.suggested_lr < first.lrs[-1]


@pytest.mark.parametrize("batch_size", [None, 16])
def test_first_loss_is_the_engines_initial_loss(batch_size):
    config = make_config(model={"bias": True}, training={"batch_size": batch_size})
    result = range_test(config, seed=5, num_iter=20)
    engine = run_sweep(config, lrs=[0.01], seeds=[5], steps=1)
    np.testing.assert_allclose(result.raw_losses[0], engine.initial_loss[0], rtol=1e-12)
    assert not result.stopped_early and result.n_iterations == 20


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"start_lr": 0.0}, "start_lr must be positive, but got 0.0"),
        ({"end_lr": 1e-8}, "end_lr must be greater than start_lr = 1e-07, but got 1e-08"),
        ({"num_iter": 1}, "num_iter must be at least 2, but got 1"),
        ({"smooth_f": 1.0}, r"smooth_f must be in \[0, 1\), but got 1.0"),
        ({"diverge_th": 0.5}, "diverge_th must be at least 1, but got 0.5"),
    ],
)
def test_arguments_out_of_range_name_the_limit_and_the_value(options, message):
    with pytest.raises(LRAdvisorError, match=message):
        run_range_test(lambda step, lr: 1.0, **options)


def test_threads_are_restored_and_bounded():
    config = make_config()
    before = torch.get_num_threads()
    range_test(config, seed=0, num_iter=20, threads=1)
    assert torch.get_num_threads() == before
    with pytest.raises(LRAdvisorError, match="threads must be at least 1, but got 0"):
        range_test(config, seed=0, threads=0)


def test_negative_skips_are_refused():
    with pytest.raises(LRAdvisorError, match="must be >= 0, but got -1 and 5"):
        steepest_point([1.0, 2.0], [1.0, 0.5], skip_start=-1)


@pytest.mark.parametrize(("loss", "batch_size", "momentum"), [("ce", None, 0.0), ("mse", 16, 0.9)])
def test_suggestion_equals_torch_lr_finder(loss, batch_size, momentum):
    """Same seed-0 initial weights, data, batches and optimiser in torch-lr-finder 0.2.2."""
    lr_finder = pytest.importorskip("torch_lr_finder")
    pyplot = pytest.importorskip("matplotlib.pyplot")
    config = make_config(
        training={"loss": loss, "batch_size": batch_size, "momentum": momentum},
    )
    ours = range_test(config, seed=0, start_lr=1e-5, end_lr=30.0, num_iter=60)

    state = initial_state(config, 0, None, dtype=torch.float64)
    data = state.data
    model = build_mlp(config.model, data.dim, data.classes).to(torch.float64)
    with torch.no_grad():
        for layer, weight in zip(linear_layers(model), state.weights, strict=True):
            layer.weight.copy_(weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=momentum)
    order = batch_indices(data.n, batch_size or data.n, 60, 0)

    class Batches(lr_finder.TrainDataLoaderIter):
        def __init__(self) -> None:
            self.step = 0

        def __next__(self):
            rows = order[self.step] if batch_size else slice(None)
            self.step += 1
            return data.X[rows], data.y[rows]

    def criterion(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if loss == "ce":
            return torch.nn.functional.cross_entropy(out, labels)
        target = torch.nn.functional.one_hot(labels, data.classes).to(out.dtype)
        return torch.nn.functional.mse_loss(out, target)

    finder = lr_finder.LRFinder(model, optimizer, criterion)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as range_test runs: same kernels, and no barrier stalls
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's scheduler warns about get_lr()
            finder.range_test(Batches(), start_lr=1e-5, end_lr=30.0, num_iter=60)
            figure, axes = pyplot.subplots()
            _, theirs = finder.plot(ax=axes, suggest_lr=True)
            pyplot.close(figure)
    finally:
        torch.set_num_threads(threads)

    assert len(finder.history["loss"]) == ours.n_iterations
    np.testing.assert_allclose(ours.losses, finder.history["loss"], rtol=1e-10)
    np.testing.assert_allclose(ours.lrs, finder.history["lr"], rtol=1e-12)
    assert ours.suggested_lr == pytest.approx(theirs, rel=1e-12)
