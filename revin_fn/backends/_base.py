"""What a backend is: declared support, and the two computations it provides."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .._options import EPS_MODES, METHODS

if TYPE_CHECKING:
    from .._options import Options
    from .._patterns import Layout
    from .._reference import Frame
    from . import Request

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_RECORDS: list[list[tuple[str, str]]] = []  # open record() blocks


@contextmanager
def record() -> Iterator[list[tuple[str, str]]]:
    """Collect ``(backend, route)`` for every computation inside the block, in order.

    For tests and for inspecting which kernels a call ran; free when no block is open. A block
    collects the calls of every thread (it is process-wide, as :func:`use` is).
    """
    calls: list[tuple[str, str]] = []
    _RECORDS.append(calls)
    try:
        yield calls
    finally:
        _RECORDS.remove(calls)


def note(backend: str, route: str) -> None:
    """Called by backends: report the route a computation took to open :func:`record` blocks."""
    for calls in _RECORDS:
        calls.append((backend, route))


class Backend:
    """A backend declares what it supports; :func:`not_supported_reasons` reads only that.

    Subclasses set the class attributes and implement :meth:`normalize` and
    :meth:`scale_shift` (the math of ``revin_fn._reference``), adding call-specific limits in
    :meth:`extra_reasons`.
    """

    name: ClassVar[str]
    devices: ClassVar[tuple[str, ...]]  # device types
    dtypes: ClassVar[tuple[torch.dtype, ...]] = FLOATS
    modes: ClassVar[tuple[str, ...]] = ("eager",)
    methods: ClassVar[tuple[str, ...]] = METHODS
    eps_modes: ClassVar[tuple[str, ...]] = EPS_MODES
    masks: ClassVar[bool] = True
    causal: ClassVar[bool] = True
    subtract_last: ClassVar[bool] = True

    def not_supported_reasons(self, request: Request) -> list[str]:
        """Why this backend cannot take ``request`` (empty: it can), one phrase per reason."""
        reasons = []
        if request.device not in self.devices:
            reasons.append(f"device {request.device} (supports {', '.join(self.devices)})")
        if request.dtype not in self.dtypes:
            supported = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            reasons.append(f"dtype {request.dtype} (supports {supported})")
        if request.mode not in self.modes:
            reasons.append(f"mode {request.mode} (supports {', '.join(self.modes)})")
        options = request.options
        if request.op == "normalize" and options is not None:
            if options.method not in self.methods:
                reasons.append(f'method "{options.method}" (supports {", ".join(self.methods)})')
            if options.eps_mode not in self.eps_modes:
                reasons.append(
                    f'eps_mode "{options.eps_mode}" (supports {", ".join(self.eps_modes)})'
                )
            if request.masked and not self.masks:
                reasons.append("a mask (supports none)")
            if options.causal and not self.causal:
                reasons.append("causal=True (not supported)")
            if options.subtract_last and not self.subtract_last:
                reasons.append("subtract_last=True (not supported)")
        return reasons + self.extra_reasons(request)

    def extra_reasons(self, request: Request) -> list[str]:
        """Limits beyond the declared attributes (still metadata only)."""
        return []

    def normalize(
        self,
        x: Tensor,
        layout: Layout,
        gamma: Tensor | None,
        beta: Tensor | None,
        observed: Tensor | None,
        options: Options,
        statistics: bool,
    ) -> tuple[Tensor, Frame]:
        """``revin_fn._reference.normalize``: ``gamma`` (not yet guarded) and ``beta`` are
        ``(V,)`` vectors in the statistics dtype; without ``statistics`` the Frame's variance
        may be ``None``."""
        raise NotImplementedError(f"backend {self.name} does not normalize")

    def scale_shift(self, y: Tensor, gain: Tensor, offset: Tensor) -> Tensor:
        """``offset + y * gain`` (the reverse) in the promotion of the three dtypes."""
        raise NotImplementedError(f"backend {self.name} does not reverse")
