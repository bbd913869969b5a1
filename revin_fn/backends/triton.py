"""The triton backend: fused GPU kernels for ``method="std"``, sync-free, as custom ops.

One kernel computes the statistics and the output of a forward, one the reverse, one each of
their backwards (``_triton_kernels``); both layouts are read through strides, in place. The
kernels are custom ops with fake implementations (``_triton_ops``), so ``torch.compile`` and
``torch.export`` keep them. Importing this module raises ``ImportError`` without triton, and the
registry then leaves the backend out. With ``TRITON_INTERPRET=1`` set before the import, the
backend also takes CPU tensors (Triton's interpreter), so its tests run without a GPU.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, ClassVar

import torch
import triton  # noqa: F401  (the optional extra: ImportError here leaves the backend out)
from torch import Tensor

from .. import _reference
from . import _triton_kernels, _triton_ops
from ._base import Backend, note

if TYPE_CHECKING:
    from .._options import Options
    from .._patterns import Layout
    from .._reference import Frame

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class TritonBackend(Backend):
    """CUDA (and CPU under ``TRITON_INTERPRET=1``); float32, bfloat16 and float16;
    ``method="std"`` with every eps rule; no mask, no causal statistics, no ``subtract_last``;
    eager, compiled and exported calls."""

    name = "triton"
    devices: ClassVar[tuple[str, ...]] = ("cuda", "cpu") if INTERPRET else ("cuda",)
    dtypes: ClassVar[tuple[torch.dtype, ...]] = _KERNEL_DTYPES
    modes: ClassVar[tuple[str, ...]] = ("eager", "compiling", "exporting")
    methods: ClassVar[tuple[str, ...]] = ("std",)
    eps_modes: ClassVar[tuple[str, ...]] = tuple(_triton_kernels.EPS_MODES)
    masks = False
    causal = False
    subtract_last = False

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
        time, shape = layout.time, x.shape
        outer, inner = math.prod(shape[:time]), math.prod(shape[time + 1 :])
        variate = layout.variate
        end = time if variate is not None and variate < time else None
        vdiv = 1 if variate is None else math.prod(shape[variate + 1 : end])
        y, loc, var, gain, offset = _triton_ops.normalize(
            x.reshape(outer, shape[time], inner), gamma, beta, vdiv,
            variate is not None and variate < time, options.eps,
            _triton_kernels.EPS_MODES[options.eps_mode], options.detach,
        )  # fmt: skip
        if torch.compiler.is_compiling():  # the op chooses on concrete sizes: a test of the
            note(self.name, "fused")  # length here would be a guard (a dynamic one fails export)
        else:
            single = _triton_ops.single_pass(shape[time], inner)
            note(self.name, "fused" if single else "fused, chunked")
        stat_shape = (*shape[:time], 1, *shape[time + 1 :])
        loc, var = loc.view(stat_shape), var.view(stat_shape)
        if options.detach:  # constants where no affine parameter enters them, as on the reference
            loc, var = loc.detach(), var.detach()
            gain = gain if gamma is not None else gain.detach()
            offset = offset if gamma is not None or beta is not None else offset.detach()
        frame = _reference.Frame(
            layout, loc, var, gain.view(stat_shape), offset.view(stat_shape), x.dtype
        )
        return y.view(shape), frame

    def scale_shift(self, y: Tensor, gain: Tensor, offset: Tensor) -> Tensor:
        """``offset + y * gain`` in one kernel when the factors are constant along one axis of
        ``y`` (or match it), else ``addcmul`` (causal frames, unusual broadcasts)."""
        shape = y.shape
        if not (
            gain.shape == offset.shape
            and gain.ndim == y.ndim
            and gain.dtype in _KERNEL_DTYPES
            and offset.dtype in _KERNEL_DTYPES
            and all(g in (1, n) for g, n in zip(gain.shape, shape, strict=True))
        ):
            note(self.name, "addcmul")
            return _reference.scale_shift(y, gain, offset)
        spread = [d for d, (g, n) in enumerate(zip(gain.shape, shape, strict=True)) if g != n]
        if len(spread) > 1:
            note(self.name, "addcmul")
            return _reference.scale_shift(y, gain, offset)
        if spread:
            time = spread[0]
            view = (math.prod(shape[:time]), shape[time], math.prod(shape[time + 1 :]))
            factors = (view[0], 1, view[2])
        else:  # factors of y's own shape (elementwise)
            view = factors = (1, 1, y.numel())
        note(self.name, "fused")
        out: Tensor = _triton_ops.scale_shift(
            y.reshape(view), gain.reshape(factors), offset.reshape(factors)
        )
        return out.view(shape)
