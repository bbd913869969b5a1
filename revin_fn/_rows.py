"""The row path of the fast path: one native group-norm pass, checked per instance.

Every instance is a contiguous row of shape ``(time,)`` (time last, or moved last by the
caller) and ``torch.native_group_norm`` normalizes all rows in one read and one write of ``x``
that also yields each row's mean and ``1 / std``. The kernel writes ``x * a + c``, which rounds
at the size of the offset, so an instance whose ``|mean| / std * max(|gamma'|, 1)`` exceeds
``OFFSET_LIMIT`` is normalized again after subtracting that mean (a second pass on those rows,
or on every row when more than ``GATHER_SHARE`` of them are flagged); an instance with a
variance below ``eps`` or non-finite values is recomputed by ``_core.normalize_careful``.
Results equal the careful path within float rounding and the usual case pays one pass and a
few reductions over per-instance statistics.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import _core
from ._group_norm import needs_grad, norm
from ._patterns import Layout

if TYPE_CHECKING:  # _core imports this module: use its names through the module at run time
    from ._core import Frame, Options

# Largest |mean| / std * max(|gamma'|, 1) normalized in a single pass. The fused output
# x * a + c rounds at the size of the offset: against float64 the single pass is off by about
# 5e-6 at 30 (measured on T = 96, 336, 720, gamma' 1.2: 5.8e-6 / 6.8e-6 / 5.7e-6) and 2e-5 at
# 100, so 32 keeps the 1e-5 guarantee with room to spare. Rows above it get a shifted pass.
OFFSET_LIMIT = 32.0
# Above this share of flagged rows, a second pass over every row beats gathering the flagged ones.
GATHER_SHARE = 0.25
# After the shift, E[d^2] - E[d]^2 loses (|E[d]| / std)^2 * 6e-8 of the variance: up to this
# residual offset that stays below 1e-6; beyond it (or below eps) the row takes the careful path.
SHIFTED_LIMIT = 4.0
ROWS = Layout("n t", 2, ("n", "t"), 1, None)  # the (instances, time) view the kernel works on


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
    statistics: bool = True,
) -> tuple[Tensor, Frame]:
    """The group-norm path over rows along the last axis of ``values``: the tensor in
    ``layout``, or in ``layout`` with the time axis moved last. Without ``statistics`` the
    Frame's variance is left out (``None``) where it would cost an extra operation."""
    values = values.contiguous()  # the kernel reads any shape as (batch, channels, length)
    shape, time = values.shape, layout.time
    stats_shape = (*shape[:time], 1, *shape[time:-1])  # in layout, time kept with size 1
    eps, clamp = options.eps, options.eps_mode == "clamp"
    gain_bound = 1.0  # an upper bound of max(|gamma'|, 1)
    if gamma is not None:
        gamma, gain_bound = _guarded(gamma, eps)
    weight, bias, channels = _weights(gamma, beta, layout, stats_shape)
    # clamp: std = sqrt(var) once var >= eps is checked; a floor far below eps keeps a zero
    # variance from making rstd infinite (and the gradients NaN) before it is redone below.
    floor = max(eps * 2.0**-60, torch.finfo(values.dtype).tiny) if clamp else eps
    # var >= eps  <=>  rstd <= 1 / sqrt(eps) (clamp) or 1 / sqrt(2 eps) (add)
    rstd_limit = (eps if clamp else 2 * eps) ** -0.5
    limits = (rstd_limit, gain_bound)
    # per-row statistics keep the kernel's (batch, channels) shape until the Frame is built
    y, loc, scale, flagged, count_flagged = _pass(
        values, weight, bias, channels, floor, limits, options, None
    )
    variance = None
    if count_flagged:  # the slow paths work on the (instances, time) view
        rows, y = values.view(-1, shape[-1]), y.view(-1, shape[-1])
        stats = (loc, _variance_from_scale(scale, options), scale)
        if count_flagged > GATHER_SHARE * rows.shape[0] and bool(loc.isfinite().all()):
            # real data often sits far from 0: shift every row by its first-pass mean, once more
            if needs_grad(rows, weight, bias):
                del y  # free the first output before the second is allocated
                y, loc, scale, flagged, count_flagged = _pass(
                    rows, weight, bias, channels, floor, limits, options, loc.detach()
                )
                stats = (loc, _variance_from_scale(scale, options), scale)
            else:
                y, stats, flagged, count_flagged = _shifted_in_place(
                    y, rows, loc, weight, bias, channels, options
                )
        if flagged is not None and count_flagged:
            y, stats = _redo(rows, y, stats, flagged.nonzero().view(-1), weight, bias, floor,
                             rstd_limit, options)  # fmt: skip
        y = y.view(shape)
        loc, variance, scale = stats
    elif statistics:
        variance = _variance_from_scale(scale, options)
    # weight and bias repeat every `channels` rows, like the statistics: no affine views needed
    return y, _core.make_frame(layout, loc, variance, scale, weight, bias).viewed(stats_shape)


