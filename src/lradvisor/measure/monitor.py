"""Watch the conservation laws of a model while it trains, from the gradients it already has.

For plain gradient descent ``W ← W − η_t G`` every law of docs/theory.md §1 obeys the exact
drift identity of §2, per hidden unit j:

.. math::

    c_j(T) - c_j(0) = \\sum_{t<T} \\eta_t^2 \\, \\delta_j(t), \\qquad
    \\delta_j = \\lVert G_B[:, j] \\rVert^2 - \\lVert G_A[j, :] \\rVert^2 - g_{b_A}[j]^2 .

:class:`ConservationMonitor` accumulates the right-hand side in float64 from the ``.grad``
tensors between ``loss.backward()`` and ``optimizer.step()`` (no extra pass, no host sync)
and reads the left-hand side from the weights only at construction and on :meth:`report`.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lradvisor.errors import LRAdvisorError
from lradvisor.measure.discovery import Discovery, LawPair, discover_pairs
from lradvisor.measure.laws import unit_balance
from lradvisor.records import LawReport

__all__ = ["ConservationMonitor"]

_BIAS_FREE_SUFFIX = ":bias-free"


@dataclass(eq=False)
class _Law:
    """Mutable per-law state: parameters, optimizer groups, float64 accumulators on device."""

    pair: LawPair
    out_weight: nn.Parameter
    in_weight: nn.Parameter
    in_bias: nn.Parameter | None
    delta_dtype: torch.dtype
    group_indices: tuple[int, ...]
    c_initial: torch.Tensor
    c_initial_bias_free: torch.Tensor | None
    identity_sum: torch.Tensor
    broken: list[str] = field(default_factory=list)

    def parameters(self) -> tuple[nn.Parameter, ...]:
        extra = () if self.in_bias is None else (self.in_bias,)
        return (self.out_weight, self.in_weight, *extra)

    def balance(self, *, bias: bool = True) -> torch.Tensor:
        in_bias = self.in_bias if bias else None
        return unit_balance(self.out_weight.detach(), self.in_weight.detach(), _detach(in_bias))


def _detach(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach()


class ConservationMonitor:
    """Per-step monitor of the rescaling conservation laws of a model.

    Call :meth:`observe` after ``loss.backward()`` (and after any gradient clipping or
    ``GradScaler.unscale_``) and before ``optimizer.step()``, exactly once per step; call
    :meth:`report` whenever numbers are needed. A hook on the optimizer counts its steps, so
    a missed or misplaced :meth:`observe` is detected and voids the identity.

    Args:
        model: the model; its laws come from :func:`~lradvisor.measure.discovery.discover_pairs`.
        optimizer: the optimizer that will step the model. The learning rate of each law is
            read from its parameter group at every :meth:`observe`, so schedules are handled.
        lr: a constant learning rate, for hand-written gradient descent without optimizer.
        per_unit: include per-hidden-unit drift arrays in the reports.
        track_every: also read C_l(t) in float64 every ``track_every`` observed steps
            (see :meth:`trajectory`); None reads the weights only at start and on report.
        delta_dtype: dtype in which each step's δ(t) is computed before it is added to the
            float64 sum. None: float64 for float64 parameters, float32 otherwise.
        allow_empty: do not raise when the model has no law.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8, bias=False), nn.ReLU(), nn.Linear(8, 2, bias=False))
        >>> optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> monitor = ConservationMonitor(net, optimizer=optimizer)
        >>> for _ in range(3):
        ...     optimizer.zero_grad()
        ...     net(torch.randn(16, 4)).square().mean().backward()
        ...     monitor.observe()
        ...     optimizer.step()
        >>> [law.name for law in monitor.report()]
        ['0->2']

    .. note::
        The identity is exact only for ``torch.optim.SGD`` without momentum or weight decay
        (or ``lr`` with hand-written steps) and with A's weight, A's bias and B's weight
        stepped with the same rate. Otherwise ``drift_identity`` is NaN, ``identity_holds``
        is False and only ``drift_direct`` (float64 norms of the weights) is reported.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float | None = None,
        per_unit: bool = True,
        track_every: int | None = None,
        delta_dtype: torch.dtype | None = None,
        allow_empty: bool = False,
    ) -> None:
        if optimizer is not None and lr is not None:
            raise LRAdvisorError("pass optimizer= or lr=, not both")
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise LRAdvisorError(f"lr must be a finite positive number, but got {lr!r}")
        if track_every is not None and track_every < 1:
            raise LRAdvisorError(f"track_every must be a positive integer, but got {track_every}")
        self.model = model
        self.optimizer = optimizer
        self.lr = lr
        self.per_unit = per_unit
        self.track_every = track_every
        self.delta_dtype = delta_dtype
        self.discovery: Discovery = discover_pairs(model)
        if not self.discovery.pairs and not allow_empty:
            raise LRAdvisorError(
                "no rescaling-symmetric Linear→activation→Linear pair found in "
                f"{self.discovery.model_class}; skipped: {self.discovery.skipped_text()}"
            )
        self._optimizer_notes = self._check_optimizer()
        self._laws = [self._build_law(pair) for pair in self.discovery.pairs]
        self._squares = _SquareSums()
        self._plans: dict[tuple[int, ...], _TotalsPlan] = {}
        self.steps = 0
        self._optimizer_steps = 0
        self._history: list[tuple[int, list[torch.Tensor], list[torch.Tensor]]] = []
        self._unhook = None
        if optimizer is not None:
            handle = optimizer.register_step_post_hook(_counting_hook(self))
            self._unhook = weakref.finalize(self, handle.remove)
        if self._optimizer_notes:
            warnings.warn(self._optimizer_notes[0], stacklevel=2)

    # -------------------------------------------------------------------- construction

    def _check_optimizer(self) -> list[str]:
        if self.optimizer is None:
            if self.lr is None:
                return ["no optimizer or lr given: reporting the direct drift C(T) − C(0) only"]
            return []
        breaking = _identity_breaking_settings(self.optimizer)
        if breaking is None:
            return []
        return [
            f"optimizer {breaking} breaks the η²·S identity; "
            "reporting the direct drift C(T) − C(0) only"
        ]

    def _build_law(self, pair: LawPair) -> _Law:
        in_layer = self.model.get_submodule(pair.in_layer_name)
        out_layer = self.model.get_submodule(pair.out_layer_name)
        law = _Law(
            pair=pair,
            out_weight=out_layer.weight,
            in_weight=in_layer.weight,
            in_bias=in_layer.bias,
            delta_dtype=self.delta_dtype or _default_delta_dtype(in_layer.weight.dtype),
            group_indices=(),
            c_initial=torch.empty(0),
            c_initial_bias_free=None,
            identity_sum=torch.zeros(  # one total when no per-unit arrays are reported
                in_layer.weight.shape[0] if self.per_unit else 1,
                dtype=torch.float64,
                device=in_layer.weight.device,
            ),
        )
        law.group_indices = self._group_indices(law)
        self._read_initial(law)
        return law

    def _group_indices(self, law: _Law) -> tuple[int, ...]:
        for parameter in law.parameters():
            if not parameter.requires_grad:
                law.broken.append("a parameter of this law is frozen (requires_grad=False)")
                return ()
        if self.optimizer is None:
            return ()
        index_of = {
            id(parameter): index
            for index, group in enumerate(self.optimizer.param_groups)
            for parameter in group["params"]
        }
        indices = [index_of.get(id(parameter)) for parameter in law.parameters()]
        if None in indices:
            law.broken.append("a parameter of this law is not in the optimizer")
            return ()
        return tuple(sorted(set(indices)))

    def _read_initial(self, law: _Law) -> None:
        with torch.no_grad():
            law.c_initial = law.balance()
            if law.in_bias is not None:
                law.c_initial_bias_free = law.balance(bias=False)
            law.identity_sum.zero_()

    # ------------------------------------------------------------------------ per step

    def observe(self) -> None:
        """Accumulate η_t² δ(t) for every law from the current ``.grad`` tensors.

        Call after ``loss.backward()`` and before ``optimizer.step()``. No host sync.
        Where the optimizer breaks the identity for good (momentum, weight decay, Adam, …)
        the sum would never be reported, so only the step is counted: the drift is then
        read from the weights (``drift_direct``) and observing costs a counter (no
        autograd context either).
        """
        if self.track_every is not None and self.steps % self.track_every == 0:
            self._record()
        if self._optimizer_notes:
            self._count_step()
            return
        self._accumulate()

    @torch.no_grad()
    def _accumulate(self) -> None:
        groups = None if self.optimizer is None else self.optimizer.param_groups
        rates = {id(law): self._rate(law, groups) for law in self._laws if not law.broken}
        active = [(law, rates[id(law)]) for law in self._laws if rates.get(id(law)) is not None]
        laws = [law for law, _ in active]
        deltas = self._per_unit_deltas(laws) if self.per_unit else self._total_deltas(laws)
        for (law, rate), delta in zip(active, deltas, strict=True):
            if isinstance(rate, torch.Tensor):
                law.identity_sum.add_(delta * rate.to(delta) ** 2)
            else:
                law.identity_sum.add_(delta, alpha=rate * rate)
        self._count_step()

    def _count_step(self) -> None:
        if self.optimizer is not None and self._optimizer_steps != self.steps:
            self._optimizer_steps = -1
        self.steps += 1

    def _per_unit_deltas(self, laws: list[_Law]) -> list[torch.Tensor]:
        """δ(t) per hidden unit of each law, from one square per parameter."""
        sums = self._squares.compute(laws)
        deltas = []
        for law in laws:
            delta = sums[id(law.out_weight), -2] - sums[id(law.in_weight), -1]
            if law.in_bias is not None:
                delta = delta - sums[id(law.in_bias), None]
            deltas.append(delta)
        return deltas

    def _total_deltas(self, laws: list[_Law]) -> torch.Tensor | list:
        """Without per-unit arrays only each law's total δ(t) = ‖G_B‖² − ‖G_A‖² − ‖g_A‖² is
        needed: one fused norm over every gradient (``torch._foreach_norm``, accumulated in
        the laws' δ dtype) instead of a square and reductions per parameter."""
        if not laws:
            return []
        key = tuple(map(id, laws))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _TotalsPlan(laws)
        return plan.deltas()

    def _rate(self, law: _Law, groups: list[dict] | None) -> float | torch.Tensor | None:
        if groups is None:
            return self.lr
        rates = [groups[index]["lr"] for index in law.group_indices]
        if len(rates) > 1 and any(r != rates[0] for r in rates[1:]):
            law.broken.append(
                f"its parameters are stepped with different learning rates {rates} "
                f"(first at step {self.steps}): the η²·S identity does not hold"
            )
            return None
        return rates[0]

    def _out_of_step(self) -> bool:
        return self._optimizer_steps < 0

    @torch.no_grad()
    def _record(self) -> None:
        balances = [law.balance() for law in self._laws]
        sums = [law.identity_sum.clone() for law in self._laws]
        self._history.append((self.steps, balances, sums))

    # ------------------------------------------------------------------------- results

    @property
    def pairs(self) -> tuple[LawPair, ...]:
        """The laws being monitored."""
        return self.discovery.pairs

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]:
        """``(module_name, reason)`` for every parameterised module no law covers."""
        return self.discovery.skipped

    @property
    def identity_holds(self) -> bool:
        """Whether the optimizer and the call pattern so far keep the η²·S identity exact."""
        return not self._optimizer_notes and not self._out_of_step()

    def report(self) -> list[LawReport]:
        """One :class:`LawReport` per law, each bias-aware law followed by its ``:bias-free`` twin.

        Reads the weights in float64 (one host sync per law).
        """
        notes = self._global_notes()
        discovery_notes = [
            *(f"note: {note}" for note in self.discovery.notes),
            *(f"skipped {name}: {reason}" for name, reason in self.discovery.skipped),
        ]
        reports: list[LawReport] = []
        with torch.no_grad():
            for index, law in enumerate(self._laws):
                law_notes = notes + discovery_notes if index == 0 else notes
                reports.extend(self._law_reports(law, law_notes))
        return reports

    def _global_notes(self) -> list[str]:
        notes = list(self._optimizer_notes)
        if self._out_of_step():
            notes.append(
                "observe() was not called exactly once before each optimizer.step(): "
                "the η²·S sum misses or adds steps, so it no longer matches the drift"
            )
        elif self.optimizer is not None and self._optimizer_steps != self.steps:
            notes.append(
                "report() called between observe() and optimizer.step(): the η²·S sum "
                "already contains the step not yet applied to the weights"
            )
        return notes

    def _law_reports(self, law: _Law, notes: list[str]) -> list[LawReport]:
        pair = law.pair
        holds = self.identity_holds and not law.broken
        balance = law.balance()
        unit_direct = (balance - law.c_initial).cpu().numpy()
        unit_identity = law.identity_sum.cpu().numpy() if holds else None
        law_notes = [
            f"activation {pair.activation}",
            "bias-aware: C = ‖W_B‖² − ‖W_A‖² − ‖b_A‖²"
            if pair.bias_aware
            else "C = ‖W_B‖² − ‖W_A‖²",
            *(f"identity broken: {reason}" for reason in law.broken),
            *notes,
        ]
        reports = [
            LawReport(
                name=pair.name,
                bias_aware=pair.bias_aware,
                c_initial=float(law.c_initial.sum()),
                c_final=float(balance.sum()),
                drift_direct=float(unit_direct.sum()),
                drift_identity=float(unit_identity.sum()) if holds else math.nan,
                identity_holds=holds,
                unit_drift_direct=unit_direct if self.per_unit else None,
                unit_drift_identity=_unit_identity(unit_identity, unit_direct, self.per_unit),
                notes=tuple(law_notes),
            )
        ]
        if law.c_initial_bias_free is not None:
            reports.append(self._bias_free_report(law))
        return reports

    def _bias_free_report(self, law: _Law) -> LawReport:
        balance = law.balance(bias=False)
        unit_direct = (balance - law.c_initial_bias_free).cpu().numpy()
        return LawReport(
            name=law.pair.name + _BIAS_FREE_SUFFIX,
            bias_aware=False,
            c_initial=float(law.c_initial_bias_free.sum()),
            c_final=float(balance.sum()),
            drift_direct=float(unit_direct.sum()),
            drift_identity=math.nan,
            identity_holds=False,
            unit_drift_direct=unit_direct if self.per_unit else None,
            unit_drift_identity=_unit_identity(None, unit_direct, self.per_unit),
            notes=(
                "bias-free formula ‖W_B‖² − ‖W_A‖² ignores b_A: not a conserved quantity; "
                "reported beside the bias-aware law (the paper's 'bias breaks conservation')",
            ),
        )

    def trajectory(self) -> dict[str, dict[str, np.ndarray]]:
        """C_l(t) and Σ η² δ at the steps read with ``track_every`` (plus now), per law.

        Returns ``{law name: {"step", "c", "drift_direct", "drift_identity"}}``; the
        identity column is NaN where the identity does not hold.
        """
        with torch.no_grad():
            now = [law.balance() for law in self._laws]
            sums = [law.identity_sum.clone() for law in self._laws]
        rows = [*self._history, (self.steps, now, sums)]
        result: dict[str, dict[str, np.ndarray]] = {}
        for index, law in enumerate(self._laws):
            holds = self.identity_holds and not law.broken
            c_initial = float(law.c_initial.sum())
            c_values = np.array([float(row[1][index].sum()) for row in rows])
            identity = np.array([float(row[2][index].sum()) for row in rows])
            result[law.pair.name] = {
                "step": np.array([row[0] for row in rows]),
                "c": c_values,
                "drift_direct": c_values - c_initial,
                "drift_identity": identity if holds else np.full(len(rows), np.nan),
            }
        return result

    def summary(self) -> str:
        """A few human-readable lines: which laws apply, which parts were skipped."""
        laws = ", ".join(
            f"{p.name} [{p.activation}{', bias-aware' if p.bias_aware else ''}]"
            for p in self.discovery.pairs
        )
        if self._optimizer_notes:
            identity = self._optimizer_notes[0]
        elif self._out_of_step():
            identity = "η²·S identity lost: observe() and optimizer.step() got out of step"
        else:
            identity = "η²·S identity applies (plain gradient descent)"
        lines = [
            f"ConservationMonitor on {self.discovery.model_class}: "
            f"{len(self.discovery.pairs)} law(s): {laws or 'none'}",
            f"{identity}; {self.steps} step(s) observed",
            f"skipped: {self.discovery.skipped_text()}",
        ]
        lines.extend(f"note: {note}" for note in self.discovery.notes)
        return "\n".join(lines)

    def reset(self) -> None:
        """Start again from the current weights: C(0) re-read, sums and counters zeroed."""
        for law in self._laws:
            law.broken = [reason for reason in law.broken if "different learning" not in reason]
            self._read_initial(law)
        self.steps = 0
        self._optimizer_steps = 0
        self._history.clear()

    def close(self) -> None:
        """Remove the step-counting hook this monitor placed on the optimizer."""
        if self._unhook is not None:
            self._unhook()


