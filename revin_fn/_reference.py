"""The reference: the one implementation of the RevIN math, the specification of every backend.

Statistics, normalization and its inverse for every option (methods, masks, causal,
subtract_last, both eps rules, the gamma guard). It reads no tensor value on the host and has
no value-dependent control flow, so the same code runs eagerly on any device, under
``torch.compile``, ``torch.export``, ``torch.jit.trace``, ``torch.func`` transforms, forward-
and double-backward AD and on fake or meta tensors. The faster backends
(``revin_fn.backends``) are tested against it value for value and gradient for gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._options import EMPTY_VARIANCE, IQR_PER_STD, Options, stats_dtype
from ._patterns import Layout


def scale_from_variance(variance: Tensor, eps: float, eps_mode: str) -> Tensor:
    """``sqrt(max(variance, eps))`` for ``"clamp"``, ``sqrt(variance + eps)`` for ``"add"``,
    ``sqrt(variance) + eps`` for ``"add_std"`` (the S4 / ESPnet rule, std + 1e-4).

    ``"add_std"`` takes the square root only where the variance is positive, so a constant
    series gets a zero gradient instead of ``inf * 0 = nan``.
    """
    if eps_mode == "clamp":
        return variance.clamp(min=eps).sqrt()
    if eps_mode == "add":
        return (variance + eps).sqrt()
    positive = variance > 0
    return torch.where(positive, torch.where(positive, variance, 1).sqrt(), 0) + eps


def guard_gamma(gamma: Tensor, eps: float) -> Tensor:
    """``sign(gamma) * max(|gamma|, eps)`` where ``sign(0) = +1``, so it never divides by zero."""
    return torch.where(gamma < 0, gamma.clamp(max=-eps), gamma.clamp(min=eps))


def affine_views(
    layout: Layout, gamma: Tensor | None, beta: Tensor | None, eps: float | None
) -> tuple[Tensor | None, Tensor | None]:
    """The ``(V,)`` affine vectors as views broadcasting along ``layout.variate``; gamma guarded
    with ``eps`` (``None``: already guarded)."""
    if gamma is None and beta is None:
        return None, None
    assert layout.variate is not None  # checked with the shapes of gamma and beta
    view = layout.variate_view((gamma if gamma is not None else beta).shape[0])  # type: ignore[union-attr]
    if gamma is not None:
        gamma = (gamma if eps is None else guard_gamma(gamma, eps)).view(view)
    return gamma, None if beta is None else beta.view(view)


class Frame(NamedTuple):
    """Per-call state of one normalization: enough to invert it, nothing else.

    ``loc`` and ``variance`` keep the time axis (size 1, or the full length when causal);
    ``gain`` is ``scale / gamma`` and ``offset`` is ``loc - beta * gain``, so the inverse is
    the single fused ``offset + y * gain``. ``variance`` is ``None`` where the call asked for
    no statistics and computing it would have cost an operation. ``dtype`` is the input's:
    data units come back at least in it.
    """

    layout: Layout
    loc: Tensor
    variance: Tensor | None
    gain: Tensor
    offset: Tensor
    dtype: torch.dtype


def make_frame(
    layout: Layout,
    loc: Tensor,
    variance: Tensor | None,
    scale: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    dtype: torch.dtype,
) -> Frame:
    """The Frame of statistics ``loc``/``scale`` and the guarded affine, for input of ``dtype``."""
    return Frame(layout, loc, variance, *gain_offset(loc, scale, gamma, beta), dtype)


def gain_offset(
    loc: Tensor, scale: Tensor, gamma: Tensor | None, beta: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``gain = scale / gamma'`` and ``offset = loc - beta * gain``: the reverse is
    ``offset + y * gain``. ``gamma`` is guarded."""
    gain = scale if gamma is None else scale / gamma
    offset = loc if beta is None else torch.addcmul(loc, beta, gain, value=-1)
    return gain, offset


def forward_frame(x: Tensor, frame: Frame) -> Tensor:
    """``(x - offset) / gain``: the map that ``offset + y * gain`` (the reverse) inverts exactly.

    For statistics fixed in advance (dataset-level normalization): the Frame comes from
    ``make_frame`` and ``x`` is not used to compute it. Computed in the Frame's dtype,
    returned in ``x.dtype``.
    """
    return ((x.to(frame.gain.dtype) - frame.offset) / frame.gain).to(x.dtype)


def invert_frame(frame: Frame) -> Frame:
    """The Frame whose reverse ``offset' + y * gain'`` is ``(y - offset) / gain`` (forward_frame).

    ``gain' = 1 / gain`` and ``offset' = -offset / gain``: equal up to rounding, which is
    relative to ``|offset / gain|`` (the location in units of the scale).
    """
    gain = frame.gain.reciprocal()
    return frame._replace(gain=gain, offset=-frame.offset * gain)


