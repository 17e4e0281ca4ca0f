"""Top Hessian eigenpairs of any ``nn.Module`` without forming the Hessian (docs/theory.md §4–5).

A full Hessian costs O(P²) memory; here the curvature is only ever touched through
matrix-vector products, and the top eigenpairs come from Lanczos with full
reorthogonalisation. Memory is the Krylov basis (``max_iter × P`` numbers) plus one
chunk's autograd graph.

Example::

    import torch
    from torch import nn
    from lradvisor.measure.lanczos import sharpness

    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    data = [(torch.randn(256, 20), torch.randint(0, 5, (256,))) for _ in range(4)]
    lambda_max = sharpness(model, data, nn.functional.cross_entropy)
    print(f"stable learning rates for gradient descent: η < {2 / lambda_max:.3g}")

References:
    Lanczos (1950); Golub & Van Loan, *Matrix Computations*, §10.1 (full
    reorthogonalisation), §10.3 (Ritz residual estimate ``|β_j s_{j,i}|``);
    Pearlmutter (1994), fast exact multiplication by the Hessian;
    Schraudolph (2002), fast curvature matrix-vector products (Gauss–Newton);
    Cohen et al. (2022), adaptive gradient methods at the edge of stability.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lradvisor.errors import LRAdvisorError
from lradvisor.records import Spectrum

__all__ = [
    "HessianOperator",
    "hessian_operator",
    "lanczos",
    "preconditioned_sharpness",
    "sharpness",
    "top_eigenpairs",
]

KINDS = ("hessian", "gauss_newton")
OUTPUT_LOSSES = ("ce", "mse")

Batches = Sequence[tuple[Tensor, Tensor]]
LossFunction = Callable[[Tensor, Tensor], Tensor]


class HessianOperator:
    r"""Curvature of the full-data loss as a linear operator on flat parameter vectors.

    The loss is the sample-weighted mean over chunks,

    .. math::

        L(\theta) = \sum_c \frac{n_c}{n}\, \ell_c(\theta), \qquad
        n = \sum_c n_c,

    where :math:`\ell_c` is ``loss_fn(model(X_c), y_c)`` (a mean over chunk ``c``) and
    :math:`n_c` is ``len(X_c)``. Every product is accumulated chunk by chunk, so memory
    is bounded by one chunk's autograd graph whatever the data set size.

    ``kind="hessian"``: :math:`H v` by double backward (Pearlmutter's trick through
    ``torch.autograd``): the chunk gradient :math:`g_c` is built with
    ``create_graph=True`` and :math:`H_c v = \nabla_\theta (g_c \cdot v)`. This needs
    only reverse mode, so it works for every module autograd can differentiate twice
    (biases, residual connections, convolutions, in-place activations, buffers that
    change in the forward pass); a ``torch.func`` forward-over-reverse product is
    somewhat faster but fails on modules whose forward mutates state or lacks a
    forward-mode rule.

    ``kind="gauss_newton"``: the generalised Gauss–Newton product

    .. math::

        G v = \sum_c J_c^\top H_{\mathrm{out},c}\, J_c v,

    with :math:`J_c v` from ``torch.func.jvp`` (forward mode) and :math:`J_c^\top u`
    from one ordinary backward pass through the same forward. For ``output_loss="ce"``
    (logits of shape ``(n_c, K)``, mean cross-entropy)
    :math:`H_{\mathrm{out}} = (\operatorname{diag}(p_i) - p_i p_i^\top)/n` per sample;
    for ``"mse"`` (mean over all ``n·K`` entries) :math:`H_{\mathrm{out}} = 2/(n K)\, I`.
    ``G`` is positive semi-definite. It is cheaper than the Hessian product: no
    second-order graph is kept (one forward with tangents plus one backward, against a
    forward, a backward that records its own graph, and a backward through that graph),
    so a chunk holds only first-order activations; on a 1M-parameter MLP on CPU it ran
    about 20 % faster (``benchmarks/bench_lanczos.py``). Prefer it when the Hessian's
    negative directions do not matter, or when a module has no double-backward rule.
    It equals the Hessian when the model is linear in its parameters.

    Products are computed in the parameters' dtype (float32 models give float32-accurate
    products); ``matvec`` accepts any floating vector and returns the parameters' dtype.
    The module is evaluated as it stands: call ``model.eval()`` first when dropout or
    batch-norm statistics should not vary between products.

    Attributes:
        dim: number of parameters P.
        n_calls: matrix-vector products computed so far.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Batches,
        loss_fn: LossFunction,
        *,
        params: Sequence[nn.Parameter],
        kind: str,
        output_loss: str | None,
    ) -> None:
        self.model = model
        self.batches = list(batches)
        self.loss_fn = loss_fn
        self.params = list(params)
        self.kind = kind
        self.output_loss = output_loss
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.n_samples = sum(len(inputs) for inputs, _ in self.batches)
        self.n_calls = 0
        self._names = _parameter_names(model, self.params) if kind == "gauss_newton" else None

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """One flat vector (parameters' dtype) from tensors shaped like the parameters."""
        if len(tensors) != len(self.params):
            raise LRAdvisorError(
                f"flatten expects {len(self.params)} tensors (one per parameter), got {len(tensors)}"
            )
        return torch.cat([t.reshape(-1).to(self.dtype) for t in tensors])

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Tensors shaped like the parameters (views of ``flat`` cast to their dtype)."""
        if flat.numel() != self.dim:
            raise LRAdvisorError(
                f"expected a flat vector of {self.dim} entries (one per parameter), got {flat.numel()}"
            )
        flat = flat.reshape(-1).to(dtype=self.dtype, device=self.device)
        return [
            part.view(shape)
            for part, shape in zip(torch.split(flat, self.sizes), self.shapes, strict=True)
        ]

    def loss(self) -> float:
        """Full-data loss L(θ)."""
        total = 0.0
        with torch.no_grad():
            for inputs, targets in self.batches:
                weight = len(inputs) / self.n_samples
                total += weight * float(self.loss_fn(self.model(inputs), targets))
        return total

    def gradient(self) -> Tensor:
        """Full-data gradient ∇L(θ), flat, in the parameters' dtype."""
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for inputs, targets in self.batches:
            with torch.enable_grad():
                chunk_loss = self._chunk_loss(inputs, targets)
                grads = _grad(chunk_loss, self.params)
            total += self.flatten(grads)
        return total

    def matvec(self, v: Tensor) -> Tensor:
        """H v (or G v for ``kind="gauss_newton"``), flat, in the parameters' dtype."""
        parts = self.unflatten(v)
        product = self._hessian_product if self.kind == "hessian" else self._gauss_newton_product
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for inputs, targets in self.batches:
            total += self.flatten(product(inputs, targets, parts))
        self.n_calls += 1
        return total

    def _chunk_loss(self, inputs: Tensor, targets: Tensor) -> Tensor:
        weight = len(inputs) / self.n_samples
        return weight * self.loss_fn(self.model(inputs), targets)

    def _hessian_product(
        self, inputs: Tensor, targets: Tensor, parts: list[Tensor]
    ) -> list[Tensor]:
        with torch.enable_grad():
            chunk_loss = self._chunk_loss(inputs, targets)
            grads = _grad(chunk_loss, self.params, create_graph=True)
            directional = sum((g * part).sum() for g, part in zip(grads, parts, strict=True))
            if not directional.requires_grad:
                # The loss is linear in every parameter: no curvature at all.
                return [torch.zeros_like(p) for p in self.params]
            return _grad(directional, self.params)

    def _gauss_newton_product(
        self, inputs: Tensor, targets: Tensor, parts: list[Tensor]
    ) -> list[Tensor]:
        primals = dict(zip(self._names, self.params, strict=True))
        tangents = dict(zip(self._names, parts, strict=True))

        def forward(named: dict[str, Tensor]) -> Tensor:
            return torch.func.functional_call(self.model, named, (inputs,))

        with torch.enable_grad():
            outputs, jacobian_v = torch.func.jvp(forward, (primals,), (tangents,))
            weight = len(inputs) / self.n_samples
            u = weight * _output_hessian_product(
                outputs.detach(), jacobian_v.detach(), self.output_loss
            )
            return _grad(outputs, self.params, grad_outputs=u)