class _TotalsPlan:
    """Which gradients one fused norm covers, and where each law's three terms sit in it."""

    def __init__(self, laws: list[_Law]) -> None:
        self.parameters: list[nn.Parameter] = []
        slots: dict[int, int] = {}

        def slot(parameter: nn.Parameter | None) -> int:
            if parameter is None:
                return -1  # filled below with the zero at the end
            if id(parameter) not in slots:
                slots[id(parameter)] = len(self.parameters)
                self.parameters.append(parameter)
            return slots[id(parameter)]

        rows = [(slot(law.out_weight), slot(law.in_weight), slot(law.in_bias)) for law in laws]
        zero = len(self.parameters)
        device = laws[0].identity_sum.device
        columns = [[zero if i < 0 else i for i in column] for column in zip(*rows, strict=True)]
        self.out, self.into, self.bias = (
            torch.tensor(column, dtype=torch.long, device=device) for column in columns
        )
        self.dtype = (
            torch.float64
            if any(law.delta_dtype == torch.float64 for law in laws)
            else laws[0].delta_dtype
        )

    def deltas(self) -> torch.Tensor:
        norms = torch._foreach_norm([_grad(p) for p in self.parameters], 2, dtype=self.dtype)
        squares = torch.stack([*norms, norms[0].new_zeros(())]).square_()
        return squares[self.out] - squares[self.into] - squares[self.bias]


