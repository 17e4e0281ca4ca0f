"""Find the rescaling-symmetric ``Linear → activation → Linear`` pairs of a torch model.

A pair (A, B) carries the conservation law of docs/theory.md §1 when A's outputs reach B, and
nothing else, through positively 1-homogeneous maps (ReLU, LeakyReLU, PReLU, identity,
dropout): scaling hidden unit j's row of W_A (and b_A[j]) by a > 0 and column j of W_B by
1/a then leaves the network function unchanged, so

.. math::

    c_j = \\lVert W_B[:, j] \\rVert^2 - \\lVert W_A[j, :] \\rVert^2 - b_A[j]^2

is conserved under gradient flow (B's own bias does not enter).

The data flow is read from a ``torch.fx`` trace, so custom ``Module`` classes work, not only
``nn.Sequential``; when tracing fails, an ``nn.Sequential`` is read in registration order
instead (and :attr:`Discovery.notes` says so).
"""

from __future__ import annotations

import operator
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["Discovery", "LawPair", "discover_pairs"]

_HOMOGENEOUS_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
_HOMOGENEOUS_FUNCTIONS = {
    torch.relu: "ReLU",
    torch.relu_: "ReLU",
    F.relu: "ReLU",
    F.relu_: "ReLU",
    F.leaky_relu: "LeakyReLU",
    F.leaky_relu_: "LeakyReLU",
    F.prelu: "PReLU",
    F.dropout: "Dropout",
    torch.dropout: "Dropout",
}
_HOMOGENEOUS_METHODS = {"relu": "ReLU", "relu_": "ReLU"}

_NORMALISATION_MODULES = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_NORMALISATION_FUNCTIONS = {F.layer_norm, F.batch_norm, F.group_norm, F.instance_norm}
_NON_HOMOGENEOUS_MODULES = (
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.SiLU,
    nn.Mish,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GLU,
    nn.Softplus,
    nn.Softsign,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LogSigmoid,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Tanhshrink,
    nn.Softshrink,
    nn.Hardshrink,
    nn.Threshold,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_NON_HOMOGENEOUS_FUNCTIONS = {
    F.gelu,
    F.silu,
    F.mish,
    F.elu,
    F.celu,
    F.selu,
    F.glu,
    F.softplus,
    F.softsign,
    F.relu6,
    F.hardtanh,
    F.hardswish,
    F.hardsigmoid,
    F.logsigmoid,
    F.softmax,
    F.log_softmax,
    F.tanhshrink,
    F.alpha_dropout,
    torch.tanh,
    torch.sigmoid,
    torch.exp,
    torch.softmax,
    torch.log_softmax,
    F.tanh,
    F.sigmoid,
}
_NON_HOMOGENEOUS_METHODS = {"tanh", "sigmoid", "exp", "softmax", "log_softmax", "sin", "cos"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, operator.sub, torch.add, torch.sub}


@dataclass(frozen=True)
class LawPair:
    """One conservation law: hidden layer between ``in_layer_name`` (A) and ``out_layer_name`` (B).

    ``bias_aware`` is True when A has a bias; the law then includes −‖b_A‖².
    ``activation`` describes the homogeneous maps between A and B ("ReLU",
    "LeakyReLU(0.2)", "identity", "ReLU+Dropout(p=0.1)", …).
    """

    name: str
    in_layer_name: str
    out_layer_name: str
    activation: str
    bias_aware: bool


@dataclass(frozen=True)
class Discovery:
    """What :func:`discover_pairs` found.

    ``pairs``: the laws, in forward order. ``skipped``: ``(module_name, reason)`` for every
    parameterised module that no law covers. ``method``: ``"fx"`` (data flow from a
    ``torch.fx`` trace) or ``"sequential-order"`` (tracing failed; the registration order of
    an ``nn.Sequential`` was assumed to be the data flow) or ``"none"``.
    """

    model_class: str
    pairs: tuple[LawPair, ...]
    skipped: tuple[tuple[str, str], ...]
    method: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def skipped_text(self) -> str:
        """The skipped modules as one line, ``"name (reason); …"`` or ``"nothing"``."""
        if not self.skipped:
            return "nothing"
        return "; ".join(f"{name} ({reason})" for name, reason in self.skipped)


def discover_pairs(model: nn.Module) -> Discovery:
    """Find every rescaling-symmetric ``nn.Linear → homogeneous maps → nn.Linear`` pair.

    Args:
        model: any ``torch.nn.Module``. Its ``forward`` is traced with ``torch.fx`` (with
            every ``nn.Linear`` kept as a leaf); if tracing fails and the model is an
            ``nn.Sequential``, its registration order is used instead.

    Returns:
        A :class:`Discovery`. An empty ``pairs`` is not an error here; the monitor decides.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> [p.name for p in discover_pairs(net).pairs]
        ['0->2']

    .. note::
        A Linear is paired only if it is called once, its parameters are used nowhere else,
        and each intermediate result has exactly one consumer. Residual adds, two consumers,
        normalisation, non-homogeneous activations and reshapes all break the per-unit law
        and are reported in ``skipped``.
    """
    try:
        graph = _LinearLeafTracer().trace(model)
    except Exception as error:  # tracing user code can raise anything
        return _discover_sequential(model, f"{type(error).__name__}: {error}")
    return _discover_fx(model, graph)


_TRACE_LOCK = threading.Lock()


class _LinearLeafTracer(fx.Tracer):
    """Keeps every ``nn.Linear`` (subclasses included) and known activation a leaf.

    Thread-safe beside training: ``torch.fx`` patches ``nn.Module.__call__`` and
    ``__getattr__`` for the whole process while it traces, so another thread's forward pass
    (Optuna's ``n_jobs``) would land in this tracer and fail; calls from other threads go
    straight to the module, and traces run one at a time.
    """

    _thread: int | None = None

    def trace(self, root, concrete_args=None):  # type: ignore[override]
        with _TRACE_LOCK:
            self._thread = threading.get_ident()
            try:
                return super().trace(root, concrete_args)
            finally:
                self._thread = None

    def call_module(self, m, forward, args, kwargs):  # type: ignore[override]
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):  # type: ignore[override]
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, (nn.Linear, *_HOMOGENEOUS_MODULES)):
            return True
        return super().is_leaf_module(module, qualified_name)


