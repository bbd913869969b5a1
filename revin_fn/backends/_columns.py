"""The fast path for layouts whose time axis is not the last one (``"b t v"``).

Each instance is a strided column, so no native normalization kernel reads it in one pass and
a transposing copy costs more than the normalization. Instead, in ``x``'s own layout:

    mean = sum_t(x) / T                     one read (a vectorized reduction)
    variance = sum_t((x - mean)^2) / T      ``mse_loss`` writes the squares in one pass
    y = x * factor + (beta - mean * factor),  factor = gamma' / scale   one fused pass

so ``y`` keeps ``x``'s layout and strides (contiguous for contiguous input); the squares are
written into ``y``'s own buffer, so the call allocates one input-sized tensor. With gradients,
``_ColumnNorm`` saves ``x`` and the per-instance statistics and computes the backward in the
same few passes (the group-norm backward, reductions along the time axis).

The two-pass variance is accurate while the mean is accurate, and the fused output rounds at the
size of ``mean * factor``: when some instance's ``|mean| / scale * max(|gamma'|, 1)`` exceeds
``OFFSET_LIMIT`` (or is not finite), which one host read tells, the call goes once more through
these passes after subtracting each instance's first-pass mean, as it does where some scale
is past the float range (a constant instance near it squares the ulps its mean is off by,
1e30 squares to infinity); where some instance is past ``CENTER_LIMIT`` spreads, or a scale
past the float range, that pass writes the deviations before scaling them. The eps rule is
applied to the variance computed here, so instances with a variance below eps need nothing
more. The backward
is fused; recorded for double backward, it is the vector-Jacobian product of the same formula in
differentiable ops.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from .. import _reference
from .._options import Options
from .._patterns import Layout
from .._reference import Frame
from ._checks import (
    CENTER_LIMIT,
    CENTERED,
    OFFSET_LIMIT,
    OVERFLOW,
    REDO_OFFSET,
    REDONE,
    SHIFTED,
    check_code,
    steps,
)
from ._group_norm import backward_by_ops, needs_grad, vjp_by_ops
from ._rows_redo import REDO_MIN, flagged_index, merge, redo_pays

ROWS = Layout("v t", 2, ("v", "t"), 1, 0)  # gathered instances, one row each


def normalize_columns(
    values: Tensor,
    layout: Layout,
    gamma: Tensor | None,
    beta: Tensor | None,
    options: Options,
    dtype: torch.dtype,
) -> tuple[Tensor, Frame, str]:
    """The column route of ``values`` (statistics dtype, time not last); ``gamma`` (guarded)
    and ``beta`` broadcast along the variate axis; ``dtype`` is the caller's input dtype."""
    y, mean, variance, scale = _attempt(values, gamma, beta, layout.time, options)
    with torch.no_grad():
        spreads = (mean / scale).abs()
        if gamma is not None:
            spreads = spreads * torch.linalg.vector_norm(gamma.detach(), math.inf).clamp_(min=1)
        far = spreads > REDO_OFFSET if values.numel() >= REDO_MIN else None  # counted too
        largest = torch.finfo(scale.dtype).max
        farthest = torch.linalg.vector_norm(spreads, math.inf)
        code, count = check_code(
            (farthest, OFFSET_LIMIT, SHIFTED, 1.0),
            (farthest, CENTER_LIMIT, CENTERED, 1.0),
            (scale.amax(), largest, OVERFLOW, 1.0),
            flags=far,
        )
    far_out, code = code & CENTERED, code & ~CENTERED  # noted where the shifted pass centres
    loc = mean
    if redo_pays(code, count, mean.numel(), values.numel()):  # only the instances far from 0
        assert far is not None  # counted
        code |= REDONE
        first = (mean, variance, scale)
        y, loc, variance, scale = _redo(
            values, y, first, far, count, (gamma, beta), layout, options
        )
    elif code & (SHIFTED | OVERFLOW):  # an overflow can come from the first pass's mean
        code |= SHIFTED
        if far_out or code & OVERFLOW:  # such an instance stays far for its spread after the shift
            code |= CENTERED
        shift = mean.detach()
        del y
        centered = bool(code & CENTERED)
        y, mean, variance, scale = _attempt(
            values - shift, gamma, beta, layout.time, options, centered
        )
        loc = shift + mean
    if code & OVERFLOW:  # a scale past the float range: NaN, not 0, and a NaN reverse
        scale = torch.where(scale.isinf(), float("nan"), scale)
        y = torch.where(scale.isnan(), float("nan"), y)
    return y, _reference.make_frame(layout, loc, variance, scale, gamma, beta, dtype), steps(code)


