"""The fast path for layouts whose time axis is not the last one (``"b t v"``).

Each instance is a strided column, so no native normalization kernel reads it in one pass and
a transposing copy costs more than the normalization. Instead, in ``x``'s own layout:

    mean = sum_t(x) / T                     one read (a vectorized reduction)
    variance = sum_t((x - mean)^2) / T      ``mse_loss`` writes the squares in one pass
    y = x * factor + (beta - mean * factor),  factor = gamma' / scale   one fused pass

so ``y`` keeps ``x``'s layout and strides (contiguous for contiguous input). Without gradients
the squares are written into ``y``'s own buffer, so the call allocates one input-sized tensor.

The two-pass variance is accurate while the mean is accurate, and the fused output rounds at the
size of ``mean * factor``: an instance whose ``|mean| / scale * max(|gamma'|, 1)`` exceeds
``OFFSET_LIMIT`` (or that is not finite) sends the call once more through this path after
subtracting each instance's first-pass mean, and, if that still does not vouch for every
instance, to ``_core.normalize_careful``. The eps rule is applied to the variance computed
here, so instances with a variance below eps need no second look.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn import functional

from . import _core

if TYPE_CHECKING:  # _core imports the fast paths: use its names through the module at run time
    from ._core import Frame, Options
    from ._patterns import Layout


def normalize_columns(
    values: Tensor,
    layout: Layout,
    gamma: Tensor | None,
    beta: Tensor | None,
    options: Options,
    offset_limit: float,
) -> tuple[Tensor, Frame] | None:
    """``_core.normalize`` of ``values`` (statistics dtype) for time not last, or ``None``."""
    result = _attempt(values, layout, gamma, beta, options, offset_limit, None)
    if result is None:
        with torch.no_grad():
            shift = values.mean(layout.time, keepdim=True)
        result = _attempt(values, layout, gamma, beta, options, offset_limit, shift)
    return result


def _attempt(
    values: Tensor,
    layout: Layout,
    gamma: Tensor | None,
    beta: Tensor | None,
    options: Options,
    offset_limit: float,
    shift: Tensor | None,
) -> tuple[Tensor, Frame] | None:
    time = layout.time
    source = values if shift is None else values - shift
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (values, gamma, beta)
    )
    stats_grad = grad and not options.detach
    with torch.set_grad_enabled(stats_grad):
        mean = source.mean(time, keepdim=True)
        target = mean.expand_as(source)
        if stats_grad:  # autograd differentiates through the squares; nothing large is saved
            squares = functional.mse_loss(source, target, reduction="none")
        else:  # squares in the output's buffer, overwritten by the output below
            squares = torch.ops.aten.mse_loss.out(source, target, 0, out=torch.empty_like(source))
        variance = squares.mean(time, keepdim=True)
    scale = _core.scale_from_variance(variance, options.eps, options.eps_mode)
    factor = scale.reciprocal() if gamma is None else gamma / scale
    with torch.no_grad():
        offset = (mean / scale).abs_()
        if gamma is not None:
            offset.mul_(gamma.abs().clamp_(min=1))
        if not float(offset.amax()) <= offset_limit:  # NaN included
            return None
    bias = mean * -factor if beta is None else torch.addcmul(beta, mean, factor, value=-1)
    if grad:
        y = torch.addcmul(bias, source, factor)
    else:
        y = torch.addcmul(bias, source, factor, out=squares)
    loc = mean if shift is None else shift + mean
    return y, _core.make_frame(layout, loc, variance, scale, gamma, beta)
