"""``RevIN``: an ``nn.Module`` that owns gamma/beta and calls :func:`revin_fn.revin`."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from torch import Tensor, nn

from . import RevINError, _args
from ._inputs import _observed, user_stacklevel
from ._options import DEFAULT_EPS, Options, check_options, stats_dtype
from ._patterns import Layout, parse, swap_hint
from ._reference import Frame
from ._reverse import ReverseFn, Variates, _check_tensor, _error, _renamed
from .functional import Mask, Statistics, reverse, revin, statistics_fields


def _identity_reverse(layout: Layout, like: Tensor, dtype: torch.dtype) -> ReverseFn:
    """The reverse of ``non_norm``: mean 0, scale 1 in statistics shaped as ``like`` (tensors of
    their own), so that its outputs get the checks of any other reverse."""
    zero = torch.zeros_like(like)
    one = torch.ones_like(zero)
    return ReverseFn(Frame(layout, zero, one, one, zero, dtype))


class RevIN(nn.Module):
    """Reversible instance normalization with learnable affine parameters.

    ``forward`` is one call to :func:`revin_fn.revin` (the formula is in its docstring) with
    this module's ``gamma``/``beta`` and options: ``module(x, mask=None)`` (``mask`` as in
    ``revin``, by name or position) returns ``(y, reverse_fn)``, or ``(y, reverse_fn,
    statistics)`` with ``return_statistics=True``. No statistics are kept on
    the module: each ``reverse_fn`` holds those of its own call, so calls can overlap and the
    module replicates safely (DataParallel, DDP).

    When ``num_variates`` is given, every call checks that the ``v`` axis of ``x`` has that
    many entries (a ``(32, 96, 7)`` batch under the default ``"b v t"`` is refused instead of
    normalized across its 7 variates). Without it (``affine=False``), a call whose time axis
    is shorter than its variate axis warns (``UserWarning``), since that usually means the
    pattern is wrong; pass ``num_variates`` to check the axis instead (no warning then).
    Not warned inside ``torch.compile``.

    ``load_state_dict`` also takes the checkpoints of lucidrains' iTransformer ``RevIN``:
    gamma/beta of shape ``(num_variates, 1)`` are loaded as ``(num_variates,)`` (an optimizer
    state saved with them holds moments of that shape: reshape them too, as the README shows
    for resuming), and with
    ``affine=False`` gamma/beta keys are accepted when they hold the identity (ones, zeros;
    iTransformer saves them frozen) and refused with :class:`RevINError` otherwise.

    Args:
        num_variates: size of the ``v`` axis; needed when ``affine=True``, checked on every
            call when given. A Python or numpy integer.
        affine: learn ``gamma`` (init 1) and ``beta`` (init 0) of shape ``(num_variates,)``.
            Default: ``True``.
        eps, eps_mode, detach, subtract_last, method, causal, pattern: as in ``revin``.
        non_norm: ablation switch: forward and ``reverse_fn`` become the identity (no
            statistics, no affine), leaving the call sites unchanged. Default: ``False``.
        device, dtype: for the parameters.

    Shape:
        Input and output: as ``pattern`` says, default ``(batch, num_variates, time)``.

    Examples::

        >>> norm = RevIN(num_variates=7, pattern="b t v")
        >>> x = torch.randn(32, 96, 7)
        >>> y, reverse_fn = norm(x)
        >>> reverse_fn(torch.zeros(32, 24, 7)).shape
        torch.Size([32, 24, 7])
    """

    def __init__(
        self,
        num_variates: int | None = None,
        affine: bool = True,
        eps: float = DEFAULT_EPS,
        eps_mode: str = "clamp",
        detach: bool = False,
        subtract_last: bool = False,
        method: str = "std",
        causal: bool = False,
        pattern: str = "b v t",
        non_norm: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        call = f"RevIN(num_variates={num_variates!r})"
        try:
            if num_variates is None and affine:
                raise ValueError("affine=True needs num_variates >= 1, got None")
            if num_variates is not None:
                num_variates = _args.size("num_variates", num_variates)
            eps = _args.number("eps", eps)
            _args.flag("affine", affine)
            _args.flag("non_norm", non_norm)
            _args.dtype("dtype", dtype)
            options = Options(eps, eps_mode, detach, subtract_last, method, causal)
            check_options(options)
            layout = _args.layout(pattern)
            if num_variates is not None and layout.variate is None:
                raise ValueError(
                    f'num_variates={num_variates} needs a variate axis "v" in the pattern, '
                    f'got pattern "{pattern}"'
                )
        except (TypeError, ValueError) as error:
            raise _error(call, error) from None
        self.num_variates = num_variates
        self.affine = affine
        self.options = options
        self.pattern = pattern
        self.non_norm = non_norm
        if affine:
            assert num_variates is not None
            self.gamma = nn.Parameter(torch.empty(num_variates, device=device, dtype=dtype))
            self.beta = nn.Parameter(torch.empty(num_variates, device=device, dtype=dtype))
        else:
            self.register_parameter("gamma", None)
            self.register_parameter("beta", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.gamma is not None:
            nn.init.ones_(self.gamma)
            nn.init.zeros_(self.beta)

    @overload
    def forward(
        self, x: Tensor, mask: Mask | None = ..., *, return_statistics: Literal[False] = ...
    ) -> tuple[Tensor, ReverseFn]: ...
    @overload
    def forward(
        self, x: Tensor, mask: Mask | None = ..., *, return_statistics: Literal[True]
    ) -> tuple[Tensor, ReverseFn, Statistics]: ...
    def forward(
        self, x: Tensor, mask: Mask | None = None, *, return_statistics: bool = False
    ) -> tuple[Tensor, ReverseFn] | tuple[Tensor, ReverseFn, Statistics]:
        call = f"RevIN(num_variates={self.num_variates!r}).forward(x)"
        if isinstance(mask, str) and mask in ("norm", "denorm"):  # the original RevIN's mode
            raise RevINError(
                f"{call}: got mask={mask!r}, the original RevIN's mode: this RevIN returns "
                "(y, reverse_fn), and reverse_fn(y_hat) denormalizes; revin_fn.compat.RevIN "
                'keeps the original\'s layer(x, "norm") / layer(y_hat, "denorm")'
            )
        layout = self._check_input(call, x)
        if self.non_norm:
            try:
                _args.flag("return_statistics", return_statistics)
                _observed(mask, x, layout)  # checked as on every other call
            except (TypeError, ValueError) as error:
                raise _error(call, error) from None
            return self._identity(x, layout, return_statistics)
        try:
            return revin(  # type: ignore[call-overload, no-any-return]
                x,
                self.gamma,
                self.beta,
                pattern=self.pattern,
                mask=mask,
                return_statistics=return_statistics,
                **self.options._asdict(),
            )
        except RevINError as error:  # the functional's remaining checks (mask, ...), renamed
            raise _renamed(call, error) from None

    def _check_input(self, call: str, x: Tensor) -> Layout:
        """The layout of ``x``; its variate count against ``num_variates`` (or a warning)."""
        try:
            layout = parse(self.pattern, _check_tensor("x", x).ndim)
        except (TypeError, ValueError) as error:
            raise _error(call, error) from None
        if layout.variate is None:
            return layout
        variates, steps = x.shape[layout.variate], x.shape[layout.time]
        if self.num_variates is not None and variates != self.num_variates:
            raise RevINError(
                f'{call}: x has {variates} variates on axis "v" (shape {tuple(x.shape)}, '
                f'pattern "{self.pattern}"), expected num_variates={self.num_variates}'
                + swap_hint(self.pattern, layout.names, x.shape, layout.variate, self.num_variates)
            )
        # is_compiling first: the size comparison would become a guard on the time length
        if not torch.compiler.is_compiling() and self.num_variates is None and steps < variates:
            warnings.warn(
                f"{call}: x of shape {tuple(x.shape)} has {steps} step{'s' * (steps != 1)} on the "
                f'time axis "t" and {variates} variates on "v" (pattern "{self.pattern}"): fewer '
                "steps than variates often means the axes are swapped; pass the right pattern, or "
                "num_variates= to have the variate axis checked (and this warning silenced)",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        return layout

    if TYPE_CHECKING:  # calling the module is calling forward, with its types
        __call__ = forward

    def reverse(
        self,
        y_hat: Tensor,
        stats: Statistics,
        variates: Variates | None = None,
        *,
        shift: bool = True,
        stepwise: bool | None = None,
    ) -> Tensor:
        """:func:`revin_fn.reverse` with this module's pattern, eps and eps_mode (with
        ``non_norm``: the identity, after the same checks)."""
        call = f"RevIN(num_variates={self.num_variates!r}).reverse(y_hat, stats)"
        try:
            if self.non_norm:
                mean = _check_tensor("stats.mean", statistics_fields(stats).mean)
                identity = _identity_reverse(parse(self.pattern, mean.ndim), mean, mean.dtype)
                return identity(y_hat, variates, shift=shift, stepwise=stepwise)
            return reverse(
                y_hat,
                stats,
                pattern=self.pattern,
                eps=self.options.eps,
                eps_mode=self.options.eps_mode,
                variates=variates,
                shift=shift,
                stepwise=stepwise,
            )
        except (TypeError, ValueError) as error:
            if not isinstance(error, RevINError):
                raise _error(call, error) from None
            raise _renamed(call, error) from None

    def _identity(
        self, x: Tensor, layout: Layout, return_statistics: bool
    ) -> tuple[Tensor, ReverseFn] | tuple[Tensor, ReverseFn, Statistics]:
        """non_norm: ``y``, a copy of ``x``, and a reverse_fn that returns (a copy of) its input
        after the same checks; the statistics (mean 0, variance 1) are tensors of their own."""
        shape = list(x.shape)
        shape[layout.time] = 1
        zero = x.new_zeros(shape, dtype=stats_dtype(x.dtype))
        identity = _identity_reverse(layout, zero, x.dtype)
        if return_statistics:
            return x.clone(), identity, Statistics(zero, torch.ones_like(zero), None, None)
        return x.clone(), identity

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """iTransformer checkpoints: (V, 1) gamma/beta as (V,); frozen ones with affine=False."""
        for name, identity in (("gamma", 1.0), ("beta", 0.0)):
            value = state_dict.get(prefix + name)
            if not isinstance(value, Tensor):
                continue
            if self.affine and value.shape == (self.num_variates, 1):
                state_dict[prefix + name] = value.reshape(-1)
            elif not self.affine:
                if self.num_variates is not None and value.numel() != self.num_variates:
                    raise RevINError(
                        f"RevIN(num_variates={self.num_variates!r}).load_state_dict(state_dict): "
                        f"{prefix}{name} has shape {tuple(value.shape)}, expected "
                        f"{self.num_variates} values: the checkpoint is of a model with another "
                        "number of variates"
                    )
                if _args.holds_values(value) and not bool((value == identity).all()):
                    raise RevINError(
                        f"RevIN(num_variates={self.num_variates!r}).load_state_dict(state_dict): "
                        f"{prefix}{name} holds learned values, but this RevIN has affine=False; "
                        f"build it with affine=True to load them (identity {name} values, "
                        f"all {identity:g}, are accepted and ignored)"
                    )
                del state_dict[prefix + name]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        changed = {
            name: value
            for name, value in self.options._asdict().items()
            if value != Options._field_defaults[name]
        }
        text = f"{self.num_variates}, affine={self.affine}, pattern={self.pattern!r}"
        text += "".join(f", {name}={value!r}" for name, value in changed.items())
        return text + (", non_norm=True" if self.non_norm else "")