def _pass(
    rows: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    channels: int,
    floor: float,
    limits: tuple[float, float],
    options: Options,
    shift: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, int]:
    """One kernel pass over ``rows - shift``: output, location, scale, flagged rows.

    Location and scale have the kernel's ``(batch, channels)`` shape. A row is flagged when
    the pass cannot vouch for it: an offset above ``OFFSET_LIMIT`` or a variance below eps
    (``rstd`` above ``rstd_limit``), NaN included. ``limits`` holds ``rstd_limit`` and an upper
    bound of ``max(|gamma'|, 1)``.
    """
    source = rows if shift is None else rows - shift.reshape(-1, 1)
    y, mean, rstd = norm(source, weight, bias, channels, floor, options.detach)
    checked = (mean.detach(), rstd.detach()) if mean.requires_grad else (mean, rstd)
    flagged = _flag(*checked, weight, *limits)
    count_flagged = 0 if flagged is None else int(flagged.sum())
    loc = mean if shift is None else shift + mean
    return y, loc, rstd.reciprocal(), flagged, count_flagged


def _guarded(gamma: Tensor, eps: float) -> tuple[Tensor, float]:
    """``gamma`` guarded where it needs it (``_core.guard_gamma``), and ``max(|gamma'|, 1)``.

    The usual gamma, all of one sign and no smaller than eps in size, is settled by one
    reduction; only otherwise are the sizes taken one by one.
    """
    known = gamma.detach() if gamma.requires_grad else gamma
    low, high = (float(value) for value in torch.aminmax(known))
    if low >= eps:  # all positive (False for NaN)
        return gamma, max(high, 1.0)
    if high <= -eps:  # all negative
        return gamma, max(-low, 1.0)
    smallest, largest = (float(value) for value in torch.aminmax(known.abs()))
    if not smallest >= eps:
        gamma = _core.guard_gamma(gamma, eps)
    return gamma, max(largest, 1.0)


def _flag(
    mean: Tensor, rstd: Tensor, weight: Tensor | None, rstd_limit: float, gain_bound: float
) -> Tensor | None:
    """The rows one pass cannot vouch for (see ``_scores``), or ``None`` when there are none.

    The usual case is settled by two maxima and the bound of ``max(|gamma'|, 1)``:
    ``max |mean * rstd| * gain_bound`` bounds every row's offset, ``max rstd`` every row's
    ``rstd``; only past them are the rows scored one by one.
    """
    offset = float(torch.linalg.vector_norm(mean * rstd, math.inf)) * gain_bound
    if offset <= OFFSET_LIMIT and float(rstd.amax()) <= rstd_limit:  # False for NaN
        return None
    scores = _scores(mean, rstd, None if weight is None else weight.detach(), rstd_limit)
    flagged = ~(scores.view(-1) <= 1)
    return flagged if bool(flagged.any()) else None


