"""The user's optimizer, as a name, a ``torch.optim`` class, a factory or an instance.

:func:`optimizer_spec` reads what matters for the advice (family, momentum, Nesterov,
β₁, weight decay) from ``optimizer.defaults`` of an instance built on a dummy parameter, so a
``functools.partial(torch.optim.AdamW, weight_decay=0.01)`` is understood like the class.
:class:`BatchedOptimizer` applies torch.optim's SGD and Adam/AdamW update rules to
parameters stacked along a leading trial axis, one learning rate per trial, so a probe of
many rates trains as one computation; any other optimizer trains trial by trial with the
real ``torch.optim`` object.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from lradvisor.errors import LRAdvisorError

__all__ = ["BatchedOptimizer", "OptimizerSpec", "optimizer_spec"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]

# Names a user may type (CLI --optimizer, YAML training.optimizer) besides torch.optim classes.
ALIASES = {
    "sgd": ("SGD", {}),
    "momentum": ("SGD", {"momentum": 0.9}),
    "nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}),
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {}),
}
ADAPTIVE = ("Adam", "AdamW", "NAdam", "RAdam", "Adamax", "RMSprop", "Adagrad", "Adadelta")
# Flags of torch.optim's SGD / Adam that change nothing in the update rule.
_IMPLEMENTATION_FLAGS = ("foreach", "differentiable", "fused", "capturable", "lr")


@dataclass(frozen=True)
class OptimizerSpec:
    """What lradvisor knows of one optimizer.

    ``family`` is ``"sgd"`` (plain, heavy-ball or Nesterov momentum: a stability bound from
    the sharpness applies), ``"adam"`` (Adam/AdamW: batched, no bound at θ₀) or
    ``"adaptive"`` (any other ``torch.optim`` optimizer: trained trial by trial, no bound).
    ``hyper`` holds the optimizer's defaults except the learning rate.
    """

    name: str
    family: str
    hyper: dict
    factory: OptimizerFactory = field(repr=False, compare=False)
    default_lr: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def momentum(self) -> float:
        if self.family == "adam":
            return float(self.hyper["betas"][0])
        return float(self.hyper.get("momentum", 0.0) or 0.0)

    @property
    def nesterov(self) -> bool:
        return bool(self.hyper.get("nesterov", False))

    @property
    def weight_decay(self) -> float:
        return float(self.hyper.get("weight_decay", 0.0) or 0.0)

    @property
    def decoupled(self) -> bool:
        return bool(self.hyper.get("decoupled_weight_decay", False))

    @property
    def batched(self) -> bool:
        """Whether :class:`BatchedOptimizer` reproduces it (else: the real optimizer per trial)."""
        return self.family in ("sgd", "adam") and not self.hyper.get("maximize", False)

    @property
    def plain_gradient_descent(self) -> bool:
        """Plain (S)GD: no momentum, no weight decay — the setting of the paper's theory."""
        return self.family == "sgd" and self.momentum == 0.0 and self.weight_decay == 0.0

    def describe(self) -> str:
        shown = {
            key: value
            for key, value in self.hyper.items()
            if key not in _IMPLEMENTATION_FLAGS and key != "maximize" and value not in (None,)
        }
        if self.family == "sgd":
            shown = {
                k: v
                for k, v in shown.items()
                if k in ("momentum", "nesterov", "weight_decay", "dampening") and v
            }
        elif self.family == "adam":
            shown = {
                k: v
                for k, v in shown.items()
                if k in ("betas", "eps", "weight_decay", "amsgrad") and (k != "amsgrad" or v)
            }
        text = ", ".join(f"{key}={_short(value)}" for key, value in shown.items())
        return f"{self.name}({text})"

    def make(self, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        return self.factory(params, lr=lr)


def _short(value: object) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def optimizer_spec(
    optimizer: object = "sgd",
    *,
    momentum: float | None = None,
    nesterov: bool | None = None,
    weight_decay: float | None = None,
) -> OptimizerSpec:
    """Normalise ``optimizer`` (name, class, factory or instance) into an :class:`OptimizerSpec`.

    ``momentum``, ``nesterov`` and ``weight_decay`` override the optimizer's own values
    (the CLI's ``--momentum``); momentum applies to SGD only.

    Raises:
        LRAdvisorError: an unknown name, a factory that cannot be called as
            ``factory(params, lr=...)``, or an option that the optimizer does not have.
    """
    factory, where = _factory(optimizer)
    overrides = {
        key: value
        for key, value in (
            ("momentum", momentum),
            ("nesterov", nesterov),
            ("weight_decay", weight_decay),
        )
        if value is not None
    }
    if overrides:
        factory = functools.partial(factory, **overrides)
    instance = _instantiate(factory, where)
    cls = type(instance)
    name = cls.__name__
    hyper = {key: value for key, value in instance.defaults.items() if key != "lr"}
    if isinstance(instance, torch.optim.SGD):
        family = "sgd"
    elif isinstance(instance, torch.optim.Adam | torch.optim.AdamW):
        family = "adam"
    else:
        family = "adaptive" if name in ADAPTIVE else "other"
    notes = ()
    if family == "other":
        notes = (
            f"{name} is neither SGD nor an adaptive method lradvisor knows: no stability bound, "
            "the probe brackets its default rate",
        )
    return OptimizerSpec(
        name=name,
        family=family,
        hyper=hyper,
        factory=factory,
        default_lr=_default_lr(cls),
        notes=notes,
    )


def _factory(optimizer: object) -> tuple[OptimizerFactory, str]:
    if isinstance(optimizer, str):
        key = optimizer.strip()
        if key.lower() in ALIASES:
            class_name, options = ALIASES[key.lower()]
            return functools.partial(getattr(torch.optim, class_name), **options), key
        classes = {
            name.lower(): getattr(torch.optim, name)
            for name in dir(torch.optim)
            if isinstance(getattr(torch.optim, name), type)
            and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)
            and name != "Optimizer"
        }
        if key.lower() not in classes:
            known = ", ".join([*ALIASES, *sorted(n for n in classes if n not in ALIASES)])
            raise LRAdvisorError(f"optimizer must be one of {known}, but got {optimizer!r}.")
        return classes[key.lower()], key
    if isinstance(optimizer, torch.optim.Optimizer):
        if len(optimizer.param_groups) > 1:
            raise LRAdvisorError(
                f"optimizer {type(optimizer).__name__} has {len(optimizer.param_groups)} "
                "parameter groups; pass its class or a factory (functools.partial) instead: "
                "the probe builds one optimizer per trial over all parameters"
            )
        defaults = {key: value for key, value in optimizer.defaults.items() if key != "lr"}
        return functools.partial(type(optimizer), **defaults), type(optimizer).__name__
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer, optimizer.__name__
    if callable(optimizer):
        return optimizer, getattr(optimizer, "__name__", type(optimizer).__name__)
    raise LRAdvisorError(
        "optimizer must be a name ('sgd', 'adamw', …), a torch.optim class, a factory "
        f"(functools.partial(torch.optim.AdamW, weight_decay=0.01)) or an instance, but got a {type(optimizer).__name__}."
    )


