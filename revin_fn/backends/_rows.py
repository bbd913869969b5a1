"""The native row route: one group-norm pass over instances laid out as contiguous rows.

Every instance is a row of shape ``(time,)`` (time last, or moved last by the caller) and
``torch.native_group_norm`` normalizes all rows in one read and one write of ``x`` that also
yields each row's mean and ``1 / std``. Two things can make that pass inexact, and one host
read of a combined check settles both:

- the kernel writes ``x * a + c``, which rounds at the size of the offset ``|mean| / scale``
  (times ``max(|gamma'|, 1)``); above ``OFFSET_LIMIT`` every row is normalized once more after
  subtracting its first-pass mean;
- ``eps_mode="clamp"``: the kernel adds a negligible floor instead of clamping, so rows whose
  variance is below ``eps`` are rescaled from the pass's exact statistics,
  ``y = beta + (y - beta) * kernel_scale / scale`` (one element-wise pass, no recomputation).

Neither remedy reads a value again. The whole route, gamma's guard and the Frame's gain and
offset included, is one autograd node (``_Rows``) with a fused backward that reads no value;
recorded for double backward, that backward is the vector-Jacobian product of the reference
formula.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from .. import _reference
from .._options import Options
from .._patterns import Layout
from .._reference import Frame
from ._group_norm import group_norm, needs_grad, vjp_by_ops

# Largest |mean| / scale * max(|gamma'|, 1) normalized in a single pass: the fused output
# x * a + c rounds at the size of the offset, about 6e-6 against float64 at 30 and 2e-5 at 100
# (docs/design.md), so 32 keeps the 1e-5 guarantee. Shared by the column route.
OFFSET_LIMIT = 32.0
SHIFTED = 2  # bits of the one value read per forward
CLAMPED = 1
OVERFLOW = 4


class Rows(NamedTuple):
    """Per-row results, in the kernel's ``(batch, channels)`` shape."""

    loc: Tensor
    scale: Tensor
    gain: Tensor
    offset: Tensor
    variance: Tensor


def kernel_floor(values: Tensor, options: Options) -> float:
    """What the kernel adds to the variance: eps for ``"add"``; for ``"clamp"`` a floor far
    below eps, which only keeps a zero variance from making ``1 / std`` infinite."""
    if options.eps_mode == "add":
        return options.eps
    return max(options.eps * 2.0**-60, torch.finfo(values.dtype).tiny)


def check_code(offset: Tensor, clamped: Tensor | None, overflow: Tensor) -> int:
    """The one host read of a forward: ``SHIFTED`` if some ``offset`` (``|mean| / scale`` times
    ``max(|gamma'|, 1)``) is above ``OFFSET_LIMIT``, plus ``CLAMPED`` if some ``clamped``, plus
    ``OVERFLOW`` if ``overflow`` (a scale past the float range: its outputs become NaN, not 0).
    A NaN offset asks for nothing: a non-finite instance is NaN on every route."""
    flags = (offset.amax() > OFFSET_LIMIT) * SHIFTED + overflow * OVERFLOW
    return int(flags if clamped is None else flags + clamped.any())


def steps(code: int) -> str:
    """The remedies a check code asked for, as a route suffix for ``backends.record``."""
    return (
        ("+shifted" if code & SHIFTED else "")
        + ("+clamped" if code & CLAMPED else "")
        + ("+overflow" if code & OVERFLOW else "")
    )


def _weights(
    gamma: Tensor | None, beta: Tensor | None, layout: Layout, shape: tuple[int, ...]
) -> tuple[Tensor | None, Tensor | None, int]:
    """Affine vectors for the kernel and its channel count (rows per period of the weights)."""
    if gamma is None and beta is None:
        return None, None, 1
    last = layout.ndim - 1 if layout.time != layout.ndim - 1 else layout.ndim - 2
    if layout.variate == last:  # the last axis besides time: the weights repeat every V rows
        return (
            None if gamma is None else gamma.contiguous(),
            None if beta is None else beta.contiguous(),
            shape[last],
        )
    count = math.prod(shape)
    view = layout.variate_view(shape[layout.variate])  # type: ignore[index]
    return (  # the kernel reads its weights as contiguous vectors
        None if gamma is None else gamma.view(view).expand(shape).reshape(count).contiguous(),
        None if beta is None else beta.view(view).expand(shape).reshape(count).contiguous(),
        count,
    )


