"""The row route's fused backward: the gradients of ``_rows._Rows`` without a second graph.

The output's part is the group-norm kernel's own backward where it is exact, and torch.sum
reductions where it would sum ``KERNEL_SUM_MAX`` terms or more (its running float32 sums lose
accuracy with their length) or where a row below the eps floor passes gradient to ``x``. Every
statistic's gradient (``loc``, ``gain``, ``offset``, ``variance``) becomes per-row terms, added
to ``x``'s through the mean and the variance. It reads no value on the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._checks import CLAMPED, GUARDED, QUIET
from ._group_norm import unit_weight

# The kernel's backward sums in running float32 sums: along each row, and over the rows that
# share a weight for gamma's and beta's gradients. From KERNEL_SUM_MAX steps per row the backward
# sums with torch.sum instead, and the row route gives each row its own weight from that many rows
# per variate (``_rows._weights``). The kernel's gradients are 2 to 4 times less exact than the
# reference's below 2**12 steps, 10 to 20 times at 2**14; x's was 1.7e-4 off at 2**17 steps where
# dy is nearly constant along the row, gamma's and beta's 1.2e-5 over 2**15 rows against 4.4e-7
# (docs/design.md).
KERNEL_SUM_MAX = 2**12

if TYPE_CHECKING:
    from .._options import Options
    from ._group_norm import Grid
    from ._rows import Rows


def backward(
    x: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    rows: Rows,
    grid: Grid,
    options: Options,
    code: int,
    grads: tuple[Tensor | None, ...],
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients for ``x``, gamma and beta from those of ``y``, ``loc``, ``gain``, ``offset``
    and ``variance``.

    With ``y = (x - loc) * k + beta``, ``k = gamma' / scale``, ``gain = scale / gamma'`` and
    ``offset = loc - beta * gain``, every output's gradient becomes per-row gradients of
    ``loc``, ``scale``, ``gamma'`` and ``beta``; ``x`` gets ``k * dy`` plus the mean's and the
    variance's terms (none with ``detach``). The output's part is the kernel's fused backward
    except on long rows or where a row below the eps floor passes gradient to ``x``; there
    torch.sum reductions. With ``detach``, ``x`` takes no gradient through the statistics and
    only gamma' and beta collect the per-row terms.
    """
    batch, channels, length, _ = grid
    g_y = None if grads[0] is None else grads[0].reshape(batch, channels, length)
    g_loc, g_gain, g_offset, g_variance = (
        None if g is None else g.reshape(batch, channels) for g in grads[1:5]
    )
    guarded, inverse, gain = rows.guarded, rows.inverse, rows.gain
    through_statistics = needs[0] and not options.detach
    want_gamma, want_beta = needs[1] and gamma is not None, needs[2] and beta is not None
    # a row below eps: its gradient is far smaller than the kernel's terms (1 / scale times dy),
    # which cancel in the kernel's backward; the reductions below keep it exact
    quiet = bool(code & (CLAMPED | QUIET))
    # the kernel sums each row in running float32 sums, which lose accuracy on long rows
    reduced = length >= KERNEL_SUM_MAX or (quiet and through_statistics)
    source = x.view(batch, channels, length)
    if rows.shift is not None:
        source = source - rows.shift.unsqueeze(-1)  # as the forward's second pass read it
    grad_x = grad_gamma = grad_beta = None
    d_loc, d_scale, d_gamma, d_beta = g_loc, None, None, None  # per row
    if g_y is not None and not reduced:
        # the output's part in one fused pass: the kernel's own backward, with 1 / scale as
        # its rstd (exact for every row unless a row below eps passes gradient to x)
        mask = [through_statistics, want_gamma, want_beta]
        if any(mask):
            grad_x, grad_gamma, grad_beta = torch.ops.aten.native_group_norm_backward(
                g_y.contiguous(), source, rows.center, inverse, unit_weight(guarded, beta),
                batch, channels, length, channels, mask,
            )  # fmt: skip
        if needs[0] and options.detach:
            grad_x = g_y * _factor(rows).unsqueeze(-1)
    elif g_y is not None:  # the same terms from torch.sum reductions over time
        factor = _factor(rows)
        total = g_y.sum(-1)
        d_loc, d_beta = _plus(d_loc, -factor * total), total
        if through_statistics or want_gamma:
            moment = _moment(g_y, source, rows.center)
            d_scale, d_gamma = -factor * inverse * moment, moment * inverse
        if needs[0]:
            grad_x = g_y * factor.unsqueeze(-1)
    # gain = scale / gamma' and offset = loc - beta * gain
    d_gain = g_gain
    if g_offset is not None:
        d_loc = _plus(d_loc, g_offset)
        if want_beta:
            d_beta = _plus(d_beta, -g_offset * gain)
        if beta is not None:
            d_gain = (
                -g_offset * beta
                if d_gain is None
                else torch.addcmul(d_gain, g_offset, beta, value=-1)
            )
    if d_gain is not None and (through_statistics or want_gamma):
        through_scale = d_gain if guarded is None else d_gain / guarded
        d_scale = _plus(d_scale, through_scale)
        if want_gamma:
            d_gamma = _plus(d_gamma, -through_scale * gain)
    used = any(g is not None for g in (g_loc, g_gain, g_offset, g_variance))
    if through_statistics and (used or grad_x is None or reduced):
        d_variance = g_variance
        if d_scale is not None:
            slope = 0.5 * inverse  # d scale / d variance (0 where the eps clamp holds)
            if options.eps_mode == "clamp":
                assert rows.variance is not None  # _Rows computes it
                slope = torch.where(rows.variance >= options.eps, slope, 0)
            d_variance = _plus(d_variance, d_scale * slope)
        if d_loc is not None or d_variance is not None:
            d_loc = torch.zeros_like(inverse) if d_loc is None else d_loc
            d_variance = torch.zeros_like(inverse) if d_variance is None else d_variance
            rate = d_variance * (2 / length)  # variance = mean over time of (x - loc)^2
            offset = (d_loc / length - rate * rows.center).unsqueeze(-1)
            base = offset.expand_as(source) if grad_x is None else grad_x + offset
            grad_x = torch.addcmul(base, source, rate.unsqueeze(-1))
    if needs[0]:
        grad_x = torch.zeros_like(x) if grad_x is None else grad_x.view(x.shape)
    if want_gamma:
        if d_gamma is not None:
            grad_gamma = _plus(grad_gamma, d_gamma.sum(0))
        if grad_gamma is not None and code & GUARDED:
            assert gamma is not None and guarded is not None  # gamma' where some |gamma| < eps
            grad_gamma = torch.where(guarded == gamma, grad_gamma, 0)  # the guard passes none
    if want_beta and d_beta is not None:
        grad_beta = _plus(grad_beta, d_beta.sum(0))
    return grad_x, grad_gamma, grad_beta


def _moment(g_y: Tensor, source: Tensor, center: Tensor) -> Tensor:
    """Per row, the sum over time of ``dy * (source - center)``, centered before the product
    (the sums of ``dy * source`` and ``dy`` would cancel at the size of the offset)."""
    return torch.sub(source, center.unsqueeze(-1)).mul_(g_y).sum(-1)


def _factor(rows: Rows) -> Tensor:
    """``k = gamma' / scale`` per row."""
    return rows.inverse if rows.guarded is None else rows.guarded * rows.inverse


def _plus(total: Tensor | None, term: Tensor) -> Tensor:
    return term if total is None else total + term