def _count(observed: Tensor | None, x: Tensor, dim: int, causal: bool) -> Tensor | int:
    if observed is None:
        if causal:
            steps = torch.arange(1, x.shape[dim] + 1, dtype=x.dtype, device=x.device)
            return steps.view([-1 if d == dim else 1 for d in range(x.ndim)])
        return x.shape[dim]
    weight = observed.to(x.dtype)
    return weight.cumsum(dim) if causal else weight.sum(dim, keepdim=True)


def _total(x: Tensor, dim: int, causal: bool) -> Tensor:
    return x.cumsum(dim) if causal else x.sum(dim, keepdim=True)


def _first_observed(x: Tensor, observed: Tensor | None, dim: int) -> Tensor:
    if observed is None:
        return x.narrow(dim, 0, 1)
    return x.gather(dim, observed.to(torch.uint8).argmax(dim, keepdim=True))


def _last_observed(x: Tensor, observed: Tensor | None, dim: int) -> Tensor:
    length = x.shape[dim]
    if observed is None:  # a copy: the statistics never hold a view of the input
        return x.narrow(dim, length - 1, 1).clone()
    steps = torch.arange(1, length + 1, device=x.device).view(
        [-1 if d == dim else 1 for d in range(x.ndim)]
    )
    return x.gather(dim, (observed * steps).argmax(dim, keepdim=True))


def _std_moments(
    x: Tensor, observed: Tensor | None, dim: int, options: Options
) -> tuple[Tensor, Tensor, Tensor]:
    """Location, variance and ``x - location`` for ``method="std"``.

    Moments are taken after shifting each instance by a constant of its own (a first
    estimate of its mean, or its first observed value when causal, detached), which keeps the
    result accurate when the offset is many times the standard deviation.
    """
    count = _count(observed, x, dim, options.causal)
    safe_count = count.clamp(min=1) if isinstance(count, Tensor) else count
    if options.causal:
        shift = _first_observed(x, observed, dim).detach()
    else:
        shift = (x.sum(dim, keepdim=True) / safe_count).detach()
    shifted = x - shift
    if observed is not None:
        shifted = shifted.masked_fill(~observed, 0)
    if options.causal:  # running sums lose accuracy with length: accumulate and subtract in float64
        wide = shifted.double()
        wide_mean = wide.cumsum(dim) / safe_count
        second = wide.square().cumsum(dim) / safe_count
        mean = wide_mean.to(x.dtype)
        variance = (second - wide_mean.square()).clamp(min=0).to(x.dtype)
    else:
        mean = shifted.sum(dim, keepdim=True) / safe_count
        deviation = shifted - mean
        if observed is not None:
            deviation = deviation.masked_fill(~observed, 0)
        variance = deviation.square().sum(dim, keepdim=True) / safe_count
    if options.detach:
        mean, variance = mean.detach(), variance.detach()
    return shift + mean, variance, shifted - mean


