"""The backend seam: which implementation computes a call, chosen from metadata only.

Every backend computes the math of ``revin_fn._reference`` (the specification) for the calls it
declares it supports: device types, dtypes, options, and the mode the call runs in (plain eager,
compiling, exporting, tracing, ``torch.func`` transforms, forward-mode AD, fake or meta tensors,
tensor subclasses). The choice reads no tensor value, so it never synchronizes a device and a
traced or exported program sees exactly one path. Anything a faster backend does not declare
goes to the reference, which supports every call.

    >>> import revin_fn
    >>> "reference" in revin_fn.backends.names()
    True
    >>> with revin_fn.backends.use("reference"):
    ...     y, reverse_fn = revin_fn.revin(torch.randn(4, 3, 16))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from .._options import Options
from .._patterns import Layout
from .._reference import Frame
from ._base import Backend, note, record
from .native import NativeBackend
from .reference import ReferenceBackend

__all__ = [
    "Backend",
    "Request",
    "current",
    "mode",
    "names",
    "normalize",
    "note",
    "record",
    "scale_shift",
    "select",
    "use",
]

MODES = (
    "eager",
    "compiling",
    "exporting",
    "tracing",
    "functorch",
    "forward_ad",
    "fake",
    "subclass",
)


class Request(NamedTuple):
    """The metadata a backend is chosen on: never a tensor value."""

    op: str  # "normalize" or "reverse"
    device: str  # device type: "cpu", "cuda", "meta", ...
    dtype: torch.dtype
    layout: Layout | None  # None for "reverse"
    options: Options | None  # None for "reverse"
    masked: bool
    mode: str


def _triton_backend() -> Backend | None:
    try:
        from .triton import TritonBackend
    except ImportError:  # triton is an optional extra
        return None
    return TritonBackend()


_REGISTRY: dict[str, Backend] = {}
for _backend in (NativeBackend(), _triton_backend(), ReferenceBackend()):
    if _backend is not None:
        _REGISTRY[_backend.name] = _backend
_FORCED: list[str] = []  # innermost use(...) last
# While compiling or exporting: the one backend that declares the mode and the device type,
# where only one does (the reference, on a device no other backend compiles for), else None.
# Asking every backend instead would make each of its declarations a guard of the compiled
# function, checked on every call.
_TRACED_SOLE: dict[tuple[str, str], Backend | None] = {}
_DECLARED = {"cpu", "cuda"}.union(*(b.devices for b in _REGISTRY.values()))
for _mode in ("compiling", "exporting"):
    for _device in sorted(_DECLARED):
        _takers = [  # the reference takes every call
            b
            for b in _REGISTRY.values()
            if b.name == "reference" or (_mode in b.modes and _device in b.devices)
        ]
        _TRACED_SOLE[(_mode, _device)] = _takers[0] if len(_takers) == 1 else None
_CHOICES: dict[tuple[Request, str | None], Backend] = {}


def names() -> list[str]:
    """The backends available here, in the order the automatic choice tries them."""
    return list(_REGISTRY)


@contextmanager
def use(name: str) -> Iterator[None]:
    """Force the backend ``name`` for every call inside the block (like ``sdpa_kernel``).

    A call the forced backend cannot take raises :class:`revin_fn.RevINError` listing why.
    The choice is process-wide, not per thread: while a block is open, calls in other
    threads use its backend too, so open blocks from one thread at a time.
    """
    if name not in _REGISTRY:
        from .. import RevINError

        raise RevINError(
            f"backends.use({name!r}): no backend {name!r}; available: {', '.join(_REGISTRY)}"
        )
    _FORCED.append(name)
    try:
        yield
    finally:
        _FORCED.pop()


def current() -> str | None:
    """The backend forced by the innermost :func:`use`, or ``None`` (automatic choice)."""
    return _FORCED[-1] if _FORCED else None


def mode(*tensors: Tensor | None) -> str:
    """The mode a call on ``tensors`` runs in, one of ``MODES``; from metadata only."""
    if torch.jit.is_tracing():  # type: ignore[attr-defined,no-untyped-call]
        return "tracing"
    if torch.compiler.is_exporting():
        return "exporting"
    if torch.compiler.is_compiling():
        return "compiling"
    if torch._C._are_functorch_transforms_active():
        return "functorch"
    if forward_ad._current_level >= 0:
        return "forward_ad"
    for tensor in tensors:
        if tensor is None:
            continue
        if type(tensor) is not Tensor and type(tensor) is not torch.nn.Parameter:
            return "fake" if is_fake(tensor) else "subclass"  # FakeTensor is a subclass
        if tensor.is_meta:
            return "fake"
    return "eager"


def select(request: Request) -> Backend:
    """The backend for ``request``: the forced one, else the first in :func:`names` that takes
    it. Raises ``ValueError`` listing the reasons when the forced backend cannot take it."""
    forced = _FORCED[-1] if _FORCED else None
    caching = not torch.compiler.is_compiling()  # see _patterns.parse
    if not caching and forced is None:
        sole = _TRACED_SOLE.get((request.mode, request.device), _REGISTRY["reference"])
        if sole is not None:
            return sole
    key = (request, forced)
    backend = _CHOICES.get(key) if caching else None
    if backend is not None:
        return backend
    if forced is not None:
        backend = _REGISTRY[forced]
        reasons = backend.not_supported_reasons(request)
        if reasons:
            raise ValueError(
                f'backend "{forced}" (forced by revin_fn.backends.use) cannot take this call: '
                + "; ".join(reasons)
            )
    else:
        backend = next(b for b in _REGISTRY.values() if not b.not_supported_reasons(request))
    if caching:
        _CHOICES[key] = backend
    return backend


def normalize(
    x: Tensor,
    layout: Layout,
    gamma: Tensor | None,
    beta: Tensor | None,
    observed: Tensor | None,
    options: Options,
    statistics: bool,
) -> tuple[Tensor, Frame]:
    """``_reference.normalize`` by the backend :func:`select` picks for this call."""
    request = Request(
        "normalize", x.device.type, x.dtype, layout, options, observed is not None,
        mode(x, gamma, beta, observed),
    )  # fmt: skip
    backend = select(request)
    x = _savable(x, gamma, beta)
    observed = None if observed is None else _savable(observed, x, gamma, beta)
    return backend.normalize(x, layout, gamma, beta, observed, options, statistics)


def scale_shift(y: Tensor, gain: Tensor, offset: Tensor) -> Tensor:
    """``offset + y * gain`` (the reverse) by the backend :func:`select` picks for this call."""
    request = Request("reverse", y.device.type, y.dtype, None, None, False, mode(y, gain, offset))
    return select(request).scale_shift(_savable(y, gain, offset), gain, offset)


def _savable(value: Tensor, *others: Tensor | None) -> Tensor:
    """``value``, or a copy where it is an inference tensor (made under ``inference_mode``)
    that autograd would have to save: outside inference mode, with another input taking a
    gradient."""
    # is_compiling first: dynamo cannot trace is_inference
    if torch.compiler.is_compiling() or not value.is_inference():
        return value
    if torch.is_inference_mode_enabled():
        return value
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in others):
        return value
    return value.clone()
