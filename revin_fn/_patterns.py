"""Parsing of layout patterns such as ``"b v t"`` or ``"... t v"``, cached per (pattern, ndim)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from einops import EinopsError
from einops.parsing import ParsedExpression

TIME = "t"
VARIATE = "v"
SWAP_HINT = '; if axis "'  # how swap_hint's text starts


class Layout(NamedTuple):
    """Where the time and variate axes of a tensor of rank ``ndim`` sit."""

    pattern: str
    ndim: int
    names: tuple[str, ...]  # one name per axis, ellipsis axes named "...0", "...1", ...
    time: int
    variate: int | None

    def variate_view(self, size: int) -> tuple[int, ...]:
        """Shape that puts a (size,) vector on the variate axis, 1 elsewhere."""
        shape = [1] * self.ndim
        assert self.variate is not None
        shape[self.variate] = size
        return tuple(shape)


_LAYOUTS: dict[tuple[str, int], Layout] = {}


def parse(pattern: str, ndim: int) -> Layout:
    """Resolve ``pattern`` for a tensor of rank ``ndim``, once: later calls are a dict lookup.

    A plain dict rather than ``functools.lru_cache``, bypassed while compiling: a lookup in
    a cache filled by the first trace would fail its guard and recompile once. Raises
    ValueError with a short fact.
    """
    if torch.compiler.is_compiling():  # traced once per graph; a cache lookup would be a guard
        return _parse(pattern, ndim)
    layout = _LAYOUTS.get((pattern, ndim)) if isinstance(pattern, str) else None
    if layout is None:
        layout = _LAYOUTS.setdefault((pattern, ndim), _parse(pattern, ndim))
    return layout


def axis_names(pattern: object, example: str, about: str = "") -> tuple[list[str], bool]:
    """The axis names of an einops-style ``pattern`` (``"…"`` for ``...``) and whether it has
    ``...``; one name per axis. ``example`` is shown when ``pattern`` is not a string, ``about``
    (such as ``" for the output"``) says in the other errors what the pattern is for."""
    if not isinstance(pattern, str):
        raise ValueError(
            f'pattern must be a string such as "{example}", got {type(pattern).__name__}'
        )
    try:
        parsed = ParsedExpression(pattern)
    except EinopsError as error:
        raise ValueError(f'pattern "{pattern}" is not a valid einops pattern ({error})') from None
    names: list[str] = []
    for group in parsed.composition:
        if group == "…":
            names.append("…")
        elif isinstance(group, list) and len(group) == 1:
            names.append(group[0])
        elif isinstance(group, list) and not group:
            raise ValueError(
                f'pattern "{pattern}"{about} has an unnamed axis of size 1 ("1"); name each axis'
            )
        else:
            raise ValueError(
                f'pattern "{pattern}"{about} groups axes with parentheses; '
                "name each axis on its own"
            )
    return names, parsed.has_ellipsis


def _parse(pattern: str, ndim: int) -> Layout:
    names, has_ellipsis = axis_names(pattern, "b v t")
    if TIME not in names:
        raise ValueError(f'pattern "{pattern}" has no time axis "t"')
    if has_ellipsis:
        explicit = len(names) - 1
        if ndim < explicit:
            raise ValueError(
                f'pattern "{pattern}" needs a tensor of at least {explicit} dimensions, got {ndim}'
            )
        at = names.index("…")
        names[at : at + 1] = [f"...{i}" for i in range(ndim - explicit)]
    elif ndim != len(names):
        raise ValueError(
            f'pattern "{pattern}" needs a tensor of {len(names)} dimensions, got {ndim}'
        )
    variate = names.index(VARIATE) if VARIATE in names else None
    return Layout(pattern, ndim, tuple(names), names.index(TIME), variate)


def swap_hint(
    pattern: str,
    names: Sequence[str],
    shape: Sequence[int],
    variate: int,
    size: int,
    fits: Callable[[int], bool] | None = None,
) -> str:
    """A hint for ``size`` variates that do not match axis ``variate`` of a tensor of ``shape``
    named ``names`` by ``pattern``: where exactly one other named axis has that size (and
    ``fits(axis)``, if given, accepts it), the pattern with the two names swapped, as
    ``'; if axis "t" holds the variates, pass pattern="b t v"'``; otherwise ``""``."""
    axes = [
        d
        for d, name in enumerate(names)
        if d != variate and shape[d] == size and not name.startswith("...")
    ]
    if size == 1 or len(axes) != 1 or (fits is not None and not fits(axes[0])):
        return ""
    tokens = pattern.split()
    if names[variate] not in tokens or names[axes[0]] not in tokens:
        return ""
    a, b = tokens.index(names[variate]), tokens.index(names[axes[0]])
    tokens[a], tokens[b] = tokens[b], tokens[a]
    swapped = " ".join(tokens)
    return f'{SWAP_HINT}{names[axes[0]]}" holds the variates, pass pattern="{swapped}"'
