"""Shared helpers: the round-trip check and reference formulas written from the papers."""

from __future__ import annotations

import torch
from torch import Tensor

from revin_fn import ReverseFn


def round_trip_tolerance(
    x: Tensor, y: Tensor, reverse_fn: ReverseFn, factor: float = 8.0
) -> Tensor:
    """Elementwise bound for |reverse_fn(y) - x|: a few ulps of every term of the inverse.

    x_hat = offset + y * gain, so rounding is relative to |x|, |offset| and |y * gain|; the
    precision is the coarser of x's dtype and the statistics dtype. A subnormal y (possible in
    float16 when gamma' is tiny) is rounded to an absolute spacing, magnified by |gain|.
    """
    frame = reverse_fn._frame
    eps = max(torch.finfo(x.dtype).eps, torch.finfo(frame.gain.dtype).eps)
    terms = (
        x.abs().double() + frame.offset.abs().double() + (y.double() * frame.gain.double()).abs()
    )
    terms = terms + frame.loc.abs().double()
    # y itself is rounded in x's dtype: below the smallest normal number, to a fixed spacing
    spacing = torch.finfo(x.dtype).tiny * torch.finfo(x.dtype).eps
    return factor * (eps * terms + spacing * frame.gain.abs().double()) + torch.finfo(x.dtype).tiny


def assert_round_trip(
    x: Tensor, y: Tensor, reverse_fn: ReverseFn, mask: Tensor | None = None
) -> None:
    x_hat = reverse_fn(y)
    assert x_hat.shape == x.shape and x_hat.dtype == x.dtype
    error = (x_hat.double() - x.double()).abs()
    bound = round_trip_tolerance(x, y, reverse_fn)
    if mask is not None:
        error, bound = error[mask], bound[mask]
    worst = (error - bound).max() if error.numel() else torch.tensor(-1.0)
    assert worst <= 0, f"round trip off by {error.max():.3e} (bound {bound.max():.3e})"


def itransformer_revin(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5):
    """iTransformer RevIN, layout (b, v, t), gamma/beta of shape (v, 1): the published formula."""
    var = torch.var(x, dim=-1, unbiased=False, keepdim=True)
    mean = torch.mean(x, dim=-1, keepdim=True)
    y = (x - mean) * var.clamp(min=eps).rsqrt() * gamma + beta

    def reverse_fn(out: Tensor) -> Tensor:
        clamped = torch.sign(gamma) * gamma.abs().clamp(min=eps)
        return (out - beta) / clamped * var.sqrt() + mean

    return y, reverse_fn, (mean, var)


def original_revin(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5):
    """Original RevIN (Kim et al. 2022), layout (b, t, v): detached mean, std = sqrt(var + eps)."""
    mean = x.mean(dim=1, keepdim=True).detach()
    stdev = torch.sqrt(torch.var(x, dim=1, keepdim=True, unbiased=False) + eps).detach()
    y = (x - mean) / stdev * weight + bias

    def reverse_fn(out: Tensor) -> Tensor:
        return (out - bias) / (weight + eps * eps) * stdev + mean

    return y, reverse_fn, (mean, stdev)
