"""``ReverseFn``: the inverse of one ``revin`` call, with the checks every output gets."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import RevINError, RevINTypeError, _reference, backends
from ._args import flag
from ._options import SUPPORTED_DTYPES, stats_dtype
from ._outputs import fit, output_layout
from ._reference import Frame
from ._selection import Variates, select

if TYPE_CHECKING:
    from torch.distributions import Distribution

__all__ = ["ReverseFn", "Variates"]


def _quiet_trace() -> None:
    """While ``torch.jit.trace`` records a call: ignore the ``TracerWarning``s that revin_fn's own
    shape checks raise. A trace keeps those checks as constants on purpose (the computed path
    reads no value, so the trace holds for other inputs); the caller's warnings stay. The filter
    is put first on every traced call (``filterwarnings`` drops its earlier copy), so that a
    filter added since, or a ``warnings.catch_warnings`` block, cannot bring them back."""
    warnings.filterwarnings(
        "ignore",
        category=torch.jit.TracerWarning,  # type: ignore[attr-defined]
        module=r"revin_fn\.",
    )


def _check_tensor(name: str, value: object) -> Tensor:
    if torch.jit.is_tracing():  # type: ignore[attr-defined,no-untyped-call]
        _quiet_trace()  # every call checks its first tensor here, before any shape check
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.layout != torch.strided or value.is_nested:  # nested tensors say strided too
        got = "a nested tensor" if value.is_nested else f"layout {value.layout}"
        raise ValueError(f"{name} must be a dense (strided) tensor, got {got}")
    if value.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {value.dtype} (supported: "
            "float16, bfloat16, float32, float64)"
        )
    return value


def _fitted(
    frame: Frame,
    value: Tensor,
    shape: Sequence[int],
    variates: Variates | None,
    pattern: str | None,
    stepwise: bool | None,
    name: str,
) -> tuple[Tensor, Tensor]:
    """``(gain, offset)`` of the selected variates, laid out for an output of ``shape`` named
    by ``pattern``, after checking that it fits (on ``value``'s device)."""
    flag("stepwise", stepwise, none=True)
    _check_device(name, value, frame.loc)
    out = output_layout(frame.layout, pattern, tuple(shape), name)
    if variates is not None:
        count = 0 if out.variate is None else shape[out.variate]
        frame = select(frame, variates, count)
    return fit(frame, out, shape, stepwise, name)


def _scale_shift(y: Tensor, gain: Tensor, offset: Tensor) -> Tensor:
    if y.numel() == 0:  # nothing to compute: no backend kernel sees an empty output
        return _reference.scale_shift(y, gain, offset)
    return backends.scale_shift(y, gain, offset)


class ReverseFn:
    """Maps model outputs from normalized space back to data units for one ``revin`` call.

    Holds the statistics of that call only, as tensors of its own (no view of the input, of
    gamma or beta, or of another call's statistics).

    Every method takes ``variates=`` (which variates the tensor holds: an int, a sequence of
    ints, a slice or a bool mask; default all) and ``pattern=`` (einops-style names of the
    tensor's axes: every axis of the ``revin`` call's pattern in any order, ``...`` as in that
    pattern, plus new axes over which the statistics broadcast, e.g. ``"t b v d"`` for hidden
    tokens or ``"s b v t"`` for samples; default: the call's pattern). Data units come back in
    ``promote_types(x.dtype, y_hat.dtype)``.
    """

    __slots__ = ("_frame",)

    def __init__(self, frame: Frame) -> None:
        self._frame = frame

    def __call__(
        self,
        y_hat: Tensor,
        variates: Variates | None = None,
        *,
        pattern: str | None = None,
        shift: bool = True,
        stepwise: bool | None = None,
    ) -> Tensor:
        """Invert the normalization: ``x_hat = (y_hat - beta) / gamma' * scale + mean``.

        Args:
            y_hat: tensor laid out as ``pattern``; the time axis may have any length.
            variates: which variates ``y_hat`` holds, for outputs with fewer variates than
                the input. Default: all.
            pattern: the axes of ``y_hat`` (see the class). Default: the input's pattern.
            shift: ``False`` for scale-like outputs (a predicted std, an interval width):
                returns ``y_hat * scale / |gamma'|``. Default: ``True``.
            stepwise: causal statistics only: ``True`` undoes step t with the statistics of
                step t, ``False`` uses the last step's for every step. Default: ``True``
                exactly when ``y_hat`` has the input's length. Without causal statistics
                every step has the same ones, so it changes nothing.
        """
        try:
            _check_tensor("y_hat", y_hat)
            flag("shift", shift)
            gain, offset = _fitted(
                self._frame, y_hat, y_hat.shape, variates, pattern, stepwise, "y_hat"
            )
        except (TypeError, ValueError) as error:
            raise _error("reverse_fn(y_hat)", error) from None
        # data units come back at least in the input's dtype (autocast outputs are upcast)
        dtype = torch.promote_types(self._frame.dtype, y_hat.dtype)
        y = y_hat if y_hat.dtype == dtype else y_hat.to(dtype)
        try:
            # shift=False: a scale-like output, y * |gain|
            x = _scale_shift(y, gain, offset) if shift else backends._savable(y, gain) * gain.abs()
        except ValueError as error:  # a forced backend that cannot take the call
            raise _error("reverse_fn(y_hat)", error) from None
        return x if x.dtype == dtype else x.to(dtype)

    def normalize(
        self,
        t: Tensor,
        variates: Variates | None = None,
        *,
        pattern: str | None = None,
        stepwise: bool | None = None,
    ) -> Tensor:
        """Apply this call's statistics to another tensor: ``(t - offset) / gain``, the exact
        inverse of ``reverse_fn`` (``reverse_fn(reverse_fn.normalize(t)) == t`` up to rounding).

        For targets (a loss in normalized units), decoder or teacher-forcing inputs, future
        covariates: any horizon, the same ``variates=``, ``pattern=`` and ``stepwise=`` as
        ``__call__``. Every element is mapped (a masked slot is not passed through as ``revin``
        does). Computed in the statistics dtype (or ``t``'s if wider), returned in
        ``promote_types(x.dtype, t.dtype)``; gradients flow to ``t`` and to the statistics.
        """
        try:
            _check_tensor("t", t)
            gain, offset = _fitted(self._frame, t, t.shape, variates, pattern, stepwise, "t")
        except (TypeError, ValueError) as error:
            raise _error("reverse_fn.normalize(t)", error) from None
        wide = torch.promote_types(gain.dtype, t.dtype)
        values = t if t.dtype == wide else t.to(wide)
        y = (values - offset) / gain
        dtype = torch.promote_types(self._frame.dtype, t.dtype)
        return y if y.dtype == dtype else y.to(dtype)

    def distribution(
        self,
        dist: Distribution,
        variates: Variates | None = None,
        *,
        pattern: str | None = None,
        stepwise: bool | None = None,
    ) -> Distribution:
        """Map a distribution predicted in normalized space to data units.

        Returns the law of ``x = offset + y * gain`` for ``y ~ dist`` (the same affine map as
        ``reverse_fn``), whose ``log_prob``, ``sample``, ``mean``, ``stddev``, ``variance``,
        ``cdf`` and ``icdf`` are in data units. ``dist.batch_shape`` is laid out as ``pattern``
        (default: the input's; any time length); ``variates=`` and ``stepwise=`` (causal
        statistics) as in ``__call__``. The law validates its arguments as ``dist`` does.
        """
        from ._dist import AffineDistribution

        try:
            from torch.distributions import Distribution

            if not isinstance(dist, Distribution):
                raise TypeError(
                    f"dist must be a torch.distributions.Distribution, got {type(dist).__name__}"
                )
            if dist.event_shape != ():
                raise ValueError(
                    "dist must be a law per element (event_shape ()), got event_shape "
                    f"{tuple(dist.event_shape)} ({type(dist).__name__})"
                )
            shape = dist.batch_shape
            gain, offset = _fitted(
                self._frame, self._frame.loc, shape, variates, pattern, stepwise, "dist.batch_shape"
            )
        except (TypeError, ValueError) as error:
            raise _error("reverse_fn.distribution(dist)", error) from None
        return AffineDistribution(dist, offset, gain)

    def quantiles(
        self,
        q_hat: Tensor,
        variates: Variates | None = None,
        *,
        pattern: str | None = None,
        stepwise: bool | None = None,
    ) -> Tensor:
        """Reverse quantiles stacked on a new last axis, keeping them in ascending order.

        ``q_hat`` has the layout ``pattern`` (default: the input's) plus a trailing quantile
        axis of levels ``tau_0 < ... < tau_{Q-1}``: ``pattern`` names every axis but that last
        one. Where the map is decreasing (``gamma < 0``) the level ``tau`` becomes
        ``1 - tau``, so the axis is reversed for those instances: position k then holds level
        ``1 - tau_{Q-1-k}``, which equals ``tau_k`` for symmetric levels. ``variates=`` and
        ``stepwise=`` (causal statistics) as in ``__call__``.
        """
        name = "q_hat without its quantile axis"
        try:
            _check_tensor("q_hat", q_hat)
            if q_hat.ndim == 0:
                raise ValueError("q_hat needs a trailing quantile axis, got a 0-d tensor")
            shape = q_hat.shape[:-1]
            gain, offset = _fitted(self._frame, q_hat, shape, variates, pattern, stepwise, name)
        except (TypeError, ValueError) as error:
            raise _error("reverse_fn.quantiles(q_hat)", error) from None
        gain, offset = gain.unsqueeze(-1), offset.unsqueeze(-1)
        values = backends._savable(q_hat.to(stats_dtype(q_hat.dtype)), gain, offset)
        dtype = torch.promote_types(self._frame.dtype, q_hat.dtype)
        data = torch.addcmul(offset, values, gain).to(dtype)
        return torch.where(gain < 0, data.flip(-1), data)


def _check_device(name: str, value: Tensor, reference: Tensor) -> None:
    if value.device != reference.device:
        raise ValueError(
            f"{name} is on {value.device}, expected {reference.device} like the statistics"
        )


# the call names revin_fn's own functions give their errors, replaced by a shell's (``_renamed``)
_INNER_CALLS = (
    "revin(x): ",
    "revin(x, gamma): ",
    "revin(x, gamma, beta): ",
    "revin(x, None, beta): ",
    "reverse(y_hat, stats): ",
    "reverse_fn(y_hat): ",
    "adapt(data): ",
)


def _error(call: str, error: Exception) -> RevINError:
    if isinstance(error, RevINError):  # already carries its call
        return error
    kind = RevINTypeError if isinstance(error, TypeError) else RevINError
    return kind(f"{call}: {error}")


def _renamed(call: str, error: RevINError) -> RevINError:
    """``error`` raised by an inner call (``revin``, ``reverse``, a ``reverse_fn``) under the name
    of the call the user made (a module's forward, ``reverse``), same type and message."""
    message = str(error)
    for inner in _INNER_CALLS:
        message = message.removeprefix(inner)
    return type(error)(f"{call}: {message}")
