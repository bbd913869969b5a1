"""``ReverseFn``: the inverse of one ``revin`` call, with the checks every output gets."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor

from . import RevINError, RevINTypeError, backends
from ._options import stats_dtype
from ._reference import Frame

if TYPE_CHECKING:
    from torch.distributions import Distribution

Variates = Union[int, Sequence[int], Sequence[bool], slice, Tensor]  # noqa: UP007 (runtime alias)


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def _variate_index(variates: Variates, size: int, count: int) -> Tensor | slice:
    """Turn a ``variates=`` selection into something that indexes an axis of length ``size``,
    for an output holding ``count`` variates. Reads no tensor value on the host."""
    if isinstance(variates, slice):
        return variates
    if isinstance(variates, Tensor):
        return _tensor_index(variates, size, count)
    if isinstance(variates, bool) or not isinstance(variates, int | Sequence | range):
        if hasattr(variates, "__index__") and not isinstance(variates, bool):
            variates = operator.index(variates)  # numpy integers
        else:
            raise TypeError(
                "variates must be an int, a sequence of ints, a slice or a bool mask, "
                f"got {type(variates).__name__} {variates!r}"
            )
    if isinstance(variates, int):
        if not -size <= variates < size:
            raise ValueError(f"variates={variates} is out of range for {size} variates")
        return slice(variates % size, variates % size + 1)
    items = list(variates)
    if items and all(isinstance(item, bool) for item in items):
        if len(items) != size:
            raise ValueError(f"a bool variates mask needs {size} entries, got {len(items)}")
        items = [i for i, keep in enumerate(items) if keep]
    picked = []
    for item in items:
        if isinstance(item, bool) or not hasattr(item, "__index__"):
            raise TypeError(
                f"variates must hold ints (or only bools), got {type(item).__name__} {item!r} "
                f"in {variates!r}"
            )
        index = operator.index(item)
        if not -size <= index < size:
            raise ValueError(f"variates={variates!r} is out of range for {size} variates")
        picked.append(index % size)
    return torch.tensor(picked, dtype=torch.long)


def _tensor_index(variates: Tensor, size: int, count: int) -> Tensor:
    """An index tensor from an int or bool tensor, checked without a host read: a bool mask
    must have ``count`` True entries (checked asynchronously on accelerators); ints out of range
    raise in ``index_select``."""
    if variates.dtype == torch.bool:
        if variates.shape != (size,):
            raise ValueError(
                f"a bool variates mask needs shape ({size},), got {tuple(variates.shape)}"
            )
        torch._assert_async(
            variates.sum() == count,
            f"reverse_fn(y_hat): the bool variates mask must hold {count} True entries, "
            f"one per variate of y_hat",
        )
        # the positions of the True entries, in order, without nonzero(): True sorts first
        return torch.argsort((~variates).to(torch.uint8), stable=True)[:count]
    if variates.ndim != 1 or variates.is_floating_point() or variates.is_complex():
        raise ValueError(
            "variates must be an int, a sequence of ints, a slice or a bool mask, got a "
            f"tensor of dtype {variates.dtype} and shape {tuple(variates.shape)}"
        )
    return torch.where(variates < 0, variates + size, variates)


def _select(frame: Frame, variates: Variates | None, shape: Sequence[int]) -> Frame:
    axis = frame.layout.variate
    if variates is None:
        return frame
    if axis is None:
        raise ValueError(
            f'variates= needs a variate axis "v" in the pattern "{frame.layout.pattern}"'
        )
    count = shape[axis] if len(shape) == frame.layout.ndim else 0
    index = _variate_index(variates, frame.loc.shape[axis], count)
    where: list[slice | int] = [slice(None)] * frame.layout.ndim

    def pick(value: Tensor) -> Tensor:
        if value.shape[axis] == 1:
            return value
        if isinstance(index, Tensor):
            try:
                return value.index_select(axis, index.to(value.device))
            except (IndexError, RuntimeError):
                raise ValueError(
                    f"variates= holds an index out of range for {value.shape[axis]} variates"
                ) from None
        where[axis] = index
        return value[tuple(where)]

    variance = None if frame.variance is None else pick(frame.variance)
    return Frame(
        frame.layout, pick(frame.loc), variance, pick(frame.gain), pick(frame.offset), frame.dtype
    )


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
    _check_device("y_hat", y, frame.loc)
    gain, offset = _fit(frame, y.shape, stepwise)
    # data units come back at least in the input's dtype (autocast outputs are upcast)
    dtype = torch.promote_types(frame.dtype, y.dtype)
    if y.dtype != dtype:
        y = y.to(dtype)
    x = (y * gain.abs()) if not shift else backends.scale_shift(y, gain, offset)
    return x if x.dtype == dtype else x.to(dtype)


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
            shape = y_hat.shape if isinstance(y_hat, Tensor) else ()
            return _undo(_select(self._frame, variates, shape), y_hat, shift, stepwise)
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
            frame = _select(self._frame, variates, dist.batch_shape)
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
            _check_tensor("q_hat", q_hat)
            frame = _select(self._frame, variates, q_hat.shape[:-1])
            gain, offset = _fit(frame, q_hat.shape[:-1], None, "q_hat without its quantile axis")
        except (TypeError, ValueError) as error:
            raise _error("reverse_fn.quantiles(q_hat)", error) from None
        gain, offset = gain.unsqueeze(-1), offset.unsqueeze(-1)
        values = q_hat.to(stats_dtype(q_hat.dtype))
        dtype = torch.promote_types(self._frame.dtype, q_hat.dtype)
        data = torch.addcmul(offset, values, gain).to(dtype)
        return torch.where(gain < 0, data.flip(-1), data)


def _check_device(name: str, value: Tensor, reference: Tensor) -> None:
    if value.device != reference.device:
        raise ValueError(
            f"{name} is on {value.device}, expected {reference.device} like the statistics"
        )


def _error(call: str, error: Exception) -> RevINError:
    if isinstance(error, RevINError):  # already carries its call
        return error
    kind = RevINTypeError if isinstance(error, TypeError) else RevINError
    return kind(f"{call}: {error}")