# ----------------------------------------------------------------------------- fx path


def _discover_fx(model: nn.Module, graph: fx.Graph) -> Discovery:
    modules = dict(model.named_modules())
    call_counts = Counter(n.target for n in graph.nodes if n.op == "call_module")
    linear_nodes = {
        n.target: n
        for n in graph.nodes
        if n.op == "call_module" and isinstance(modules[n.target], nn.Linear)
    }
    unusable = _unusable_linears(model, graph, modules, call_counts, linear_nodes)

    pairs: list[LawPair] = []
    chain_reasons: dict[str, str] = {}
    covered: set[str] = set()
    for name, node in linear_nodes.items():
        if name in unusable:
            continue
        partner, activation, reason = _follow(node, modules)
        if partner is not None and partner in unusable:
            partner, reason = None, f"Linear: feeds {partner}, no law ({unusable[partner]})"
        if partner is None:
            chain_reasons[name] = reason
            continue
        bias_aware = modules[name].bias is not None
        pairs.append(LawPair(f"{name}->{partner}", name, partner, activation, bias_aware))
        covered.update(_chain_members(node, partner))
        covered.update((name, partner))

    reasons = {**chain_reasons, **unusable}
    for name in modules:
        if name not in covered and name not in reasons:
            if isinstance(modules[name], nn.Linear) and name not in call_counts:
                reasons[name] = "Linear: not called in forward"
    skipped = _skipped(modules, covered, reasons)
    notes = _notes_for_partial_cover(pairs, chain_reasons)
    return Discovery(type(model).__name__, tuple(pairs), skipped, "fx", notes)


def _unusable_linears(
    model: nn.Module,
    graph: fx.Graph,
    modules: dict[str, nn.Module],
    call_counts: Counter,
    linear_nodes: dict[str, fx.Node],
) -> dict[str, str]:
    """Linears that cannot enter any law, with the reason (checked once, used as A or B)."""
    owners: dict[int, list[str]] = {}
    for module_name, module in modules.items():
        for parameter in module.parameters(recurse=False):
            owners.setdefault(id(parameter), []).append(module_name)
    direct_reads = {str(n.target).rpartition(".")[0] for n in graph.nodes if n.op == "get_attr"}
    unusable: dict[str, str] = {}
    for name in linear_nodes:
        module = modules[name]
        shared = {
            other
            for parameter in module.parameters(recurse=False)
            for other in owners[id(parameter)]
            if other != name
        }
        if type(module).forward is not nn.Linear.forward:
            unusable[name] = f"{type(module).__name__}: custom forward, not analysed"
        elif call_counts[name] > 1:
            unusable[name] = f"Linear: called {call_counts[name]} times in forward (reused)"
        elif name in direct_reads:
            unusable[name] = "Linear: its parameters are also read directly in forward"
        elif shared:
            unusable[name] = f"Linear: parameters shared with {', '.join(sorted(shared))}"
        elif isinstance(module.weight, nn.parameter.UninitializedParameter):
            unusable[name] = "LazyLinear: not initialised yet (run one forward first)"
    return unusable


