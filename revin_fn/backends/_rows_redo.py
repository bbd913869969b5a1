"""The remedies on the flagged rows only: gathered, normalized again, written back.

Where the one check of a forward finds a few rows needing a remedy (far from 0 for their spread,
or below the eps floor), only those rows are shifted by their first-pass mean and normalized
once more, instead of a second pass over every row. The rows are found with ``topk`` on the
flags, since their count comes back with the check's one host read. The row route's redo is
here; the column route (``_columns``) shares the decision, the index and the merge.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import CLAMPED, GUARDED, OVERFLOW, SHIFTED
from ._group_norm import Grid, group_norm

# From REDO_MIN elements the check also counts the rows that need a remedy, and where at most
# REDO_SHARE of them do, the remedies are taken on those rows only (gathered, normalized again,
# written back); for the eps rescale alone (one element-wise pass over every row otherwise)
# from CLAMP_REDO_MIN elements. Below REDO_MIN the count's few operations cost more than the
# redo saves. Measured in docs/design.md
REDO_MIN = 2**18
CLAMP_REDO_MIN = 2**19
REDO_SHARE = 0.125


def redo_pays(code: int, count: int, rows: int, size: int) -> bool:
    """Whether the remedies the check asks for are taken on the ``count`` flagged rows only."""
    if not code & (SHIFTED | CLAMPED) or code & (GUARDED | OVERFLOW):
        return False
    return 0 < count <= REDO_SHARE * rows and bool(code & SHIFTED or size >= CLAMP_REDO_MIN)


def redo(
    x: Tensor,
    y: Tensor,
    first: tuple[Tensor, Tensor],
    needy: Tensor,
    count: int,
    affine: tuple[Tensor | None, Tensor | None],
    grid: Grid,
    floor: float,
    limit: float,
    clamp: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``count`` rows flagged in ``needy`` normalized once more, each shifted by its
    first-pass mean, and with ``clamp`` rescaled from the exact statistics where ``1 / std``
    is above ``limit``; their outputs replace the first pass's in ``y``. Returns
    ``y`` and the per-row mean, rstd and shift (0 on the other rows), merged."""
    mean, rstd = first
    length = grid.length
    index = flagged_index(needy, count)
    shift = mean.view(-1).index_select(0, index)
    source = x.view(-1, length).index_select(0, index).sub_(shift.unsqueeze(-1))
    variate = index % grid.channels
    weight, bias = (None if t is None else t.index_select(0, variate) for t in affine)
    rows = Grid(1, count, length, ())
    part, part_mean, part_rstd = group_norm(source, weight, bias, rows, floor)
    if clamp:  # rows below the eps floor: rescaled as on the full route
        ratio = (part_rstd.clamp(max=limit) / part_rstd).view(-1, 1)
        part = part.mul_(ratio)
        if bias is not None:
            part = part.add_(bias.view(-1, 1) * (1 - ratio))
    y.view(-1, length).index_copy_(0, index, part)
    merged_mean, merged_rstd = merge(mean, index, part_mean), merge(rstd, index, part_rstd)
    return y, merged_mean, merged_rstd, torch.where(needy, mean, 0)


def flagged_index(flags: Tensor, count: int) -> Tensor:
    """The flat indices of the ``count`` elements set in ``flags``, without a host read."""
    return torch.topk(flags.view(-1).to(torch.uint8), count, sorted=False).indices


def merge(full: Tensor, index: Tensor, redone: Tensor) -> Tensor:
    """``full`` with its elements at the flat ``index`` replaced by ``redone`` (out of place,
    differentiable)."""
    return full.reshape(-1).index_copy(0, index, redone.reshape(-1)).view_as(full)
