"""Checks of what ``revin`` is given: affine weights, masks, and the swapped-axes warning."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Literal, Union

import torch
from torch import Tensor

from ._options import stats_dtype
from ._patterns import Layout, swap_hint
from ._reverse import _check_tensor

Mask = Union[Tensor, Literal["nan"]]  # noqa: UP007
# frames a warning skips to reach the user's line: revin_fn's own and torch.nn's modules (the
# call machinery of nn.Module, containers such as nn.Sequential)
_OWN_FILES = (
    os.path.dirname(__file__) + os.sep,
    os.path.dirname(torch.nn.modules.module.__file__) + os.sep,
)


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by the caller point at the user's line
    (the first frame outside revin_fn and torch.nn's modules), however it was reached:
    ``module(x)``, ``nn.Sequential(module)(x)``, ``module.forward(x)`` or a revin_fn function.
    Eager only (not traced)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_OWN_FILES):
        frame, level = frame.f_back, level + 1
    return level


def _affine_vector(
    name: str, value: Tensor | None, x: Tensor, layout: Layout, x_name: str = "x"
) -> Tensor | None:
    """``value`` of shape (V,) or (V, 1) as a (V,) vector in the statistics dtype, for the
    tensor ``x`` (called ``x_name`` in messages)."""
    if value is None:
        return None
    _check_tensor(name, value)
    if value.device != x.device:
        raise ValueError(f"{name} is on {value.device}, expected {x.device} like {x_name}")
    if layout.variate is None:
        raise ValueError(
            f'{name} needs a variate axis "v" in the pattern, got pattern "{layout.pattern}"'
        )
    size = x.shape[layout.variate]
    if value.shape != (size,) and value.shape != (size, 1):
        given = value.shape[0] if value.ndim and value.shape[1:] in ((), (1,)) else None  # (k, 1)
        hint = (
            ""
            if given is None
            else swap_hint(layout.pattern, layout.names, x.shape, layout.variate, given)
        )
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}, expected ({size},) or ({size}, 1) "
            f'for {x_name} of shape {tuple(x.shape)} with pattern "{layout.pattern}"' + hint
        )
    vector = value if value.ndim == 1 else value.reshape(size)
    sdtype = stats_dtype(x.dtype)
    return vector if vector.dtype == sdtype else vector.to(sdtype)


def _observed(mask: Mask | None, x: Tensor, layout: Layout | None = None) -> Tensor | None:
    """The bool tensor of observed slots, of ``x``'s shape (a broadcast view where possible).

    A bool mask is used as is; a floating or integer mask (1 = observed, as TSLib,
    neuralforecast and HF pass them) is read as ``mask != 0`` without looking at its values.
    A mask with one axis fewer than ``x`` stands for ``x``'s shape without the variate axis
    (neuralforecast's ``(B, T)`` for ``"b t v"``) and applies to every variate, even where it
    would also broadcast the usual way (``(V, T)`` under ``"b v t"`` with ``B == V``), so that
    its meaning never depends on the batch size; any other mask broadcasts as usual.
    """
    if mask is None:
        return None
    if isinstance(mask, str):
        if mask != "nan":
            raise ValueError(
                f'mask must be a tensor (bools, or 0/1 numbers) or the string "nan", got {mask!r}'
            )
        return ~x.isnan()
    if not isinstance(mask, Tensor) or mask.is_complex():
        kind = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(
            f'mask must be a tensor of bools or of 0/1 numbers (nonzero = observed) or "nan", '
            f"got {kind}"
        )
    if mask.layout != torch.strided:
        raise ValueError(f"mask must be a dense (strided) tensor, got layout {mask.layout}")
    if mask.device != x.device:
        raise ValueError(f"mask is on {mask.device}, expected {x.device} like x")
    axis = None if layout is None else layout.variate
    shared = axis is not None and mask.ndim == x.ndim - 1  # one mask for every variate
    try:
        expanded = (mask if axis is None or not shared else mask.unsqueeze(axis)).expand(x.shape)
    except RuntimeError:
        expanded = None
    if expanded is None:
        if axis is not None and shared:
            without = (*x.shape[:axis], *x.shape[axis + 1 :])
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}: a mask with one axis fewer than x of shape "
                f"{tuple(x.shape)} is read as x's shape without its variate axis, {without}, "
                "applied to every variate; to broadcast it over another axis, give it all "
                f"{x.ndim} axes (e.g. mask.unsqueeze(0))"
            )
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, which does not broadcast to x of shape "
            f"{tuple(x.shape)}"
        )
    return expanded if expanded.dtype == torch.bool else expanded != 0


def _warn_if_swapped(x: Tensor, layout: Layout) -> None:
    """Warn when the default ``"b v t"`` sees fewer steps than variates (a ``(B, T, V)`` batch
    read as ``(B, V, T)``); not while compiling (a Python shape check, no tensor read)."""
    assert layout.variate is not None  # the default pattern has one
    steps, variates = x.shape[layout.time], x.shape[layout.variate]
    # is_compiling first: the size comparison would become a guard on the time length
    if not torch.compiler.is_compiling() and steps < variates:
        warnings.warn(
            f'revin(x): x of shape {tuple(x.shape)} under the default pattern "b v t" '
            f'has {steps} step{"s" * (steps != 1)} on the time axis "t" and {variates} variates '
            'on "v": a batch laid out (batch, time, variates) needs pattern="b t v"; pass '
            "pattern= explicitly to silence this warning",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
