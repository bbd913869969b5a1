"""``revin`` and ``reverse``: the public, stateless face of the math in ``_reference``."""

from __future__ import annotations

import numbers
from typing import Literal, NamedTuple, overload

import torch
from torch import Tensor

from . import RevINError, _args, _reference, backends
from ._args import flag
from ._inputs import Mask as Mask
from ._inputs import _affine_vector, _warn_if_swapped
from ._inputs import _observed as _observed
from ._options import DEFAULT_EPS, Options, check_options
from ._patterns import SWAP_HINT, Layout, parse
from ._reference import Frame
from ._reverse import ReverseFn, Variates, _check_tensor, _error, _renamed


class _DefaultPattern(str):
    """The default pattern ``"b v t"``, told apart from the same string passed explicitly."""

    __slots__ = ()


DEFAULT_PATTERN = _DefaultPattern("b v t")


class Statistics(NamedTuple):
    """The statistics of one ``revin`` call (a namedtuple, fields as in iTransformer's).

    Attributes:
        mean: the location subtracted from each instance: the mean for ``method="std"``, the
            last (observed) step with ``subtract_last=True``, else the median (``"robust"``),
            the minimum (``"minmax"``) or 0 (``"meanabs"``). Shape of ``x`` with the time axis
            reduced to size 1 (full length when ``causal=True``); float32 (float64 for float64).
        variance: the squared scale before the eps rule: the population (biased) variance for
            ``method="std"``, ``(IQR / 1.349)**2``, ``(max - min)**2`` or ``mean(|x|)**2``
            otherwise, 1 for an instance with nothing observed. The scale that divides is
            ``sqrt(max(variance, eps))`` (``eps_mode="clamp"``), ``sqrt(variance + eps)``
            (``"add"``) or ``sqrt(variance) + eps`` (``"add_std"``).
        gamma: the affine weight as passed (the same tensor, e.g. the module's Parameter, not
            a copy), or ``None``.
        beta: the affine bias as passed (the same tensor), or ``None``.

    ``mean`` and ``variance`` are tensors of their own: no view of ``x`` and not shared with
    the call's ``reverse_fn``, so writing into them changes neither.
    """

    mean: Tensor
    variance: Tensor
    gamma: Tensor | None
    beta: Tensor | None


# a saved Statistics loads with torch.load's default weights_only=True (torch >= 2.4)
if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals([Statistics])


def _prepare(
    x: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    pattern: str,
    mask: Mask | None,
    options: Options,
) -> tuple[Layout, Tensor | None, Tensor | None, Tensor | None]:
    _check_tensor("x", x)
    check_options(options)
    layout = parse(pattern, x.ndim)
    if x.shape[layout.time] == 0:
        raise ValueError(f'x has shape {tuple(x.shape)}: the time axis "t" is empty')
    return (
        layout,
        _affine_vector("gamma", gamma, x, layout),
        _affine_vector("beta", beta, x, layout),
        _observed(mask, x, layout),
    )