def hessian_operator(
    model: nn.Module,
    batches: Batches,
    loss_fn: LossFunction,
    *,
    params: Sequence[nn.Parameter] | None = None,
    kind: str = "hessian",
    output_loss: str | None = None,
) -> HessianOperator:
    """The curvature operator of ``loss_fn`` over ``batches`` (see :class:`HessianOperator`).

    Args:
        model: any module; ``model(X)`` gives the outputs ``loss_fn`` expects.
        batches: ``(X, y)`` chunks that together make up the data set.
        loss_fn: ``loss_fn(outputs, y)``, the *mean* loss over a chunk.
        params: the parameters the curvature is taken over (default: every parameter
            with ``requires_grad``, in ``model.parameters()`` order, which is also the
            flat layout).
        kind: ``"hessian"`` or ``"gauss_newton"``.
        output_loss: ``"ce"`` or ``"mse"``, required by (and only allowed with)
            ``kind="gauss_newton"``; it fixes the output-space Hessian.
    """
    if kind not in KINDS:
        raise LRAdvisorError(f"kind must be one of {KINDS}, but got {kind!r}")
    if kind == "gauss_newton" and output_loss not in OUTPUT_LOSSES:
        raise LRAdvisorError(
            f"kind='gauss_newton' needs output_loss in {OUTPUT_LOSSES}, but got {output_loss!r}"
        )
    if kind == "hessian" and output_loss is not None:
        raise LRAdvisorError(
            f"output_loss is only used with kind='gauss_newton', but got {output_loss!r} with kind='hessian'"
        )
    batches = list(batches)
    if not batches:
        raise LRAdvisorError("batches must hold at least one (X, y) chunk, but got none")
    chosen = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not chosen:
        raise LRAdvisorError("the model has no parameters with requires_grad=True")
    kinds = {(p.dtype, p.device) for p in chosen}
    if len(kinds) > 1:
        raise LRAdvisorError(
            f"all parameters must share one dtype and device, but got {sorted(map(str, kinds))}"
        )
    return HessianOperator(
        model, batches, loss_fn, params=chosen, kind=kind, output_loss=output_loss
    )