def _robust_moments(
    x: Tensor, observed: Tensor | None, dim: int, detach: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Median, squared robust scale (IQR / 1.349, else mean absolute deviation, else 0) and
    ``x - median``.

    Quantiles are taken after shifting each instance by its lower median (an observed value,
    detached), so they stay accurate far from 0: a value of the instance's bulk, where its
    first value may be an outlier that rounds every other value at its own size. An instance
    with nothing observed is read as zeros, so no NaN reaches its statistics or the gradients.
    """
    values = x
    if observed is not None:
        seen = observed.any(dim, keepdim=True)
        values = values.masked_fill(~observed & seen, float("nan")).masked_fill(~seen, 0)
    shift = values.detach().nanmedian(dim, keepdim=True).values
    values = values - shift
    levels = torch.tensor([0.25, 0.5, 0.75], dtype=x.dtype, device=x.device)
    quartiles = values.nanquantile(levels, dim=dim, keepdim=True)
    lower, median, upper = (quartiles.detach() if detach else quartiles).unbind(0)
    iqr_scale = (upper - lower) / IQR_PER_STD
    mad = (values - median).abs().nanmean(dim, keepdim=True)
    scale = torch.where(iqr_scale > 0, iqr_scale, mad)
    if detach:  # the mean absolute deviation takes gradients from the values themselves
        scale = scale.detach()
    # loc = shift + median is rounded at the size of the shift: centre on the rounded loc and
    # its exact rounding error (TwoSum), so that y is accurate far from 0 and loc + y * scale
    # gives x back at the size of loc
    loc = shift + median
    back = loc - shift
    error = (shift - (loc - back)) + (median - back)
    return loc, scale.square(), (x - loc) - error


def _other_moments(
    x: Tensor, observed: Tensor | None, dim: int, options: Options
) -> tuple[Tensor, Tensor]:
    """Location and squared scale for ``"meanabs"`` and ``"minmax"``."""
    if options.method == "meanabs":
        count = _count(observed, x, dim, options.causal)
        safe_count = count.clamp(min=1) if isinstance(count, Tensor) else count
        scale = _total(x.abs(), dim, options.causal) / safe_count
        return torch.zeros_like(scale), scale.square()
    # minmax
    low_values = x if observed is None else x.masked_fill(~observed, float("inf"))
    high_values = x if observed is None else x.masked_fill(~observed, float("-inf"))
    if options.causal:
        low = low_values.cummin(dim).values
        high = high_values.cummax(dim).values
    else:
        low = low_values.amin(dim, keepdim=True)
        high = high_values.amax(dim, keepdim=True)
    if observed is not None:  # an instance (or prefix) with nothing observed has low = +inf
        seen = high >= low
        low = torch.where(seen, low, 0)
        high = torch.where(seen, high, 0)
    return low, (high - low).square()


def moments(
    x: Tensor, observed: Tensor | None, dim: int, options: Options
) -> tuple[Tensor, Tensor, Tensor]:
    """``(location, variance, x - location)`` with every option applied except the eps rule.

    ``x`` is in the statistics dtype and holds 0 wherever ``observed`` is False. Instances
    with no observed step get location 0 and variance ``EMPTY_VARIANCE``.
    """
    if options.method == "std" and not options.subtract_last:
        loc, variance, centered = _std_moments(x, observed, dim, options)
    elif options.method == "robust" and not options.subtract_last:
        loc, variance, centered = _robust_moments(x, observed, dim, options.detach)
    else:
        if options.method == "std":
            loc, variance, _ = _std_moments(x, observed, dim, options)
        elif options.method == "robust":
            loc, variance, _ = _robust_moments(x, observed, dim, options.detach)
        else:
            loc, variance = _other_moments(x, observed, dim, options)
        if options.subtract_last:
            loc = _last_observed(x, observed, dim)
        if options.detach:
            loc, variance = loc.detach(), variance.detach()
        centered = x - loc
    if options.causal and options.method != "meanabs" and not options.detach:
        # up to the second observed step the location is the first observed value: there
        # x - location is exactly 0, with no gradient (autograd's paths through x and through
        # the running location cancel only to the rounding of 1 / scale, 1 / eps with
        # "add_std"); masked steps among them are returned as given anyway. Detached, the
        # location is a constant and the gradient through x alone is 1 / scale
        count = _count(observed, x, dim, causal=True)
        assert isinstance(count, Tensor)  # per step when causal
        centered = torch.where(count == 1, 0, centered)
    if observed is not None:
        seen = (
            observed.any(dim, keepdim=True) if not options.causal else observed.cummax(dim).values
        )
        loc = torch.where(seen, loc, 0)
        variance = torch.where(seen, variance, EMPTY_VARIANCE)
    return loc, variance, centered


def normalize(
    x: Tensor,
    layout: Layout,
    gamma: Tensor | None,
    beta: Tensor | None,
    observed: Tensor | None,
    options: Options,
) -> tuple[Tensor, Frame]:
    """Normalize ``x`` per instance along ``layout.time``; see ``revin`` for the formula.

    ``gamma`` (not yet guarded) and ``beta`` are ``(V,)`` vectors in the statistics dtype,
    ``observed`` is ``None`` or a bool tensor of ``x``'s shape. Returns the output in
    ``x.dtype`` and the Frame that inverts it.
    """
    gamma, beta = affine_views(layout, gamma, beta, options.eps)
    sdtype = stats_dtype(x.dtype)
    values = x.to(sdtype)
    if observed is not None:
        values = values.masked_fill(~observed, 0)
    loc, variance, centered = moments(values, observed, layout.time, options)
    scale = scale_from_variance(variance, options.eps, options.eps_mode)
    # a variance past the float32 range: NaN rather than a silent y = 0 and an inf scale
    scale = torch.where(scale.isinf(), float("nan"), scale)
    factor = scale.reciprocal() if gamma is None else gamma / scale
    y = centered * factor if beta is None else torch.addcmul(beta, centered, factor)
    if observed is not None:
        y = torch.where(observed, y, x.to(sdtype))
    return y.to(x.dtype), make_frame(layout, loc, variance, scale, gamma, beta, x.dtype)


def scale_shift(y: Tensor, gain: Tensor, offset: Tensor) -> Tensor:
    """``offset + y * gain``: the reverse, in the statistics' dtype (one fused op).

    While compiling, a multiply and an add (inductor fuses them alike): the backward then saves
    ``gain`` itself, which inductor stores once, where ``addcmul``'s saves ``gain * 1`` and
    inductor recomputes the scale's square root in every vector of the output's loop."""
    if torch.compiler.is_compiling():
        return y * gain + offset
    return torch.addcmul(offset, y, gain)
