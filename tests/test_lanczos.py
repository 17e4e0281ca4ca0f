"""Lanczos sharpness against dense references (torch.func.hessian, explicit matrices)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lradvisor.errors import LRAdvisorError
from lradvisor.measure.hessian import dense_spectrum, mlp_loss_function
from lradvisor.measure.lanczos import (
    hessian_operator,
    lanczos,
    preconditioned_sharpness,
    sharpness,
    top_eigenpairs,
)

EIGENVALUE_RTOL = 1e-2  # the brief's accuracy target for λ against a dense reference
HVP_RTOL = 1e-10
CHUNK_RTOL = 1e-12
HVP_BUDGET = 40


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: a second intra-op thread buys nothing, and on a shared
    # machine its OpenMP barriers made this file ~100x slower (20 s vs 0.2 s per test).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs - targets) ** 2).mean()


def mlp(widths: list[int], *, bias: bool, seed: int, activation=nn.ReLU) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for index in range(len(widths) - 1):
        if index:
            layers.append(activation())
        layers.append(nn.Linear(widths[index], widths[index + 1], bias=bias))
    return nn.Sequential(*layers).double()


def gaussian_data(n: int, dim: int, classes: int, *, loss: str, seed: int):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=generator)
    if loss == "ce":
        return inputs, labels
    return inputs, F.one_hot(labels, classes).double()


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def flat_loss(model: nn.Module, inputs, targets, loss_fn):
    """The full-data loss as a function of one flat vector in model.parameters() order."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = [part.view(shape) for part, shape in zip(theta.split(sizes), shapes, strict=True)]
        outputs = torch.func.functional_call(model, dict(zip(names, parts, strict=True)), (inputs,))
        return loss_fn(outputs, targets)

    return loss


def dense_hessian(model: nn.Module, inputs, targets, loss_fn) -> torch.Tensor:
    hessian = torch.func.hessian(flat_loss(model, inputs, targets, loss_fn))(flat_parameters(model))
    return 0.5 * (hessian + hessian.T)


