"""Dataset-level normalization: statistics learned once by ``adapt``, fixed afterwards.

``adapt`` streams over the data with mergeable moments; ``normalize`` applies fixed statistics
through the core's Frame (the same object ``revin`` builds), so its ``reverse_fn`` is the one
``revin`` returns: ``x_hat = offset + y_hat * gain``, and the forward is its exact inverse
``y = (x - offset) / gain``, with ``gain = sigma / gamma'`` and ``offset = mean - beta * gain``.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import RevINError, _args, _moments, _reference
from ._options import DEFAULT_EPS, Options, check_options, stats_dtype
from ._patterns import parse
from ._reverse import ReverseFn, _check_tensor, _error
from .functional import Mask, Statistics, _observed
from .functional import frame_from_statistics as _frame_from_statistics

NO_STATISTICS = "no statistics yet: call adapt(data) or pass mean= and variance="


def adapt(
    data: object,
    *,
    pattern: str = "b v t",
    mask: Mask | None = None,
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
        mask: bool tensor (True = observed; only with a tensor ``data``; shaped as ``data``
            without its variate axis, it applies to every variate, as in ``revin``) or
            ``"nan"`` (NaN = missing, works for batches). Default: everything observed; then
            data holding NaN (or inf) raises :class:`RevINError` instead of NaN statistics.
        progress: print progress lines to stderr. Default: ``False``.
        distributed: merge the moments of all ranks with ``all_reduce`` so that every rank
            gets the statistics of the whole (sharded) dataset; every rank must call
            ``adapt``. Default: when a process group is initialized.

    Returns:
        ``Statistics(mean, variance, None, None)`` with float64 ``mean``/``variance`` of shape
        ``(V,)`` (``()`` without ``v``); a variate never observed gets mean 0, variance 1.
    """
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    running: _moments.Moments | None = None
    has_variate = True
    batches = values = 0
    try:
        data = _moments.as_data(data, pattern)
        if isinstance(data, Tensor) and isinstance(mask, Tensor):  # checked, expanded once
            mask = _observed(mask, _check_tensor("data", data), parse(pattern, data.ndim))
        pairs, total = _moments.batches(data, mask, pattern)
        report = _moments.Progress(progress, total)
        for batch, batch_mask in pairs:
            x, layout = _moments.layout_for(pattern, batch, batches)
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
        if distributed:
            running = _moments.all_reduce_moments(running)
        if running is None:
            raise ValueError("data has no batches")
        if not bool((running.n > 0).any()):
            raise ValueError(f"data holds no observed value ({values} values seen)")
        _moments.check_finite(running, mask)
    except (TypeError, ValueError) as error:
        raise _error("adapt(data)", error) from None
    report.done(batches, values)
    mean, variance = _moments.finish(running)
    if not has_variate:
        mean, variance = mean.squeeze(0), variance.squeeze(0)
    return Statistics(mean, variance, None, None)


def _fixed_frame(
    x: Tensor, stats: Statistics, pattern: str, eps: float, eps_mode: str
) -> _reference.Frame:
    """The Frame of fixed statistics, broadcast over the instances of ``x`` (no copy)."""
    _check_tensor("x", x)
    mean, variance, gamma, beta = stats
    _check_tensor("stats.mean", mean)
    _check_tensor("stats.variance", variance)
    layout = parse(pattern, x.ndim)
    shape = list(x.shape)
    shape[layout.time] = 1
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
        size = "()" if layout.variate is None else f"({x.shape[layout.variate]},)"
        raise ValueError(
            f"stats.mean has shape {tuple(mean.shape)}, expected {size} (one value per "
            f'variate) or () for x of shape {tuple(x.shape)} with pattern "{pattern}"'
        )
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
    changing ``stats`` afterwards does not move it.

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


