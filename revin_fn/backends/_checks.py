"""The one host read of a native forward: the checks of a route, stacked and read together.

Each route computes a few 0-d values from its first pass (the smallest and largest ``1 / std``,
the largest offset in spreads, the smallest ``|gamma|``) and ``check_code`` turns them into the
bits of the remedies to take; ``steps`` names them for ``backends.record``.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Largest |mean| / std * max(|gamma'|, 1) normalized in a single pass: the fused output
# x * a + c rounds at the size of the offset, about 6e-6 against float64 at 30 and 2e-5 at 100
# (docs/design.md), so 32 keeps the 1e-5 guarantee. Where some row is past it and only a few
# rows are redone, every row past REDO_OFFSET is among them, as they all are on the full second
# pass: the gradients of rows 16 to 32 spreads from 0 are a few times less exact in one pass.
OFFSET_LIMIT = 32.0
REDO_OFFSET = OFFSET_LIMIT / 4
# Largest first-pass offset in spreads after which the column route's shifted pass is still
# exact in its fused form: the first pass's mean is off by a few ulps of the level (about 6e-7
# of it), so beyond 2**20 spreads an instance can sit more than a spread from 0 after the shift
# (a constant window far from 0 sits thousands of its sqrt(eps) spreads away); there the
# deviations from the mean are written first (``CENTERED``).
CENTER_LIMIT = 2.0**20
SHIFTED = 2  # bits of the one value read per forward
CLAMPED = 1
OVERFLOW = 4
GUARDED = 8
QUIET = 16  # "add": some variance below eps (the backward takes the reductions, not the kernel)
REDONE = 32  # not a check: the remedies were taken on the flagged rows (or instances) only
CENTERED = 64  # columns: some instance past CENTER_LIMIT spreads (the shifted pass centres first)


def check_code(
    *checks: tuple[Tensor, float, int, float], flags: Tensor | None = None
) -> tuple[int, int]:
    """The one host read of a forward: the sum of the ``bit`` of each ``(value, limit, bit,
    side)`` whose value (a 0-d tensor) is past its limit: above it for ``side = 1``, below it
    for ``side = -1``. The values are stacked and read together. A NaN value is past every
    limit: a batch holding a non-finite instance takes every remedy, so that the other
    instances stay exact (the non-finite one is NaN on every route). The checks: ``SHIFTED``
    if some ``|mean| / std * max(|gamma'|, 1)`` is above ``OFFSET_LIMIT``, ``CLAMPED`` if
    some variance is below eps, ``OVERFLOW`` if some scale is past the float range (its
    outputs become NaN, not 0), ``GUARDED`` if some ``|gamma|`` is below eps, ``QUIET``
    (``"add"``) if some variance is below eps (only the backward's path depends on it).

    The number of ``flags`` set (a bool tensor: the rows that need a remedy) is read with them,
    summed in float64, exact to 2**53: the code and that count come back as ``(code, count)``,
    the count 0 where no flags are given."""
    extra = [] if flags is None else [flags.sum(dtype=torch.float64)]
    values = torch.stack([*(value for value, *_ in checks), *extra]).tolist()
    code = 0
    for value, (_, limit, bit, side) in zip(values[: len(checks)], checks, strict=True):
        if not value * side <= limit * side:
            code |= bit
    return code, int(values[-1]) if extra else 0


def steps(code: int) -> str:
    """The remedies a check code asked for, as a route suffix for ``backends.record``."""
    return (
        ("+shifted" if code & SHIFTED else "")
        + ("+clamped" if code & CLAMPED else "")
        + ("+overflow" if code & OVERFLOW else "")
        + ("+guarded" if code & GUARDED else "")
        + ("+redo" if code & REDONE else "")
        + ("+centered" if code & CENTERED else "")
    )
