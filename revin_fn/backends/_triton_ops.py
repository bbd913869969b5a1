"""The triton kernels as custom ops: fake implementations for compile and export, and autograd.

``revin_fn::triton_normalize`` and ``revin_fn::triton_scale_shift`` take tensors viewed as
``(outer, T, inner)`` (see ``_triton_kernels``); their backwards are custom ops too, so a
compiled or exported training step keeps the fused kernels. A backward run with
``create_graph=True`` (double backward) recomputes the same math with differentiable torch ops
and returns its vector-Jacobian product instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import triton
from torch import Tensor

from .. import _reference
from . import _triton_kernels as kernels

STATS = torch.float32


def _launch_shape(x: Tensor) -> tuple[tuple[int], int, int, int, bool]:
    outer, length, inner = x.shape
    block_t, block_i, warps = kernels.blocks(length, inner)
    return (outer * triton.cdiv(inner, block_i),), block_t, block_i, warps, length <= block_t


def single_pass(length: int, inner: int) -> bool:
    """Whether instances of ``length`` steps, ``inner`` wide, are read once (else in chunks)."""
    return length <= kernels.blocks(length, inner)[0]


def _affine_params(
    gamma: Tensor | None, beta: Tensor | None, unused: Tensor
) -> tuple[int, Tensor, Tensor]:
    """``(V, gamma, beta)`` for a launch: ``unused`` stands in for a missing vector."""
    vector = gamma if gamma is not None else beta
    size = 1 if vector is None else vector.shape[0]
    g = unused if gamma is None else gamma.contiguous()
    return size, g, unused if beta is None else beta.contiguous()


@torch.library.custom_op(
    "revin_fn::triton_normalize",
    mutates_args=(),
    schema="(Tensor x, Tensor? gamma, Tensor? beta, int vdiv, bool variate_outer, float eps, "
    "int eps_mode, bool detach) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def normalize(
    x: Tensor, gamma: Tensor | None, beta: Tensor | None, vdiv: int, variate_outer: bool,
    eps: float, eps_mode: int, detach: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(y, loc, variance, gain, offset)`` of ``x`` of shape ``(outer, T, inner)``; the
    statistics have shape ``(outer, 1, inner)`` and dtype float32."""
    outer, length, inner = x.shape
    y = torch.empty((outer, length, inner), dtype=x.dtype, device=x.device)
    loc, var, gain, offset = (x.new_empty((outer, 1, inner), dtype=STATS) for _ in range(4))
    grid, block_t, block_i, warps, single = _launch_shape(x)
    size, g, b = _affine_params(gamma, beta, loc)
    kernels.normalize_kernel[grid](
        x, y, loc, var, gain, offset, g, b, length, inner, *x.stride(), size, vdiv, eps,
        VARIATE_OUTER=variate_outer, HAS_GAMMA=gamma is not None, HAS_BETA=beta is not None,
        EPS_MODE=eps_mode, BLOCK_T=block_t, BLOCK_I=block_i, SINGLE=single, num_warps=warps,
    )  # fmt: skip
    return y, loc, var, gain, offset


@normalize.register_fake
def _(x: Tensor, gamma: Tensor | None, beta: Tensor | None, *args: Any) -> tuple[Tensor, ...]:
    outer, length, inner = x.shape
    y = x.new_empty((outer, length, inner))
    return (y, *(x.new_empty((outer, 1, inner), dtype=STATS) for _ in range(4)))


