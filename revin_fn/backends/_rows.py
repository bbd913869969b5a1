"""The native row route: one group-norm pass over instances laid out as contiguous rows.

Every instance is a row of shape ``(time,)`` (time last, or moved last by the caller) and
``torch.native_group_norm`` normalizes all rows in one read and one write of ``x`` that also
yields each row's mean and ``1 / std``. Two things can make that pass inexact, and one host
read of a combined check settles both:

- the kernel writes ``x * a + c``, which rounds at the size of the offset ``|mean| / scale``
  (times ``max(|gamma'|, 1)``); above ``OFFSET_LIMIT`` (or for non-finite values) every row is
  normalized once more after subtracting its first-pass mean;
- ``eps_mode="clamp"``: the kernel adds a negligible floor instead of clamping, so rows whose
  variance is below ``eps`` are rescaled from the pass's exact statistics,
  ``y = beta + (y - beta) * kernel_scale / scale`` (one element-wise pass, no recomputation).

Neither remedy reads a value again, so a forward reads the host once; the backward reads none.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _reference
from .._options import Options
from .._patterns import Layout
from .._reference import Frame
from ._group_norm import needs_grad, norm

# Largest |mean| / scale * max(|gamma'|, 1) normalized in a single pass: the fused output
# x * a + c rounds at the size of the offset, about 6e-6 against float64 at 30 and 2e-5 at 100
# (docs/design.md), so 32 keeps the 1e-5 guarantee. Shared by the column route.
OFFSET_LIMIT = 32.0
SHIFTED = 2  # bits of the one value read per forward
CLAMPED = 1


def kernel_floor(values: Tensor, options: Options) -> float:
    """What the kernel adds to the variance: eps for ``"add"``; for ``"clamp"`` a floor far
    below eps, which only keeps a zero variance from making ``1 / std`` infinite."""
    if options.eps_mode == "add":
        return options.eps
    return max(options.eps * 2.0**-60, torch.finfo(values.dtype).tiny)


def check_code(offset: Tensor, clamped: Tensor | None) -> int:
    """The one host read of a forward: ``SHIFTED`` if some ``offset`` is above
    ``OFFSET_LIMIT`` or not finite, plus ``CLAMPED`` if some row needs the eps clamp."""
    code = torch.where(offset.amax() <= OFFSET_LIMIT, 0, SHIFTED)
    if clamped is not None:
        code = code + clamped.any()
    return int(code)


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
    ``layout``, or in ``layout`` with the time axis moved last. ``gamma`` is guarded; ``dtype``
    is the caller's input dtype. Without ``statistics`` the Frame's variance is ``None``. Also
    returns the extra steps taken (``steps``), for ``backends.record``."""
    values = values.contiguous()  # the kernel reads any shape as (batch, channels, length)
    shape, time = values.shape, layout.time
    stats_shape = (*shape[:time], 1, *shape[time:-1])  # in layout, time kept with size 1
    weight, bias, channels = _weights(gamma, beta, layout, stats_shape)
    floor = kernel_floor(values, options)
    gain_bound = None if weight is None else weight.detach().abs().amax().clamp(min=1)
    clamp = options.eps_mode == "clamp"
    root_eps = math.sqrt(options.eps)

    def attempt(source: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        y, mean, rstd = norm(source, weight, bias, channels, floor, options.detach)
        kernel_scale = rstd.reciprocal()  # sqrt(var + floor)
        scale = kernel_scale.clamp(min=root_eps) if clamp else kernel_scale
        return y, mean, kernel_scale, scale

    y, mean, kernel_scale, scale = attempt(values)
    with torch.no_grad():
        offset = mean.abs() / scale
        if gain_bound is not None:
            offset = offset * gain_bound
        code = check_code(offset, kernel_scale < root_eps if clamp else None)
    loc, source = mean, values
    if code & SHIFTED:  # far from 0 for its spread: once more, each row shifted by its mean
        shift = mean.detach()
        del y  # free the first output before the second is allocated
        source = values - shift.reshape(*shape[:-1], 1)
        y, mean, kernel_scale, scale = attempt(source)
        loc = shift + mean
    if code and needs_grad(values, weight, bias):
        # recorded for autograd: the output from the pass's statistics in plain ops, so that
        # second derivatives do not go through rstd * (1 / rstd) of near-constant rows
        y = _from_statistics(source, mean, scale, weight, bias, channels)
    elif code:  # rows below the eps floor: rescale from the exact statistics (1 elsewhere)
        y = _rescale(y, kernel_scale / scale, bias, channels)
    variance = None
    if statistics:
        variance = kernel_scale.square() - floor if clamp else kernel_scale.square() - options.eps
    frame = _reference.make_frame(layout, loc, variance, scale, weight, bias, dtype)
    return y, frame.viewed(stats_shape), steps(code)


def steps(code: int) -> str:
    """The remedies a check code asked for, as a route suffix."""
    return ("+shifted" if code & SHIFTED else "") + ("+clamped" if code & CLAMPED else "")


def _rescale(y: Tensor, ratio: Tensor, bias: Tensor | None, channels: int) -> Tensor:
    """``bias + (y - bias) * ratio`` per row: ``y`` was divided by the kernel's scale where the
    eps rule asks for a larger one (``ratio`` is 1 for every other row)."""
    grid = y.view(-1, channels, y.shape[-1])
    ratio = ratio.view(-1, channels, 1)
    if bias is None:
        return (grid * ratio).view_as(y)
    return torch.addcmul(bias.view(1, channels, 1) * (1 - ratio), grid, ratio).view_as(y)


def _from_statistics(
    source: Tensor,
    mean: Tensor,
    scale: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    channels: int,
) -> Tensor:
    """``(source - mean) * weight / scale + bias`` per row, with the kernel's statistics."""
    grid = source.view(-1, channels, source.shape[-1])
    factor = scale.reciprocal() if weight is None else weight / scale
    factor = factor.view(-1, channels, 1)
    centered = grid - mean.view(-1, channels, 1)
    if bias is None:
        return (centered * factor).view_as(source)
    return torch.addcmul(bias.view(1, channels, 1), centered, factor).view_as(source)
