"""``revin`` and ``reverse``: the public, stateless face of the math in ``_core``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple, Union, overload

import torch
from torch import Tensor

from . import RevINError, RevINTypeError, _core, _kernels
from ._core import DEFAULT_EPS, Frame, Options
from ._patterns import Layout, parse

if TYPE_CHECKING:
    from torch.distributions import Distribution

Variates = Union[int, Sequence[int], Sequence[bool], slice, Tensor]  # noqa: UP007 (runtime alias)
Mask = Union[Tensor, Literal["nan"]]  # noqa: UP007


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
        gamma: the affine weight as passed, or ``None``.
        beta: the affine bias as passed, or ``None``.
    """

    mean: Tensor
    variance: Tensor
    gamma: Tensor | None
    beta: Tensor | None


# a saved Statistics loads with torch.load's default weights_only=True (torch >= 2.4)
if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals([Statistics])


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def _affine_view(name: str, value: Tensor | None, x: Tensor, layout: Layout) -> Tensor | None:
    """``value`` of shape (V,) or (V, 1) as a tensor broadcasting along the variate axis."""
    if value is None:
        return None
    _check_tensor(name, value)
    if layout.variate is None:
        raise ValueError(
            f'{name} needs a variate axis "v" in the pattern, got pattern "{layout.pattern}"'
        )
    size = x.shape[layout.variate]
    if tuple(value.shape) not in ((size,), (size, 1)):
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}, expected ({size},) or ({size}, 1) "
            f'for x of shape {tuple(x.shape)} with pattern "{layout.pattern}"'
        )
    return value.to(_core.stats_dtype(x.dtype)).reshape(layout.variate_view(size))


def _observed(mask: Mask | None, x: Tensor) -> Tensor | None:
    if mask is None:
        return None
    if isinstance(mask, str):
        if mask != "nan":
            raise ValueError(f'mask must be a bool tensor or the string "nan", got {mask!r}')
        return ~x.isnan()
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f'mask must be a bool tensor (True = observed) or "nan", got {kind}')
    try:
        expanded = mask.expand(x.shape)
    except RuntimeError:
        expanded = None
    if expanded is None:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, which does not broadcast to x of shape "
            f"{tuple(x.shape)}"
        )
    return expanded


def _prepare(
    x: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    pattern: str,
    mask: Mask | None,
    options: Options,
) -> tuple[Layout, Tensor | None, Tensor | None, Tensor | None]:
    _check_tensor("x", x)
    _core.check_options(options)
    layout = parse(pattern, x.ndim)
    if x.shape[layout.time] == 0:
        raise ValueError(f'x has shape {tuple(x.shape)}: the time axis "t" is empty')
    gamma_view = _affine_view("gamma", gamma, x, layout)
    if gamma_view is not None:
        gamma_view = _core.guard_gamma(gamma_view, options.eps)
    return layout, gamma_view, _affine_view("beta", beta, x, layout), _observed(mask, x)


def _variate_index(variates: Variates, size: int) -> Tensor | slice | int:
    """Turn a ``variates=`` selection into something that indexes an axis of length size."""
    if isinstance(variates, slice):
        return variates
    if isinstance(variates, int) and not isinstance(variates, bool):
        if not -size <= variates < size:
            raise ValueError(f"variates={variates} is out of range for {size} variates")
        return slice(variates % size, variates % size + 1)
    index = torch.as_tensor(variates)
    if index.dtype == torch.bool:
        if index.shape != (size,):
            raise ValueError(
                f"a bool variates mask needs shape ({size},), got {tuple(index.shape)}"
            )
        return index.nonzero().flatten()
    if index.ndim != 1 or index.is_floating_point() or index.is_complex():
        raise ValueError(
            f"variates must be an int, a list of ints, a slice or a bool mask, got {variates!r}"
        )
    if index.numel() and not (-size <= int(index.min()) and int(index.max()) < size):
        raise ValueError(f"variates={variates!r} is out of range for {size} variates")
    return index % size


def _select(frame: Frame, variates: Variates | None) -> Frame:
    axis = frame.layout.variate
    if variates is None:
        return frame
    if axis is None:
        raise ValueError(
            f'variates= needs a variate axis "v" in the pattern "{frame.layout.pattern}"'
        )
    index = _variate_index(variates, frame.loc.shape[axis])
    where: list[slice | int] = [slice(None)] * frame.layout.ndim

    def pick(value: Tensor) -> Tensor:
        if value.shape[axis] == 1:
            return value
        if isinstance(index, Tensor):
            return value.index_select(axis, index.to(value.device))
        where[axis] = index
        return value[tuple(where)]

    return Frame(frame.layout, *(pick(value) for value in frame[1:]))