@overload
def revin(
    x: Tensor,
    gamma: Tensor | None = ...,
    beta: Tensor | None = ...,
    *,
    pattern: str = ...,
    eps: float = ...,
    eps_mode: str = ...,
    detach: bool = ...,
    subtract_last: bool = ...,
    method: str = ...,
    causal: bool = ...,
    mask: Mask | None = ...,
    return_statistics: Literal[False] = ...,
) -> tuple[Tensor, ReverseFn]: ...
@overload
def revin(
    x: Tensor,
    gamma: Tensor | None = ...,
    beta: Tensor | None = ...,
    *,
    pattern: str = ...,
    eps: float = ...,
    eps_mode: str = ...,
    detach: bool = ...,
    subtract_last: bool = ...,
    method: str = ...,
    causal: bool = ...,
    mask: Mask | None = ...,
    return_statistics: Literal[True],
) -> tuple[Tensor, ReverseFn, Statistics]: ...
def revin(
    x: Tensor,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    *,
    pattern: str = DEFAULT_PATTERN,
    eps: float = DEFAULT_EPS,
    eps_mode: str = "clamp",
    detach: bool = False,
    subtract_last: bool = False,
    method: str = "std",
    causal: bool = False,
    mask: Mask | None = None,
    return_statistics: bool = False,
) -> tuple[Tensor, ReverseFn] | tuple[Tensor, ReverseFn, Statistics]:
    r"""Normalize each instance of ``x`` by its own statistics; return the result and its inverse.

    .. math::
        y = \frac{x - \mu}{\sigma} \, \gamma' + \beta, \qquad
        \sigma = \sqrt{\max(\mathrm{Var}[x], \epsilon)} \ \text{(clamp)} \ \text{or} \
        \sqrt{\mathrm{Var}[x] + \epsilon} \ \text{(add)}, \qquad
        \gamma' = \operatorname{sign}(\gamma) \max(|\gamma|, \epsilon),\ \operatorname{sign}(0) = 1

    :math:`\mu` and the biased (population) variance are taken over the time axis ``t`` of
    each instance (every combination of the other axes), in float32 (float64 for float64
    input). ``reverse_fn`` applies the exact inverse with the very same :math:`\sigma` and
    :math:`\gamma'`: ``x_hat = (y_hat - beta) / gamma' * sigma + mu``.

    Args:
        x: floating tensor laid out as ``pattern``.
        gamma, beta: affine parameters of shape ``(V,)`` or ``(V, 1)``. Default: no affine.
        pattern: einops-style axis names; ``t`` is reduced, ``v`` carries gamma/beta, every
            other axis (``...`` allowed) indexes instances. Default: ``"b v t"``; left at
            the default without gamma/beta, a call with fewer steps than variates warns
            (``UserWarning``: a ``(batch, time, variates)`` batch needs ``"b t v"``).
        eps: variance floor (and gamma floor). Default: ``1e-5``.
        eps_mode: ``"clamp"`` (max), ``"add"`` (as in the original RevIN) or ``"add_std"``
            (:math:`\sigma = \sqrt{\mathrm{Var}[x]} + \epsilon`, as in S4). Default: ``"clamp"``.
        detach: stop gradients through the statistics. Default: ``False``.
        subtract_last: center on the last (observed) step instead of the location; the scale
            is unchanged. Default: ``False``.
        method: ``"std"``, ``"robust"`` (median, IQR/1.349), ``"minmax"`` (to [0, 1]) or
            ``"meanabs"`` (location 0, scale mean |x|). Default: ``"std"``.
        causal: step t uses the statistics of steps 0..t only. Default: ``False``.
        mask: tensor of bools, or of 0/1 numbers read as ``mask != 0`` (True/nonzero =
            observed), broadcastable to ``x``, or ``"nan"``; a mask with one axis fewer than
            ``x`` is ``x``'s shape without its variate axis (``(B, T)`` for ``"b t v"``) and
            applies to every variate (give a per-variate mask all of ``x``'s axes). Statistics
            use observed steps only and masked slots are returned unchanged. Default: all
            observed.
        return_statistics: also return the :class:`Statistics`. Default: ``False``.

    Returns:
        ``(y, reverse_fn)``, or ``(y, reverse_fn, statistics)`` with ``return_statistics=True``.
        ``y`` has the shape and dtype of ``x`` (float16, bfloat16, float32 or float64).
        ``reverse_fn`` and the statistics hold tensors of their own (no view of ``x``);
        ``Statistics.gamma``/``beta`` are the tensors passed.

    Range: statistics are float32 for every dtype but float64, so float32, float16 and
    bfloat16 data need a scale below about 1.8e19 / sqrt(T) (the sum of squares over T steps
    must be a float32) and finite sums over time; beyond that ``y`` and ``reverse_fn(y)`` are
    NaN on every backend, never another finite value.

    Examples::

        >>> x = torch.randn(32, 7, 96) * 5 + 3
        >>> y, reverse_fn = revin(x)
        >>> torch.allclose(reverse_fn(y), x, atol=1e-5)
        True
    """
    if not isinstance(eps, float | int) and isinstance(eps, numbers.Real):
        eps = float(eps)  # numpy reals, as the modules take them
    options = Options(eps, eps_mode, detach, subtract_last, method, causal)
    call = _call(gamma, beta)
    try:
        flag("return_statistics", return_statistics)
        layout, gamma_vec, beta_vec, observed = _prepare(x, gamma, beta, pattern, mask, options)
    except (TypeError, ValueError) as error:
        raise _error(call, error) from None
    if pattern is DEFAULT_PATTERN and gamma is None and beta is None:
        _warn_if_swapped(x, layout)
    try:
        y, frame = backends.normalize(
            x, layout, gamma_vec, beta_vec, observed, options, return_statistics
        )
    except ValueError as error:  # a forced backend that cannot take the call
        raise _error(call, error) from None
    reverse_fn = ReverseFn(frame)
    if return_statistics:
        assert frame.variance is not None  # asked for with statistics=True
        # copies of their own: writing into them moves neither x nor reverse_fn
        return y, reverse_fn, Statistics(frame.loc.clone(), frame.variance.clone(), gamma, beta)
    return y, reverse_fn


