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
size of ``mean * factor``: an instance whose ``|mean| / scale * max(|gamma'|, 1)`` exceeds
``OFFSET_LIMIT`` (or that is not finite) sends the call once more through this path after
subtracting each instance's first-pass mean, and, if that still does not vouch for every
instance, to ``_core.normalize_careful``. The eps rule is applied to the variance computed
here, so instances with a variance below eps need no second look.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from . import _core
from ._group_norm import needs_grad
from ._rows import OFFSET_LIMIT

if TYPE_CHECKING:  # _core imports the fast paths: use its names through the module at run time
    from ._core import Frame, Options
    from ._patterns import Layout


def normalize_columns(
    values: Tensor,
    layout: Layout,
    gamma: Tensor | None,
    beta: Tensor | None,
    options: Options,
) -> tuple[Tensor, Frame] | None:
    """``_core.normalize`` of ``values`` (statistics dtype) for time not last, or ``None``.

    ``gamma`` (guarded) and ``beta`` broadcast along the variate axis.
    """
    result = _attempt(values, layout, gamma, beta, options, None)
    if result is None:
        with torch.no_grad():
            shift = values.mean(layout.time, keepdim=True)
            if not bool(shift.isfinite().all()):  # non-finite values: a shift cannot help
                return None
        result = _attempt(values, layout, gamma, beta, options, shift)
    return result


def _attempt(
    values: Tensor,
    layout: Layout,
    gamma: Tensor | None,
    beta: Tensor | None,
    options: Options,
    shift: Tensor | None,
) -> tuple[Tensor, Frame] | None:
    time = layout.time
    source = values if shift is None else values - shift
    if needs_grad(source, gamma, beta):
        y, mean, variance = _ColumnNorm.apply(  # type: ignore[no-untyped-call]
            source, gamma, beta, time, options
        )
        scale = _core.scale_from_variance(variance, options.eps, options.eps_mode)
    else:
        y, mean, variance, scale = _forward(source, gamma, beta, time, options)
    with torch.no_grad():
        offset = (mean / scale).abs_()
        if gamma is not None:
            offset.mul_(gamma.abs().clamp_(min=1))
        if not float(offset.amax()) <= OFFSET_LIMIT:  # NaN included
            return None
    loc = mean if shift is None else shift + mean
    return y, _core.make_frame(layout, loc, variance, scale, gamma, beta)


def _forward(
    source: Tensor, gamma: Tensor | None, beta: Tensor | None, time: int, options: Options
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(y, mean, variance, scale)`` in three reductions and two element-wise passes."""
    mean = source.mean(time, keepdim=True)
    squares = torch.ops.aten.mse_loss.out(
        source, mean.expand_as(source), 0, out=torch.empty_like(source)
    )
    variance = squares.mean(time, keepdim=True)
    scale = _core.scale_from_variance(variance, options.eps, options.eps_mode)
    factor = scale.reciprocal() if gamma is None else gamma / scale
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
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, mean, variance, scale = _forward(source, gamma, beta, time, options)
        ctx.save_for_backward(source, gamma, mean, variance, scale)  # type: ignore[arg-type]
        ctx.set_materialize_grads(False)
        ctx.time, ctx.options = time, options  # type: ignore[attr-defined]
        ctx.beta_shape = None if beta is None else beta.shape  # type: ignore[attr-defined]
        if options.detach:
            ctx.mark_non_differentiable(mean, variance)
        return y, mean, variance

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_y: Tensor | None, grad_mean: Tensor | None, grad_variance: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        source, gamma, mean, variance, scale = ctx.saved_tensors
        time, options = ctx.time, ctx.options
        need_x, need_gamma, need_beta = ctx.needs_input_grad[:3]
        length = source.shape[time]
        gain = scale.reciprocal() if gamma is None else gamma / scale  # dy/dx at fixed statistics
        # grad_x = gain * grad_y + slope * x + shift, with per-instance slope and shift
        slope = shift = d_variance = None
        grad_gamma = grad_beta = None
        if grad_y is not None:
            total = grad_y.sum(time, keepdim=True)
            if need_gamma or (need_x and not options.detach):
                # sum_t grad_y * (x - mean)
                moment = torch.sum(grad_y * source, time, keepdim=True).sub_(mean * total)
                if need_gamma:
                    grad_gamma = (moment / scale).sum_to_size(gamma.shape)
                if need_x and not options.detach:
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
                    shift = -slope * mean if shift is None else shift - slope * mean
            grad_x = _affine_sum(source, grad_y, gain, slope, shift)
        return grad_x, grad_gamma, grad_beta, None, None


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
) -> Tensor:
    """``gain * grad_y + slope * source + shift``, each term only where given."""
    if grad_y is None:
        grad = torch.zeros_like(source) if shift is None else shift.expand_as(source).clone()
    elif shift is None:
        grad = grad_y * gain
    else:
        grad = torch.addcmul(shift, grad_y, gain)
    return grad if slope is None else grad.addcmul_(source, slope)
