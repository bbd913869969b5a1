"""``variates=``: the statistics of the variates an output holds, selected without a host read."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

from ._reference import Frame

# integer dtypes whose every value is an int64 (uint64 values past 2**63 would wrap)
_INDEX_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
                 torch.uint16, torch.uint32)  # fmt: skip
Variates = Union[int, Sequence[int], Sequence[bool], slice, Tensor]  # noqa: UP007 (runtime alias)


def variate_index(variates: Variates, size: int, count: int) -> Tensor | slice:
    """Turn a ``variates=`` selection into something that indexes an axis of length ``size``,
    for an output holding ``count`` variates. Reads no tensor value on the host (except the
    items of a list of one-element tensors, which are read as Python numbers)."""
    if isinstance(variates, slice):
        fields = (variates.start, variates.stop, variates.step)
        if any(f is not None and not _is_int(f) for f in fields):
            raise TypeError(f"variates={variates!r}: a slice needs int (or None) bounds and step")
        if variates.step is not None and operator.index(variates.step) <= 0:
            raise ValueError(f"variates={variates!r}: the step must be positive")
        # clipped to nothing, for an output that has some; not while compiling (the check would
        # fix a dynamic size to one value per graph) nor on symbolic sizes (export)
        static = isinstance(size, int) and not torch.compiler.is_compiling()
        if static and count and not range(size)[variates]:
            raise ValueError(f"variates={variates!r} selects none of {size} variates")
        return variates
    if isinstance(variates, Tensor):
        return _tensor_index(variates, size, count)
    if type(variates).__module__ == "numpy" and getattr(variates, "ndim", 0) == 1:
        variates = variates.tolist()  # type: ignore[union-attr]  # a numpy array: its items
    elif type(variates).__module__ == "numpy" and getattr(variates, "ndim", 0) > 1:
        raise TypeError(
            "variates must be an int, a sequence of ints, a slice or a bool mask, got a numpy "
            f"array of shape {variates.shape}"  # type: ignore[union-attr]
        )
    if isinstance(variates, bool) or not isinstance(variates, int | Sequence | range):
        if hasattr(variates, "__index__") and not isinstance(variates, bool):
            variates = operator.index(variates)  # numpy integers
        else:
            raise TypeError(
                "variates must be an int, a sequence of ints, a slice or a bool mask, "
                f"got {type(variates).__name__} {variates!r}"
            )
    if isinstance(variates, int):
        if not -size <= variates < size:
            raise ValueError(f"variates={variates} is out of range for {size} variates")
        return slice(variates % size, variates % size + 1)
    items = list(variates)
    if items and all(_is_bool(item) for item in items):
        if len(items) != size:
            raise ValueError(f"a bool variates mask needs {size} entries, got {len(items)}")
        items = [i for i, keep in enumerate(items) if keep]
    picked = []
    for item in items:
        if not _is_int(item):
            raise TypeError(
                f"variates must hold ints (or only bools), got {type(item).__name__} {item!r} "
                f"in {variates!r}"
            )
        index = item if isinstance(item, int | torch.SymInt) else operator.index(item)
        if not -size <= index < size:
            raise ValueError(f"variates={variates!r} is out of range for {size} variates")
        picked.append(index % size)
    return torch.tensor(picked, dtype=torch.long)


def _is_bool(item: object) -> bool:
    """Whether a ``variates=`` entry is a bool: Python's, numpy's, or a one-element bool tensor
    (the items of ``list(mask)``), never to be read as the index 0 or 1."""
    if isinstance(item, bool):
        return True
    if isinstance(item, int | torch.SymInt):  # a symbolic size has no dtype to look up
        return False
    if isinstance(item, Tensor):  # 0-d, or one element (the rows of a (V, 1) mask)
        return item.dtype == torch.bool and item.numel() == 1
    numpy_bool = getattr(getattr(item, "dtype", None), "kind", "") == "b"
    return type(item).__module__ == "numpy" and numpy_bool


def _is_int(value: object) -> bool:
    """Whether ``value`` is an index (an int, a numpy integer, a one-element integer tensor),
    not a bool."""
    if _is_bool(value):
        return False
    if isinstance(value, int | torch.SymInt):  # a symbolic size (traced as an int): operator.index
        return True  # would fix its value
    try:
        operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def _tensor_index(variates: Tensor, size: int, count: int) -> Tensor:
    """An index tensor from an int or bool tensor, checked without a host read: a bool mask
    must have ``count`` True entries (checked asynchronously on accelerators); ints out of range
    raise in ``index_select``."""
    if variates.dtype == torch.bool:
        if variates.shape != (size,):
            raise ValueError(
                f"a bool variates mask needs shape ({size},), got {tuple(variates.shape)}"
            )
        if torch.compiler.is_compiling():  # formatting the count would fix a dynamic one
            wrong = "the bool variates mask must hold one True entry per output variate"
        else:
            entries = "entry" if count == 1 else "entries"
            wrong = (
                f"the bool variates mask must hold {count} True {entries} (one per output variate)"
            )
        try:  # raises here on the CPU; on an accelerator it fails the stream later
            torch._assert_async(variates.sum() == count, f"revin_fn: {wrong}")
        except RuntimeError:
            raise ValueError(f"{wrong}, it holds {int(variates.sum())}") from None
        # the positions of the True entries, in order, without nonzero(): True sorts first
        return torch.argsort((~variates).to(torch.uint8), stable=True)[:count]
    if variates.ndim != 1 or variates.dtype not in _INDEX_DTYPES:
        raise ValueError(
            "variates must be an int, a sequence of ints, a slice or a bool mask, got a "
            f"tensor of dtype {variates.dtype} and shape {tuple(variates.shape)}"
        )
    index = variates if variates.dtype == torch.long else variates.long()  # int8 ... uint64
    return torch.where(index < 0, index + size, index)


def select(frame: Frame, variates: Variates | None, count: int) -> Frame:
    """The Frame of the variates ``variates`` picks, for an output holding ``count`` of them."""
    axis = frame.layout.variate
    if variates is None:
        return frame
    if axis is None:
        raise ValueError(
            f'variates= needs a variate axis "v" in the pattern "{frame.layout.pattern}"'
        )
    size = max(t.shape[axis] for t in (frame.loc, frame.gain, frame.offset))
    index = variate_index(variates, size, count)
    where: list[slice | int] = [slice(None)] * frame.layout.ndim

    def pick(value: Tensor) -> Tensor:
        if value.shape[axis] == 1 and size > 1:  # the same for every variate
            return value
        if isinstance(index, Tensor):
            try:
                return value.index_select(axis, index.to(value.device))
            except (IndexError, RuntimeError):
                raise ValueError(
                    f"variates= holds an index out of range for {value.shape[axis]} variates"
                ) from None
        where[axis] = index
        return value[tuple(where)]

    variance = None if frame.variance is None else pick(frame.variance)
    return Frame(
        frame.layout, pick(frame.loc), variance, pick(frame.gain), pick(frame.offset), frame.dtype
    )