def _follow(start: fx.Node, modules: dict[str, nn.Module]) -> tuple[str | None, str, str]:
    """Follow A's output to the next Linear: (B name or None, activation, reason if None)."""
    labels: list[str] = []
    node = start
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None, "", _consumers_reason(start, node, users)
        user = users[0]
        if user.op == "call_module" and isinstance(modules[user.target], nn.Linear):
            if user.args[0] is not node:
                return None, "", f"Linear: output enters '{user.target}' not as its input"
            return user.target, _activation_text(labels), ""
        label = _homogeneous_label(user, node, modules)
        if label is None:
            return None, "", _break_reason(start, user, modules)
        labels.append(label)
        node = user


def _chain_members(start: fx.Node, partner: str) -> Iterator[str]:
    node = start
    while True:
        node = next(iter(node.users))
        if node.op == "call_module":
            if node.target == partner:
                return
            yield node.target


def _homogeneous_label(user: fx.Node, source: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """A label when ``user`` is a positively 1-homogeneous map of ``source`` alone, else None."""
    other_inputs = [a for a in (*user.args[1:], *user.kwargs.values()) if isinstance(a, fx.Node)]
    if not user.args or user.args[0] is not source or other_inputs:
        return None
    if user.op == "call_module":
        module = modules[user.target]
        if type(module) not in _HOMOGENEOUS_MODULES:
            return None
        return _module_label(module)
    if user.op == "call_function" and user.target in _HOMOGENEOUS_FUNCTIONS:
        label = _HOMOGENEOUS_FUNCTIONS[user.target]
        if label == "LeakyReLU":
            slope = user.kwargs.get("negative_slope", user.args[1] if len(user.args) > 1 else 0.01)
            return f"LeakyReLU({slope:g})"
        return label
    if user.op == "call_method" and user.target in _HOMOGENEOUS_METHODS:
        return _HOMOGENEOUS_METHODS[user.target]
    return None


def _module_label(module: nn.Module) -> str:
    if isinstance(module, nn.LeakyReLU):
        return f"LeakyReLU({module.negative_slope:g})"
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return f"{type(module).__name__}(p={module.p:g})"
    return type(module).__name__


def _activation_text(labels: list[str]) -> str:
    kept = [label for label in labels if label != "Identity"]
    return "+".join(kept) if kept else "identity"


def _node_text(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "output":
        return "the model output"
    return getattr(node.target, "__name__", str(node.target))


def _consumers_reason(start: fx.Node, node: fx.Node, users: list[fx.Node]) -> str:
    where = "output" if node is start else f"output of {_node_text(node)}"
    if not users:
        return f"Linear: {where} is not used"
    names = ", ".join(_node_text(u) for u in users)
    return f"Linear: {where} used by {len(users)} consumers ({names})"


def _break_reason(start: fx.Node, user: fx.Node, modules: dict[str, nn.Module]) -> str:
    after = start.target
    if user.op == "output":
        return "Linear: output is the model output (no out-layer)"
    if user.op == "call_module":
        module = modules[user.target]
        kind = type(module).__name__
        if isinstance(module, _NORMALISATION_MODULES):
            return (
                f"Linear: output feeds {kind} '{user.target}': normalisation, "
                "scale-invariant not rescaling-symmetric"
            )
        if isinstance(module, _NON_HOMOGENEOUS_MODULES):
            return f"{kind} after {after}: activation not positively homogeneous"
        return f"Linear: output feeds {kind} '{user.target}': not analysed"
    name = _node_text(user)
    if user.target in _NORMALISATION_FUNCTIONS:
        return (
            f"Linear: output feeds {name}: normalisation, scale-invariant not rescaling-symmetric"
        )
    if user.target in _NON_HOMOGENEOUS_FUNCTIONS or (
        user.op == "call_method" and user.target in _NON_HOMOGENEOUS_METHODS
    ):
        return f"{name} after {after}: activation not positively homogeneous"
    if user.target in _ADD_FUNCTIONS or user.target in {"add", "add_", "sub", "sub_"}:
        return f"Linear: output feeds a residual/sum ({name}), not a single Linear"
    return f"Linear: output feeds {name}: not analysed"


def _skipped(
    modules: dict[str, nn.Module], covered: set[str], reasons: dict[str, str]
) -> tuple[tuple[str, str], ...]:
    """Every parameterised module no law covers; children of a reported module are implied."""
    skipped: list[tuple[str, str]] = []
    for name, module in modules.items():
        if name in covered or not name:
            continue
        if any(name.startswith(reported + ".") for reported, _ in skipped):
            continue
        if name in reasons:
            skipped.append((name, reasons[name]))
            continue
        if next(module.parameters(recurse=False), None) is None:
            continue
        skipped.append((name, _module_reason(module)))
    if "" in modules and next(modules[""].parameters(recurse=False), None) is not None:
        skipped.insert(0, ("", f"{type(modules['']).__name__}: own parameters not analysed"))
    return tuple(skipped)


def _module_reason(module: nn.Module) -> str:
    kind = type(module).__name__
    if isinstance(module, _NORMALISATION_MODULES):
        return f"{kind}: normalisation, scale-invariant not rescaling-symmetric"
    if isinstance(module, nn.modules.conv._ConvNd):
        return f"{kind}: convolution not analysed (Linear layers only)"
    if isinstance(module, nn.PReLU):
        return f"{kind}: activation parameters carry no law"
    return f"{kind}: not analysed"


def _notes_for_partial_cover(
    pairs: list[LawPair], chain_reasons: dict[str, str]
) -> tuple[str, ...]:
    """Linears covered as out-layer of one law whose own output starts none (not the head)."""
    out_layers = {p.out_layer_name for p in pairs}
    return tuple(
        f"{name}: out-layer of a law but starts none ({reason})"
        for name, reason in chain_reasons.items()
        if name in out_layers and "model output" not in reason
    )


# ------------------------------------------------------------------ sequential fallback


def _flatten_sequential(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    for child_name, child in module.named_children():
        name = f"{prefix}{child_name}"
        if isinstance(child, nn.Sequential):
            yield from _flatten_sequential(child, f"{name}.")
        else:
            yield name, child


def _discover_sequential(model: nn.Module, trace_error: str) -> Discovery:
    kind = type(model).__name__
    modules = dict(model.named_modules())
    if not isinstance(model, nn.Sequential):
        note = f"torch.fx could not trace {kind} ({trace_error}); no data flow, no laws"
        reasons = {
            name: f"{type(m).__name__}: not analysed (tracing failed)"
            for name, m in modules.items()
            if next(m.parameters(recurse=False), None) is not None
        }
        return Discovery(kind, (), _skipped(modules, set(), reasons), "none", (note,))

    note = (
        f"torch.fx could not trace {kind} ({trace_error}); assumed the registration order "
        "of the nn.Sequential is the data flow"
    )
    layers = list(_flatten_sequential(model, ""))
    pairs: list[LawPair] = []
    covered: set[str] = set()
    reasons: dict[str, str] = {}
    for index, (name, module) in enumerate(layers):
        if not isinstance(module, nn.Linear):
            reasons.update(_opaque_reasons(name, module))
            continue
        if type(module).forward is not nn.Linear.forward:
            reasons[name] = f"{type(module).__name__}: custom forward, not analysed"
            continue
        labels: list[str] = []
        chain: list[str] = []
        for next_name, next_module in layers[index + 1 :]:
            if isinstance(next_module, nn.Linear):
                if type(next_module).forward is not nn.Linear.forward:
                    reasons[name] = f"Linear: feeds {next_name}, which has a custom forward"
                    break
                activation = _activation_text(labels)
                bias_aware = module.bias is not None
                pairs.append(
                    LawPair(f"{name}->{next_name}", name, next_name, activation, bias_aware)
                )
                covered.update((name, next_name, *chain))
                break
            if type(next_module) not in _HOMOGENEOUS_MODULES:
                reasons[name] = (
                    f"Linear: followed by {type(next_module).__name__} '{next_name}': "
                    "not positively homogeneous or not analysed"
                )
                break
            labels.append(_module_label(next_module))
            chain.append(next_name)
        else:
            reasons.setdefault(name, "Linear: output is the model output (no out-layer)")
    return Discovery(
        kind, tuple(pairs), _skipped(modules, covered, reasons), "sequential-order", (note,)
    )


def _opaque_reasons(name: str, module: nn.Module) -> dict[str, str]:
    """Parameterised modules inside a child the fallback cannot look into."""
    kind = type(module).__name__
    return {
        inner_name: f"{type(inner).__name__}: inside {kind} '{name}', which could not be traced"
        for inner_name, inner in module.named_modules(prefix=name)
        if inner is not module and next(inner.parameters(recurse=False), None) is not None
    }