class _SquareSums:
    """The per-unit sums of squared gradients the laws need, one pass per parameter.

    A weight that is B of one law and A of the next is squared once and reduced both ways;
    every square goes into one scratch buffer kept between steps, so a step allocates only
    the per-unit sums (no full-size temporaries: their page faults cost more than the sums).
    """

    def __init__(self) -> None:
        self._scratch: dict[torch.dtype, torch.Tensor] = {}

    def compute(self, laws: list[_Law]) -> dict[tuple[int, int | None], torch.Tensor]:
        wanted: dict[int, tuple[nn.Parameter, torch.dtype, set[int | None]]] = {}
        for law in laws:
            for parameter, dim in (
                (law.out_weight, -2),
                (law.in_weight, -1),
                (law.in_bias, None),
            ):
                if parameter is not None:
                    entry = wanted.setdefault(id(parameter), (parameter, law.delta_dtype, set()))
                    entry[2].add(dim)
        sums: dict[tuple[int, int | None], torch.Tensor] = {}
        for key, (parameter, dtype, dims) in wanted.items():
            grad = _grad(parameter)
            square = self._square(grad, dtype)
            for dim in dims:
                sums[key, dim] = square.clone() if dim is None else square.sum(dim)
        return sums

    def _square(self, grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        scratch = self._scratch.get(dtype)
        if scratch is None or scratch.numel() < grad.numel() or scratch.device != grad.device:
            scratch = torch.empty(grad.numel(), dtype=dtype, device=grad.device)
            self._scratch[dtype] = scratch
        view = scratch[: grad.numel()].view(grad.shape)
        if grad.dtype == dtype:
            return torch.mul(grad, grad, out=view)
        view.copy_(grad)
        return view.mul_(view)


def _counting_hook(monitor: ConservationMonitor):
    """Optimizer post-step hook counting steps; holds the monitor weakly."""
    reference = weakref.ref(monitor)

    def hook(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        target = reference()
        if target is not None and target._optimizer_steps >= 0:
            target._optimizer_steps += 1

    return hook


def _identity_breaking_settings(optimizer: torch.optim.Optimizer) -> str | None:
    """None for plain SGD, else "Name (setting=value, …)" naming what breaks the identity."""
    kind = type(optimizer).__name__
    if type(optimizer) is not torch.optim.SGD:
        return kind
    settings = []
    for group in optimizer.param_groups:
        for key in ("momentum", "weight_decay"):
            value = group.get(key, 0)
            if value and f"{key}={value:g}" not in settings:
                settings.append(f"{key}={value:g}")
    return f"{kind} ({', '.join(settings)})" if settings else None


def _default_delta_dtype(parameter_dtype: torch.dtype) -> torch.dtype:
    # float64 temporaries of every gradient would cost more than the 5 % budget of a step
    # (page faults on fresh full-size buffers); a float32 δ of float32 gradients is exact to
    # ~1e-7 relative, below the round-off of the float32 weight update it describes.
    return torch.float64 if parameter_dtype == torch.float64 else torch.float32


def _grad(parameter: nn.Parameter) -> torch.Tensor:
    if parameter.grad is None:
        raise LRAdvisorError(
            "a monitored parameter has no .grad: call observe() after loss.backward() and "
            "before optimizer.step()"
        )
    return parameter.grad


def _unit_identity(
    unit_identity: np.ndarray | None, unit_direct: np.ndarray, per_unit: bool
) -> np.ndarray | None:
    if not per_unit:
        return None
    if unit_identity is None:
        return np.full_like(unit_direct, np.nan)
    return unit_identity
