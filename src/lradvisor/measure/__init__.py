"""Measurements on torch models: conservation laws, Hessian spectra, switch rates."""

from lradvisor.measure.discovery import Discovery, LawPair, discover_pairs
from lradvisor.measure.lanczos import hessian_operator, lanczos, sharpness, top_eigenpairs
from lradvisor.measure.monitor import ConservationMonitor

__all__ = [
    "ConservationMonitor",
    "Discovery",
    "LawPair",
    "discover_pairs",
    "hessian_operator",
    "lanczos",
    "sharpness",
    "top_eigenpairs",
]
