"""Lanczos sharpness: accuracy against dense Hessians, and cost at a million parameters.

(a) Small models (float64, random Gaussian data, full batch): λ_max and the top three
    eigenvalues from ``top_eigenpairs`` against ``torch.linalg.eigvalsh`` of the dense
    Hessian built by ``torch.func.hessian``; relative errors, products used, wall time.
(b) An MLP 784 → 1024 → 256 → 10 with biases (1,068,810 parameters, float32, the
    usual training dtype) on n = 2048 random samples in chunks of 512, cross-entropy:
    time to λ_max (k = 1, tol 1e-3, float64 Krylov basis), products used, the Krylov
    basis size and the process peak resident memory (``ru_maxrss``) before and after
    (this case runs first, so the peak is its own);
    plus the time of one Hessian and one Gauss–Newton product. No dense Hessian is
    formed (it would be 1,068,810² × 4 bytes ≈ 4.6 TB).

    python benchmarks/bench_lanczos.py [--json] [--skip-large]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from torch import nn
from torch.nn import functional as F

from lradvisor.measure.lanczos import hessian_operator, lanczos, top_eigenpairs

LARGE_WIDTHS = (784, 1024, 256, 10)
LARGE_SAMPLES = 2048
LARGE_CHUNK = 512
TOL = 1e-3
MAX_ITER = 40
PRODUCT_REPEATS = 3


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs - targets) ** 2).mean()


class _ResidualNet(nn.Module):
    def __init__(self, dim: int, width: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(x))
        return self.head(h + self.fc2(torch.relu(self.fc1(h))))


def _mlp(widths: tuple[int, ...], *, bias: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(len(widths) - 1):
        if index:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(widths[index], widths[index + 1], bias=bias))
    return nn.Sequential(*layers)


def _small_cases():
    """(name, model, inputs, targets, loss_fn), float64, seeded."""
    cases = []
    specs = [
        ("mlp 16-32-32-4 no-bias ce", lambda: _mlp((16, 32, 32, 4), bias=False), "ce"),
        ("mlp 16-48-48-4 bias ce", lambda: _mlp((16, 48, 48, 4), bias=True), "ce"),
        ("mlp 16-48-48-3 bias mse", lambda: _mlp((16, 48, 48, 3), bias=True), "mse"),
        ("residual 16-32-32-4 ce", lambda: _ResidualNet(16, 32, 4), "ce"),
    ]
    for seed, (name, build, loss) in enumerate(specs):
        torch.manual_seed(seed)
        model = build().double()
        classes = model(torch.zeros(1, 16, dtype=torch.float64)).shape[1]
        inputs = torch.randn(256, 16, dtype=torch.float64)
        labels = torch.randint(0, classes, (256,))
        if loss == "ce":
            cases.append((name, model, inputs, labels, F.cross_entropy))
        else:
            cases.append((name, model, inputs, F.one_hot(labels, classes).double(), _mse))
    return cases


def _dense_eigenvalues(model: nn.Module, inputs, targets, loss_fn) -> torch.Tensor:
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = [part.view(shape) for part, shape in zip(theta.split(sizes), shapes, strict=True)]
        named = dict(zip(names, parts, strict=True))
        return loss_fn(torch.func.functional_call(model, named, (inputs,)), targets)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    hessian = torch.func.hessian(loss)(theta)
    return torch.linalg.eigvalsh(0.5 * (hessian + hessian.T)).flip(0)


def run_accuracy() -> list[dict]:
    rows = []
    for name, model, inputs, targets, loss_fn in _small_cases():
        data = [(inputs, targets)]
        start = time.perf_counter()
        exact = _dense_eigenvalues(model, inputs, targets, loss_fn)
        dense_seconds = time.perf_counter() - start
        start = time.perf_counter()
        top = top_eigenpairs(model, data, loss_fn, k=1, tol=TOL, max_iter=MAX_ITER)
        lanczos_seconds = time.perf_counter() - start
        top3 = top_eigenpairs(model, data, loss_fn, k=3, tol=TOL, max_iter=MAX_ITER)
        top3_errors = (torch.as_tensor(top3.eigenvalues) - exact[:3]).abs() / exact[:3].abs()
        rows.append(
            {
                "model": name,
                "params": sum(p.numel() for p in model.parameters()),
                "dense_lambda_max": float(exact[0]),
                "lanczos_lambda_max": top.lambda_max,
                "rel_error": abs(top.lambda_max - float(exact[0])) / abs(float(exact[0])),
                "hvps": top.n_hvp,
                "top3_max_rel_error": float(top3_errors.max()),
                "top3_hvps": top3.n_hvp,
                "dense_seconds": dense_seconds,
                "lanczos_seconds": lanczos_seconds,
            }
        )
    return rows


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _product_seconds(operator, vector: torch.Tensor) -> float:
    operator.matvec(vector)  # warm-up (first forward-mode use loads decompositions)
    start = time.perf_counter()
    for _ in range(PRODUCT_REPEATS):
        operator.matvec(vector)
    return (time.perf_counter() - start) / PRODUCT_REPEATS


def run_large() -> dict:
    torch.manual_seed(0)
    model = _mlp(LARGE_WIDTHS, bias=True)
    inputs = torch.randn(LARGE_SAMPLES, LARGE_WIDTHS[0])
    labels = torch.randint(0, LARGE_WIDTHS[-1], (LARGE_SAMPLES,))
    chunks = list(zip(inputs.split(LARGE_CHUNK), labels.split(LARGE_CHUNK), strict=True))
    rss_before = _max_rss_mb()

    operator = hessian_operator(model, chunks, F.cross_entropy)
    start = time.perf_counter()
    spectrum = lanczos(operator.matvec, operator.dim, k=1, max_iter=MAX_ITER, tol=TOL)
    lanczos_seconds = time.perf_counter() - start
    rss_after = _max_rss_mb()

    vector = torch.randn(operator.dim)
    gauss_newton = hessian_operator(
        model, chunks, F.cross_entropy, kind="gauss_newton", output_loss="ce"
    )
    return {
        "params": operator.dim,
        "samples": LARGE_SAMPLES,
        "chunk": LARGE_CHUNK,
        "lambda_max": spectrum.lambda_max,
        "hvps": spectrum.n_hvp,
        "achieved_tolerance": spectrum.tolerance,
        "seconds": lanczos_seconds,
        "seconds_per_hvp": lanczos_seconds / spectrum.n_hvp,
        "krylov_basis_mb": spectrum.n_hvp * operator.dim * 8 / 2**20,
        "krylov_capacity_mb": MAX_ITER * operator.dim * 8 / 2**20,
        "peak_rss_before_mb": rss_before,
        "peak_rss_after_mb": rss_after,
        "hessian_product_seconds": _product_seconds(operator, vector),
        "gauss_newton_product_seconds": _product_seconds(gauss_newton, vector),
    }


def _print_accuracy(rows: list[dict]) -> None:
    header = (
        f"{'model':<28}{'params':>8}{'dense λmax':>12}{'lanczos λmax':>14}{'rel err':>10}"
        f"{'HVPs':>6}{'top3 err':>10}{'HVPs':>6}{'dense s':>9}{'lanczos s':>11}"
    )
    print("(a) accuracy against the dense Hessian (k=1 and k=3, tol 1e-3, float64)")
    print(header)
    for row in rows:
        print(
            f"{row['model']:<28}{row['params']:>8}{row['dense_lambda_max']:>12.6g}"
            f"{row['lanczos_lambda_max']:>14.6g}{row['rel_error']:>10.1e}{row['hvps']:>6}"
            f"{row['top3_max_rel_error']:>10.1e}{row['top3_hvps']:>6}"
            f"{row['dense_seconds']:>9.2f}{row['lanczos_seconds']:>11.2f}"
        )


def _print_large(large: dict) -> None:
    print()
    print(
        f"(b) MLP {'-'.join(map(str, LARGE_WIDTHS))} with biases, float32, "
        f"n={large['samples']} in chunks of {large['chunk']}, cross-entropy"
    )
    lines = [
        ("parameters", f"{large['params']:,}"),
        ("λ_max", f"{large['lambda_max']:.6g}"),
        (
            "HVPs used",
            f"{large['hvps']} (achieved rel. residual {large['achieved_tolerance']:.1e})",
        ),
        ("time to λ_max", f"{large['seconds']:.1f} s ({large['seconds_per_hvp']:.2f} s per HVP)"),
        (
            "Krylov basis (float64)",
            f"{large['krylov_basis_mb']:.0f} MB used, {large['krylov_capacity_mb']:.0f} MB at max_iter",
        ),
        (
            "peak RSS before → after",
            f"{large['peak_rss_before_mb']:.0f} MB → {large['peak_rss_after_mb']:.0f} MB",
        ),
        ("one Hessian product", f"{large['hessian_product_seconds']:.2f} s"),
        ("one Gauss–Newton product", f"{large['gauss_newton_product_seconds']:.2f} s"),
    ]
    for label, value in lines:
        print(f"  {label:<26}{value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line instead")
    parser.add_argument("--skip-large", action="store_true", help="only the small models")
    args = parser.parse_args()
    torch.set_num_threads(2)
    # The large case runs first: ru_maxrss only ever grows, and the dense Hessians of
    # part (a) would otherwise set the peak.
    large = None if args.skip_large else run_large()
    rows = run_accuracy()
    if args.json:
        print(json.dumps({"accuracy": rows, "large": large}))
        return
    _print_accuracy(rows)
    if large is not None:
        _print_large(large)


if __name__ == "__main__":
    main()
