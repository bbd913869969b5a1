"""``Normalization``: the dataset-level normalization of ``revin_fn.dataset`` as a layer whose
statistics are buffers (learned once by ``adapt`` or given, checked where they are set)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from torch import Tensor, nn

from . import RevINError, RevINTypeError, _args
from ._options import DEFAULT_EPS, Options, check_options
from ._patterns import parse
from ._reverse import ReverseFn, _check_tensor, _error, _renamed
from .dataset import _normalize, adapt
from .functional import Statistics

if TYPE_CHECKING:
    from .dataset import DataMask

NO_STATISTICS = (
    "no statistics yet: call adapt(data), pass mean= and variance=, or load_state_dict (buffers "
    "written in place do not count: an AveragedModel(use_buffers=True) copy's, or DDP's "
    "broadcast from rank 0 when only rank 0 adapted; call adapt on every rank)"
)
STATISTICS_DTYPES = (torch.float32, torch.float64)  # narrower ones overflow or round them
OFF_META = (
    "the statistics were set on the meta device, so they hold no values: call adapt(data) or "
    "load_state_dict"
)


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
    through these three, not in place (an ``AveragedModel(use_buffers=True)`` made before
    ``adapt`` needs its own ``adapt`` or a ``load_state_dict``; under DDP, whose constructor
    copies rank 0's buffers in place, every rank calls ``adapt``, which merges their data);
    ``torch.func.functional_call`` works on a module that has statistics. ``.half()``,
    ``.bfloat16()`` and other casts to dtypes narrower than float32 leave the statistics'
    dtype as it is.

    Args:
        num_variates: size of the ``v`` axis (a Python or numpy integer).
        pattern: layout of the input; must contain ``v``. Default: ``"b v t"``.
        invert: the layer de-normalizes (model outputs to label units). Default: ``False``.
        mean, variance: known statistics (tensor, array or list of ``num_variates`` values, or
            one value); both or neither. Default: learned by ``adapt``.
        eps, eps_mode: as in :func:`revin_fn.revin`; Keras' ``max(sqrt(var), 1e-7)`` is
            ``eps=1e-14, eps_mode="clamp"``. Default: ``1e-5``, ``"clamp"``.
        device, dtype: for the buffers, float64 or float32. Default: float64 (the computation
            runs in float64; with float32 buffers in float32, or float64 for float64 input).

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
            _args.flag("invert", invert)
            eps = _args.number("eps", eps)
            _args.dtype("dtype", dtype)
            if dtype is not None and dtype not in STATISTICS_DTYPES:
                raise ValueError(
                    f"dtype={dtype} cannot hold the statistics (a variance of 400**2 overflows "
                    "float16, bfloat16 rounds a mean of 1000.3 to 1000): use float32 or float64"
                )
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
            try:
                complex_ = (
                    value.is_complex()
                    if isinstance(value, torch.Tensor)
                    else getattr(getattr(value, "dtype", None), "kind", "") == "c"  # numpy
                )
                if complex_:
                    raise TypeError
                tensor = torch.as_tensor(value, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise RevINTypeError(
                    f"{call}: {name} must be a real number or a sequence, array or tensor of "
                    f"them, got {type(value).__name__} {value!r}"
                ) from None
            if tensor.shape not in ((), (self.num_variates,)):
                raise RevINError(
                    f"{call}: {name} has shape {tuple(tensor.shape)}, "
                    f"expected ({self.num_variates},) or ()"
                )
            with torch.no_grad():
                getattr(self, name).copy_(tensor.expand(self.num_variates))
        if not _args.holds_values(self.mean, self.variance):  # meta or fake: nothing to check
            self._missing = None
            return
        if bool((self.variance < 0).any()):
            raise RevINError(f"{call}: variance must be >= 0, got {self.variance.tolist()}")
        for name in ("mean", "variance"):
            if not bool(getattr(self, name).isfinite().all()):
                values = getattr(self, name).tolist()
                raise RevINError(f"{call}: {name} must be finite, got {values}")
        self._missing = None

    def _apply(self, fn: Any, recurse: bool = True) -> Normalization:
        """``.to()``, ``.half()``, ``.cuda()``, ``.to_empty()``...: the statistics move to the new
        device but keep their dtype under a cast to a narrower one than float32 (float16
        overflows at a variance of 400**2, bfloat16 rounds a mean of 1000.3 to 1000); moved off
        the meta device they hold no values, so forward raises until ``adapt`` or a load."""
        before = {name: getattr(self, name) for name in ("mean", "variance")}
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        for name, value in before.items():
            moved = getattr(self, name)
            if moved.dtype not in STATISTICS_DTYPES:
                self._buffers[name] = value.to(device=moved.device)
            if value.is_meta and not moved.is_meta:
                self._missing = OFF_META
        return self

    def _check_buffers(self) -> str | None:
        """What is wrong with the buffers' values (read on the host: only where they are set)."""
        if not _args.holds_values(self.mean, self.variance):
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
        mask: DataMask | None = None,
        progress: bool = False,
        distributed: bool | None = None,
    ) -> Normalization:
        """Learn ``mean``/``variance`` from ``data`` (replacing earlier ones); see :func:`adapt`."""
        call = "Normalization.adapt(data)"
        try:
            stats = adapt(
                data, pattern=self.pattern, mask=mask, progress=progress, distributed=distributed
            )
        except RevINError as error:
            raise _renamed(call, error) from None
        if stats.mean.shape != (self.num_variates,):
            raise RevINError(
                f"{call}: data has {stats.mean.numel()} variates, "
                f"expected num_variates={self.num_variates}"
            )
        self._store(call, stats.mean, stats.variance)
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
        call = "Normalization.forward(x)"
        if self._missing is not None:  # a Python value: no device sync, nothing to trace
            raise RevINError(f"{call}: {self._missing}")
        try:
            _args.flag("return_statistics", return_statistics)
            layout = parse(self.pattern, _check_tensor("x", x).ndim)
        except (TypeError, ValueError) as error:
            raise _error(call, error) from None
        variates = x.shape[layout.variate]  # type: ignore[index]  # the pattern has "v"
        if variates != self.num_variates:
            raise RevINError(
                f'{call}: x has {variates} variates on axis "v" (shape {tuple(x.shape)}, pattern '
                f'"{self.pattern}"), expected num_variates={self.num_variates}'
            )
        stats = Statistics(self.mean, self.variance, None, None)
        y, reverse_fn = _normalize(
            call, x, stats, self.pattern, self.eps, self.eps_mode, self.invert
        )
        if not return_statistics:
            return y, reverse_fn
        return y, reverse_fn, Statistics(self.mean.clone(), self.variance.clone(), None, None)

    if TYPE_CHECKING:  # calling the module is calling forward, with its types
        __call__ = forward

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        for name in ("mean", "variance"):  # assign=True installs the checkpoint's own tensors
            if getattr(self, name).dtype not in STATISTICS_DTYPES:
                self._buffers[name] = getattr(self, name).float()
        self._missing = self._check_buffers()  # checked here, never in forward

    def extra_repr(self) -> str:
        text = f"{self.num_variates}, pattern={self.pattern!r}"
        if self.invert:
            text += ", invert=True"
        if (self.eps, self.eps_mode) != (DEFAULT_EPS, "clamp"):
            text += f", eps={self.eps}, eps_mode={self.eps_mode!r}"
        return text
