"""The spectral theory of conservation-law breaking, in numpy and scipy only (docs/theory.md).

Nothing here imports torch, Optuna or MLflow: this is the part a reader checks against the
paper, and it is testable in milliseconds.
"""

from __future__ import annotations

from lradvisor.theory.coefficients import (
    linear_network_coefficients,
    mode_coefficients,
    spectrum_correlation,
)
from lradvisor.theory.fits import (
    additive_interaction,
    e_folding_time,
    eos_by_width,
    fit_decay_timescale,
    fit_power_law,
    fit_tau,
    fit_width_law,
    local_slope,
)
from lradvisor.theory.spectral import (
    crossover_rates,
    eos_learning_rate,
    gradient_imbalance_sum,
    is_stable,
    local_alpha,
    quadratic_divergence_factor,
)
from lradvisor.theory.stability import (
    adam_threshold,
    mode_spectral_radius,
    momentum_threshold,
)

__all__ = [
    "adam_threshold",
    "additive_interaction",
    "crossover_rates",
    "e_folding_time",
    "eos_by_width",
    "eos_learning_rate",
    "fit_decay_timescale",
    "fit_power_law",
    "fit_tau",
    "fit_width_law",
    "gradient_imbalance_sum",
    "is_stable",
    "linear_network_coefficients",
    "local_alpha",
    "local_slope",
    "mode_coefficients",
    "mode_spectral_radius",
    "momentum_threshold",
    "quadratic_divergence_factor",
    "spectrum_correlation",
]
