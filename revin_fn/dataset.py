"""Dataset-level normalization: statistics learned once by ``adapt``, fixed afterwards.

``adapt`` streams over the data with mergeable moments; ``normalize`` applies fixed statistics
through the core's Frame (the same object ``revin`` builds), so its ``reverse_fn`` is the one
``revin`` returns: ``x_hat = offset + y_hat * gain``, and the forward is its exact inverse
``y = (x - offset) / gain``, with ``gain = sigma / gamma'`` and ``offset = mean - beta * gain``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import torch
import torch.distributed as dist
from torch import Tensor

from . import _args, _moments, _reference
from ._inputs import _affine_vector
from ._options import DEFAULT_EPS, Options, check_options, stats_dtype
from ._patterns import parse
from ._reverse import ReverseFn, _check_tensor, _error
from .functional import Mask, Statistics, _observed, statistics_fields
from .functional import frame_from_statistics as _frame_from_statistics

if TYPE_CHECKING:
    import numpy as np

    DataMask = Union[Mask, np.ndarray]  # noqa: UP007  # a numpy mask, with numpy data


def adapt(
    data: object,
    *,
    pattern: str = "b v t",
    mask: DataMask | None = None,
    progress: bool = False,
    distributed: bool | None = None,
) -> Statistics:
    """Per-variate mean and population variance of a whole dataset, streamed batch by batch.

    Every axis of ``pattern`` but ``v`` is reduced (all axes when there is no ``v``). Batches
    are merged with Chan et al.'s parallel formula on float64 (count, mean, M2) accumulators;
    nothing is concatenated, and a single tensor is processed in chunks.

    Args:
        data: a tensor or numpy array laid out as ``pattern``, a pandas DataFrame (rows are
            steps, one column per variate; every column numeric), or any iterable of batches
            (a DataLoader, a list of arrays): tensors, arrays or DataFrames, or tuples/lists
            whose first element is ``x``.
        pattern: layout of each batch. Default: ``"b v t"``.
        mask: bool (or 0/1) tensor or numpy array (True = observed; only with a tensor or
            array ``data``; shaped as ``data`` without its variate axis, it applies to every
            variate, as in ``revin``) or ``"nan"`` (NaN = missing, works for batches).
            Default: everything observed; then data holding NaN (or inf) raises
            :class:`RevINError` instead of NaN statistics.
        progress: print progress lines to stderr. Default: ``False``.
        distributed: merge the moments of all ranks with ``all_reduce`` so that every rank
            gets the statistics of the whole (sharded) dataset; every rank must call
            ``adapt``. An error in one rank's data raises on every rank (that rank raises its
            own), so none is left waiting. Default: when a process group is initialized.

    Returns:
        ``Statistics(mean, variance, None, None)`` with float64 ``mean``/``variance`` of shape
        ``(V,)`` (``()`` without ``v``); a variate never observed gets mean 0, variance 1.
    """
    try:
        _args.flag("progress", progress)
        _args.flag("distributed", distributed, none=True)
    except (TypeError, ValueError) as error:
        raise _error("adapt(data)", error) from None
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    try:
        report, running, has_variate, batches, values = None, None, True, 0, 0
        failure: Exception | None = None
        try:
            report, running, has_variate, batches, values = _local_moments(
                data, mask, pattern, progress
            )
        except Exception as error:  # the other ranks wait in the collective: join it anyway
            if not distributed:
                raise
            failure = error
        if distributed:
            try:
                running = _moments.all_reduce_moments(running, failed=failure is not None)
            except ValueError:
                if failure is None:
                    raise
        if failure is not None:
            raise failure
        if running is None and not batches:
            raise ValueError("data has no batches")
        if running is None or not bool((running.n > 0).any()):
            raise ValueError(f"data holds no observed value ({values} values seen)")
        _moments.check_finite(running, mask)
    except (TypeError, ValueError) as error:
        raise _error("adapt(data)", error) from None
    assert report is not None  # set where nothing raised
    report.done(batches, values)
    mean, variance = _moments.finish(running)
    if not has_variate:
        mean, variance = mean.squeeze(0), variance.squeeze(0)
    return Statistics(mean, variance, None, None)


def _local_moments(
    data: object, mask: object, pattern: str, progress: bool
) -> tuple[_moments.Progress, _moments.Moments | None, bool, int, int]:
    """This process's pass of ``adapt``: its progress report, its moments (``None`` where no
    batch held a value), whether the pattern has a variate axis, and the batches and values
    it read."""
    running: _moments.Moments | None = None
    has_variate = True
    batches = values = 0
    data = _moments.as_data(data, pattern)
    if type(mask).__module__ == "numpy" and hasattr(mask, "ndim"):  # as the data
        mask = torch.as_tensor(mask)
    if isinstance(data, Tensor) and isinstance(mask, Tensor):  # checked, expanded once
        mask = _observed(mask, _check_tensor("data", data), parse(pattern, data.ndim))
    pairs, total = _moments.batches(data, mask, pattern)
    report = _moments.Progress(progress, total)
    for batch, batch_mask in pairs:
        x, layout = _moments.layout_for(pattern, batch, batches)
        if x.numel() == 0:  # no observation: nothing to merge (0 / 0 would be NaN)
            batches += 1
            continue
        observed = _observed(batch_mask, x)  # type: ignore[arg-type]
        part = _moments.batch_moments(x, observed, layout)
        if running is not None and running.n.shape != part.n.shape:
            raise ValueError(
                f"batch {batches} has shape {tuple(x.shape)}: {part.n.numel()} "
                f"variates, earlier batches had {running.n.numel()}"
            )
        running = part if running is None else _moments.merge_pair(running, part)
        has_variate = layout.variate is not None
        batches, values = batches + 1, values + x.numel()
        report.update(batches, values)
    return report, running, has_variate, batches, values


def _fixed_frame(
    x: Tensor, stats: Statistics, pattern: str, eps: float, eps_mode: str
) -> _reference.Frame:
    """The Frame of fixed statistics, broadcast over the instances of ``x`` (no copy)."""
    _check_tensor("x", x)
    mean, variance, gamma, beta = statistics_fields(stats)
    _check_tensor("stats.mean", mean)
    _check_tensor("stats.variance", variance)
    layout = parse(pattern, x.ndim)
    shape = list(x.shape)
    shape[layout.time] = 1
    for field, given in (("stats.mean", mean), ("stats.variance", variance)):
        if given.is_meta and not x.is_meta:  # moved to x's device below, but meta holds nothing
            raise ValueError(f"{field} is on meta (no values) and x on {x.device}")
    if mean.shape != variance.shape:
        raise ValueError(
            f"stats.variance has shape {tuple(variance.shape)}, "
            f"expected {tuple(mean.shape)} like stats.mean"
        )
    if mean.ndim == 1 and layout.variate is not None and len(mean) == x.shape[layout.variate]:
        view = layout.variate_view(len(mean))
    elif mean.ndim == 0:
        view = (1,) * x.ndim
    else:
        size = (
            "()"
            if layout.variate is None
            else f"({x.shape[layout.variate]},) (one value per variate) or ()"
        )
        raise ValueError(
            f"stats.mean has shape {tuple(mean.shape)}, expected {size} "
            f'for x of shape {tuple(x.shape)} with pattern "{pattern}"'
        )
    for name, value in (("stats.gamma", gamma), ("stats.beta", beta)):
        _affine_vector(name, value, x, layout)  # checked against x (the frame's copy is x's)
    # float64 statistics (adapt's) are applied in float64: a float32 mean rounds by up to
    # |mean| * 6e-8, which is 7.7e-4 of the std at a level of 1e6 with std 40
    sdtype = torch.promote_types(stats_dtype(x.dtype), stats_dtype(mean.dtype))

    def place(value: Tensor) -> Tensor:  # a copy: the reverse_fn owns its statistics
        return value.to(x.device, sdtype, copy=True).reshape(view).expand(shape)

    fixed = Statistics(place(mean), place(variance), gamma, beta)
    return _frame_from_statistics(fixed, pattern, eps, eps_mode, x.dtype)


def normalize(
    x: Tensor,
    stats: Statistics,
    *,
    pattern: str = "b v t",
    eps: float = DEFAULT_EPS,
    eps_mode: str = "clamp",
    invert: bool = False,
) -> tuple[Tensor, ReverseFn]:
    r"""Normalize ``x`` with fixed statistics; return the result and its inverse.

    .. math::
        y = \frac{x - \mu}{\sigma} \, \gamma' + \beta

    with :math:`\sigma` from ``stats.variance`` by the eps rule of :func:`revin_fn.revin`
    and :math:`\gamma'` its guarded gamma (``stats.gamma``/``stats.beta`` are optional).
    ``invert=True`` applies the inverse, ``y = (x - \beta) / \gamma' \cdot \sigma + \mu``
    (model outputs back to data units), and ``reverse_fn`` then normalizes.

    Args:
        x: floating tensor laid out as ``pattern``.
        stats: statistics from :func:`adapt` (or given): ``mean``/``variance`` of shape
            ``(V,)``, or ``()`` for one value for every variate.
        pattern, eps, eps_mode: as in :func:`revin_fn.revin`.
        invert: de-normalize instead. Default: ``False``.

    Computed in float64 when ``x`` or the statistics are float64 (:func:`adapt`'s are), else
    in float32; ``y`` has the dtype of ``x``. ``reverse_fn`` holds copies of the statistics:
    changing ``stats`` afterwards does not move it. Their values are not read (no host
    synchronization): a NaN mean gives NaN, and a variance below 0 is taken by the eps rule as
    in :func:`revin_fn.reverse` (:class:`Normalization` checks the values it is given).

    Returns:
        ``(y, reverse_fn)``; ``reverse_fn`` checks shapes against ``x`` as ``revin``'s does
        (any time length). With ``invert=True`` it computes ``-offset/gain + y/gain``, whose
        rounding is relative to ``|mean| / sigma``.
    """
    return _normalize("normalize(x, stats)", x, stats, pattern, eps, eps_mode, invert)


def _normalize(
    call: str, x: Tensor, stats: Statistics, pattern: str, eps: float, eps_mode: str, invert: bool
) -> tuple[Tensor, ReverseFn]:
    try:
        check_options(Options(eps, eps_mode))
        frame = _fixed_frame(x, stats, pattern, eps, eps_mode)
    except (TypeError, ValueError) as error:
        raise _error(call, error) from None
    if invert:
        return ReverseFn(frame)(x), ReverseFn(_reference.invert_frame(frame))
    return _reference.forward_frame(x, frame), ReverseFn(frame)


def __getattr__(name: str) -> object:
    """``revin_fn.dataset.Normalization``, where 0.1.0 defined it: whole-module pickles
    (``torch.save(model)``) of that version name it there."""
    if name == "Normalization":
        from .normalization import Normalization

        return Normalization
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