def _shifted_in_place(
    y: Tensor,
    rows: Tensor,
    shift: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    channels: int,
    options: Options,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor], Tensor | None, int]:
    """The shifted second pass without gradients, in the first pass's output buffer.

    ``rows - shift`` is written over ``y``; its moments come from two reductions (the residual
    offset is a rounding error of the first pass, so ``E[d^2] - E[d]^2`` is exact to float
    rounding), and ``y`` is scaled and shifted in place: no new input-sized buffer, which on
    this kind of machine costs more than the arithmetic. Rows still far from 0 relative to
    their spread (``SHIFTED_LIMIT``) or with a variance below eps are flagged for ``_redo``.
    """
    length = rows.shape[-1]
    shifted = torch.sub(rows, shift.reshape(-1, 1), out=y.view_as(rows))
    mean = shifted.sum(-1) / length
    variance = (torch.linalg.vector_norm(shifted, dim=-1).square() / length - mean.square()).clamp(
        min=0
    )
    scale = _core.scale_from_variance(variance, options.eps, options.eps_mode)
    gain = scale.reciprocal() if weight is None else (weight / scale.view(-1, channels)).view(-1)
    offset = -mean * gain if bias is None else (bias - (mean * gain).view(-1, channels)).view(-1)
    shifted.mul_(gain.unsqueeze(1)).add_(offset.unsqueeze(1))
    seen = variance >= options.eps if options.eps_mode == "clamp" else variance >= 0
    flagged = ~(seen & (mean.abs() <= SHIFTED_LIMIT * scale))  # NaN included
    count_flagged = int(flagged.sum())
    stats = (shift + mean.view_as(shift), variance.view_as(shift), scale.view_as(shift))
    return y, stats, (flagged if count_flagged else None), count_flagged


def _variance_from_scale(scale: Tensor, options: Options) -> Tensor:
    """The raw variance behind the kernel's ``1 / rstd``: the inverse of the eps rule."""
    return scale.square() if options.eps_mode == "clamp" else scale.square() - options.eps


def _scores(mean: Tensor, rstd: Tensor, weight: Tensor | None, rstd_limit: float) -> Tensor:
    """Per row, above 1 where one pass cannot vouch for the result (NaN where it is NaN).

    The larger of ``|mean| / std * max(|gamma'|, 1) / OFFSET_LIMIT`` (the kernel's moments lose
    accuracy with ``|mean| / std``, its fused output with ``|mean| * |gamma'| / std``) and
    ``rstd / rstd_limit`` (a variance below eps).
    """
    offset = (mean * rstd).abs_()
    if weight is not None:
        offset.mul_(weight.abs().clamp_(min=1))
    return torch.maximum(offset.mul_(1 / OFFSET_LIMIT), rstd * (1 / rstd_limit))


def _redo(
    rows: Tensor,
    y: Tensor,
    stats: tuple[Tensor, Tensor, Tensor],
    redo: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    floor: float,
    rstd_limit: float,
    options: Options,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Normalize the rows ``redo`` again, accurately; copy them into y and the statistics.

    They are shifted by their first-pass mean and normalized by the kernel again; where that
    is still not fine (variance below eps, non-finite values) by the careful math instead.
    """
    count, length = rows.shape
    part_weight, part_bias = (
        None if value is None else value.repeat(count // value.numel()).index_select(0, redo)
        for value in (weight, bias)
    )
    part = rows.index_select(0, redo)
    shift = stats[0].detach().reshape(-1, 1).index_select(0, redo)
    with torch.no_grad():
        shiftable = bool(shift.isfinite().all())
    fine = False
    if shiftable:
        part_y, part_mean, part_rstd = norm(
            part - shift, part_weight, part_bias, redo.numel(), floor, options.detach
        )
        with torch.no_grad():
            fine = float(_scores(part_mean, part_rstd, part_weight, rstd_limit).amax()) <= 1
    if fine:
        part_loc = shift.view(-1) + part_mean.view(-1)
        part_scale = part_rstd.view(-1).reciprocal()
        part_variance = _variance_from_scale(part_scale, options)
    else:
        part_y, frame = _core.normalize_careful(
            part,
            ROWS,
            None if part_weight is None else part_weight.unsqueeze(1),
            None if part_bias is None else part_bias.unsqueeze(1),
            None,
            options,
        )
        assert frame.variance is not None  # the careful path always computes it
        part_loc, part_variance = frame.loc.view(-1), frame.variance.view(-1)
        part_scale = _core.scale_from_variance(part_variance, options.eps, options.eps_mode)
    merged = (
        value.reshape(-1).index_copy(0, redo, part).view_as(value)
        for value, part in zip(stats, (part_loc, part_variance, part_scale), strict=True)
    )
    return y.index_copy(0, redo, part_y.view(-1, length)), tuple(merged)  # type: ignore[return-value]
