"""Input checks shared by the theory modules; every failure names the limit and the value."""

from __future__ import annotations

import numbers

import numpy as np

from lradvisor.errors import LRAdvisorError


def shown(value: object) -> str:
    """A short rendering of a rejected value, so a huge array does not flood the message."""
    array = np.asarray(value)
    if array.ndim == 0 or array.size <= 6:
        return repr(value) if array.ndim == 0 else np.array2string(array, precision=6)
    return f"an array of shape {array.shape}"


def positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` ≥ 1; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise LRAdvisorError(f"{name} must be a positive integer, but got {value!r}.")
    return int(value)


def vector(name: str, value: object) -> np.ndarray:
    """``value`` as a float64 array with one axis; NaN and ±inf are left for the caller."""
    array = np.asarray(value, dtype=float)
    if array.ndim != 1:
        raise LRAdvisorError(f"{name} must have 1 axis, but got shape {array.shape}.")
    return array


def finite_array(name: str, value: object, *, ndim: int | None = None) -> np.ndarray:
    """``value`` as a float64 array with only finite entries (and ``ndim`` axes if given)."""
    array = np.asarray(value, dtype=float)
    if ndim is not None and array.ndim != ndim:
        axes = "axis" if ndim == 1 else "axes"
        raise LRAdvisorError(f"{name} must have {ndim} {axes}, but got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise LRAdvisorError(f"{name} must be finite, but got {shown(value)}.")
    return array


def positive_array(name: str, value: object, *, ndim: int | None = None) -> np.ndarray:
    """``value`` as a float64 array of finite entries > 0."""
    array = finite_array(name, value, ndim=ndim)
    if np.any(array <= 0):
        raise LRAdvisorError(f"{name} must be positive, but got {shown(value)}.")
    return array


def positive_float(name: str, value: object) -> float:
    """``value`` as a finite float > 0."""
    number = float(np.asarray(value, dtype=float))
    if not np.isfinite(number) or number <= 0:
        raise LRAdvisorError(f"{name} must be a positive finite number, but got {value!r}.")
    return number


def same_length(first: str, a: np.ndarray, second: str, b: np.ndarray) -> None:
    """Refuse two arrays whose leading axes differ."""
    if a.shape[0] != b.shape[0]:
        raise LRAdvisorError(
            f"{first} and {second} must have the same length, "
            f"but got {a.shape[0]} and {b.shape[0]}."
        )


def enough_points(count: int, *, minimum: int, what: str) -> None:
    """Refuse a fit with fewer than ``minimum`` usable points."""
    if count < minimum:
        raise LRAdvisorError(f"{what} needs at least {minimum} usable points, but got {count}.")