def normalize_rows(
    values: Tensor,
    layout: Layout,
    gamma: Tensor | None,
    beta: Tensor | None,
    options: Options,
    statistics: bool,
    dtype: torch.dtype,
) -> tuple[Tensor, Frame, str]:
    """The route over rows along the last axis of ``values`` (statistics dtype): the tensor in
    ``layout``, or in ``layout`` with the time axis moved last. ``gamma`` is not yet guarded;
    ``dtype`` is the caller's input dtype. Also returns the remedies taken (``steps``)."""
    values = values.contiguous()  # the kernel reads any shape as (batch, channels, length)
    shape, time = values.shape, layout.time
    stats_shape = (*shape[:time], 1, *shape[time:-1])  # in layout, time kept with size 1
    weight, bias, channels = _weights(gamma, beta, layout, stats_shape)
    grid = values.view(-1, channels, shape[-1])
    if needs_grad(values, weight, bias):
        y, *rows, code = _Rows.apply(grid, weight, bias, options)  # type: ignore[no-untyped-call]
    else:
        y, *rows, code, _ = _forward(grid, weight, bias, options)
        del rows[1]  # the scale, kept by the backward only
    loc, gain, offset, variance = (t.view(stats_shape) for t in rows)
    frame = Frame(layout, loc, variance if statistics else None, gain, offset, dtype)
    return y.view(shape), frame, steps(int(code))


def _guard(gamma: Tensor | None, eps: float) -> tuple[Tensor | None, Tensor | None]:
    """``(gamma', |gamma'|)`` with ``_reference.guard_gamma``."""
    if gamma is None:
        return None, None
    guarded = _reference.guard_gamma(gamma, eps)
    return guarded, guarded.abs()


def _forward(
    grid: Tensor, gamma: Tensor | None, beta: Tensor | None, options: Options
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, int, tuple[Tensor | None, Tensor]]:
    """``(y, loc, scale, gain, offset, variance, code, (shift, center))`` of ``grid`` (batch,
    channels, time): ``loc = shift + center``, ``shift`` the first-pass mean where the rows
    were shifted (else ``None``, and ``center = loc``)."""
    eps, clamp = options.eps, options.eps_mode == "clamp"
    floor = kernel_floor(grid, options)
    guarded, size = _guard(gamma, eps)
    y, mean, rstd = group_norm(grid, guarded, beta, floor)
    limit = eps**-0.5  # rstd above it: variance below eps
    inverse = rstd.clamp(max=limit) if clamp else rstd
    offset = torch.linalg.vector_norm(mean * inverse, math.inf)
    if size is not None:
        offset = offset * size.amax().clamp_(min=1)
    low, high = torch.aminmax(rstd)  # rstd 0: a variance past the float range
    code = check_code(offset, high > limit if clamp else None, low == 0)
    loc, shift = mean, None
    if code & SHIFTED:  # far from 0 for its spread: once more, each row shifted by its mean
        shift = mean
        del y  # free the first output before the second is allocated
        y, mean, rstd = group_norm(grid - shift.unsqueeze(-1), guarded, beta, floor)
        inverse = rstd.clamp(max=limit) if clamp else rstd
        loc = shift + mean
    scale = inverse.reciprocal()
    if code and clamp:  # rows below the eps floor: rescale from the exact statistics
        ratio = (inverse / rstd).unsqueeze(-1)  # 1 for every other row
        y = y * ratio if beta is None else torch.addcmul(beta.view(-1, 1) * (1 - ratio), y, ratio)
    if code & OVERFLOW:
        y = torch.where((rstd == 0).unsqueeze(-1), float("nan"), y)
    variance = rstd.square().reciprocal_().sub_(floor)
    gain, offset = _reference.gain_offset(loc, scale, guarded, beta)
    return y, loc, scale, gain, offset, variance, code, (shift, mean)