def dense_gauss_newton(model: nn.Module, inputs, output_loss: str) -> torch.Tensor:
    """(1/n) Σ_i J_iᵀ H_out,i J_i from the explicit Jacobian of the outputs."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def outputs_of(theta: torch.Tensor) -> torch.Tensor:
        parts = [part.view(shape) for part, shape in zip(theta.split(sizes), shapes, strict=True)]
        return torch.func.functional_call(model, dict(zip(names, parts, strict=True)), (inputs,))

    theta = flat_parameters(model)
    jacobian = torch.func.jacrev(outputs_of)(theta)  # (n, K, P)
    n, classes = jacobian.shape[:2]
    if output_loss == "mse":
        return 2.0 / (n * classes) * torch.einsum("nkp,nkq->pq", jacobian, jacobian)
    p = torch.softmax(outputs_of(theta), dim=1)
    output_hessian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nkp,nkl,nlq->pq", jacobian, output_hessian, jacobian) / n


def descending_eigenvalues(matrix: torch.Tensor) -> np.ndarray:
    return torch.linalg.eigvalsh(matrix).flip(0).numpy()


def relative_error(approx, exact) -> np.ndarray:
    return np.abs(np.asarray(approx) - np.asarray(exact)) / np.abs(np.asarray(exact))


class ResidualNet(nn.Module):
    """A user-style model: input layer, residual block x + fc2(relu(fc1(x))), head."""

    def __init__(self, dim: int, width: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(x))
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h)


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=3)
        self.head = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


MLP_CASES = [
    pytest.param([8, 20, 20, 4], False, "ce", id="relu-nobias-ce"),
    pytest.param([8, 20, 20, 4], True, "ce", id="relu-bias-ce"),
    pytest.param([10, 32, 3], True, "mse", id="relu-bias-mse"),
    pytest.param([10, 32, 3], False, "mse", id="relu-nobias-mse"),
]


@pytest.mark.parametrize(("widths", "bias", "loss"), MLP_CASES)
def test_top_eigenvalues_match_dense_hessian(widths, bias, loss):
    model = mlp(widths, bias=bias, seed=3)
    inputs, targets = gaussian_data(96, widths[0], widths[-1], loss=loss, seed=4)
    loss_fn = F.cross_entropy if loss == "ce" else mse
    exact = descending_eigenvalues(dense_hessian(model, inputs, targets, loss_fn))

    top = top_eigenpairs(model, [(inputs, targets)], loss_fn, k=1)
    assert top.n_hvp <= HVP_BUDGET
    assert relative_error(top.lambda_max, exact[0]) < EIGENVALUE_RTOL

    top3 = top_eigenpairs(model, [(inputs, targets)], loss_fn, k=3)
    assert top3.n_hvp <= HVP_BUDGET
    assert top3.eigenvectors.shape == (sum(p.numel() for p in model.parameters()), 3)
    np.testing.assert_array_less(relative_error(top3.eigenvalues, exact[:3]), EIGENVALUE_RTOL)


def test_sharpness_matches_the_projects_dense_mlp_reference():
    """A second, independent reference: lradvisor.measure.hessian on a bias-free MLP."""
    model = mlp([8, 20, 20, 3], bias=False, seed=11)
    inputs, labels = gaussian_data(64, 8, 3, loss="ce", seed=12)
    reference = mlp_loss_function(
        [p.shape for p in model.parameters()],
        inputs,
        labels,
        classes=3,
        activation="relu",
        negative_slope=0.0,
        loss="ce",
        has_bias=False,
    )
    exact = dense_spectrum(reference, flat_parameters(model)).lambda_max
    assert relative_error(sharpness(model, [(inputs, labels)], F.cross_entropy), exact) < 1e-3


def test_ritz_vector_is_an_eigenvector_of_the_hessian():
    model = mlp([10, 24, 24, 4], bias=True, seed=5)
    inputs, labels = gaussian_data(80, 10, 4, loss="ce", seed=6)
    hessian = dense_hessian(model, inputs, labels, F.cross_entropy)
    top = top_eigenpairs(model, [(inputs, labels)], F.cross_entropy, k=2, tol=1e-4)
    for value, vector in zip(top.eigenvalues, top.eigenvectors.T, strict=True):
        vector = torch.from_numpy(vector)
        residual = torch.linalg.vector_norm(hessian @ vector - value * vector)
        assert residual <= 1e-3 * abs(value)


@pytest.mark.parametrize("bias", [False, True])
def test_matvec_equals_dense_hessian_product(bias):
    model = mlp([6, 16, 16, 3], bias=bias, seed=7)
    inputs, labels = gaussian_data(50, 6, 3, loss="ce", seed=8)
    hessian = dense_hessian(model, inputs, labels, F.cross_entropy)
    operator = hessian_operator(model, [(inputs, labels)], F.cross_entropy)
    v = torch.randn(operator.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    product = operator.matvec(v)
    assert product.dtype == torch.float64
    assert operator.n_calls == 1
    expected = hessian @ v
    assert torch.linalg.vector_norm(product - expected) <= HVP_RTOL * torch.linalg.vector_norm(
        expected
    )


def test_chunked_products_equal_one_chunk():
    model = mlp([6, 16, 16, 3], bias=True, seed=9)
    inputs, labels = gaussian_data(60, 6, 3, loss="ce", seed=10)
    # Unequal chunks: a plain mean of chunk means would weight them wrongly.
    chunks = [(inputs[a:b], labels[a:b]) for a, b in ((0, 20), (20, 37), (37, 60))]
    whole = hessian_operator(model, [(inputs, labels)], F.cross_entropy)
    split = hessian_operator(model, chunks, F.cross_entropy)
    v = torch.randn(whole.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for one, three in (
        (whole.matvec(v), split.matvec(v)),
        (whole.gradient(), split.gradient()),
    ):
        assert torch.linalg.vector_norm(one - three) <= CHUNK_RTOL * torch.linalg.vector_norm(one)
    assert split.loss() == pytest.approx(whole.loss(), rel=CHUNK_RTOL)
    assert whole.loss() == pytest.approx(F.cross_entropy(model(inputs), labels).item(), rel=1e-14)


def test_gradient_matches_autograd_and_flat_layout_round_trips():
    model = mlp([5, 8, 2], bias=True, seed=1)
    inputs, labels = gaussian_data(30, 5, 2, loss="ce", seed=2)
    operator = hessian_operator(model, [(inputs, labels)], F.cross_entropy)
    expected = torch.func.grad(flat_loss(model, inputs, labels, F.cross_entropy))(
        flat_parameters(model)
    )
    torch.testing.assert_close(operator.gradient(), expected, rtol=1e-12, atol=0)
    parts = operator.unflatten(expected)
    assert [p.shape for p in parts] == [p.shape for p in model.parameters()]
    torch.testing.assert_close(operator.flatten(parts), expected, rtol=0, atol=0)
    with pytest.raises(LRAdvisorError, match=f"expected a flat vector of {operator.dim} entries"):
        operator.unflatten(expected[:-1])


@pytest.mark.parametrize(("output_loss", "loss"), [("ce", "ce"), ("mse", "mse")])
def test_gauss_newton_product_equals_dense(output_loss, loss):
    model = mlp([5, 12, 3], bias=True, seed=13)
    inputs, targets = gaussian_data(40, 5, 3, loss=loss, seed=14)
    loss_fn = F.cross_entropy if loss == "ce" else mse
    expected_matrix = dense_gauss_newton(model, inputs, output_loss)
    chunks = [(inputs[:15], targets[:15]), (inputs[15:], targets[15:])]
    operator = hessian_operator(
        model, chunks, loss_fn, kind="gauss_newton", output_loss=output_loss
    )
    v = torch.randn(operator.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = expected_matrix @ v
    error = torch.linalg.vector_norm(operator.matvec(v) - expected)
    assert error <= HVP_RTOL * torch.linalg.vector_norm(expected)


def test_gauss_newton_equals_hessian_for_a_model_linear_in_its_parameters():
    """Softmax regression: the outputs are linear in θ, so G = H exactly."""
    model = mlp([6, 4], bias=True, seed=15)
    inputs, labels = gaussian_data(50, 6, 4, loss="ce", seed=16)
    data = [(inputs, labels)]
    hessian = hessian_operator(model, data, F.cross_entropy)
    gauss_newton = hessian_operator(
        model, data, F.cross_entropy, kind="gauss_newton", output_loss="ce"
    )
    v = torch.randn(hessian.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(gauss_newton.matvec(v), hessian.matvec(v), rtol=1e-12, atol=1e-14)


def test_gauss_newton_of_linear_network_is_positive_semidefinite():
    model = mlp([6, 10, 3], bias=False, seed=17, activation=nn.Identity)
    inputs, targets = gaussian_data(40, 6, 3, loss="mse", seed=18)
    matrix = dense_gauss_newton(model, inputs, "mse")
    assert descending_eigenvalues(matrix)[-1] >= -1e-12
    top = top_eigenpairs(
        model, [(inputs, targets)], mse, kind="gauss_newton", output_loss="mse", tol=1e-5
    )
    assert top.lambda_max >= 0
    assert relative_error(top.lambda_max, descending_eigenvalues(matrix)[0]) < 1e-6
    vector = torch.from_numpy(top.eigenvectors[:, 0])
    residual = torch.linalg.vector_norm(matrix @ vector - top.lambda_max * vector)
    assert residual <= 1e-4 * top.lambda_max


def test_gauss_newton_lower_bounds_relu_hessian_sharpness_sensibly():
    """For MSE on a ReLU net, G differs from H; both top eigenvalues match their own dense."""
    model = mlp([6, 16, 3], bias=True, seed=19)
    inputs, targets = gaussian_data(60, 6, 3, loss="mse", seed=20)
    data = [(inputs, targets)]
    gauss_newton = top_eigenpairs(model, data, mse, kind="gauss_newton", output_loss="mse")
    exact = descending_eigenvalues(dense_gauss_newton(model, inputs, "mse"))[0]
    assert relative_error(gauss_newton.lambda_max, exact) < EIGENVALUE_RTOL
    assert gauss_newton.n_hvp <= HVP_BUDGET


def test_residual_module_with_biases():
    model = ResidualNet(dim=7, width=16, classes=3).double()
    torch.manual_seed(21)
    inputs, labels = gaussian_data(64, 7, 3, loss="ce", seed=22)
    chunks = [(inputs[:32], labels[:32]), (inputs[32:], labels[32:])]
    hessian = dense_hessian(model, inputs, labels, F.cross_entropy)
    operator = hessian_operator(model, chunks, F.cross_entropy)
    v = torch.randn(operator.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = hessian @ v
    assert torch.linalg.vector_norm(operator.matvec(v) - expected) <= HVP_RTOL * (
        torch.linalg.vector_norm(expected)
    )
    top = top_eigenpairs(model, chunks, F.cross_entropy, k=3)
    assert top.n_hvp <= HVP_BUDGET
    np.testing.assert_array_less(
        relative_error(top.eigenvalues, descending_eigenvalues(hessian)[:3]), EIGENVALUE_RTOL
    )


def test_convolutional_module():
    torch.manual_seed(23)
    model = TinyConvNet().double()
    generator = torch.Generator().manual_seed(24)
    inputs = torch.randn(30, 1, 6, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (30,), generator=generator)
    hessian = dense_hessian(model, inputs, labels, F.cross_entropy)
    top = top_eigenpairs(model, [(inputs, labels)], F.cross_entropy)
    assert relative_error(top.lambda_max, descending_eigenvalues(hessian)[0]) < EIGENVALUE_RTOL


def test_params_subset_and_float32_model():
    model = mlp([6, 16, 3], bias=True, seed=25)
    inputs, labels = gaussian_data(40, 6, 3, loss="ce", seed=26)
    last = list(model[-1].parameters())
    operator = hessian_operator(model, [(inputs, labels)], F.cross_entropy, params=last)
    assert operator.dim == 16 * 3 + 3
    full = dense_hessian(model, inputs, labels, F.cross_entropy)
    block = full[-operator.dim :, -operator.dim :]  # the last layer sits last in the flat layout
    v = torch.randn(operator.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(operator.matvec(v), block @ v, rtol=1e-10, atol=1e-13)

    single = hessian_operator(model.float(), [(inputs.float(), labels)], F.cross_entropy)
    assert single.matvec(torch.ones(single.dim, dtype=torch.float64)).dtype == torch.float32
    spectrum = lanczos(single.matvec, single.dim)
    assert relative_error(spectrum.lambda_max, descending_eigenvalues(full)[0]) < 1e-3


def test_operator_argument_errors():
    model = mlp([4, 3], bias=True, seed=0)
    data = [gaussian_data(10, 4, 3, loss="ce", seed=0)]
    with pytest.raises(LRAdvisorError, match="kind must be one of"):
        hessian_operator(model, data, F.cross_entropy, kind="fisher")
    with pytest.raises(LRAdvisorError, match="needs output_loss in"):
        hessian_operator(model, data, F.cross_entropy, kind="gauss_newton")
    with pytest.raises(LRAdvisorError, match="only used with kind='gauss_newton'"):
        hessian_operator(model, data, F.cross_entropy, output_loss="ce")
    with pytest.raises(LRAdvisorError, match="at least one"):
        hessian_operator(model, [], F.cross_entropy)


# Lanczos on explicit matrices ------------------------------------------------------------


def symmetric_with_spectrum(eigenvalues: list[float] | torch.Tensor, *, seed: int) -> torch.Tensor:
    values = torch.as_tensor(eigenvalues, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(
        torch.randn(len(values), len(values), generator=generator, dtype=torch.float64)
    )
    matrix = basis @ torch.diag(values) @ basis.T
    return 0.5 * (matrix + matrix.T)


def test_lanczos_is_algebraic_not_by_magnitude():
    bulk = torch.linspace(-3.0, 3.0, 195, dtype=torch.float64)
    spectrum = torch.cat([torch.tensor([10.0, 8.0, 6.0, -20.0, -15.0]), bulk])
    matrix = symmetric_with_spectrum(spectrum, seed=0)
    result = lanczos(lambda v: matrix @ v, 200, k=3, max_iter=60, tol=1e-6)
    assert result.tolerance <= 1e-6
    np.testing.assert_allclose(result.eigenvalues, [10.0, 8.0, 6.0], rtol=1e-6)
    for value, vector in zip(result.eigenvalues, result.eigenvectors.T, strict=True):
        vector = torch.from_numpy(vector)
        assert torch.linalg.vector_norm(matrix @ vector - value * vector) <= 2e-6 * abs(value)


def test_lanczos_repeated_eigenvalue_below_the_top():
    spectrum = [7.0, 5.0] + [2.0] * 50 + [-1.0] * 48
    matrix = symmetric_with_spectrum(spectrum, seed=1)
    result = lanczos(lambda v: matrix @ v, 100, k=3, tol=1e-8)
    np.testing.assert_allclose(result.eigenvalues, [7.0, 5.0, 2.0], rtol=1e-8)


def test_lanczos_repeated_top_eigenvalue_returns_a_vector_in_its_eigenspace():
    diagonal = torch.cat(
        [torch.tensor([4.0, 4.0, 4.0]), torch.linspace(-2.0, 2.0, 97, dtype=torch.float64)]
    )
    result = lanczos(lambda v: diagonal * v, 100, tol=1e-8)
    assert result.lambda_max == pytest.approx(4.0, rel=1e-8)
    vector = result.eigenvectors[:, 0]
    assert np.linalg.norm(vector[:3]) == pytest.approx(1.0, abs=1e-6)


def test_lanczos_breakdown_restarts_to_find_multiplicities():
    """Three distinct eigenvalues: the Krylov space is invariant after 3 products."""
    diagonal = torch.tensor([5.0, -1.0, 5.0, 2.0, 5.0, 2.0], dtype=torch.float64)
    result = lanczos(lambda v: diagonal * v, 6, k=4)
    np.testing.assert_allclose(result.eigenvalues, [5.0, 5.0, 5.0, 2.0], rtol=1e-12)
    assert result.n_hvp == 6
    assert result.tolerance < 1e-12
    gram = result.eigenvectors.T @ result.eigenvectors
    np.testing.assert_allclose(gram, np.eye(4), atol=1e-12)


def test_lanczos_stops_at_breakdown_when_the_complement_adds_nothing():
    """Rank 2 in dimension 50: two products span the range, the probe finds only zeros."""
    generator = torch.Generator().manual_seed(2)
    factors = torch.randn(50, 2, generator=generator, dtype=torch.float64)
    matrix = factors @ factors.T
    result = lanczos(lambda v: matrix @ v, 50, k=2)
    np.testing.assert_allclose(result.eigenvalues, descending_eigenvalues(matrix)[:2], rtol=1e-12)
    assert result.n_hvp <= 4


def test_lanczos_is_deterministic_for_a_seed():
    matrix = symmetric_with_spectrum(torch.linspace(-1.0, 1.0, 80) ** 3, seed=3)
    first = lanczos(lambda v: matrix @ v, 80, k=2, seed=7)
    second = lanczos(lambda v: matrix @ v, 80, k=2, seed=7)
    other = lanczos(lambda v: matrix @ v, 80, k=2, seed=8)
    np.testing.assert_array_equal(first.eigenvalues, second.eigenvalues)
    np.testing.assert_array_equal(first.eigenvectors, second.eigenvectors)
    assert first.n_hvp == second.n_hvp
    assert not np.array_equal(first.eigenvectors, other.eigenvectors)


def test_lanczos_stops_early_on_an_easy_matrix():
    diagonal = torch.cat(
        [torch.tensor([100.0]), torch.linspace(0.0, 1.0, 499, dtype=torch.float64)]
    )
    calls = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return diagonal * v

    result = lanczos(matvec, 500, max_iter=40, tol=1e-3)
    assert result.n_hvp == len(calls) < 10
    assert result.tolerance <= 1e-3
    assert result.lambda_max == pytest.approx(100.0, rel=1e-6)


def test_lanczos_never_exceeds_max_iter_and_reports_the_residual_reached():
    clustered = 1.0 + 1e-3 * torch.linspace(0.0, 1.0, 400, dtype=torch.float64)
    result = lanczos(lambda v: clustered * v, 400, k=2, max_iter=15, tol=1e-12)
    assert result.n_hvp == 15
    assert result.tolerance > 1e-12
    assert result.eigenvalues.shape == (2,)
    assert np.all(np.diff(result.eigenvalues) <= 0)


def test_lanczos_float32_basis():
    matrix = symmetric_with_spectrum([3.0, 1.0] + [0.1] * 48, seed=4)
    result = lanczos(lambda v: matrix.float() @ v, 50, dtype=torch.float32)
    assert result.eigenvectors.dtype == np.float64
    assert result.lambda_max == pytest.approx(3.0, rel=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be between 1 and dim=5 inclusive, but got 0"),
        ({"k": 6}, "k must be between 1 and dim=5 inclusive, but got 6"),
        ({"k": 3, "max_iter": 2}, "max_iter must be at least k=3, but got 2"),
        ({"tol": 0.0}, "tol must be positive, but got 0.0"),
    ],
)
def test_lanczos_argument_errors(kwargs, message):
    with pytest.raises(LRAdvisorError, match=message):
        lanczos(lambda v: v, 5, **kwargs)


def test_k_larger_than_needed_iterations_on_a_tiny_matrix():
    diagonal = torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64)
    result = lanczos(lambda v: diagonal * v, 3, k=3, max_iter=40)
    np.testing.assert_allclose(result.eigenvalues, [3.0, 1.0, -2.0], rtol=1e-12)
    assert result.n_hvp == 3


# Adam-preconditioned sharpness (experimental) ---------------------------------------------


def test_preconditioned_sharpness_matches_dense():
    model = mlp([6, 12, 3], bias=True, seed=27)
    inputs, labels = gaussian_data(40, 6, 3, loss="ce", seed=28)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    hessian = dense_hessian(model, inputs, labels, F.cross_entropy)
    v_hat = torch.cat(
        [optimizer.state[p]["exp_avg_sq"].reshape(-1) / (1 - 0.99**3) for p in model.parameters()]
    )
    scale = (0.01 / (v_hat.sqrt() + 1e-8)).sqrt()
    expected = descending_eigenvalues(scale[:, None] * hessian * scale[None, :])[0]
    measured = preconditioned_sharpness(model, [(inputs, labels)], F.cross_entropy, optimizer)
    assert relative_error(measured, expected) < EIGENVALUE_RTOL


def test_preconditioned_sharpness_needs_optimizer_state():
    model = mlp([4, 3], bias=True, seed=0)
    data = [gaussian_data(10, 4, 3, loss="ce", seed=0)]
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(LRAdvisorError, match=r"call optimizer.step\(\) at least once"):
        preconditioned_sharpness(model, data, F.cross_entropy, optimizer)
