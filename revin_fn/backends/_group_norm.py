"""The helpers of the native routes: autograd, and the group-norm kernel with one group per row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records a call on these tensors (grad mode on, one requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def backward_by_ops(*grads: Tensor | None) -> bool:
    """Whether a fused backward gives way to the differentiable formula (``vjp_by_ops``): where
    it is recorded (``create_graph=True``), or asked for batched gradients
    (``autograd.grad(is_grads_batched=True)``, ``jacobian(vectorize=True)``), whose tensors the
    fused backwards' in-place and ``out=`` operations cannot take. Metadata only."""
    if torch.is_grad_enabled():
        return True
    if torch.compiler.is_compiling():  # compiled autograd traces unbatched gradients
        return False
    functorch = torch._C._functorch
    return any(
        g is not None and (functorch.is_legacy_batchedtensor(g) or functorch.is_batchedtensor(g))
        for g in grads
    )


def vjp_by_ops(
    compute: Callable[[], Sequence[Tensor]],
    grads: Sequence[Tensor | None],
    inputs: Sequence[Tensor | None],
    needs: Sequence[bool],
) -> list[Tensor | None]:
    """The vector-Jacobian product with ``grads`` of the outputs ``compute`` returns (from
    ``inputs``, in differentiable ops), recorded where the backward is (double backward);
    ``None`` for the inputs that need no gradient."""
    record = torch.is_grad_enabled()
    with torch.enable_grad():  # a batched backward runs without grad mode
        outputs = compute()
        wanted = [t for t, need in zip(inputs, needs, strict=True) if need]
        pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None]
        found = iter(
            torch.autograd.grad(
                [o for o, _ in pairs], wanted, [g for _, g in pairs],  # type: ignore[arg-type]
                create_graph=record, allow_unused=True, materialize_grads=True,
            )
        )  # fmt: skip
    return [next(found) if need else None for need in needs]


def unit_weight(weight: Tensor | None, bias: Tensor | None) -> Tensor | None:
    """``weight``, or ones where there is a bias without one: the kernel's backward cannot give
    the bias a gradient without a weight."""
    return torch.ones_like(bias) if weight is None and bias is not None else weight


class Grid(NamedTuple):
    """How the kernel reads ``x``: ``batch`` by ``channels`` rows of ``length``, the weights
    repeating every ``channels`` rows; per-row results take ``stats_shape`` in the layout."""

    batch: int
    channels: int
    length: int
    stats_shape: tuple[int, ...]


def group_norm(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, grid: Grid, floor: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, rstd)`` of ``native_group_norm`` with one group per row: ``y`` in ``x``'s
    shape (contiguous), mean and rstd of shape ``(batch, channels)``, detached: they depend
    on ``x`` only, which takes no gradient here or gets it from ``_rows._Rows``."""
    batch, channels, length, _ = grid
    y, mean, rstd = torch.native_group_norm(
        x, unit_weight(weight, bias), bias, batch, channels, length, channels, floor
    )
    return y, mean.detach(), rstd.detach()
