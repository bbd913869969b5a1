"""The native group-norm kernel with one group per row, and the autograd check shared by routes.

``torch.native_group_norm`` normalizes rows of ``x`` (time last) in one read and one write and
also returns each row's mean and ``1 / std``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records a call on these tensors (grad mode on, one requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def group_norm(
    grid: Tensor, weight: Tensor | None, bias: Tensor | None, floor: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, rstd)`` of ``native_group_norm`` with one group per row of ``grid``
    (batch, channels, time), contiguous; mean and rstd have shape (batch, channels)."""
    batch, channels, length = grid.shape
    return torch.native_group_norm(grid, weight, bias, batch, channels, length, channels, floor)