def _redo(
    x: Tensor,
    y: Tensor,
    first: tuple[Tensor, Tensor, Tensor],
    far: Tensor,
    count: int,
    affine: tuple[Tensor | None, Tensor | None],
    layout: Layout,
    options: Options,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``count`` instances flagged in ``far`` (of the statistics' shape) gathered as rows,
    normalized by the reference math and written back into ``y``; returns ``y`` and the merged
    location, variance and scale. Every step is differentiable."""
    index = flagged_index(far, count)
    instances = [size for axis, size in enumerate(far.shape) if axis != layout.time]
    where = torch.unravel_index(index, instances)
    rows = x.movedim(layout.time, -1)[where]  # (count, time)
    gamma, beta = (None if t is None else t.expand_as(far).reshape(-1)[index] for t in affine)
    rows_y, frame = _reference.normalize(rows, ROWS, gamma, beta, None, options)
    assert frame.variance is not None  # the reference computes it
    rows_scale = _reference.scale_from_variance(frame.variance, options.eps, options.eps_mode)
    y.movedim(layout.time, -1)[where] = rows_y
    mean, variance, scale = first
    return (
        y,
        merge(mean, index, frame.loc),
        merge(variance, index, frame.variance),
        merge(scale, index, rows_scale),
    )


def _attempt(
    source: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    time: int,
    options: Options,
    centered: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if needs_grad(source, gamma, beta):
        y, mean, variance = _ColumnNorm.apply(  # type: ignore[no-untyped-call]
            source, gamma, beta, time, options, centered
        )
        scale = _reference.scale_from_variance(variance, options.eps, options.eps_mode)
        return y, mean, variance, scale
    return _forward(source, gamma, beta, time, options, centered)


def _forward(
    source: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    time: int,
    options: Options,
    centered: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(y, mean, variance, scale)`` in three reductions and two element-wise passes.

    ``centered`` (a shifted pass with some instance past ``CENTER_LIMIT`` spreads): ``y =
    (source - mean) * factor + beta`` with the deviations written first (into the squares'
    buffer), one pass more. There an instance can still sit far from 0 for its spread: a
    constant one is a few ulps of its level from 0 after the shift, and its spread sqrt(eps).
    """
    mean = source.mean(time, keepdim=True)
    squares = torch.ops.aten.mse_loss.out(
        source, mean.expand_as(source), 0, out=torch.empty_like(source)
    )  # then y in the same buffer
    variance = squares.mean(time, keepdim=True)
    scale = _reference.scale_from_variance(variance, options.eps, options.eps_mode)
    factor = scale.reciprocal() if gamma is None else gamma / scale
    if centered:
        deviation = torch.sub(source, mean, out=squares)
        if beta is None:
            return deviation.mul_(factor), mean, variance, scale
        return torch.addcmul(beta, deviation, factor, out=deviation), mean, variance, scale
    bias = mean * -factor if beta is None else torch.addcmul(beta, mean, factor, value=-1)
    return torch.addcmul(bias, source, factor, out=squares), mean, variance, scale


class _ColumnNorm(torch.autograd.Function):
    """``y = (x - mean) / scale * gamma + beta`` along ``time``, with differentiable mean and
    variance (unless ``detach``). Saves ``x`` and per-instance tensors only."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        source: Tensor,
        gamma: Tensor | None,
        beta: Tensor | None,
        time: int,
        options: Options,
        centered: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, mean, variance, scale = _forward(source, gamma, beta, time, options, centered)
        ctx.save_for_backward(source, gamma, mean, variance, scale, beta)  # type: ignore[arg-type]
        ctx.set_materialize_grads(False)
        ctx.time, ctx.options, ctx.centered = time, options, centered  # type: ignore[attr-defined]
        ctx.beta_shape = None if beta is None else beta.shape  # type: ignore[attr-defined]
        if options.detach or not ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            ctx.mark_non_differentiable(mean, variance)
        return y, mean, variance

    @staticmethod
    def backward(
        ctx: Any, grad_y: Tensor | None, grad_mean: Tensor | None, grad_variance: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        if backward_by_ops(grad_y, grad_mean, grad_variance):  # create_graph=True, or batched
            return _backward_by_ops(ctx, grad_y, grad_mean, grad_variance)
        source, gamma, mean, variance, scale, _ = ctx.saved_tensors
        time, options = ctx.time, ctx.options
        need_x, need_gamma, need_beta = ctx.needs_input_grad[:3]
        length = source.shape[time]
        gain = scale.reciprocal() if gamma is None else gamma / scale  # dy/dx at fixed statistics
        # grad_x = gain * grad_y + slope * (x - mean) + shift, with per-instance slope and shift;
        # x - mean is written first where the forward was centered (see _forward), elsewhere
        # the mean's term joins the shift
        through_statistics = need_x and not options.detach
        deviation = None
        if ctx.centered and (need_gamma or through_statistics):
            deviation = source - mean
        slope = shift = d_variance = products = None
        grad_gamma = grad_beta = None
        if grad_y is not None:
            total = grad_y.sum(time, keepdim=True)
            if need_gamma or through_statistics:  # sum_t grad_y * (x - mean)
                # the products' buffer then holds x's gradient
                products = grad_y * (source if deviation is None else deviation)
                moment = products.sum(time, keepdim=True)
                if deviation is None:
                    moment = moment.sub_(mean * total)
                if need_gamma:
                    grad_gamma = (moment / scale).sum_to_size(gamma.shape)
                if through_statistics:
                    shift = gain * total / -length
                    # y depends on the variance through 1 / scale: d(1/scale) = -dscale / scale^2
                    weight = -moment if gamma is None else -gamma * moment
                    d_variance = weight / scale.square() * _dscale(variance, scale, options)
            if need_beta:
                grad_beta = total.sum_to_size(ctx.beta_shape)
        grad_x = None
        if need_x:
            if not options.detach:
                if grad_variance is not None:
                    d_variance = grad_variance if d_variance is None else d_variance + grad_variance
                if grad_mean is not None:
                    shift = grad_mean / length if shift is None else shift + grad_mean / length
                if d_variance is not None:  # variance = mean_t((x - mean)^2)
                    slope = d_variance * (2 / length)
                    if deviation is None:
                        shift = -slope * mean if shift is None else shift - slope * mean
            around = source if deviation is None else deviation
            grad_x = _affine_sum(around, grad_y, gain, slope, shift, products)
        return grad_x, grad_gamma, grad_beta, None, None, None


def _backward_by_ops(
    ctx: Any, grad_y: Tensor | None, grad_mean: Tensor | None, grad_variance: Tensor | None
) -> tuple[Tensor | None, ...]:
    """The vector-Jacobian product of ``_forward_by_ops`` on the saved inputs, recorded so that
    it can be differentiated again (double backward), or of batched gradients."""
    source, gamma, _, _, _, beta = ctx.saved_tensors

    def compute() -> tuple[Tensor, Tensor, Tensor]:
        return _forward_by_ops(source, gamma, beta, ctx.time, ctx.options)

    grads = (grad_y, grad_mean, grad_variance)
    needs = ctx.needs_input_grad[:3]
    return (*vjp_by_ops(compute, grads, (source, gamma, beta), needs), None, None, None)


def _forward_by_ops(
    source: Tensor, gamma: Tensor | None, beta: Tensor | None, time: int, options: Options
) -> tuple[Tensor, Tensor, Tensor]:
    """What ``_ColumnNorm`` computes, in differentiable ops."""
    mean = source.mean(time, keepdim=True)
    variance = (source - mean).square().mean(time, keepdim=True)
    if options.detach:
        mean, variance = mean.detach(), variance.detach()
    scale = _reference.scale_from_variance(variance, options.eps, options.eps_mode)
    factor = scale.reciprocal() if gamma is None else gamma / scale
    y = (source - mean) * factor
    return (y if beta is None else y + beta), mean, variance


def _dscale(variance: Tensor, scale: Tensor, options: Options) -> Tensor:
    """d scale / d variance under the eps rule (clamp: 0 below eps)."""
    half = 0.5 / scale
    return torch.where(variance >= options.eps, half, 0) if options.eps_mode == "clamp" else half


def _affine_sum(
    source: Tensor,
    grad_y: Tensor | None,
    gain: Tensor,
    slope: Tensor | None,
    shift: Tensor | None,
    out: Tensor | None = None,
) -> Tensor:
    """``gain * grad_y + slope * source + shift``, each term only where given (``source``: the
    input, or its deviations from the mean), written into ``out`` where given (a spare buffer
    of the input's shape)."""
    if grad_y is None:
        grad = torch.zeros_like(source) if shift is None else shift.expand_as(source).clone()
    elif shift is None:
        grad = torch.mul(grad_y, gain, out=out)
    else:
        grad = torch.addcmul(shift, grad_y, gain, out=out)
    return grad if slope is None else grad.addcmul_(source, slope)