def lanczos(
    matvec: Callable[[Tensor], Tensor],
    dim: int,
    *,
    k: int = 1,
    max_iter: int = 40,
    tol: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Spectrum:
    r"""Top-``k`` algebraic (largest, not largest-magnitude) eigenpairs of a symmetric operator.

    Lanczos builds an orthonormal Krylov basis :math:`Q_m = [q_1, \dots, q_m]` and the
    tridiagonal :math:`T_m = Q_m^\top A Q_m` (diagonal :math:`\alpha_j`, off-diagonal
    :math:`\beta_j`); the Ritz pairs :math:`(\theta_i, Q_m s_i)` of :math:`T_m`
    approximate the extreme eigenpairs of ``A`` and have residual

    .. math::

        \lVert A Q_m s_i - \theta_i Q_m s_i \rVert = |\beta_m\, s_{m,i}|.

    Iteration stops once :math:`|\beta_m s_{m,i}| \le \mathrm{tol}\,|\theta_i|` for the
    ``k`` largest :math:`\theta_i`, and never after more than ``max_iter`` products.

    Args:
        matvec: ``v ↦ A v`` for a symmetric ``A``; called once per iteration.
        dim: size of ``A``.
        k: number of eigenpairs wanted.
        max_iter: most products (and basis vectors) allowed; capped at ``dim``.
        tol: relative Ritz residual at which a pair counts as converged.
        seed: seed of the ``torch.Generator`` drawing the (Gaussian) start vector.
        dtype: dtype of the Krylov basis; ``torch.float32`` halves its memory.
        device: where the basis lives (default CPU).

    Returns:
        ``Spectrum`` with descending eigenvalues (``k``), eigenvectors ``(dim, k)``
        float64, ``method="lanczos"``, ``n_hvp`` the products used and ``tolerance``
        the largest relative residual reached among the ``k`` pairs.

    .. note::
        Full reorthogonalisation (two classical Gram–Schmidt passes per step) stores
        the whole basis: ``max_iter × dim`` numbers, e.g. 320 MB for 10⁶ parameters,
        40 vectors, float64. It buys robustness (no ghost eigenvalues, a residual
        estimate that can be trusted) at a cost negligible next to one Hessian product.

    .. note::
        In exact arithmetic a single start vector sees one direction of each
        eigenspace, so an exactly repeated eigenvalue would show once. Two things bring
        the other copies back: a breakdown (:math:`\beta \approx 0`, an invariant
        subspace), after which Lanczos restarts from a fresh random vector orthogonal to
        the basis and keeps probing while the probes add to the top ``k``; and rounding,
        which seeds the missing directions so that they emerge after more products
        (about twice as many on a diagonal test matrix). The stopping test can fire
        before they emerge, whatever ``tol``: on the spectrum 10, 10, 9, … ``k=2``
        returns 10, 9 (9 products), ``k=3`` returns 10, 10, 9 (30 products). Ask for
        ``k`` above the multiplicity you expect when exact degeneracy is possible.

    Example::

        A = torch.diag(torch.tensor([3.0, 1.0, -5.0], dtype=torch.float64))
        lanczos(lambda v: A @ v, 3).lambda_max  # 3.0: algebraic, not |λ|
    """
    _check_lanczos_arguments(dim, k=k, max_iter=max_iter, tol=tol)
    device = torch.device("cpu") if device is None else torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    krylov = _Krylov(dim, min(max_iter, dim), k=k, dtype=dtype, device=device)
    q = krylov.fresh_vector(generator)
    while True:
        q = krylov.step(q, matvec)
        ritz = krylov.ritz()
        if krylov.full:
            break
        if krylov.broke_down:
            # An invariant subspace: probe its complement for copies of repeated
            # eigenvalues, until a probe adds nothing to the top k.
            if krylov.restarted and not krylov.block_in_top(ritz):
                break
            q = krylov.fresh_vector(generator)
            if q is None:
                break
            continue
        if ritz.relative_residual <= tol:
            break
    return Spectrum(
        eigenvalues=ritz.values,
        eigenvectors=krylov.ritz_vectors(ritz),
        method="lanczos",
        n_hvp=krylov.size,
        tolerance=ritz.relative_residual,
    )


def top_eigenpairs(
    model: nn.Module,
    batches: Batches,
    loss_fn: LossFunction,
    *,
    k: int = 1,
    max_iter: int = 40,
    tol: float = 1e-3,
    kind: str = "hessian",
    output_loss: str | None = None,
    seed: int = 0,
) -> Spectrum:
    """Top-``k`` eigenpairs of the full-data Hessian (or Gauss–Newton matrix) of ``model``.

    Eigenvectors use the flat layout of ``model.parameters()`` (trainable ones).
    See :func:`hessian_operator` and :func:`lanczos` for the arguments.
    """
    operator = hessian_operator(model, batches, loss_fn, kind=kind, output_loss=output_loss)
    return lanczos(
        operator.matvec,
        operator.dim,
        k=k,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        device=operator.device,
    )


def sharpness(model: nn.Module, batches: Batches, loss_fn: LossFunction, **kw) -> float:
    """λ_max of the full-data Hessian; gradient descent is stable for η < 2/λ_max.

    Keyword arguments go to :func:`top_eigenpairs` (``k`` is fixed at 1).
    """
    return top_eigenpairs(model, batches, loss_fn, k=1, **kw).lambda_max


def preconditioned_sharpness(
    model: nn.Module,
    batches: Batches,
    loss_fn: LossFunction,
    optimizer: torch.optim.Adam,
    *,
    max_iter: int = 40,
    tol: float = 1e-3,
    seed: int = 0,
) -> float:
    r"""Experimental: λ_max of the Adam-preconditioned Hessian :math:`P^{-1/2} H P^{-1/2}`.

    .. math::

        P = \operatorname{diag}\!\left(\sqrt{\hat v} + \epsilon\right) / \eta, \qquad
        \hat v = \frac{v_t}{1 - \beta_2^{\,t}},

    with :math:`v_t` the optimizer's ``exp_avg_sq`` (``max_exp_avg_sq`` under amsgrad),
    :math:`t` its ``step`` and :math:`\eta`, :math:`\epsilon`, :math:`\beta_2` read per
    parameter group. The curvature is taken over the optimizer's parameters, in
    parameter-group order.

    .. note::
        Experimental, no docs/theory.md section backs it. Cohen et al. (2022) find this
        "preconditioned sharpness" hovering at the Adam stability threshold
        :math:`(2 + 2\beta_1)/(1 - \beta_1)` (38 for :math:`\beta_1 = 0.9`), the
        adaptive analogue of 2/η; the bias correction of the first moment is ignored.

    Raises:
        LRAdvisorError: if the optimizer has not stepped yet (no second-moment state).
    """
    params, scales = _adam_preconditioner(optimizer)
    operator = hessian_operator(model, batches, loss_fn, params=params)
    inverse_root = torch.cat(scales).to(operator.dtype)

    def preconditioned(v: Tensor) -> Tensor:
        v = v.to(operator.dtype)
        return inverse_root * operator.matvec(inverse_root * v)

    spectrum = lanczos(
        preconditioned,
        operator.dim,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        device=operator.device,
    )
    return spectrum.lambda_max


@dataclass(frozen=True)
class _Ritz:
    """The top Ritz pairs of T (coordinates in the Krylov basis) and their worst residual."""

    values: np.ndarray
    coordinates: np.ndarray
    relative_residual: float


class _Krylov:
    """The Lanczos basis and tridiagonal T, grown one product at a time.

    After a breakdown (β ≈ 0) the basis continues with a new block started from a fresh
    vector orthogonal to it; T is then block-diagonal. The residual of a Ritz pair sums
    ``|β_end · s_end|`` over the blocks, the finished ones ending on their tiny β.
    """

    def __init__(self, dim: int, capacity: int, *, k: int, dtype: torch.dtype, device) -> None:
        self.k = k
        self.capacity = capacity
        self.eps = torch.finfo(dtype).eps
        # torch.empty does not touch memory: the resident basis grows with the iterations.
        self.basis = torch.empty(capacity, dim, dtype=dtype, device=device)
        self.alphas: list[float] = []
        self.betas: list[float] = []  # betas[j] couples q_j and q_{j+1}; 0 across blocks
        self.block_ends: list[tuple[int, float]] = []  # (last index, its β) per finished block
        self.block_start = 0
        self.beta = 0.0
        self.operator_norm = 0.0

    @property
    def size(self) -> int:
        return len(self.alphas)

    @property
    def full(self) -> bool:
        return self.size == self.capacity

    @property
    def broke_down(self) -> bool:
        return self.beta <= np.sqrt(self.eps) * self.operator_norm

    @property
    def restarted(self) -> bool:
        return bool(self.block_ends)

    def fresh_vector(self, generator: torch.Generator) -> Tensor | None:
        """A random unit vector orthogonal to the basis, opening a block; None if none is left."""
        basis = self.basis[: self.size]
        vector = torch.randn(self.basis.shape[1], generator=generator, dtype=torch.float64)
        vector = vector.to(dtype=self.basis.dtype, device=self.basis.device)
        norm_before = float(torch.linalg.vector_norm(vector))
        vector = _orthogonalise(vector, basis)
        norm = float(torch.linalg.vector_norm(vector))
        if norm <= np.sqrt(self.eps) * norm_before:
            return None
        if self.size:
            self.block_ends.append((self.size - 1, self.beta))
            self.betas.append(0.0)
        self.block_start = self.size
        return vector / norm

    def step(self, q: Tensor, matvec: Callable[[Tensor], Tensor]) -> Tensor:
        """Store q, apply the operator once, return the next basis vector (raw w if β ≈ 0)."""
        j = self.size
        self.basis[j] = q
        w = matvec(q).reshape(-1).to(dtype=self.basis.dtype, device=self.basis.device)
        self.operator_norm = max(self.operator_norm, float(torch.linalg.vector_norm(w)))
        alpha = float(q @ w)
        w = w - alpha * q
        if j > self.block_start:
            w = w - self.betas[-1] * self.basis[j - 1]
        w = _orthogonalise(w, self.basis[: j + 1])
        self.alphas.append(alpha)
        self.beta = float(torch.linalg.vector_norm(w))
        if self.broke_down:
            return w
        self.betas.append(self.beta)
        return w / self.beta

    def ritz(self) -> _Ritz:
        m = self.size
        betas = self.betas[: m - 1]
        tridiagonal = np.diag(self.alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        values, vectors = np.linalg.eigh(tridiagonal)
        top = np.argsort(values)[::-1][: self.k]
        values, vectors = values[top], vectors[:, top]
        residuals = self.beta * np.abs(vectors[m - 1])
        for end, block_beta in self.block_ends:
            residuals = residuals + block_beta * np.abs(vectors[end])
        floor = max(self.eps * self.operator_norm, np.finfo(float).tiny)
        relative = residuals / np.maximum(np.abs(values), floor)
        worst = float(np.max(relative)) if len(values) == self.k else float("inf")
        return _Ritz(values, vectors, worst)

    def block_in_top(self, ritz: _Ritz) -> bool:
        """Whether the current block carries any of the top-k Ritz vectors."""
        weight = np.linalg.norm(ritz.coordinates[self.block_start :], axis=0)
        return bool(np.any(weight > 1e-8))

    def ritz_vectors(self, ritz: _Ritz) -> np.ndarray:
        coordinates = torch.as_tensor(ritz.coordinates, dtype=self.basis.dtype)
        vectors = self.basis[: self.size].T @ coordinates.to(self.basis.device)
        vectors = vectors / torch.linalg.vector_norm(vectors, dim=0, keepdim=True)
        return vectors.to(dtype=torch.float64, device="cpu").numpy()


def _orthogonalise(w: Tensor, basis: Tensor) -> Tensor:
    # Two classical Gram–Schmidt passes: "twice is enough" for orthogonality to
    # working precision (Giraud et al. 2005), at the cost of two thin products.
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _check_lanczos_arguments(dim: int, *, k: int, max_iter: int, tol: float) -> None:
    if dim < 1:
        raise LRAdvisorError(f"dim must be at least 1, but got {dim}")
    if not 1 <= k <= dim:
        raise LRAdvisorError(f"k must be between 1 and dim={dim} inclusive, but got {k}")
    if max_iter < k:
        raise LRAdvisorError(f"max_iter must be at least k={k}, but got {max_iter}")
    if not tol > 0:
        raise LRAdvisorError(f"tol must be positive, but got {tol}")


def _grad(
    output: Tensor,
    params: list[nn.Parameter],
    *,
    grad_outputs: Tensor | None = None,
    create_graph: bool = False,
) -> list[Tensor]:
    """``torch.autograd.grad`` with zeros for parameters the output does not depend on."""
    grads = torch.autograd.grad(
        output,
        params,
        grad_outputs=grad_outputs,
        create_graph=create_graph,
        allow_unused=True,
    )
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def _output_hessian_product(outputs: Tensor, tangent: Tensor, output_loss: str) -> Tensor:
    """H_out u for one chunk's mean loss (per averaged term), u the output tangent J v."""
    if output_loss == "mse":
        return 2.0 * tangent / outputs.numel()
    if outputs.dim() != 2:
        raise LRAdvisorError(
            f"output_loss='ce' expects logits of shape (n, classes), but got {tuple(outputs.shape)}"
        )
    probabilities = torch.softmax(outputs, dim=1)
    projected = (probabilities * tangent).sum(dim=1, keepdim=True)
    return probabilities * (tangent - projected) / outputs.shape[0]


def _parameter_names(model: nn.Module, params: list[nn.Parameter]) -> list[str]:
    names = {id(p): name for name, p in model.named_parameters()}
    missing = sum(id(p) not in names for p in params)
    if missing:
        raise LRAdvisorError(
            f"kind='gauss_newton' needs parameters registered on the model, but {missing} of {len(params)} are not"
        )
    return [names[id(p)] for p in params]


def _adam_preconditioner(
    optimizer: torch.optim.Optimizer,
) -> tuple[list[nn.Parameter], list[Tensor]]:
    """The optimizer's parameters and, per parameter, P^{-1/2} flattened."""
    params: list[nn.Parameter] = []
    scales: list[Tensor] = []
    for group in optimizer.param_groups:
        _, beta2 = group["betas"]
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            second_moment = state.get("max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq")
            if second_moment is None:
                raise LRAdvisorError(
                    "the Adam optimizer has no second-moment state for "
                    f"{tuple(p.shape)}-shaped parameter; call optimizer.step() at least once "
                    "before measuring preconditioned sharpness"
                )
            step = float(state["step"])
            v_hat = second_moment / (1.0 - beta2**step)
            diagonal = (v_hat.sqrt() + group["eps"]) / group["lr"]
            params.append(p)
            scales.append(diagonal.rsqrt().reshape(-1))
    if not params:
        raise LRAdvisorError("the optimizer holds no parameters")
    return params, scales