def _call(gamma: object, beta: object) -> str:
    """The call as its errors name it: ``revin(x)``, ``revin(x, gamma)``, ``revin(x, gamma,
    beta)`` or ``revin(x, None, beta)``."""
    if beta is None:
        return "revin(x)" if gamma is None else "revin(x, gamma)"
    return "revin(x, None, beta)" if gamma is None else "revin(x, gamma, beta)"


def statistics_fields(stats: object) -> Statistics:
    """``stats`` if it is a Statistics (any 4-tuple), else a ``TypeError`` saying so."""
    if not isinstance(stats, tuple) or len(stats) != 4:
        raise TypeError(
            "stats must be the Statistics of a revin call (mean, variance, gamma, beta), "
            f"got {type(stats).__name__}"
        )
    return Statistics(*stats)


def frame_from_statistics(
    stats: Statistics, pattern: str, eps: float, eps_mode: str, dtype: torch.dtype | None = None
) -> Frame:
    """Rebuild the inverse of a ``revin`` call from its Statistics (same options required);
    ``dtype``: the input's (default: the statistics')."""
    mean, variance, gamma, beta = statistics_fields(stats)
    _check_tensor("stats.mean", mean)
    _check_tensor("stats.variance", variance)
    check_options(Options(eps, eps_mode))
    _args.layout(pattern)  # the pattern's own errors first, then its fit to the statistics
    try:
        layout = parse(pattern, mean.ndim)
    except ValueError as error:
        raise ValueError(f"stats.mean has shape {tuple(mean.shape)}: {error}") from None
    dtype = mean.dtype if dtype is None else dtype
    if variance.device != mean.device:
        raise ValueError(
            f"stats.variance is on {variance.device}, expected {mean.device} like stats.mean"
        )
    if variance.shape != mean.shape:
        raise ValueError(
            f"stats.variance has shape {tuple(variance.shape)}, "
            f"expected {tuple(mean.shape)} like stats.mean"
        )
    gamma_view, beta_view = _reference.affine_views(
        layout,
        _affine_vector("stats.gamma", gamma, mean, layout, "stats.mean"),
        _affine_vector("stats.beta", beta, mean, layout, "stats.mean"),
        eps,
    )
    scale = _reference.scale_from_variance(variance, eps, eps_mode)
    return _reference.make_frame(layout, mean, variance, scale, gamma_view, beta_view, dtype)


def reverse(
    y_hat: Tensor,
    stats: Statistics,
    *,
    pattern: str = "b v t",
    eps: float = DEFAULT_EPS,
    eps_mode: str = "clamp",
    variates: Variates | None = None,
    shift: bool = True,
    stepwise: bool | None = None,
) -> Tensor:
    """Stateless inverse of ``revin`` from its :class:`Statistics` (see ``revin`` for the formula).

    The scale is recomputed from ``stats.variance``, so the result equals the call's
    ``reverse_fn(y_hat)`` up to rounding (a few ulps), and it comes back in
    ``promote_types(stats.mean.dtype, y_hat.dtype)``: the statistics do not record the input's
    dtype (float16 data gives float32 here where ``reverse_fn`` gives float16).

    ``pattern``, ``eps`` and ``eps_mode`` must be those of the ``revin`` call that produced
    ``stats``; the other arguments are those of ``ReverseFn.__call__``. The statistics'
    values are not read (no host synchronization), so a variance edited to below 0 is taken
    as 0 by ``"clamp"`` and ``"add_std"``, and below ``-eps`` makes the scale NaN with ``"add"``.
    """
    call = "reverse(y_hat, stats)"
    try:
        frame = frame_from_statistics(stats, pattern, eps, eps_mode)
    except (TypeError, ValueError) as error:
        raise _error(call, error) from None
    try:
        return ReverseFn(frame)(y_hat, variates, shift=shift, stepwise=stepwise)
    except RevINError as error:  # the closure's checks, under this call's name
        message = str(_renamed(call, error))
        if SWAP_HINT in message:  # reverse_fn's output-pattern hint: here pattern= is the call's
            message = message[: message.index(SWAP_HINT)]
        steps = frame.loc.shape[frame.layout.time]
        if steps > 1 and "has shape" in message:  # causal statistics, or another pattern
            message += (
                f'; stats.mean has {steps} entries on the time axis "t" of pattern "{pattern}": '
                "unless they are causal statistics, pass the pattern of the revin call"
            )
        raise type(error)(message) from None