@torch.library.custom_op(
    "revin_fn::triton_normalize_backward",
    mutates_args=(),
    schema="(Tensor x, Tensor gy, Tensor var, Tensor? gamma, Tensor? beta, "
    "Tensor? gloc, Tensor? gvar, Tensor? ggain, Tensor? goffset, int vdiv, bool variate_outer, "
    "float eps, int eps_mode, bool detach) -> (Tensor, Tensor, Tensor)",
)
def normalize_backward(
    x: Tensor, gy: Tensor, var: Tensor, gamma: Tensor | None, beta: Tensor | None,
    gloc: Tensor | None, gvar: Tensor | None, ggain: Tensor | None, goffset: Tensor | None,
    vdiv: int, variate_outer: bool, eps: float, eps_mode: int, detach: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``dx`` and the per-instance partial gradients of the guarded gamma and of beta."""
    outer, length, inner = x.shape
    dx = torch.empty((outer, length, inner), dtype=x.dtype, device=x.device)
    pgamma, pbeta = (x.new_empty((outer, 1, inner), dtype=STATS) for _ in range(2))
    grid, block_t, block_i, warps, single = _launch_shape(x)
    var = var.contiguous()
    size, g, b = _affine_params(gamma, beta, var)
    grads = [var if t is None else t.to(STATS).contiguous() for t in (gloc, gvar, ggain, goffset)]
    kernels.normalize_backward_kernel[grid](
        x, gy, var, g, b, *grads, dx, pgamma, pbeta, length, inner, *x.stride(), *gy.stride(),
        size, vdiv, eps,
        VARIATE_OUTER=variate_outer, HAS_GAMMA=gamma is not None, HAS_BETA=beta is not None,
        HAS_GLOC=gloc is not None, HAS_GVAR=gvar is not None, HAS_GGAIN=ggain is not None,
        HAS_GOFFSET=goffset is not None, EPS_MODE=eps_mode, DETACH=detach, BLOCK_T=block_t,
        BLOCK_I=block_i, SINGLE=single, num_warps=warps,
    )  # fmt: skip
    return dx, pgamma, pbeta


@normalize_backward.register_fake
def _(x: Tensor, *args: Any) -> tuple[Tensor, Tensor, Tensor]:
    outer, length, inner = x.shape
    dx = x.new_empty((outer, length, inner))
    stat = (outer, 1, inner)
    return dx, x.new_empty(stat, dtype=STATS), x.new_empty(stat, dtype=STATS)


def _per_variate(partial: Tensor, size: int, vdiv: int, variate_outer: bool) -> Tensor:
    """Sum per-instance values of shape ``(outer, 1, inner)`` into one value per variate."""
    along = partial.sum((1, 2)) if variate_outer else partial.sum((0, 1))
    return along.view(-1, size, vdiv).sum((0, 2))


def _affine_views(
    x: Tensor, gamma: Tensor | None, beta: Tensor | None, vdiv: int, variate_outer: bool, eps: float
) -> tuple[Tensor | float, Tensor | float]:
    """Guarded gamma and beta per instance, broadcasting against ``(outer, T, inner)``."""
    if gamma is None and beta is None:
        return 1.0, 0.0
    size = (gamma if gamma is not None else beta).shape[0]  # type: ignore[union-attr]
    outer, _, inner = x.shape
    count, view = (outer, (-1, 1, 1)) if variate_outer else (inner, (1, 1, -1))
    index = torch.arange(count, device=x.device) // vdiv % size
    g = 1.0 if gamma is None else _reference.guard_gamma(gamma, eps)[index].view(view)
    b = 0.0 if beta is None else beta[index].view(view)
    return g, b


def differentiable_normalize(
    x: Tensor, gamma: Tensor | None, beta: Tensor | None, vdiv: int, variate_outer: bool,
    eps: float, eps_mode: int, detach: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """The kernel's math in torch ops (the reference's formula), for double backward."""
    values = x.to(STATS)
    shift = values.narrow(1, 0, 1).detach()
    shifted = values - shift
    mean = shifted.mean(1, keepdim=True)
    var = (shifted - mean).square().mean(1, keepdim=True)
    if detach:
        mean, var = mean.detach(), var.detach()
    scale = _reference.scale_from_variance(var, eps, list(kernels.EPS_MODES)[eps_mode])
    g, b = _affine_views(x, gamma, beta, vdiv, variate_outer, eps)
    y = (shifted - mean) * (g / scale) + b
    loc = shift + mean
    gain = scale / g
    return y.to(x.dtype), loc, var, gain, loc - b * gain


def _normalize_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, gamma, beta, *params = inputs
    ctx.save_for_backward(x, gamma, beta, output[2])
    ctx.params = params


def _normalize_vjp(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
    x, gamma, beta, var = ctx.saved_tensors
    vdiv, variate_outer, eps, eps_mode, detach = ctx.params
    nones = (None,) * 5
    if torch.is_grad_enabled():  # create_graph=True: differentiable torch ops
        inputs = [t for t in (x, gamma, beta) if t is not None and t.requires_grad]
        outputs = differentiable_normalize(x, gamma, beta, *ctx.params)
        pairs = [
            (o, g) for o, g in zip(outputs, grads, strict=True) if g is not None and o.requires_grad
        ]
        found: Iterator[Tensor | None] = iter([None] * len(inputs))
        if inputs and pairs:
            found = iter(
                torch.autograd.grad(
                    [o for o, _ in pairs],
                    inputs,
                    [g for _, g in pairs],
                    create_graph=True,
                    allow_unused=True,
                )
            )
        wanted = (x, gamma, beta)
        return (
            *(next(found) if t is not None and t.requires_grad else None for t in wanted),
            *nones,
        )
    gy = grads[0] if grads[0] is not None else torch.zeros_like(x)
    dx, pgamma, pbeta = normalize_backward(
        x, gy, var, gamma, beta, *grads[1:], vdiv, variate_outer, eps, eps_mode, detach
    )
    dgamma = dbeta = None
    if gamma is not None:  # the guard passes the gradient only where it does not clamp
        size = gamma.shape[0]
        kept = (gamma >= eps) | (gamma <= -eps)
        dgamma = (_per_variate(pgamma, size, vdiv, variate_outer) * kept).to(gamma.dtype)
    if beta is not None:
        dbeta = _per_variate(pbeta, beta.shape[0], vdiv, variate_outer).to(beta.dtype)
    return dx, dgamma, dbeta, *nones


normalize.register_autograd(_normalize_vjp, setup_context=_normalize_setup)


@torch.library.custom_op(
    "revin_fn::triton_scale_shift",
    mutates_args=(),
    schema="(Tensor y, Tensor gain, Tensor offset) -> Tensor",
)
def scale_shift(y: Tensor, gain: Tensor, offset: Tensor) -> Tensor:
    """``offset + y * gain`` for ``y`` of shape ``(outer, T, inner)`` and factors of shape
    ``(outer, 1, inner)``, in the promotion of the three dtypes."""
    outer, length, inner = y.shape
    dtype = torch.promote_types(torch.promote_types(y.dtype, gain.dtype), offset.dtype)
    out = torch.empty((outer, length, inner), dtype=dtype, device=y.device)
    block_t, block_i, warps = kernels.blocks(length, inner)
    grid = (outer * triton.cdiv(inner, block_i), triton.cdiv(length, block_t))
    kernels.scale_shift_kernel[grid](
        y, gain, offset, out, length, inner, *y.stride(), gain.stride(0), gain.stride(2),
        offset.stride(0), offset.stride(2), BLOCK_T=block_t, BLOCK_I=block_i, num_warps=warps,
    )  # fmt: skip
    return out


@scale_shift.register_fake
def _(y: Tensor, gain: Tensor, offset: Tensor) -> Tensor:
    dtype = torch.promote_types(torch.promote_types(y.dtype, gain.dtype), offset.dtype)
    return y.new_empty(y.shape, dtype=dtype)


@torch.library.custom_op(
    "revin_fn::triton_scale_shift_backward",
    mutates_args=(),
    schema="(Tensor gout, Tensor y, Tensor gain) -> (Tensor, Tensor, Tensor)",
)
def scale_shift_backward(gout: Tensor, y: Tensor, gain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``dy = gout * gain`` and the sums along time of ``gout * y`` and ``gout`` (float32)."""
    outer, length, inner = y.shape
    dy = torch.empty((outer, length, inner), dtype=y.dtype, device=y.device)
    dgain, doffset = (y.new_empty((outer, 1, inner), dtype=STATS) for _ in range(2))
    grid, block_t, block_i, warps, _ = _launch_shape(y)
    kernels.scale_shift_backward_kernel[grid](
        gout, y, gain, dy, dgain, doffset, length, inner, *gout.stride(), *y.stride(),
        gain.stride(0), gain.stride(2), BLOCK_T=block_t, BLOCK_I=block_i, num_warps=warps,
    )  # fmt: skip
    return dy, dgain, doffset


@scale_shift_backward.register_fake
def _(gout: Tensor, y: Tensor, gain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    outer, _, inner = y.shape
    stat = (outer, 1, inner)
    return y.new_empty(y.shape), y.new_empty(stat, dtype=STATS), y.new_empty(stat, dtype=STATS)


def _scale_shift_setup(ctx: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
    y, gain, offset = inputs
    ctx.save_for_backward(y, gain)
    ctx.offset_dtype = offset.dtype


def _scale_shift_vjp(ctx: Any, gout: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    y, gain = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: differentiable torch ops
        dy = gout * gain
        dgain = (gout * y).sum(1, keepdim=True)
        doffset = gout.sum(1, keepdim=True)
    else:
        dy, dgain, doffset = scale_shift_backward(gout, y, gain)
    return dy.to(y.dtype), dgain.to(gain.dtype), doffset.to(ctx.offset_dtype)


scale_shift.register_autograd(_scale_shift_vjp, setup_context=_scale_shift_setup)