def _fit(
    frame: Frame, shape: Sequence[int], stepwise: bool | None, name: str = "y_hat"
) -> tuple[Tensor, Tensor]:
    """``(gain, offset)`` for an output of ``shape``; raises if the shape does not match."""
    layout = frame.layout
    if len(shape) != layout.ndim:
        raise ValueError(
            f"{name} has shape {tuple(shape)} ({len(shape)} dimensions), expected "
            f'{layout.ndim} dimensions for pattern "{layout.pattern}"'
        )
    time = layout.time
    gain, offset = frame.gain, frame.offset
    length = frame.loc.shape[time]
    if length > 1:  # causal statistics, one per input step
        if stepwise is None:
            stepwise = shape[time] == length
        if stepwise and shape[time] != length:
            raise ValueError(
                f"stepwise=True needs {name} with {length} steps like the input, "
                f"got shape {tuple(shape)}"
            )
        if not stepwise:
            gain, offset = gain.narrow(time, length - 1, 1), offset.narrow(time, length - 1, 1)
    expected = list(frame.loc.shape)
    expected[time] = shape[time]
    if list(shape) != expected:
        expected_text = (
            "(" + ", ".join("T" if d == time else str(n) for d, n in enumerate(expected)) + ")"
        )
        raise ValueError(
            f"{name} has shape {tuple(shape)}, expected {expected_text} (any T) to match the "
            f'statistics of shape {tuple(frame.loc.shape)} with pattern "{layout.pattern}"; '
            "pass variates= when y_hat holds only some variates"
        )
    return gain, offset


def _undo(frame: Frame, y: Tensor, shift: bool, stepwise: bool | None) -> Tensor:
    """``offset + y * gain`` (``y * |gain|`` without shift) after checking shapes."""
    _check_tensor("y_hat", y)
    gain, offset = _fit(frame, y.shape, stepwise)
    # the float32 statistics promote a half-precision y inside the one fused op (no upcast copy)
    if not shift:
        return (y * gain.abs()).to(y.dtype)
    return _kernels.scale_shift(y, gain, offset).to(y.dtype)


class ReverseFn:
    """Maps model outputs from normalized space back to data units for one ``revin`` call.

    Holds the statistics of that call only; nothing is shared with other calls.
    """

    __slots__ = ("_frame",)

    def __init__(self, frame: Frame) -> None:
        self._frame = frame

    def __call__(
        self,
        y_hat: Tensor,
        variates: Variates | None = None,
        *,
        shift: bool = True,
        stepwise: bool | None = None,
    ) -> Tensor:
        """Invert the normalization: ``x_hat = (y_hat - beta) / gamma' * scale + mean``.

        Args:
            y_hat: tensor in the layout of the input; the time axis may have any length.
            variates: which variates ``y_hat`` holds (int, list, slice or bool mask), for
                outputs with fewer variates than the input. Default: all.
            shift: ``False`` for scale-like outputs (a predicted std, an interval width):
                returns ``y_hat * scale / |gamma'|``. Default: ``True``.
            stepwise: causal statistics only: ``True`` undoes step t with the statistics of
                step t, ``False`` uses the last step's for every step. Default: ``True``
                exactly when ``y_hat`` has the input's length.
        """
        try:
            return _undo(_select(self._frame, variates), y_hat, shift, stepwise)
        except (TypeError, ValueError) as error:
            raise _error("reverse_fn(y_hat)", error) from None

    def distribution(self, dist: Distribution, variates: Variates | None = None) -> Distribution:
        """Map a distribution predicted in normalized space to data units.

        Returns the law of ``x = offset + y * gain`` for ``y ~ dist`` (the same affine map as
        ``reverse_fn``), whose ``log_prob``, ``sample``, ``mean``, ``stddev``, ``variance``,
        ``cdf`` and ``icdf`` are in data units. ``dist.batch_shape`` must have the layout of the
        input (any time length); ``variates=`` as in ``__call__``.
        """
        from ._dist import AffineDistribution

        try:
            frame = _select(self._frame, variates)
            gain, offset = _fit(frame, dist.batch_shape, None, "dist.batch_shape")
        except (TypeError, ValueError) as error:
            raise _error("reverse_fn.distribution(dist)", error) from None
        return AffineDistribution(dist, offset, gain)

    def quantiles(self, q_hat: Tensor, variates: Variates | None = None) -> Tensor:
        """Reverse quantiles stacked on a new last axis, keeping them in ascending order.

        ``q_hat`` has the layout of the input plus a trailing quantile axis of levels
        ``tau_0 < ... < tau_{Q-1}``. Where the map is decreasing (``gamma < 0``) the level
        ``tau`` becomes ``1 - tau``, so the axis is reversed for those instances: position k
        then holds level ``1 - tau_{Q-1-k}``, which equals ``tau_k`` for symmetric levels.
        """
        try:
            frame = _select(self._frame, variates)
            _check_tensor("q_hat", q_hat)
            gain, offset = _fit(frame, q_hat.shape[:-1], None, "q_hat without its quantile axis")
        except (TypeError, ValueError) as error:
            raise _error("reverse_fn.quantiles(q_hat)", error) from None
        gain, offset = gain.unsqueeze(-1), offset.unsqueeze(-1)
        values = q_hat.to(_core.stats_dtype(q_hat.dtype))
        data = torch.addcmul(offset, values, gain).to(q_hat.dtype)
        return torch.where(gain < 0, data.flip(-1), data)


