"""ConservationMonitor: the exact η²·S identity (docs/theory.md §2), its limits, and its manners."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from lradvisor.errors import LRAdvisorError
from lradvisor.measure.monitor import ConservationMonitor

IDENTITY_RTOL = 1e-9  # |direct − identity| ≤ 1e-9 · max(1, |direct|), float64 throughout
INPUT_DIM, CLASSES, N_SAMPLES, BATCH = 6, 3, 48, 16


def _mlp(depth: int, *, width: int = 12, bias: bool = False, activation=nn.ReLU, seed: int = 0):
    """``depth`` Linear layers (depth − 1 laws), float64, PyTorch default initialisation."""
    torch.manual_seed(seed)
    widths = [INPUT_DIM] + [width] * (depth - 1) + [CLASSES]
    layers: list[nn.Module] = []
    for index in range(depth):
        if index and activation is not None:
            layers.append(activation())
        layers.append(nn.Linear(widths[index], widths[index + 1], bias=bias))
    return nn.Sequential(*layers).double()


def _loss(kind: str, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if kind == "ce":
        return nn.functional.cross_entropy(outputs, labels)
    return nn.functional.mse_loss(outputs, nn.functional.one_hot(labels, CLASSES).double())


def _train(model, optimizer, monitor, *, steps, loss="ce", minibatch=False, scheduler=None):
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(N_SAMPLES, INPUT_DIM, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (N_SAMPLES,), generator=generator)
    for _ in range(steps):
        batch = (
            torch.randint(0, N_SAMPLES, (BATCH,), generator=generator) if minibatch else slice(None)
        )
        optimizer.zero_grad()
        _loss(loss, model(inputs[batch]), labels[batch]).backward()
        monitor.observe()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def _identity_residuals(reports) -> list[float]:
    """Scaled residual of every law and every unit; asserts the identity meets the bound."""
    residuals = []
    for report in reports:
        if not report.identity_holds:
            continue
        scale = max(1.0, abs(report.drift_direct))
        residuals.append(abs(report.drift_direct - report.drift_identity) / scale)
        unit_scale = np.maximum(1.0, np.abs(report.unit_drift_direct))
        unit_residual = np.abs(report.unit_drift_direct - report.unit_drift_identity) / unit_scale
        residuals.append(float(unit_residual.max()))
    assert residuals, "no law with an exact identity was reported"
    assert max(residuals) <= IDENTITY_RTOL, f"largest scaled residual {max(residuals):.3e}"
    return residuals


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("minibatch", [False, True], ids=["full-batch", "mini-batch"])
def test_identity_is_exact_for_bias_free_relu_nets(depth, loss, minibatch):
    model = _mlp(depth)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = ConservationMonitor(model, optimizer=optimizer)
    _train(model, optimizer, monitor, steps=200, loss=loss, minibatch=minibatch)

    reports = monitor.report()
    assert [r.name for r in reports] == [f"{2 * i}->{2 * i + 2}" for i in range(depth - 1)]
    assert all(r.identity_holds and not r.bias_aware for r in reports)
    _identity_residuals(reports)
    # The identity is not vacuous: the laws did drift, far above round-off.
    assert max(abs(r.drift_direct) for r in reports) > 1e-5
    assert monitor.steps == 200


@pytest.mark.parametrize(
    "activation",
    [lambda: nn.LeakyReLU(0.2), nn.Identity, None],
    ids=["leaky0.2", "Identity", "none"],
)
def test_identity_is_exact_for_other_homogeneous_activations(activation):
    model = _mlp(3, activation=activation)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = ConservationMonitor(model, optimizer=optimizer)
    _train(model, optimizer, monitor, steps=200, loss="mse", minibatch=True)
    reports = monitor.report()
    assert len(reports) == 2
    _identity_residuals(reports)
    assert max(abs(r.drift_direct) for r in reports) > 1e-6


def test_identity_check_can_fail_when_the_step_uses_another_rate():
    model = _mlp(2)
    monitor = ConservationMonitor(model, lr=0.1)
    inputs = torch.randn(N_SAMPLES, INPUT_DIM, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (N_SAMPLES,))
    for _ in range(50):
        model.zero_grad()
        _loss("ce", model(inputs), labels).backward()
        monitor.observe()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= 0.12 * parameter.grad  # not the rate the monitor was told
    (report,) = monitor.report()
    assert abs(report.drift_direct - report.drift_identity) > 1e3 * IDENTITY_RTOL


def test_hand_written_gradient_descent_with_lr():
    model = _mlp(3)
    monitor = ConservationMonitor(model, lr=0.1)
    inputs = torch.randn(N_SAMPLES, INPUT_DIM, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (N_SAMPLES,))
    for _ in range(100):
        model.zero_grad()
        _loss("ce", model(inputs), labels).backward()
        monitor.observe()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= 0.1 * parameter.grad
    _identity_residuals(monitor.report())


def test_biased_net_bias_aware_law_holds_and_bias_free_formula_differs_by_bias_norm():
    model = _mlp(3, bias=True)
    initial_bias_norms = [float(model[i].bias.detach().square().sum()) for i in (0, 2)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = ConservationMonitor(model, optimizer=optimizer)
    _train(model, optimizer, monitor, steps=200, minibatch=True)

    reports = monitor.report()
    assert [r.name for r in reports] == ["0->2", "0->2:bias-free", "2->4", "2->4:bias-free"]
    aware = [r for r in reports if r.bias_aware]
    free = [r for r in reports if r.name.endswith(":bias-free")]
    _identity_residuals(aware)
    for index, (bias_aware, bias_free) in enumerate(zip(aware, free, strict=True)):
        assert not bias_free.identity_holds and math.isnan(bias_free.drift_identity)
        assert np.isnan(bias_free.unit_drift_identity).all()
        bias_growth = (
            float(model[2 * index].bias.detach().square().sum()) - initial_bias_norms[index]
        )
        assert bias_free.drift_direct - bias_aware.drift_direct == pytest.approx(
            bias_growth, rel=1e-9
        )


def _biased_drifts(lr: float, steps: int) -> tuple[float, float, float]:
    """(bias-aware drift, its identity residual, bias-free drift) of a 6-16-3 net, full batch."""
    model = _mlp(2, width=16, bias=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = ConservationMonitor(model, optimizer=optimizer)
    _train(model, optimizer, monitor, steps=steps)
    aware, free = monitor.report()
    return aware.drift_direct, abs(aware.drift_direct - aware.drift_identity), free.drift_direct


def test_bias_free_drift_is_order_eta_per_step_and_order_one_at_fixed_time():
    """Bias-free drift = bias-aware drift + Δ‖b_A‖², and Δ‖b_A‖² ≈ −2η Σ_t b·g_b.

    At fixed T and small ηT the bias-free drift is O(η) (halving η halves it) while the
    bias-aware one is O(η²). At fixed ηT (the same training time) the bias-aware drift is
    O(η) but the bias-free one tends to the gradient-flow change of ‖b_A‖², which does not
    vanish as η → 0: there the bias-free formula is wrong by an O(1) amount.
    """
    fixed_steps = [_biased_drifts(lr, 100) for lr in (0.002, 0.001)]
    fixed_time = [_biased_drifts(lr, round(2.0 / lr)) for lr in (0.005, 0.0025)]
    for aware, residual, _ in fixed_steps + fixed_time:
        assert residual <= IDENTITY_RTOL * max(1.0, abs(aware))

    (aware_big, _, free_big), (aware_small, _, free_small) = fixed_steps
    assert free_big / free_small == pytest.approx(2.0, rel=0.1)
    assert aware_big / aware_small > 3.0
    assert abs(free_small) > 50 * abs(aware_small)
    (aware_big, _, free_big), (aware_small, _, free_small) = fixed_time
    assert aware_big / aware_small == pytest.approx(2.0, rel=0.1)
    assert free_big / free_small == pytest.approx(1.0, abs=0.1)
    assert abs(free_small) > 10 * abs(aware_small)


def test_step_lr_schedule_keeps_the_identity():
    model = _mlp(3, bias=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=40, gamma=0.5)
    monitor = ConservationMonitor(model, optimizer=optimizer)
    _train(model, optimizer, monitor, steps=200, minibatch=True, scheduler=scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 / 32)
    _identity_residuals(monitor.report())


@pytest.mark.parametrize(
    ("make_optimizer", "expected"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), r"SGD \(momentum=0.9\)"),
        (lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=1e-3), r"weight_decay=0.001"),
        (lambda p: torch.optim.Adam(p, lr=1e-3), r"optimizer Adam breaks"),
        (lambda p: torch.optim.AdamW(p, lr=1e-3), r"optimizer AdamW breaks"),
    ],
    ids=["momentum", "weight-decay", "adam", "adamw"],
)
def test_optimizers_that_break_the_identity_report_direct_drift_only(make_optimizer, expected):
    model = _mlp(3, bias=True)
    optimizer = make_optimizer(model.parameters())
    with pytest.warns(UserWarning, match=expected):
        monitor = ConservationMonitor(model, optimizer=optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, at construction only
        _train(model, optimizer, monitor, steps=30)
        reports = monitor.report()
    assert not monitor.identity_holds
    for report in reports:
        assert not report.identity_holds
        assert math.isnan(report.drift_identity)
        assert math.isfinite(report.drift_direct) and report.drift_direct != 0.0
        assert np.isnan(report.unit_drift_identity).all()
    assert any("reporting the direct drift C(T) − C(0) only" in n for n in reports[0].notes)
    assert "breaks the η²·S identity" in monitor.summary()
    # the η²·S sum would never be reported, so observe() only counts the step: it reads
    # no gradient (the Optuna plugin's per-step cost for such optimizers)
    assert monitor.steps == 30
    for parameter in model.parameters():
        parameter.grad = None
    monitor.observe()
    assert monitor.steps == 31


def test_no_optimizer_and_no_lr_reports_direct_drift_only():
    model = _mlp(2)
    with pytest.warns(UserWarning, match="no optimizer or lr"):
        monitor = ConservationMonitor(model)
    assert not monitor.identity_holds


def test_parameters_stepped_at_different_rates_break_that_law_only():
    model = _mlp(3)
    optimizer = torch.optim.SGD(
        [
            {"params": [model[0].weight, model[2].weight]},
            {"params": [model[4].weight], "lr": 0.05},
        ],
        lr=0.1,
    )
    monitor = ConservationMonitor(model, optimizer=optimizer)
    _train(model, optimizer, monitor, steps=50)
    first, second = monitor.report()
    assert first.identity_holds
    _identity_residuals([first])
    assert not second.identity_holds and math.isnan(second.drift_identity)
    assert any("different learning rates" in note for note in second.notes)


def test_observing_after_the_step_is_detected():
    model = _mlp(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = ConservationMonitor(model, optimizer=optimizer)
    inputs = torch.randn(N_SAMPLES, INPUT_DIM, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (N_SAMPLES,))
    for _ in range(5):
        optimizer.zero_grad()
        _loss("ce", model(inputs), labels).backward()
        optimizer.step()
        monitor.observe()
    (report,) = monitor.report()
    assert not report.identity_holds and math.isnan(report.drift_identity)
    assert any("exactly once before each optimizer.step()" in n for n in report.notes)


def test_observe_without_gradients_raises():
    model = _mlp(2)
    monitor = ConservationMonitor(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(LRAdvisorError, match=r"after loss.backward\(\)"):
        monitor.observe()


def test_reset_starts_again_from_current_weights():
    model = _mlp(3, bias=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = ConservationMonitor(model, optimizer=optimizer)
    _train(model, optimizer, monitor, steps=20)
    c_before_reset = monitor.report()[0].c_final
    monitor.reset()
    assert monitor.steps == 0
    first = monitor.report()[0]
    assert first.drift_direct == 0.0 and first.drift_identity == 0.0
    assert first.c_initial == pytest.approx(c_before_reset, rel=1e-12)
    _train(model, optimizer, monitor, steps=30, minibatch=True)
    _identity_residuals(monitor.report())


def test_per_unit_false_leaves_arrays_out():
    model = _mlp(2, bias=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = ConservationMonitor(model, optimizer=optimizer, per_unit=False)
    _train(model, optimizer, monitor, steps=5)
    for report in monitor.report():
        assert report.unit_drift_direct is None and report.unit_drift_identity is None


def test_trajectory_tracks_the_identity_at_every_read():
    model = _mlp(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = ConservationMonitor(model, optimizer=optimizer, track_every=25)
    _train(model, optimizer, monitor, steps=100, minibatch=True)
    trajectory = monitor.trajectory()
    assert set(trajectory) == {"0->2", "2->4"}
    for columns in trajectory.values():
        np.testing.assert_array_equal(columns["step"], [0, 25, 50, 75, 100])
        assert columns["drift_direct"][0] == 0.0
        np.testing.assert_allclose(
            columns["drift_identity"], columns["drift_direct"], rtol=0, atol=IDENTITY_RTOL
        )


def test_float32_model_accumulates_in_float64():
    model = _mlp(3, width=32).float()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = ConservationMonitor(model, optimizer=optimizer)
    inputs = torch.randn(N_SAMPLES, INPUT_DIM)
    labels = torch.randint(0, CLASSES, (N_SAMPLES,))
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        monitor.observe()
        optimizer.step()
    for report in monitor.report():
        # Float32 weight updates round at ~1e-7 of ‖W‖²; the identity stays within that.
        assert report.drift_identity == pytest.approx(report.drift_direct, rel=1e-2, abs=1e-5)
        assert report.unit_drift_identity.dtype == np.float64


def test_no_law_raises_with_what_was_skipped():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    with pytest.raises(
        LRAdvisorError, match=r"no rescaling-symmetric .* in Sequential; skipped: .*GELU"
    ):
        ConservationMonitor(model, lr=0.1)
    monitor = ConservationMonitor(model, lr=0.1, allow_empty=True)
    assert monitor.report() == []
    assert "0 law(s)" in monitor.summary()


def test_summary_names_laws_and_skipped_parts():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 8, bias=False)
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.norm(self.fc2(torch.relu(self.fc1(x)))))

    model = Net()
    monitor = ConservationMonitor(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    text = monitor.summary()
    assert "fc1->fc2 [ReLU, bias-aware]" in text
    assert "norm (LayerNorm: normalisation" in text
    assert "η²·S identity applies" in text
    assert [name for name, _ in monitor.skipped] == ["norm", "head"]
    notes = monitor.report()[0].notes
    assert any(note.startswith("skipped norm: LayerNorm") for note in notes)


def test_argument_limits():
    model = _mlp(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(LRAdvisorError, match="not both"):
        ConservationMonitor(model, optimizer=optimizer, lr=0.1)
    with pytest.raises(LRAdvisorError, match=r"lr must be a finite positive number, but got -1"):
        ConservationMonitor(model, lr=-1.0)
    with pytest.raises(LRAdvisorError, match="track_every must be a positive integer, but got 0"):
        ConservationMonitor(model, lr=0.1, track_every=0)
