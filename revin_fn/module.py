"""``RevIN``: an ``nn.Module`` that owns gamma/beta and calls :func:`revin_fn.revin`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, overload

import torch
from torch import Tensor, nn

from . import RevINError
from ._options import DEFAULT_EPS, Options, check_options, stats_dtype
from ._patterns import parse
from ._reference import Frame
from ._reverse import ReverseFn, Variates, _check_tensor, _error
from .functional import Mask, Statistics, reverse, revin


class RevIN(nn.Module):
    """Reversible instance normalization with learnable affine parameters.

    ``forward`` is one call to :func:`revin_fn.revin` (the formula is in its docstring) with
    this module's ``gamma``/``beta`` and options; it returns ``(y, reverse_fn)``, or
    ``(y, reverse_fn, statistics)`` with ``return_statistics=True``. No statistics are kept on
    the module: each ``reverse_fn`` holds those of its own call, so calls can overlap and the
    module replicates safely (DataParallel, DDP).

    Args:
        num_variates: size of the ``v`` axis; needed when ``affine=True``.
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
        options = Options(eps, eps_mode, detach, subtract_last, method, causal)
        try:
            check_options(options)
            if affine and (not isinstance(num_variates, int) or num_variates < 1):
                raise ValueError(f"affine=True needs num_variates >= 1, got {num_variates!r}")
        except ValueError as error:
            raise RevINError(f"RevIN(num_variates={num_variates!r}): {error}") from None
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
        self, x: Tensor, *, mask: Mask | None = ..., return_statistics: Literal[False] = ...
    ) -> tuple[Tensor, ReverseFn]: ...
    @overload
    def forward(
        self, x: Tensor, *, mask: Mask | None = ..., return_statistics: Literal[True]
    ) -> tuple[Tensor, ReverseFn, Statistics]: ...
    def forward(
        self, x: Tensor, *, mask: Mask | None = None, return_statistics: bool = False
    ) -> tuple[Tensor, ReverseFn] | tuple[Tensor, ReverseFn, Statistics]:
        if self.non_norm:
            return self._identity(x, return_statistics)
        return revin(  # type: ignore[call-overload, no-any-return]
            x,
            self.gamma,
            self.beta,
            pattern=self.pattern,
            mask=mask,
            return_statistics=return_statistics,
            **self.options._asdict(),
        )

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
        """:func:`revin_fn.reverse` with this module's pattern, eps and eps_mode."""
        if self.non_norm:
            return y_hat
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

    def _identity(
        self, x: Tensor, return_statistics: bool
    ) -> tuple[Tensor, ReverseFn] | tuple[Tensor, ReverseFn, Statistics]:
        """non_norm: y = x and a reverse_fn that returns its input (after the same checks)."""
        try:
            layout = parse(self.pattern, _check_tensor("x", x).ndim)
        except (TypeError, ValueError) as error:
            raise _error("RevIN.forward(x)", error) from None
        shape = list(x.shape)
        shape[layout.time] = 1
        zero = x.new_zeros(shape, dtype=stats_dtype(x.dtype))
        one = torch.ones_like(zero)
        identity = ReverseFn(Frame(layout, zero, one, one, zero, x.dtype))
        if return_statistics:
            return x, identity, Statistics(zero, one, None, None)
        return x, identity

    def extra_repr(self) -> str:
        changed = {
            name: value
            for name, value in self.options._asdict().items()
            if value != Options._field_defaults[name]
        }
        text = f"{self.num_variates}, affine={self.affine}, pattern={self.pattern!r}"
        text += "".join(f", {name}={value!r}" for name, value in changed.items())
        return text + (", non_norm=True" if self.non_norm else "")