def _backward(
    grid: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    saved: tuple[Tensor, Tensor, Tensor | None, Tensor],
    options: Options,
    clamped: bool,
    grads: tuple[Tensor | None, ...],
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients for ``grid``, gamma and beta from those of ``y``, ``loc``, ``gain``,
    ``offset`` and ``variance``.

    With ``y = (x - loc) * k + beta``, ``k = gamma' / scale``, ``gain = scale / gamma'`` and
    ``offset = loc - beta * gain``, every output's gradient becomes per-row gradients of
    ``loc``, ``scale``, ``gamma'`` and ``beta``; ``x`` gets ``k * dy`` plus the mean's and the
    variance's terms (none with ``detach``). The output's part is the kernel's fused backward
    unless a row below the eps floor passes gradient to ``x``; then two reductions.
    """
    scale, variance, shift, center = saved
    g_y, g_loc, g_gain, g_offset, g_variance = grads[:5]
    length, eps, detach = grid.shape[-1], options.eps, options.detach
    guarded = None if gamma is None else _reference.guard_gamma(gamma, eps)
    source = grid if shift is None else grid - shift.unsqueeze(-1)  # x - shift, accurately
    factor = scale.reciprocal() if guarded is None else guarded / scale
    zeros = torch.zeros_like(scale)
    d_loc, d_scale, d_gamma, d_beta = zeros, zeros, zeros, zeros
    grad_x = grad_gamma = grad_beta = None
    if g_y is not None and not (clamped and needs[0] and not detach):
        # the output's part in one fused pass: the kernel's own backward, with 1 / scale as
        # its rstd (exact for every row unless a clamped row passes gradient to x)
        batch, channels, _ = grid.shape
        mask = [
            needs[0] and not detach,
            needs[1] and gamma is not None,
            needs[2] and beta is not None,
        ]
        grad_x, grad_gamma, grad_beta = torch.ops.aten.native_group_norm_backward(
            g_y.contiguous(), source, center, scale.reciprocal(), guarded,
            batch, channels, length, channels, mask,
        )  # fmt: skip
        if needs[0] and detach:
            grad_x = g_y * factor.unsqueeze(-1)
    elif g_y is not None:
        total = g_y.sum(-1)
        moment = (g_y * source).sum(-1) - center * total  # sum over time of dy * (x - loc)
        d_loc, d_scale = -factor * total, -factor / scale * moment
        d_gamma, d_beta = moment / scale, total
        grad_x = g_y * factor.unsqueeze(-1) if needs[0] else None
    d_gain = g_gain
    if g_offset is not None:
        d_loc = d_loc + g_offset
        gain = scale if guarded is None else scale / guarded
        d_beta = d_beta - g_offset * gain
        if beta is not None:
            d_gain = -g_offset * beta if d_gain is None else d_gain - g_offset * beta
    if d_gain is not None:  # gain = scale / gamma'
        if guarded is None:
            d_scale = d_scale + d_gain
        else:
            d_scale = d_scale + d_gain / guarded
            d_gamma = d_gamma - d_gain * scale / guarded.square()
    statistics_used = any(g is not None for g in (g_loc, g_gain, g_offset, g_variance))
    if needs[0] and not detach and (statistics_used or grad_x is None or clamped):
        d_loc = d_loc if g_loc is None else d_loc + g_loc
        slope = 0.5 / scale  # d scale / d variance (0 where the eps clamp holds)
        if options.eps_mode == "clamp":
            slope = torch.where(variance >= eps, slope, 0)
        d_variance = d_scale * slope
        if g_variance is not None:
            d_variance = d_variance + g_variance
        rate = d_variance * (2 / length)  # variance = mean over time of (x - loc)^2
        offset = (d_loc / length - rate * center).unsqueeze(-1)
        base = offset.expand_as(grid) if grad_x is None else grad_x + offset
        grad_x = torch.addcmul(base, source, rate.unsqueeze(-1))
    elif needs[0] and grad_x is None:
        grad_x = torch.zeros_like(grid)
    if needs[1] and gamma is not None:
        total_gamma = d_gamma.sum(0) if grad_gamma is None else grad_gamma + d_gamma.sum(0)
        grad_gamma = total_gamma * (gamma.abs() >= eps)  # the guard passes no gradient
    if needs[2] and beta is not None:
        grad_beta = d_beta.sum(0) if grad_beta is None else grad_beta + d_beta.sum(0)
    return grad_x, grad_gamma, grad_beta


def _by_ops(
    grid: Tensor, gamma: Tensor | None, beta: Tensor | None, options: Options
) -> tuple[Tensor, ...]:
    """``_forward``'s outputs by the reference math in differentiable ops (double backward)."""
    layout = Layout("b c t", 3, ("b", "c", "t"), 2, 1)
    y, frame = _reference.normalize(grid, layout, gamma, beta, None, options)
    rows = (frame.loc, frame.gain, frame.offset, frame.variance)
    return (y, *(t.squeeze(-1) for t in rows))  # type: ignore[union-attr]


class _Rows(torch.autograd.Function):
    """The row route as one node: ``(y, loc, gain, offset, variance, code)``.

    Saves ``grid``, gamma, beta and the per-row statistics (and the shift where taken).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, grid: Tensor, gamma: Tensor | None, beta: Tensor | None, options: Options
    ) -> tuple[Tensor, ...]:
        y, loc, scale, gain, offset, variance, code, (shift, center) = _forward(
            grid, gamma, beta, options
        )
        ctx.save_for_backward(grid, gamma, beta, scale, variance, shift, center)  # type: ignore[arg-type]
        ctx.options, ctx.clamped = options, bool(code & CLAMPED)  # type: ignore[attr-defined]
        ctx.set_materialize_grads(False)
        if options.detach:
            ctx.mark_non_differentiable(loc, variance)
        return y, loc, gain, offset, variance, code  # type: ignore[return-value]

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        grid, gamma, beta, *saved = ctx.saved_tensors
        options = ctx.options
        if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
            outputs = _by_ops(grid, gamma, beta, options)
            needs = ctx.needs_input_grad[:3]
            return (*vjp_by_ops(outputs, grads[:5], (grid, gamma, beta), needs), None)
        return (*_backward(
                grid, gamma, beta, saved, options, ctx.clamped, grads, ctx.needs_input_grad[:3]
            ),
                None)  # fmt: skip