class Normalization(nn.Module):
    """Dataset-level normalization layer (Keras ``Normalization``): statistics fixed once.

    ``adapt(data)`` learns the per-variate mean and population variance of a dataset
    (streamed, see :func:`adapt`); ``mean``/``variance`` may also be given. They are float64
    buffers of shape ``(num_variates,)``, so they travel in ``state_dict`` and with
    ``.to(device)``, and the subtraction runs in float64 (``y`` within 1e-5 of the float64
    result at any level; ``dtype=torch.float32`` gives float32 arithmetic, whose rounding is
    ``|mean| * 6e-8``). ``forward`` is one call to :func:`normalize` (the formula is in its
    docstring) and returns ``(y, reverse_fn)``, or ``(y, reverse_fn, statistics)`` with
    ``return_statistics=True``. ``reverse_fn`` and ``statistics`` hold copies of the buffers
    at the time of the call: a later ``adapt`` or ``load_state_dict`` does not move them.

    The buffers are checked when they are set (constructor, ``adapt``, ``load_state_dict``),
    never in ``forward`` (no device sync; ``torch.compile(fullgraph=True)`` traces it). A
    forward before any statistics, or after loading a checkpoint whose statistics hold NaN
    (saved before ``adapt``), raises :class:`RevINError` saying which. Write the buffers
    through these three, not in place.

    Args:
        num_variates: size of the ``v`` axis (a Python or numpy integer).
        pattern: layout of the input; must contain ``v``. Default: ``"b v t"``.
        invert: the layer de-normalizes (model outputs to label units). Default: ``False``.
        mean, variance: known statistics (tensor, array or list of ``num_variates`` values, or
            one value); both or neither. Default: learned by ``adapt``.
        eps, eps_mode: as in :func:`revin_fn.revin`; Keras' ``max(sqrt(var), 1e-7)`` is
            ``eps=1e-14, eps_mode="clamp"``. Default: ``1e-5``, ``"clamp"``.
        device, dtype: for the buffers. Default: float64 (the computation runs in float64;
            with float32 buffers in float32, or float64 for float64 input).

    Examples::

        >>> norm = Normalization(7, pattern="b t v").adapt(torch.randn(100, 96, 7) * 3 + 5)
        >>> y, reverse_fn = norm(torch.randn(32, 96, 7))
        >>> reverse_fn(torch.zeros(32, 24, 7)).shape
        torch.Size([32, 24, 7])
    """

    mean: Tensor
    variance: Tensor

    def __init__(
        self,
        num_variates: int,
        pattern: str = "b v t",
        invert: bool = False,
        mean: object = None,
        variance: object = None,
        eps: float = DEFAULT_EPS,
        eps_mode: str = "clamp",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        call = f"Normalization(num_variates={num_variates!r})"
        try:
            num_variates = _args.size("num_variates", num_variates)
            eps = _args.number("eps", eps)
            check_options(Options(eps, eps_mode))
            if _args.layout(pattern).variate is None:
                raise ValueError(f'pattern "{pattern}" needs a variate axis "v"')
            if (mean is None) != (variance is None):
                raise ValueError("pass both mean and variance, or neither (then call adapt)")
        except (TypeError, ValueError) as error:
            raise _error(call, error) from None
        self.num_variates, self.pattern, self.invert = num_variates, pattern, invert
        self.eps, self.eps_mode = eps, eps_mode
        nan = torch.full((num_variates,), float("nan"), device=device, dtype=dtype or torch.float64)
        self.register_buffer("mean", nan)
        self.register_buffer("variance", nan.clone())
        # why forward cannot run (None: it can); a Python value, so forward reads no tensor
        self._missing: str | None = NO_STATISTICS
        if mean is not None:
            self._store(call, mean, variance)

    def _store(self, call: str, mean: object, variance: object) -> None:
        for name, value in (("mean", mean), ("variance", variance)):
            tensor = torch.as_tensor(value, dtype=torch.float64)
            if tensor.shape not in ((), (self.num_variates,)):
                raise RevINError(
                    f"{call}: {name} has shape {tuple(tensor.shape)}, "
                    f"expected ({self.num_variates},) or ()"
                )
            with torch.no_grad():
                getattr(self, name).copy_(tensor.expand(self.num_variates))
        if bool((self.variance < 0).any()):
            raise RevINError(f"{call}: variance must be >= 0, got {self.variance.tolist()}")
        for name in ("mean", "variance"):
            if not bool(getattr(self, name).isfinite().all()):
                values = getattr(self, name).tolist()
                raise RevINError(f"{call}: {name} must be finite, got {values}")
        self._missing = None

    def _check_buffers(self) -> str | None:
        """What is wrong with the buffers' values (read on the host: only where they are set)."""
        if self.mean.is_meta or self.variance.is_meta:
            return None
        if bool(self.mean.isnan().all() & self.variance.isnan().all()):
            return (
                "the loaded statistics are all NaN (a checkpoint saved before adapt): call "
                "adapt(data) or load adapted statistics"
            )
        bad = {
            name: (~tensor.isfinite()).nonzero().flatten().tolist()
            for name, tensor in (("mean", self.mean), ("variance", self.variance))
        }
        if any(bad.values()):
            where = "; ".join(f"{name} in variates {index}" for name, index in bad.items() if index)
            return f"the loaded statistics hold NaN or inf ({where}): adapt again or load others"
        if bool((self.variance < 0).any()):
            return f"the loaded variance is negative: {self.variance.tolist()}"
        return None

    def adapt(
        self,
        data: object,
        mask: Mask | None = None,
        progress: bool = False,
        distributed: bool | None = None,
    ) -> Normalization:
        """Learn ``mean``/``variance`` from ``data`` (replacing earlier ones); see :func:`adapt`."""
        stats = adapt(
            data, pattern=self.pattern, mask=mask, progress=progress, distributed=distributed
        )
        if stats.mean.shape != (self.num_variates,):
            raise RevINError(
                f"Normalization.adapt(data): data has {stats.mean.numel()} variates, "
                f"expected num_variates={self.num_variates}"
            )
        self._store("Normalization.adapt(data)", stats.mean, stats.variance)
        return self

    @overload
    def forward(
        self, x: Tensor, *, return_statistics: Literal[False] = ...
    ) -> tuple[Tensor, ReverseFn]: ...
    @overload
    def forward(
        self, x: Tensor, *, return_statistics: Literal[True]
    ) -> tuple[Tensor, ReverseFn, Statistics]: ...
    def forward(
        self, x: Tensor, *, return_statistics: bool = False
    ) -> tuple[Tensor, ReverseFn] | tuple[Tensor, ReverseFn, Statistics]:
        if self._missing is not None:  # a Python value: no device sync, nothing to trace
            raise RevINError(f"Normalization.forward(x): {self._missing}")
        stats = Statistics(self.mean, self.variance, None, None)
        y, reverse_fn = _normalize(
            "Normalization(x)", x, stats, self.pattern, self.eps, self.eps_mode, self.invert
        )
        if not return_statistics:
            return y, reverse_fn
        return y, reverse_fn, Statistics(self.mean.clone(), self.variance.clone(), None, None)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._missing = self._check_buffers()  # checked here, never in forward

    def extra_repr(self) -> str:
        text = f"{self.num_variates}, pattern={self.pattern!r}"
        if self.invert:
            text += ", invert=True"
        if (self.eps, self.eps_mode) != (DEFAULT_EPS, "clamp"):
            text += f", eps={self.eps}, eps_mode={self.eps_mode!r}"
        return text
