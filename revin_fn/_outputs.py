"""Output layouts: where the statistics of a call go in a tensor of another layout.

``reverse_fn(y_hat, pattern="t b v d")`` names the axes of ``y_hat``: every axis of the
input's pattern (any order) plus new axes, over which the statistics broadcast. The statistics
are permuted and viewed to that layout (no copy of ``y_hat``). An input ``...`` must be named
``...`` in the output pattern too, standing for the same number of axes; ``...`` cannot stand
for new axes. Parsed once per (input layout, pattern, rank), like ``_patterns.parse``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ._patterns import Layout, axis_names, swap_hint
from ._reference import Frame


class OutputLayout(NamedTuple):
    """The axes of an output: ``source[d]`` is the input axis that output axis ``d`` holds, or
    ``None`` for a new axis (the statistics broadcast over it)."""

    pattern: str
    ndim: int
    names: tuple[str, ...]
    source: tuple[int | None, ...]
    time: int
    variate: int | None

    def arrange(self, value: Tensor) -> Tensor:
        """``value`` (laid out as the input) as a view in this layout, size 1 on new axes."""
        order = [axis for axis in self.source if axis is not None]
        if order != list(range(len(order))):
            value = value.permute(order)
        if len(order) == self.ndim:
            return value
        return value[tuple(slice(None) if axis is not None else None for axis in self.source)]


_OUTPUTS: dict[tuple[str, int, str | None, int], OutputLayout] = {}


def output_layout(
    layout: Layout, pattern: str | None, shape: tuple[int, ...], name: str
) -> OutputLayout:
    """The layout of an output of rank ``ndim`` named by ``pattern`` (``None``: the input's).

    Raises ValueError with a short fact that names the output (``name``).
    """
    key = (layout.pattern, layout.ndim, pattern, len(shape))
    if torch.compiler.is_compiling():  # see _patterns.parse: no cache lookup while tracing
        return _resolve(layout, pattern, shape, name)
    out = _OUTPUTS.get(key) if pattern is None or isinstance(pattern, str) else None
    if out is None:
        out = _resolve(layout, pattern, shape, name)
        _OUTPUTS.setdefault(key, out)
    return out


def _resolve(
    layout: Layout, pattern: str | None, shape: tuple[int, ...], name: str
) -> OutputLayout:
    ndim = len(shape)
    if pattern is None:
        if ndim != layout.ndim:
            raise ValueError(
                f"{name} has shape {shape} ({ndim} dimensions), expected {layout.ndim} "
                f'dimensions for pattern "{layout.pattern}"; pass pattern= naming the axes of '
                "an output with other axes"
            )
        names = layout.names
    else:
        names = _names(layout, pattern, ndim, name)
    source = tuple(layout.names.index(axis) if axis in layout.names else None for axis in names)
    missing = [axis for axis in layout.names if axis not in names]
    if missing:
        shown = ", ".join("..." if axis.startswith("...") else axis for axis in missing)
        raise ValueError(
            f'pattern "{pattern}" for {name} lacks the input axes {shown} of pattern '
            f'"{layout.pattern}"; name every input axis (new axes broadcast)'
        )
    variate = None if layout.variate is None else source.index(layout.variate)
    return OutputLayout(
        pattern or layout.pattern, ndim, names, source, source.index(layout.time), variate
    )


def _names(layout: Layout, pattern: str, ndim: int, name: str) -> tuple[str, ...]:
    names, has_ellipsis = axis_names(pattern, "t b v d", f" for {name}")
    spread = sum(axis.startswith("...") for axis in layout.names)  # axes the input's ... took
    if has_ellipsis:
        explicit = len(names) - 1
        if "…" not in layout.pattern.replace("...", "…"):
            raise ValueError(
                f'pattern "{pattern}" for {name} has "..." but the input pattern '
                f'"{layout.pattern}" has none; name the new axes'
            )
        if ndim - explicit != spread:
            raise ValueError(
                f'{name} has {ndim} dimensions: "..." in pattern "{pattern}" would stand for '
                f"{ndim - explicit} axes, but it stands for {spread} in the input pattern "
                f'"{layout.pattern}"'
            )
        at = names.index("…")
        names[at : at + 1] = [f"...{i}" for i in range(spread)]
    elif ndim != len(names):
        raise ValueError(
            f'{name} has {ndim} dimensions, pattern "{pattern}" names {len(names)} axes'
        )
    return tuple(names)


def fit(
    frame: Frame, out: OutputLayout, shape: Sequence[int], stepwise: bool | None, name: str
) -> tuple[Tensor, Tensor]:
    """``(gain, offset)`` viewed for an output of ``shape`` in layout ``out``; raises if the
    shape does not match the statistics on the input's axes (time: any length)."""
    layout = frame.layout
    time = layout.time
    gain, offset = frame.gain, frame.offset
    length = frame.loc.shape[time]
    steps = shape[out.time]
    if length > 1:  # causal statistics, one per input step
        if stepwise is None:
            stepwise = steps == length
        if stepwise and steps != length:
            raise ValueError(
                f"stepwise=True needs {name} with {length} steps like the input, "
                f"got shape {tuple(shape)}"
            )
        if not stepwise:
            gain, offset = gain.narrow(time, length - 1, 1), offset.narrow(time, length - 1, 1)
    stats = frame.loc.shape
    if not _fits(out.source, time, shape, stats):
        expected = ", ".join(
            "T" if axis == time else "*" if axis is None else str(stats[axis])
            for axis in out.source
        )
        raise ValueError(
            f"{name} has shape {tuple(shape)}, expected ({expected}) (any T"
            + (", any size for *" if None in out.source else "")
            + f') to match the statistics of shape {tuple(stats)} with pattern "{layout.pattern}"'
            + (f' (output pattern "{out.pattern}")' if out.pattern != layout.pattern else "")
            + "; pass variates= when it holds only some variates"
            + _swapped(out, layout, shape, stats)
        )
    return out.arrange(gain), out.arrange(offset)


def _fits(
    source: Sequence[int | None], time: int, shape: Sequence[int], stats: Sequence[int]
) -> bool:
    """Whether an output of ``shape`` whose axes hold the input axes ``source`` matches the
    statistics on every input axis but time (new axes broadcast)."""
    return all(
        axis is None or axis == time or shape[d] == stats[axis] for d, axis in enumerate(source)
    )


def _swapped(out: OutputLayout, layout: Layout, shape: Sequence[int], stats: Sequence[int]) -> str:
    """The output pattern with the variate axis swapped with another that makes ``shape``
    match the statistics, as a hint (``""`` where there is none)."""
    if out.variate is None or layout.variate is None:
        return ""
    variate = out.variate

    def fits(axis: int) -> bool:
        source = list(out.source)
        source[variate], source[axis] = source[axis], source[variate]
        return _fits(source, layout.time, shape, stats)

    return swap_hint(out.pattern, out.names, shape, variate, stats[layout.variate], fits)