def _instantiate(factory: OptimizerFactory, where: str) -> torch.optim.Optimizer:
    dummy = torch.nn.Parameter(torch.zeros(1))
    try:
        instance = factory([dummy], lr=1e-3)
    except TypeError as error:
        raise LRAdvisorError(
            f"optimizer {where}: cannot build it as factory(params, lr=...): {error}"
        ) from None
    except Exception as error:  # a user factory can raise anything
        raise LRAdvisorError(
            f"optimizer {where}: building it raised {type(error).__name__}: {error}"
        ) from None
    if not isinstance(instance, torch.optim.Optimizer):
        raise LRAdvisorError(
            f"optimizer {where}: expected a torch.optim.Optimizer from factory(params, lr=...), "
            f"got a {type(instance).__name__}"
        )
    return instance


def _default_lr(cls: type) -> float | None:
    try:
        default = inspect.signature(cls).parameters["lr"].default
    except (KeyError, TypeError, ValueError):
        return None
    return float(default) if isinstance(default, int | float) else None


class BatchedOptimizer:
    r"""torch.optim's SGD / Adam / AdamW on parameters stacked along a trial axis.

    Trial k steps at ``lrs[k]·multiplier`` (the schedule's factor at this step). The rules are
    those of ``torch.optim`` (single-tensor path), with g the gradient and p the parameter:

    .. math::

        \text{SGD:}\ & g \leftarrow g + w p;\quad b \leftarrow \beta b + (1 - d) g
            \ (b_1 = g);\quad p \leftarrow p - \eta\,(g + \beta b \text{ if Nesterov else } b) \\
        \text{Adam:}\ & g \leftarrow g + w p \text{ (coupled) or } p \leftarrow p(1 - \eta w)
            \text{ (AdamW)};\quad m \leftarrow \beta_1 m + (1 - \beta_1) g;\quad
            v \leftarrow \beta_2 v + (1 - \beta_2) g^2; \\
            & p \leftarrow p - \frac{\eta}{1 - \beta_1^t}\,
            \frac{m}{\sqrt{\hat v / (1 - \beta_2^t)} + \epsilon},\ \hat v = \max_{s \le t} v_s
            \text{ (amsgrad) or } v_t

    A diverged trial's NaNs stay in its own slice: trials never mix.
    """

    def __init__(self, spec: OptimizerSpec, lrs: torch.Tensor) -> None:
        if not spec.batched:
            raise LRAdvisorError(f"{spec.name} is trained trial by trial, not batched")
        self.spec = spec
        self.lrs = lrs
        self.steps = 0
        self.state: dict[str, list[torch.Tensor]] = {}

    def keep(self, index: torch.Tensor) -> None:
        """Keep the trials at ``index`` (a subset, in that order)."""
        self.lrs = self.lrs[index]
        self.state = {name: [t[index] for t in slots] for name, slots in self.state.items()}

    def extend(self, other: BatchedOptimizer) -> None:
        """Append ``other``'s trials (same optimizer, same step count)."""
        if other.steps != self.steps:
            raise LRAdvisorError("cannot merge trials at different steps")
        self.lrs = torch.cat([self.lrs, other.lrs])
        self.state = {
            name: [torch.cat([a, b]) for a, b in zip(slots, other.state[name], strict=True)]
            for name, slots in self.state.items()
        }

    def second_moment(self, name: str, trial: int) -> torch.Tensor | None:
        """Adam's bias-corrected v̂ of parameter ``name`` for one trial (None for SGD)."""
        if self.spec.family != "adam" or name not in self.state:
            return None
        slots = self.state[name]
        v = slots[2] if self.spec.hyper.get("amsgrad") else slots[1]
        beta2 = self.spec.hyper["betas"][1]
        return v[trial] / (1 - beta2**self.steps)

    @torch.no_grad()
    def step(
        self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], multiplier: float
    ) -> None:
        self.steps += 1
        for name, param in params.items():
            lr = (self.lrs * multiplier).view(-1, *([1] * (param.dim() - 1))).to(param.dtype)
            if self.spec.family == "sgd":
                self._sgd(name, param, grads[name], lr)
            else:
                self._adam(name, param, grads[name], lr)

    def _sgd(self, name: str, param: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor) -> None:
        h = self.spec.hyper
        decay, momentum = h.get("weight_decay", 0.0), h.get("momentum", 0.0)
        if decay:
            grad = grad + decay * param
        if momentum:
            if name not in self.state:
                self.state[name] = [grad.clone()]
            else:
                buffer = self.state[name][0]
                buffer.mul_(momentum).add_(grad, alpha=1 - h.get("dampening", 0.0))
            buffer = self.state[name][0]
            grad = grad + momentum * buffer if h.get("nesterov") else buffer
        param.sub_(lr * grad)

    def _adam(self, name: str, param: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor) -> None:
        h = self.spec.hyper
        beta1, beta2 = h["betas"]
        decay = h.get("weight_decay", 0.0)
        if decay:
            if h.get("decoupled_weight_decay"):
                param.mul_(1 - lr * decay)
            else:
                grad = grad + decay * param
        if name not in self.state:
            zeros = torch.zeros_like(param)
            self.state[name] = [zeros, zeros.clone()] + (
                [zeros.clone()] if h.get("amsgrad") else []
            )
        slots = self.state[name]
        m, v = slots[0], slots[1]
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if h.get("amsgrad"):
            torch.maximum(slots[2], v, out=slots[2])
            v = slots[2]
        bias1 = 1 - beta1**self.steps
        bias2 = 1 - beta2**self.steps
        denominator = (v.sqrt() / bias2**0.5).add_(h["eps"])
        param.sub_((lr / bias1) * m / denominator)
