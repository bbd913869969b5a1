"""The native backend: eager CPU kernels for ``method="std"``, chosen by layout and size.

Layouts with time last go to the row route (``_rows``: one group-norm pass); layouts with time
elsewhere (``"b t v"``) take the column route (``_columns``: passes in ``x``'s own layout) when
the tensor is large enough and its instances wide enough, and otherwise the row route on a copy
with time moved last. The reverse is one multiply-add, or an eval-mode ``batch_norm`` pass for
large outputs. Thresholds were measured on a 2-core CPU (``benchmarks/results-2core-cpu.json``,
``docs/design.md``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .. import _reference
from .._options import stats_dtype
from ._base import Backend, note
from ._columns import normalize_columns
from ._group_norm import needs_grad
from ._rows import normalize_rows
from ._rows_backward import KERNEL_SUM_MAX

if TYPE_CHECKING:
    from .._options import Options
    from .._patterns import Layout
    from .._reference import Frame
    from . import Request

# Below this many elements the reverse multiplies and adds: batch_norm's fixed cost dominates.
SCALE_SHIFT_MIN = 1 << 19
# The column route needs this many elements and this many instances side by side (the axes
# after time): below either, a transposing copy and the row kernel cost as much or less
# (docs/design.md).
COLUMNS_MIN = 1 << 16
COLUMNS_MIN_WIDTH = 16


class NativeBackend(Backend):
    """Eager CPU, ``method="std"`` with ``eps_mode`` ``"clamp"`` or ``"add"``, no mask, no
    causal statistics, no ``subtract_last``."""

    name = "native"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    methods: ClassVar[tuple[str, ...]] = ("std",)
    eps_modes: ClassVar[tuple[str, ...]] = ("clamp", "add")
    masks = False
    causal = False
    subtract_last = False

    def extra_reasons(self, request: Request) -> list[str]:
        """With ``"clamp"`` the row kernel adds a floor far below eps (``_rows.kernel_floor``);
        where eps is so small that the floor would be the smallest normal number, the floor is
        no longer negligible next to eps, so such calls go to the reference."""
        options = request.options
        if options is None or options.eps_mode != "clamp":
            return []
        tiny = torch.finfo(stats_dtype(request.dtype)).tiny
        if options.eps >= tiny * 2.0**24:
            return []
        return [
            f'eps {options.eps:g} with eps_mode "clamp" (takes eps >= {tiny * 2.0**24:g} for '
            f"{request.dtype}: its kernel's variance floor would not be negligible)"
        ]

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
        if x.numel() == 0:
            note(self.name, "empty")
            return _reference.normalize(x, layout, gamma, beta, observed, options)
        sdtype = stats_dtype(x.dtype)
        values = x if x.dtype == sdtype else x.to(sdtype)
        time = layout.time
        width = math.prod(x.shape[time + 1 :])
        if time == x.ndim - 1:
            route = "rows"
            y, frame, steps = normalize_rows(
                values, layout, gamma, beta, options, statistics, x.dtype
            )
        elif x.numel() < COLUMNS_MIN or width < COLUMNS_MIN_WIDTH:
            # two transposing copies cost less than the column route's extra passes here (and
            # moving time past axes of size 1 copies nothing)
            route = "moved rows"
            moved, frame, steps = normalize_rows(
                values.movedim(time, -1), layout, gamma, beta, options, statistics, x.dtype
            )
            y = moved.movedim(-1, time).contiguous()
        else:
            route = "columns"
            gamma_view, beta_view = _reference.affine_views(layout, gamma, beta, options.eps)
            y, frame, steps = normalize_columns(
                values, layout, gamma_view, beta_view, options, x.dtype
            )
        note(self.name, route + steps)
        return (y if y.dtype == x.dtype else y.to(x.dtype)), frame

    def scale_shift(self, y: Tensor, gain: Tensor, offset: Tensor) -> Tensor:
        """``offset + y * gain`` by whichever eager kernel is fastest for the shape.

        With factors constant along the last axis: below ``SCALE_SHIFT_MIN`` elements, or on
        rows of ``KERNEL_SUM_MAX`` steps or more taking gradients, a multiply and an in-place
        add (``addcmul`` is not vectorized when two operands broadcast); otherwise, for
        contiguous input of the statistics' dtype (or half precision),
        one eval-mode ``batch_norm`` over ``(1, rows, time)`` with mean 0, variance 1 and eps
        0, so ``weight = gain`` and ``bias = offset`` exactly; half precision is computed in
        float32 and rounded once. Factors varying along the last axis (``"b t v"``):
        ``addcmul``.
        """
        # batch_norm's backward sums gain's and offset's gradients along each row in running
        # float32 sums: long rows that take gradients multiply and add
        long = y.shape[-1] >= KERNEL_SUM_MAX and needs_grad(y, gain, offset)
        if (y.numel() < SCALE_SHIFT_MIN or long) and gain.shape[-1] == 1:
            note(self.name, "multiply-add")
            return (y * gain).add_(offset)
        length = y.shape[-1]
        rows = y.numel() // length
        if (
            gain.shape[-1] != 1
            or offset.shape[-1] != 1
            or not y.is_contiguous()
            or not gain.dtype == offset.dtype == _batch_norm_params(y)
        ):
            note(self.name, "addcmul")
            return torch.addcmul(offset, y, gain)
        note(self.name, "batch_norm")
        shape = (*y.shape[:-1], 1)
        zeros = gain.new_zeros(rows)
        out = torch.batch_norm(
            y.view(1, rows, length),
            gain.expand(shape).reshape(rows),
            offset.expand(shape).reshape(rows),
            zeros,
            torch.ones_like(zeros),
            False,
            0.0,
            0.0,
            False,
        )
        return out.view(y.shape)


def _batch_norm_params(values: Tensor) -> torch.dtype:
    """The parameter dtype ``batch_norm`` takes with ``values``: their own, or float32 for half
    precision, where the CPU kernel computes in float32 and rounds once on output."""
    if values.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return values.dtype
