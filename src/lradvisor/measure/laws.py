"""Per-unit rescaling balance c_{l,j} = ‖W_{l+1}[:, j]‖² − ‖W_l[j, :]‖² − b_l[j]².

One function serves both the conserved quantity (feed it weights) and the per-step gradient
imbalance δ (feed it gradients): the algebra is identical. Leading batch dimensions are kept,
so the batched engine and the per-model monitor share this code.
"""

from __future__ import annotations

import torch


def _sq_sum(x: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    if x.dtype != dtype:
        x = x.to(dtype)
    return (x * x).sum(dim)


def unit_balance(
    out_weight: torch.Tensor,
    in_weight: torch.Tensor,
    in_bias: torch.Tensor | None = None,
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Per-hidden-unit balance between the layer into a hidden layer and the layer out of it.

    .. math::

        c_j = \\lVert W_{l+1}[:, j] \\rVert^2 - \\lVert W_l[j, :] \\rVert^2 - b_l[j]^2

    Args:
        out_weight: W_{l+1}, shape ``(..., k, m)`` (``torch.nn.Linear`` layout).
        in_weight: W_l, shape ``(..., m, fan_in)``.
        in_bias: b_l, shape ``(..., m)``, or None for a bias-free layer.
        dtype: accumulation dtype (float64 by default, docs/theory.md §2 "float32 round-off").

    Returns:
        Tensor of shape ``(..., m)`` in ``dtype``. Summing over the last axis gives the
        layer-level law C_l (or δ_l when gradients are passed).
    """
    balance = _sq_sum(out_weight, -2, dtype) - _sq_sum(in_weight, -1, dtype)
    if in_bias is not None:
        balance = balance - _sq_sum(in_bias.unsqueeze(-1), -1, dtype)
    return balance
