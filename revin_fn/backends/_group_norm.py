"""The native group-norm kernel with one group per row, and its differentiable statistics.

``torch.native_group_norm`` normalizes rows of ``x`` (time last) in one read and one write and
also returns each row's mean and ``1 / std``, without gradients for them. ``_RowNorm`` adds
those terms to the backward, saving the input and the per-row statistics only. Its backward is
the fused native one; when the backward itself is recorded (``create_graph=True``, double
backward) it is the vector-Jacobian product of the same formula written in differentiable ops.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records a call on these tensors (grad mode on, one requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _grid(rows: Tensor, channels: int) -> tuple[int, int, int]:
    length = rows.shape[-1]
    return rows.numel() // (channels * length), channels, length


def _group_norm(
    rows: Tensor, weight: Tensor | None, bias: Tensor | None, channels: int, floor: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``native_group_norm`` with one group per row (rows contiguous, time last; the kernel
    reads it as ``(batch, channels, length)`` whatever its shape, and keeps that shape)."""
    batch, channels, length = _grid(rows, channels)
    return torch.native_group_norm(rows, weight, bias, batch, channels, length, channels, floor)


def _group_norm_by_ops(
    rows: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    channels: int,
    floor: float,
    detach: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """What ``_RowNorm`` computes, in differentiable ops (for double backward)."""
    batch, channels, length = _grid(rows, channels)
    grid = rows.reshape(batch, channels, length)
    mean = grid.mean(-1, keepdim=True)
    rstd = ((grid - mean).square().mean(-1, keepdim=True) + floor).rsqrt()
    if detach:
        mean, rstd = mean.detach(), rstd.detach()
    y = (grid - mean) * rstd
    if weight is not None:
        y = y * weight.view(1, channels, 1)
    if bias is not None:
        y = y + bias.view(1, channels, 1)
    return y.view_as(rows), mean.view(batch, channels), rstd.view(batch, channels)


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
        ctx.save_for_backward(rows, mean, rstd, weight, bias)  # type: ignore[arg-type]
        ctx.set_materialize_grads(False)
        ctx.channels, ctx.floor, ctx.detach = channels, floor, detach  # type: ignore[attr-defined]
        if detach:
            ctx.mark_non_differentiable(mean, rstd)
        return y, mean, rstd

    @staticmethod
    def backward(
        ctx: Any, grad_y: Tensor | None, grad_mean: Tensor | None, grad_rstd: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
            return _backward_by_ops(ctx, grad_y, grad_mean, grad_rstd)
        rows, mean, rstd, weight, _ = ctx.saved_tensors
        channels = ctx.channels
        batch, _, length = _grid(rows, channels)
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


def _backward_by_ops(
    ctx: Any, grad_y: Tensor | None, grad_mean: Tensor | None, grad_rstd: Tensor | None
) -> tuple[Tensor | None, ...]:
    """The vector-Jacobian product of ``_group_norm_by_ops`` on the saved inputs, recorded so
    that it can be differentiated again (double backward)."""
    rows, _, _, weight, bias = ctx.saved_tensors
    wanted = [
        t for t, need in zip((rows, weight, bias), ctx.needs_input_grad[:3], strict=True) if need
    ]
    outputs = _group_norm_by_ops(rows, weight, bias, ctx.channels, ctx.floor, ctx.detach)
    pairs = [
        (o, g)
        for o, g in zip(outputs, (grad_y, grad_mean, grad_rstd), strict=True)
        if g is not None
    ]
    grads = iter(
        torch.autograd.grad(
            [o for o, _ in pairs], wanted, [g for _, g in pairs],
            create_graph=True, allow_unused=True, materialize_grads=True,
        )
    )  # fmt: skip
    result = [next(grads) if need else None for need in ctx.needs_input_grad[:3]]
    return (*result, None, None, None)


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