def _error(call: str, error: Exception) -> RevINError:
    if isinstance(error, RevINError):  # already carries its call
        return error
    kind = RevINTypeError if isinstance(error, TypeError) else RevINError
    return kind(f"{call}: {error}")


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
    pattern: str = "b v t",
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
            other axis (``...`` allowed) indexes instances. Default: ``"b v t"``.
        eps: variance floor (and gamma floor). Default: ``1e-5``.
        eps_mode: ``"clamp"`` (max), ``"add"`` (as in the original RevIN) or ``"add_std"``
            (:math:`\sigma = \sqrt{\mathrm{Var}[x]} + \epsilon`, as in S4). Default: ``"clamp"``.
        detach: stop gradients through the statistics. Default: ``False``.
        subtract_last: center on the last (observed) step instead of the location; the scale
            is unchanged. Default: ``False``.
        method: ``"std"``, ``"robust"`` (median, IQR/1.349), ``"minmax"`` (to [0, 1]) or
            ``"meanabs"`` (location 0, scale mean |x|). Default: ``"std"``.
        causal: step t uses the statistics of steps 0..t only. Default: ``False``.
        mask: bool tensor broadcastable to ``x`` (True = observed) or ``"nan"``; statistics use
            observed steps only and masked slots are returned unchanged. Default: all observed.
        return_statistics: also return the :class:`Statistics`. Default: ``False``.

    Returns:
        ``(y, reverse_fn)``, or ``(y, reverse_fn, statistics)`` with ``return_statistics=True``.
        ``y`` has the shape and dtype of ``x``.

    Examples::

        >>> x = torch.randn(32, 7, 96) * 5 + 3
        >>> y, reverse_fn = revin(x)
        >>> torch.allclose(reverse_fn(y), x, atol=1e-5)
        True
    """
    options = Options(eps, eps_mode, detach, subtract_last, method, causal)
    try:
        layout, gamma_view, beta_view, observed = _prepare(x, gamma, beta, pattern, mask, options)
    except (TypeError, ValueError) as error:
        raise _error("revin(x, gamma, beta)", error) from None
    y, frame = _core.normalize(x, layout, gamma_view, beta_view, observed, options)
    reverse_fn = ReverseFn(frame)
    if return_statistics:
        return y, reverse_fn, Statistics(frame.loc, frame.variance, gamma, beta)
    return y, reverse_fn


def frame_from_statistics(stats: Statistics, pattern: str, eps: float, eps_mode: str) -> Frame:
    """Rebuild the inverse of a ``revin`` call from its Statistics (same options required)."""
    mean, variance, gamma, beta = stats
    _check_tensor("stats.mean", mean)
    _check_tensor("stats.variance", variance)
    _core.check_options(Options(eps, eps_mode))
    layout = parse(pattern, mean.ndim)
    if variance.shape != mean.shape:
        raise ValueError(
            f"stats.variance has shape {tuple(variance.shape)}, "
            f"expected {tuple(mean.shape)} like stats.mean"
        )
    gamma_view = _affine_view("stats.gamma", gamma, mean, layout)
    if gamma_view is not None:
        gamma_view = _core.guard_gamma(gamma_view, eps)
    beta_view = _affine_view("stats.beta", beta, mean, layout)
    scale = _core.scale_from_variance(variance, eps, eps_mode)
    return _core.make_frame(layout, mean, variance, scale, gamma_view, beta_view)


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

    ``pattern``, ``eps`` and ``eps_mode`` must be those of the ``revin`` call that produced
    ``stats``; the other arguments are those of ``ReverseFn.__call__``.
    """
    try:
        frame = frame_from_statistics(stats, pattern, eps, eps_mode)
    except (TypeError, ValueError) as error:
        raise _error("reverse(y_hat, stats)", error) from None
    return ReverseFn(frame)(y_hat, variates, shift=shift, stepwise=stepwise)
