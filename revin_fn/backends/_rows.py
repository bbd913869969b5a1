"""The native row route: one group-norm pass over instances laid out as contiguous rows.

Every instance is a row of shape ``(time,)`` (time last, or moved last by the caller) and
``torch.native_group_norm`` normalizes all rows in one read and one write of ``x`` that also
yields each row's mean and ``1 / std``. Two things can make that pass inexact, and one host
read of a combined check settles both:

- the kernel writes ``x * a + c``, which rounds at the size of the offset ``|mean| / std``
  (times the variate's ``max(|gamma|, 1)``), and the backward's sums ``sum(x * dy) - mean *
  sum(dy)`` cancel at the same relative size; above ``OFFSET_LIMIT`` every row is normalized
  once more after subtracting its first-pass mean. The offset is in the row's own spreads even
  where the eps clamp holds: a row a few ulps wide 1 sqrt(eps) from 0 has a tiny output but
  gradient terms that cancel at 1e7 of its spreads;
- ``eps_mode="clamp"``: the kernel adds a negligible floor instead of clamping, so rows whose
  variance is below ``eps`` are rescaled from the pass's exact statistics,
  ``y = beta + (y - beta) * kernel_scale / scale`` (one element-wise pass, no recomputation).

The kernel takes gamma as given (then gamma' = gamma) unless the same check finds some
``|gamma|`` below eps; then the pass runs again with the guarded gamma'. Where only a few rows
need a remedy (their count is read with the check), only they are redone (``_rows_redo``).
No remedy reads a value again.

Where ``x`` takes a gradient, the whole route, the Frame's gain and offset included, is one
autograd node (``_Rows``) with a fused backward (``_rows_backward``) that reads no value;
recorded for double backward, that backward is the vector-Jacobian product of the reference
formula. Where it takes none (data, as in training), the mean and ``1 / std`` are constants and
autograd records the few operations on gamma and beta itself, except on rows of
``KERNEL_SUM_MAX`` steps or more, whose gamma and beta gradients the fused backward sums itself.
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
from ._checks import (
    CLAMPED,
    GUARDED,
    OFFSET_LIMIT,
    OVERFLOW,
    QUIET,
    REDO_OFFSET,
    REDONE,
    SHIFTED,
    check_code,
    steps,
)
from ._group_norm import Grid, backward_by_ops, group_norm, needs_grad, vjp_by_ops
from ._rows_backward import KERNEL_SUM_MAX, backward
from ._rows_redo import REDO_MIN, redo, redo_pays


def kernel_floor(values: Tensor, options: Options) -> float:
    """What the kernel adds to the variance: eps for ``"add"``; for ``"clamp"`` a floor far
    below eps (and below 1), which only keeps a zero variance from making ``1 / std`` infinite;
    the variance read back from ``1 / std`` is exact to about 1e-7 of variance + floor. That
    floor is a power of 4, so a constant row's ``1 / std`` is exactly its inverse square root
    and the variance read back from it is exactly 0."""
    if options.eps_mode == "add":
        return options.eps
    low = min(options.eps, 1.0) * 2.0**-60
    exponent = math.frexp(low)[1] - 1  # low = m * 2**exponent, m >= 1
    return max(math.ldexp(1.0, exponent - exponent % 2), torch.finfo(values.dtype).tiny)


def _weights(
    gamma: Tensor | None, beta: Tensor | None, layout: Layout, shape: tuple[int, ...]
) -> tuple[Tensor | None, Tensor | None, int]:
    """Affine vectors for the kernel and its channel count (rows per period of the weights).

    The weights repeat every V rows where the variate is the last axis besides time and they
    repeat over fewer than ``KERNEL_SUM_MAX`` rows (the kernel's backward sums gamma's and
    beta's gradients over those rows in running float32 sums). In every other case each row
    has its own weight, expanded, so that autograd sums over the rows with torch.sum."""
    if gamma is None and beta is None:
        return None, None, 1
    last = layout.ndim - 1 if layout.time != layout.ndim - 1 else layout.ndim - 2
    count = math.prod(shape)
    if layout.variate == last and count < KERNEL_SUM_MAX * shape[last]:
        return (
            None if gamma is None else gamma.contiguous(),
            None if beta is None else beta.contiguous(),
            shape[last],
        )
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
    grid = Grid(values.numel() // (channels * shape[-1]), channels, shape[-1], stats_shape)
    if needs_grad(values) or (shape[-1] >= KERNEL_SUM_MAX and needs_grad(gamma, beta)):
        y, loc, gain, offset, variance, code = _Rows.apply(  # type: ignore[no-untyped-call]
            values, weight, bias, grid, options
        )
    else:  # autograd records the ops of gamma and beta (their backward is built in)
        y, rows, code = _forward(values, weight, bias, grid, options, statistics)
        loc, gain, offset = (t.view(stats_shape) for t in rows.outputs()[:3])
        variance = None if rows.variance is None else rows.variance.view(stats_shape)
    frame = Frame(layout, loc, variance if statistics else None, gain, offset, dtype)
    return y, frame, steps(int(code))


class Rows(NamedTuple):
    """Per-row results of the forward, of shape ``(batch, channels)``. ``loc = shift + center``
    with ``shift`` the first-pass mean where the rows were shifted (else ``None``, and
    ``center = loc``); ``inverse = 1 / scale``; ``guarded`` is gamma' (``None``: no gamma);
    ``variance`` is ``None`` where nothing needs it (no statistics, no gradient)."""

    loc: Tensor
    gain: Tensor
    offset: Tensor
    variance: Tensor | None
    scale: Tensor
    inverse: Tensor
    shift: Tensor | None
    center: Tensor
    guarded: Tensor | None

    def outputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        return self.loc, self.gain, self.offset, self.variance


def _forward(
    x: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    grid: Grid,
    options: Options,
    variance_wanted: bool,
) -> tuple[Tensor, Rows, int]:
    """``(y, rows, code)`` of ``x`` read as ``grid``: ``y`` in ``x``'s shape, the per-row
    results and the check code (``steps``). The variance is computed where it is wanted (the
    statistics, a backward through them) or needed (``"add"``: each row's ``1 / std``)."""
    eps, clamp = options.eps, options.eps_mode == "clamp"
    floor = kernel_floor(x, options)
    # gamma is used as given when no |gamma| is below eps (then gamma' = gamma), which the check
    # tells; otherwise the pass runs again with the guarded gamma'
    y, mean, rstd = group_norm(x, gamma, beta, grid, floor)
    limit = eps**-0.5  # rstd above it: variance below eps
    inverse = rstd.clamp(max=limit) if clamp else rstd
    low, high = torch.aminmax(rstd)
    checks = [(low, torch.finfo(x.dtype).tiny, OVERFLOW, -1.0)]
    if clamp:
        checks.append((high, limit, CLAMPED, 1.0))
    else:  # 1 / sqrt(variance + eps) above 1 / sqrt(2 eps): a variance below eps
        checks.append((high, (2 * eps) ** -0.5, QUIET, 1.0))
    # the offset in the row's own spreads; with "add" the kernel's 1 / std is 1 / sqrt(var + eps),
    # so 1 / std comes from the variance (its rounding, about 1e-7 eps, moves no row past 32)
    variance = None if clamp else _variance(rstd, floor)
    tiny = torch.finfo(x.dtype).tiny
    own = rstd if variance is None else variance.clamp(min=tiny).rsqrt_()
    offset = mean * own
    if gamma is not None:
        magnitude = gamma.detach().abs()
        checks.append((magnitude.amin(), eps, GUARDED, -1.0))
        offset = offset * magnitude.clamp(min=1)  # per row: its variate's max(|gamma'|, 1)
    checks.append((torch.linalg.vector_norm(offset, math.inf), OFFSET_LIMIT, SHIFTED, 1.0))
    needy = None
    if x.numel() >= REDO_MIN:  # the rows a remedy rewrites, counted in the same read
        needy = offset.abs() > REDO_OFFSET
        if clamp:
            needy |= rstd > limit
    code, count = check_code(*checks, flags=needy)
    guarded = gamma
    if code & GUARDED:
        guarded = _reference.guard_gamma(gamma, eps)  # type: ignore[arg-type]
    loc, shift = mean, None
    rows_x, shifted = x.view(grid.batch, grid.channels, grid.length), None
    if redo_pays(code, count, mean.numel(), x.numel()):  # a few rows: only they are redone
        assert needy is not None  # counted
        code |= REDONE
        first, affine = (mean, rstd), (gamma, beta)
        y, mean, rstd, shift = redo(x, y, first, needy, count, affine, grid, floor, limit, clamp)
        inverse = rstd.clamp(max=limit) if clamp else rstd
        loc = shift + mean
    elif code & SHIFTED:  # far from 0 for its spread: once more, each row shifted by its mean
        shift = mean
        del y  # free the first output before the second is allocated
        shifted = rows_x - shift.unsqueeze(-1)
        y, mean, rstd = group_norm(shifted.view(x.shape), guarded, beta, grid, floor)
        inverse = rstd.clamp(max=limit) if clamp else rstd
        loc = shift + mean
    elif code & GUARDED:
        del y
        y, mean, rstd = group_norm(x, guarded, beta, grid, floor)
    if code & (CLAMPED | OVERFLOW) and not code & REDONE:  # y viewed as (batch, channels, length)
        rows_y = y.view(grid.batch, grid.channels, grid.length)
        if code & CLAMPED:  # rows below the eps floor: rescale from the exact statistics
            ratio = (inverse / rstd).unsqueeze(-1)  # 1 for every other row
            # in place, a multiply and an add (addcmul is not vectorized with two broadcast
            # operands)
            rows_y = rows_y.mul_(ratio)
            if beta is not None:
                rows_y = rows_y.add_(beta.view(-1, 1) * (1 - ratio))
        if code & OVERFLOW:
            rows_y = torch.where((rstd == 0).unsqueeze(-1), float("nan"), rows_y)
        y = rows_y.view(x.shape)
    scale = inverse.reciprocal()
    if code & OVERFLOW:  # the reverse of such an instance is NaN too, as on the reference
        scale = torch.where(rstd == 0, float("nan"), scale)
    if not variance_wanted:
        variance = None
    elif code & QUIET:
        # "add", some variance below eps: the kernel's 1 / sqrt(variance + eps) keeps it only
        # to the ulps of eps (down to 0), so it is read from the rows once more
        if shifted is None:
            shifted = rows_x if shift is None else rows_x - shift.unsqueeze(-1)
        variance = shifted.var(-1, correction=0)
    elif variance is None or shift is not None:
        variance = _variance(rstd, floor)  # of the last pass
    gain, offset = _reference.gain_offset(loc, scale, guarded, beta)
    rows = Rows(loc, gain, offset, variance, scale, inverse, shift, mean, guarded)
    return y, rows, code


def _variance(rstd: Tensor, floor: float) -> Tensor:
    """Each row's variance from the kernel's ``1 / sqrt(variance + floor)``, never below 0 from
    the subtraction."""
    return rstd.pow(-2).sub_(floor).clamp_(min=0)


def _by_ops(
    x: Tensor, gamma: Tensor | None, beta: Tensor | None, grid: Grid, options: Options
) -> tuple[Tensor, ...]:
    """``_forward``'s outputs by the reference math in differentiable ops (double backward)."""
    batch, channels, length, stats_shape = grid
    layout = Layout("b c t", 3, ("b", "c", "t"), 2, 1)
    y, frame = _reference.normalize(
        x.view(batch, channels, length), layout, gamma, beta, None, options
    )
    rows = (frame.loc, frame.gain, frame.offset, frame.variance)
    return (y.view(x.shape), *(t.view(stats_shape) for t in rows))  # type: ignore[union-attr]


class _Rows(torch.autograd.Function):
    """The row route as one node: ``(y, loc, gain, offset, variance, code)``, ``y`` in the
    input's shape and the statistics in ``grid.stats_shape``.

    Saves the input, gamma, beta and the per-row results (and the shift where taken).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        gamma: Tensor | None,
        beta: Tensor | None,
        grid: Grid,
        options: Options,
    ) -> tuple[Tensor, ...]:
        y, rows, code = _forward(x, gamma, beta, grid, options, True)
        ctx.save_for_backward(x, gamma, beta, *rows)  # type: ignore[arg-type]
        ctx.grid, ctx.options, ctx.code = grid, options, code  # type: ignore[attr-defined]
        ctx.set_materialize_grads(False)
        loc, gain, offset, variance = rows.outputs()
        assert variance is not None  # wanted above: the backward's slope uses it
        loc, gain, offset, variance = (
            t.view(grid.stats_shape) for t in (loc, gain, offset, variance)
        )
        need_x, need_gamma, need_beta = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
        if options.detach or not need_x:  # no gradient reaches the statistics from x: gain and
            # offset take only gamma's and beta's (rows of KERNEL_SUM_MAX steps, x a constant)
            constants = (gain,) * (not need_gamma) + (offset,) * (not (need_gamma or need_beta))
            ctx.mark_non_differentiable(loc, variance, *constants)
        return y, loc, gain, offset, variance, code  # type: ignore[return-value]

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        x, gamma, beta, *saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if backward_by_ops(*grads):  # create_graph=True, or batched gradients

            def compute() -> tuple[Tensor, ...]:
                return _by_ops(x, gamma, beta, ctx.grid, ctx.options)

            return (*vjp_by_ops(compute, grads[:5], (x, gamma, beta), needs), None, None)
        rows = Rows(*saved)
        gradients = backward(x, gamma, beta, rows, ctx.grid, ctx.options, ctx.code, grads, needs)
        return (*gradients, None, None)
