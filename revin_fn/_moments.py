"""Mergeable per-variate moments for dataset-level statistics (streamed, optionally distributed).

A batch's moments come from the core (``_reference.moments`` over all non-variate axes, in
float64); batches, and ranks, are combined with Chan et al.'s parallel merge of
(count, mean, M2). Nothing is concatenated. The user's data (tensors, numpy arrays, pandas
DataFrames, iterables of them) is read here as batches of tensors.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import _args, _reference
from ._options import EMPTY_VARIANCE, Options
from ._patterns import Layout, parse

CHUNK = 1 << 22  # elements per chunk when adapt is given one large tensor


Batch = tuple[object, object]  # (x, mask) before validation


class Moments(NamedTuple):
    """Per-variate observation count, mean and sum of squared deviations (M2), float64."""

    n: Tensor
    mean: Tensor
    m2: Tensor


def batch_moments(x: Tensor, observed: Tensor | None, layout: Layout) -> Moments:
    """Moments of one batch over every axis but the variate axis (all axes without one)."""
    if layout.variate is None:
        values, seen = x.reshape(1, -1), None if observed is None else observed.reshape(1, -1)
    else:
        values = x.movedim(layout.variate, 0).reshape(x.shape[layout.variate], -1)
        seen = (
            None if observed is None else observed.movedim(layout.variate, 0).reshape(values.shape)
        )
    # one contiguous float64 copy: reductions along a strided axis are many times slower
    values = values.detach().to(torch.float64, memory_format=torch.contiguous_format)
    if seen is not None:
        seen = seen.contiguous()
        values = values.masked_fill(~seen, 0)
        count = seen.sum(1, dtype=torch.float64)
    else:
        count = torch.full(values.shape[:1], values.shape[1], dtype=torch.float64)
    loc, variance, _ = _reference.moments(values, seen, 1, Options())
    count = count.to(values.device)
    return Moments(count, loc.squeeze(1), variance.squeeze(1) * count)


def merge(parts: Moments, total: Callable[[Tensor], Tensor]) -> Moments:
    """Chan et al.'s merge of several (count, mean, M2): ``total`` sums over the parts.

    ``n = sum n_i``, ``mean = sum n_i mean_i / n``, ``M2 = sum M2_i + n_i (mean_i - mean)**2``.
    Parts stacked on dim 0 with ``total = sum(0)``, or one part per rank with ``total`` an
    all_reduce: the same formula.
    """
    count = total(parts.n)
    mean = total(parts.n * parts.mean) / count.clamp(min=1)
    m2 = total(parts.m2 + parts.n * (parts.mean - mean).square())
    return Moments(count, mean, m2)


def stack_sum(tensor: Tensor) -> Tensor:
    return tensor.sum(0)


def merge_pair(a: Moments, b: Moments) -> Moments:
    return merge(Moments(*(torch.stack(pair) for pair in zip(a, b, strict=True))), stack_sum)


def _collective_device(local: Moments | None) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return local.n.device if local is not None else torch.device("cpu")


def all_reduce_moments(local: Moments | None, failed: bool = False) -> Moments:
    """Merge every rank's moments so that each rank holds those of all ranks' data.

    A rank that saw no batch takes part with zero counts. Every rank raises, none is left
    waiting in a collective, where ranks disagree on the number of variates or where some
    rank's own pass over its data failed (``failed``: that rank then raises its own error).
    """
    device = _collective_device(local)
    size = 0 if local is None else local.n.numel()
    sizes = torch.tensor(
        [size, -size if size else -(2**62), int(failed)], dtype=torch.int64, device=device
    )
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
    largest, smallest, some_failed = int(sizes[0]), -int(sizes[1]), bool(sizes[2])
    if some_failed:
        raise ValueError("another rank's data failed (its own error says why); no statistics")
    if largest == 0:
        raise ValueError("no rank received a batch")
    if smallest != largest:
        raise ValueError(f"ranks disagree on the number of variates: {smallest} vs {largest}")
    if local is None:
        zeros = torch.zeros(largest, dtype=torch.float64, device=device)
        local = Moments(zeros, zeros, zeros)

    def total(tensor: Tensor) -> Tensor:
        result = tensor.to(device, copy=True)
        dist.all_reduce(result)
        return result

    return merge(local, total)


def finish(moments: Moments) -> tuple[Tensor, Tensor]:
    """``(mean, population variance)``; a variate with nothing observed gets (0, 1) as in revin."""
    seen = moments.n > 0
    mean = torch.where(seen, moments.mean, 0)
    variance = torch.where(seen, moments.m2 / moments.n.clamp(min=1), EMPTY_VARIANCE)
    return mean, variance


class Progress:
    """Plain progress lines on stderr: about ten for a sized input, else at powers of two."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self.enabled, self.total = enabled, total
        self.every = -(-total // 10) if total else 0
        self.start = time.perf_counter()

    def update(self, batches: int, values: int) -> None:
        if not self.enabled:
            return
        due = batches % self.every == 0 if self.every else batches & (batches - 1) == 0
        if due or batches == self.total:
            of = f"/{self.total}" if self.total else ""
            elapsed = time.perf_counter() - self.start
            print(f"adapt: batch {batches}{of}, {values} values, {elapsed:.1f}s", file=sys.stderr)

    def done(self, batches: int, values: int) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.start
            print(
                f"adapt: done, {batches} batches, {values} values, {elapsed:.1f}s", file=sys.stderr
            )


def batches(data: object, mask: object, pattern: str) -> tuple[Iterable[Batch], int | None]:
    """``(x, mask)`` pairs and how many (``None`` if unknown).

    A tensor is cut into chunks of about ``CHUNK`` elements along a non-variate axis (bounding
    the float64 copies); an iterable yields its batches, the first element of a tuple or list
    batch being ``x``.
    """
    if isinstance(data, Tensor):
        layout = parse(pattern, data.ndim)
        axis = 1 if layout.variate == 0 and data.ndim > 1 else 0
        length = data.shape[axis] if data.ndim else 1
        rows = max(1, CHUNK * max(length, 1) // max(data.numel(), 1))
        starts = range(0, max(length, 1), rows)

        def cut(value: object, start: int) -> object:
            if not isinstance(value, Tensor):
                return value
            return value.narrow(axis, start, min(rows, length - start))

        return ((cut(data, start), cut(mask, start)) for start in starts), len(starts)
    if isinstance(mask, Tensor):
        raise ValueError('a mask tensor needs data given as one tensor; for batches use mask="nan"')
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a tensor or an iterable of batches, got {type(data).__name__}"
        )
    total = len(data) if isinstance(data, Sized) else None
    return ((_first(batch), mask) for batch in data), total


def _first(batch: object) -> object:
    if isinstance(batch, tuple | list):
        if not batch:
            raise ValueError("a batch is an empty tuple; expected x or (x, ...)")
        return batch[0]
    return batch


def layout_for(pattern: str, x: object, index: int) -> tuple[Tensor, Layout]:
    if not isinstance(x, Tensor):
        raise TypeError(f"batch {index} is a {type(x).__name__}, expected a tensor or (x, ...)")
    if not x.is_floating_point():
        raise TypeError(f"batch {index} has dtype {x.dtype}, expected a floating-point tensor")
    if not _args.holds_values(x):
        where = "on the meta device" if x.is_meta else "a fake tensor (FakeTensorMode)"
        raise ValueError(f"batch {index} is {where}: it holds no values to learn from")
    return x, parse(pattern, x.ndim)


def check_finite(moments: Moments, mask: object) -> None:
    """NaN or inf among the observed values would make NaN statistics: say where, and what to do."""
    bad = ~(moments.mean.isfinite() & moments.m2.isfinite())
    if not bool(bad.any()):
        return
    where = f"variates {bad.nonzero().flatten().tolist()}" if bad.numel() > 1 else "the data"
    if isinstance(mask, str):  # "nan": the NaN are skipped, what is left is infinite
        raise ValueError(f"data holds inf (or values whose squares overflow) in {where}")
    raise ValueError(
        f'data holds NaN or inf in {where}; pass mask="nan" to treat NaN as missing values'
    )


def as_data(data: object, pattern: str) -> object:
    """``data`` with numpy arrays and DataFrames as tensors, for itself or for each batch."""
    if isinstance(data, Tensor):
        return data
    converted = _as_tensor(data, pattern)
    if converted is not None or not isinstance(data, Iterable) or isinstance(data, str):
        return data if converted is None else converted
    return _SizedBatches(data, pattern) if isinstance(data, Sized) else _Batches(data, pattern)


def _as_tensor(value: object, pattern: str) -> Tensor | None:
    """A numpy array as a tensor; a DataFrame (rows = steps, columns = variates) laid out as
    ``pattern``; ``None`` for anything else. Neither numpy nor pandas is imported."""
    if callable(getattr(value, "to_numpy", None)) and hasattr(value, "columns"):  # DataFrame
        kinds = value.dtypes.items()  # type: ignore[attr-defined]
        # datetime and timedelta columns convert to float64 too, as nanoseconds: refused first
        other = [name for name, kind in kinds if getattr(kind, "kind", "O") not in "biuf"]
        try:
            if other:
                raise TypeError
            table = torch.as_tensor(value.to_numpy(dtype="float64", copy=True))  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            raise TypeError(
                f"data is a DataFrame with non-numeric columns {other}; select the numeric "
                "columns (one per variate)"
            ) from None
        return _table(table, pattern)
    if type(value).__module__ == "numpy" and hasattr(value, "__array__"):  # an ndarray
        try:
            return torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):  # negative strides, object arrays
            copied = value.copy()  # type: ignore[attr-defined]
            return torch.as_tensor(copied) if copied.dtype != object else None
    return None


def _table(table: Tensor, pattern: str) -> Tensor:
    """``(steps, variates)`` placed on the ``t`` and ``v`` axes of ``pattern``, 1 elsewhere."""
    layout = _args.layout(pattern)
    if layout.variate is None:
        return table.reshape([-1 if d == layout.time else 1 for d in range(layout.ndim)])
    columns = table.reshape(len(table), -1)
    placed = columns.reshape(*columns.shape, *[1] * (layout.ndim - 2))
    return placed.movedim((0, 1), (layout.time, layout.variate))


class _Batches:
    """An iterable of batches whose ``x`` (the batch, or its first element) is converted."""

    def __init__(self, data: Iterable[object], pattern: str) -> None:
        self.data, self.pattern = data, pattern

    def __iter__(self) -> Iterator[object]:
        for batch in self.data:
            if isinstance(batch, tuple | list) and batch:
                x = _as_tensor(batch[0], self.pattern)
                yield batch if x is None else (x, *batch[1:])
            else:
                x = _as_tensor(batch, self.pattern)
                yield batch if x is None else x


class _SizedBatches(_Batches):
    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]
