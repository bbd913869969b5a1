"""The native group-norm kernel with one group per row, and its differentiable statistics.

``torch.native_group_norm`` normalizes rows of ``x`` (time last) in one read and one write and
also returns each row's mean and ``1 / std``, without gradients for them. ``_RowNorm`` adds
those terms to the backward, saving the input and the per-row statistics only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records a call on these tensors (grad mode on, one requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _group_norm(
    rows: Tensor, weight: Tensor | None, bias: Tensor | None, channels: int, floor: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``native_group_norm`` with one group per row (rows contiguous, time last; the kernel
    reads it as ``(batch, channels, length)`` whatever its shape, and keeps that shape)."""
    length = rows.shape[-1]
    batch = rows.numel() // (channels * length)
    return torch.native_group_norm(rows, weight, bias, batch, channels, length, channels, floor)


class _RowNorm(torch.autograd.Function):
    """``y = (rows - mean) * rstd * weight + bias`` per row, with differentiable mean and rstd.

    ``native_group_norm`` returns mean and rstd without gradients; this Function adds their
    terms to its backward (unless ``detach``). Saves ``rows`` and the per-row statistics.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        rows: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        channels: int,
        floor: float,
        detach: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, mean, rstd = _group_norm(rows, weight, bias, channels, floor)
        ctx.save_for_backward(rows, mean, rstd, *(() if weight is None else (weight,)))
        ctx.set_materialize_grads(False)
        ctx.channels, ctx.detach = channels, detach  # type: ignore[attr-defined]
        if detach:
            ctx.mark_non_differentiable(mean, rstd)
        return y, mean, rstd

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_y: Tensor | None, grad_mean: Tensor | None, grad_rstd: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        rows, mean, rstd, *affine = ctx.saved_tensors
        weight = affine[0] if affine else None
        channels, length = ctx.channels, rows.shape[-1]
        batch = rows.numel() // (channels * length)
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        if grad_y is not None:
            mask = [need_x and not ctx.detach, need_weight, need_bias]
            grid = (batch, channels, length)
            # the kernel reads dY as contiguous; y.sum() sends an expanded (stride 0) one
            grad_x, grad_weight, grad_bias = torch.ops.aten.native_group_norm_backward(
                grad_y.contiguous().view(grid), rows.view(grid), mean, rstd, weight,
                batch, channels, length, channels, mask,
            )  # fmt: skip
            if grad_x is not None:
                grad_x = grad_x.view_as(rows)
            if need_x and ctx.detach:  # statistics are constants: dy/dx = rstd * weight
                factor = rstd if weight is None else rstd * weight
                grad_x = grad_y * factor.reshape(*grad_y.shape[:-1], 1)
        if need_x and not ctx.detach and (grad_mean is not None or grad_rstd is not None):
            # mean = sum(x) / T and rstd = (var + floor)^(-1/2) with var = sum((x - mean)^2) / T:
            # their terms are d/dx = (grad_mean - grad_rstd * rstd^3 * (x - mean)) / T.
            slope = torch.zeros_like(mean) if grad_rstd is None else grad_rstd * rstd.pow(3)
            shift = slope * mean if grad_mean is None else grad_mean + slope * mean
            if grad_x is None:
                grad_x = torch.zeros_like(rows)
            per_row = grad_x.view(-1, length)
            per_row.addcmul_(rows.view(-1, length), (slope / -length).reshape(-1, 1))
            per_row.add_((shift / length).reshape(-1, 1))
        if grad_x is None and need_x:
            grad_x = torch.zeros_like(rows)
        return grad_x, grad_weight, grad_bias, None, None, None


def norm(
    rows: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    channels: int,
    floor: float,
    detach: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, rstd)`` of the kernel, through ``_RowNorm`` where autograd records the call."""
    if needs_grad(rows, weight, bias):
        return _RowNorm.apply(  # type: ignore[no-untyped-call,no-any-return]
            rows, weight, bias, channels, floor, detach
        )
    return _group_norm(rows, weight, bias, channels, floor)
