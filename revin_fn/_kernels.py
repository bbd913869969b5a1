"""The fast path of ``_core.normalize``: one native group-norm pass, checked per instance.

For ``method="std"`` without mask, causal statistics or ``subtract_last``, every instance is
normalized by ``torch.native_group_norm`` over rows of shape ``(instances, time)``: one read
and one write of ``x`` that also yields each row's mean and ``1 / std``. Instances where that
kernel's single-pass float moments could miss the careful path's accuracy (an offset above
``OFFSET_LIMIT`` standard deviations, a variance below ``eps``, non-finite values) are
recomputed by ``_core.normalize_careful`` and copied back, so results equal the careful path within
float rounding while the common case pays nothing extra. Under ``torch.compile`` the careful
path runs instead: inductor fuses it, and the per-instance branch would break the graph.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from . import _core
from ._patterns import Layout

if TYPE_CHECKING:  # _core imports this module: use its names through the module at run time
    from ._core import Frame, Options

# |mean| / std above which an instance is recomputed by the careful path. The kernel's fused
# output ``x * a + c`` rounds at the size of ``|mean| / std``: measured against float64 its
# extra error is about 2e-7 * |mean| / std in normalized units (float32), so this limit keeps
# it near 3e-6, inside the 1e-5 the careful path guarantees (tests/test_fast_path.py).
OFFSET_LIMIT = 16.0
ROWS = Layout("n t", 2, ("n", "t"), 1, None)  # the (instances, time) view the kernel works on
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class _RowNorm(torch.autograd.Function):
    """``y = (rows - mean) * rstd * weight + bias`` per row, with differentiable mean and rstd.

    ``native_group_norm`` returns mean and rstd without gradients; this Function adds their
    terms to its backward. Saves ``rows`` and the per-row statistics only.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        rows: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        floor: float,
        detach: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        count, length = rows.shape
        y, mean, rstd = torch.native_group_norm(
            rows.unsqueeze(0), weight, bias, 1, count, length, count, floor
        )
        mean, rstd = mean.view(count), rstd.view(count)
        ctx.save_for_backward(rows, mean, rstd, *(() if weight is None else (weight,)))
        ctx.set_materialize_grads(False)
        ctx.detach = detach  # type: ignore[attr-defined]
        if detach:
            ctx.mark_non_differentiable(mean, rstd)
        return y.view(count, length), mean, rstd

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_y: Tensor | None, grad_mean: Tensor | None, grad_rstd: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        rows, mean, rstd, *affine = ctx.saved_tensors
        weight = affine[0] if affine else None
        count, length = rows.shape
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        if grad_y is not None:
            mask = [need_x and not ctx.detach, need_weight, need_bias]
            grad_x, grad_weight, grad_bias = torch.ops.aten.native_group_norm_backward(
                grad_y.unsqueeze(0), rows.unsqueeze(0), mean, rstd, weight,
                1, count, length, count, mask,
            )  # fmt: skip
            if need_x and ctx.detach:
                factor = rstd if weight is None else rstd * weight
                grad_x = grad_y * factor.unsqueeze(1)
            elif grad_x is not None:
                grad_x = grad_x.view(count, length)
        if need_x and not ctx.detach and (grad_mean is not None or grad_rstd is not None):
            # mean = sum(x) / T and rstd = (var + floor)^(-1/2), var = sum((x - mean)^2) / T:
            # d/dx = (grad_mean - grad_rstd * rstd^3 * (x - mean)) / T.
            slope = torch.zeros_like(mean) if grad_rstd is None else grad_rstd * rstd.pow(3)
            shift = slope * mean if grad_mean is None else grad_mean + slope * mean
            if grad_x is None:
                grad_x = torch.zeros_like(rows)
            grad_x.addcmul_(rows, (slope / -length).unsqueeze(1)).add_(
                (shift / length).unsqueeze(1)
            )
        if grad_x is None and need_x:
            grad_x = torch.zeros_like(rows)
        return grad_x, grad_weight, grad_bias, None, None


def _per_row(value: Tensor | None, shape: list[int], count: int) -> Tensor | None:
    """An affine view broadcast to the statistics shape, flattened to one value per row."""
    return None if value is None else value.expand(shape).reshape(count).contiguous()


def try_normalize(
    x: Tensor,
    layout: Layout,
    gamma: Tensor | None,
    beta: Tensor | None,
    observed: Tensor | None,
    options: Options,
) -> tuple[Tensor, Frame] | None:
    """``_core.normalize(...)`` by the fast path, or ``None`` where it does not apply."""
    if (
        observed is not None
        or options.method != "std"
        or options.causal
        or options.subtract_last
        or x.dtype not in _FLOAT_DTYPES
        or torch.compiler.is_compiling()
    ):
        return None
    shape = list(x.shape)
    time = layout.time
    length = shape[time]
    outer = math.prod(shape[:time])
    inner = math.prod(shape[time + 1 :])
    count = outer * inner
    if count == 0:
        return None
    values = x.to(_core.stats_dtype(x.dtype))
    if inner == 1:
        rows = values.reshape(count, length).contiguous()
    else:  # time is not the last axis: one transposing copy makes rows contiguous
        rows = values.reshape(outer, length, inner).transpose(1, 2).contiguous().view(count, length)
    shape[time] = 1
    weight, bias = _per_row(gamma, shape, count), _per_row(beta, shape, count)
    eps, clamp = options.eps, options.eps_mode == "clamp"
    # clamp: std = sqrt(var) once var >= eps is checked; a floor far below eps keeps a zero
    # variance from making rstd infinite (and the gradients NaN) before it is redone below.
    floor = max(eps * 2.0**-60, torch.finfo(rows.dtype).tiny) if clamp else eps
    y, mean, rstd = _RowNorm.apply(  # type: ignore[no-untyped-call]
        rows, weight, bias, floor, options.detach
    )
    scale = rstd.reciprocal()
    variance = scale.square() if clamp else scale.square() - eps
    with torch.no_grad():
        careful = ~((mean.abs() * rstd <= OFFSET_LIMIT) & (variance >= eps))
        redo = careful.nonzero().view(-1) if bool(careful.any()) else None
    if redo is not None:
        part = rows.index_select(0, redo)
        part_y, part_frame = _core.normalize_careful(
            part,
            ROWS,
            None if weight is None else weight.index_select(0, redo).unsqueeze(1),
            None if bias is None else bias.index_select(0, redo).unsqueeze(1),
            None,
            options,
        )
        part_variance = part_frame.variance.view(-1)
        part_scale = _core.scale_from_variance(part_variance, eps, options.eps_mode)
        y = y.index_copy(0, redo, part_y)
        mean = mean.index_copy(0, redo, part_frame.loc.view(-1))
        variance = variance.index_copy(0, redo, part_variance)
        scale = scale.index_copy(0, redo, part_scale)
    if inner == 1:
        y = y.view(x.shape)
    else:  # a transposed view of the row-major result: right shape and values, no copy
        y = y.view(outer, inner, length).transpose(1, 2).view(x.shape)
    frame = _core.make_frame(
        layout, mean.view(shape), variance.view(shape), scale.view(shape), gamma, beta
    )
    return y.to(x.dtype), frame
