"""The fast paths of ``_core.normalize`` (chosen here), and the reverse's scale-and-shift kernel.

For ``method="std"`` (eps_mode ``"clamp"`` or ``"add"``) without mask, causal statistics or
``subtract_last``: layouts with time last go to ``_rows`` (one group-norm pass), layouts with
time elsewhere (``"b t v"``) to ``_columns`` from ``COLUMNS_MIN`` elements, and below it to
``_rows`` on a copy with time moved last. Under ``torch.compile`` the careful path runs
instead: inductor fuses it, and the per-instance branches would break the graph.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import _core
from ._columns import normalize_columns
from ._rows import normalize_rows

if TYPE_CHECKING:  # _core imports this module: use its names through the module at run time
    from ._core import Frame, Options
    from ._patterns import Layout

# Below this many elements the reverse multiplies and adds: batch_norm's fixed cost dominates.
# Measured on the 2-core CPU (b v t, us): multiply-add 18 / 41 / 185 against batch_norm
# 29 / 51 / 167 at 75k / 226k / 688k elements; the crossover lies between the last two.
SCALE_SHIFT_MIN = 1 << 19
# From this many elements, layouts with time not last take the column path (_columns); below
# it a copy with time moved last, the row kernel and a copy back take fewer calls.
COLUMNS_MIN = 1 << 16


def try_normalize(
    x: Tensor,
    layout: Layout,
    gamma: Tensor | None,
    beta: Tensor | None,
    observed: Tensor | None,
    options: Options,
    statistics: bool = True,
) -> tuple[Tensor, Frame] | None:
    """``_core.normalize(...)`` by a fast path, or ``None`` where none applies."""
    if (
        observed is not None
        or options.method != "std"
        or options.causal
        or options.subtract_last
        or options.eps_mode not in ("clamp", "add")
        or x.numel() == 0
        or torch.compiler.is_compiling()
    ):
        return None
    sdtype = _core.stats_dtype(x.dtype)
    values = x if x.dtype == sdtype else x.to(sdtype)
    time = layout.time
    result: tuple[Tensor, Frame] | None
    if time == x.ndim - 1:
        result = normalize_rows(values, layout, gamma, beta, options, statistics)
    elif x.numel() < COLUMNS_MIN or math.prod(x.shape[time + 1 :]) == 1:
        # small: two transposing copies cost less than the column path's extra calls (and
        # moving time past axes of size 1 copies nothing)
        moved, frame = normalize_rows(
            values.movedim(time, -1), layout, gamma, beta, options, statistics
        )
        result = moved.movedim(-1, time).contiguous(), frame
    else:
        gamma_view, beta_view = _core.affine_views(layout, gamma, beta, options.eps)
        result = normalize_columns(values, layout, gamma_view, beta_view, options)
    if result is None or x.dtype == sdtype:
        return result
    return result[0].to(x.dtype), result[1]


def scale_shift(values: Tensor, gain: Tensor, offset: Tensor) -> Tensor:
    """``offset + values * gain``, the reverse, by whichever eager kernel is fastest here.

    ``gain``/``offset`` are per instance. Measured on the 2-core CPU, with factors constant
    along the last axis: below ``SCALE_SHIFT_MIN`` elements a multiply and an in-place add
    (10 us at (32, 7, 96) against 28 us for ``addcmul``, whose loop is not vectorized when two
    of its operands broadcast); from it, for contiguous input of the statistics' dtype (or half
    precision on the CPU), one eval-mode ``batch_norm`` pass over ``(1, rows, time)`` with
    mean 0, variance 1 and eps 0, so ``weight = gain`` and ``bias = offset`` exactly: 0.70 ms
    at (32, 321, 336) against 0.96 ms for the multiply-add, and for bfloat16 input with float32
    factors 0.59 ms against 3.2 ms for ``addcmul`` and the cast. With factors varying along the
    last axis (``"b t v"``), ``addcmul``: 21 us against 31 us for the multiply-add at
    (32, 96, 7).
    """
    if values.numel() < SCALE_SHIFT_MIN and gain.shape[-1] == 1:
        return (values * gain).add_(offset)
    length = values.shape[-1]
    rows = values.numel() // length
    if (
        gain.shape[-1] != 1
        or offset.shape[-1] != 1
        or not values.is_contiguous()
        or not gain.dtype == offset.dtype == _batch_norm_params(values)
        or torch.compiler.is_compiling()
    ):
        return torch.addcmul(offset, values, gain)
    shape = (*values.shape[:-1], 1)
    zeros = gain.new_zeros(rows)
    out = torch.batch_norm(
        values.view(1, rows, length),
        gain.expand(shape).reshape(rows),
        offset.expand(shape).reshape(rows),
        zeros,
        torch.ones_like(zeros),
        False,
        0.0,
        0.0,
        False,
    )
    return out.view(values.shape)


def _batch_norm_params(values: Tensor) -> torch.dtype:
    """The parameter dtype ``batch_norm`` takes with ``values``: their own, or float32 for half
    precision on the CPU, where the kernel computes in float32 and rounds once on output, as
    ``addcmul`` in float32 followed by ``.to(values.dtype)`` does."""
    if values.device.type == "cpu" and values.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return values.dtype
