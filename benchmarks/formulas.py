"""The normalizations users would otherwise paste, written from their published code.

Each is a pair ``forward(x, gamma, beta) -> (y, state)`` and ``reverse(y, state) -> x`` over the
time axis ``dim``; ``gamma``/``beta`` broadcast against ``x`` (``None`` where the formula has no
affine). Shared by the benchmark's micro and training-step tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from revin_fn import revin

EPS = 1e-5
State = Any
Forward = Callable[[Tensor, Tensor | None, Tensor | None], tuple[Tensor, State]]
Reverse = Callable[[Tensor, State], Tensor]


def itransformer_pair(dim: int) -> tuple[Forward, Reverse]:
    """iTransformer RevIN: y = (x - mean) / sqrt(max(var, eps)) * gamma + beta; its inverse
    x = (y - beta) / (sign(gamma) * max(|gamma|, eps)) * sqrt(var) + mean."""

    def forward(x: Tensor, gamma: Tensor | None, beta: Tensor | None) -> tuple[Tensor, State]:
        var = torch.var(x, dim=dim, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=dim, keepdim=True)
        y = (x - mean) * var.clamp(min=EPS).rsqrt()
        if gamma is not None:
            y = y * gamma + beta
        return y, (mean, var, gamma, beta)

    def reverse(y: Tensor, state: State) -> Tensor:
        mean, var, gamma, beta = state
        if gamma is not None:
            y = (y - beta) / (torch.sign(gamma) * gamma.abs().clamp(min=EPS))
        return y * var.sqrt() + mean

    return forward, reverse


def original_pair(dim: int) -> tuple[Forward, Reverse]:
    """Original RevIN (Kim et al., 2022): detached mean and stdev = sqrt(var + eps),
    y = (x - mean) / stdev * weight + bias; inverse (y - bias) / (weight + eps^2) * stdev + mean."""

    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, State]:
        mean = torch.mean(x, dim=dim, keepdim=True).detach()
        stdev = torch.sqrt(torch.var(x, dim=dim, keepdim=True, unbiased=False) + EPS).detach()
        y = (x - mean) / stdev
        if weight is not None:
            y = y * weight + bias
        return y, (mean, stdev, weight, bias)

    def reverse(y: Tensor, state: State) -> Tensor:
        mean, stdev, weight, bias = state
        if weight is not None:
            y = (y - bias) / (weight + EPS * EPS)
        return y * stdev + mean

    return forward, reverse


def tslib_pair(dim: int) -> tuple[Forward, Reverse]:
    """TSLib's inline block (no affine): mean detached, stdev = sqrt(var + eps) not detached."""

    def forward(x: Tensor, gamma: Tensor | None, beta: Tensor | None) -> tuple[Tensor, State]:
        means = x.mean(dim, keepdim=True).detach()
        centered = x - means
        stdev = torch.sqrt(torch.var(centered, dim=dim, keepdim=True, unbiased=False) + EPS)
        return centered / stdev, (means, stdev)

    def reverse(y: Tensor, state: State) -> Tensor:
        means, stdev = state
        return y * stdev + means

    return forward, reverse


def floor_pair(dim: int) -> tuple[Forward, Reverse]:
    """revin_fn's row route with nothing but its arithmetic: one ``native_group_norm`` pass (y,
    and the detached mean and 1 / std; gamma and beta recorded by autograd), ``gain = 1 / (rstd
    * gamma)``, ``offset = mean - beta * gain`` and the inverse ``y * gain + offset``. No checks,
    no eps rule beyond the kernel's ``var + eps``, no statistics, no remedy for data far from 0:
    not a normalization to use, the floor under revin_fn's cost where a step is bound by its
    number of operations rather than by memory."""

    def forward(x: Tensor, gamma: Tensor | None, beta: Tensor | None) -> tuple[Tensor, State]:
        rows = x if dim == x.ndim - 1 else x.movedim(dim, -1).contiguous()
        batch, variates, length = rows.shape
        weight, bias = (None if t is None else t.reshape(-1) for t in (gamma, beta))
        y, mean, rstd = torch.native_group_norm(
            rows, weight, bias, batch, variates, length, variates, EPS
        )
        # detached, as revin_fn's where x takes no gradient (as in the step): gradients sent
        # into them would take group norm's slower composite backward instead of its kernel
        mean, rstd = (t.detach().view(batch, variates, 1).movedim(-1, dim) for t in (mean, rstd))
        y = y if dim == x.ndim - 1 else y.movedim(-1, dim).contiguous()
        if gamma is None or beta is None:
            return y, (rstd.reciprocal(), mean)
        gain = (rstd * gamma).reciprocal()
        return y, (gain, mean - beta * gain)

    def reverse(y: Tensor, state: State) -> Tensor:
        gain, offset = state
        return y * gain + offset

    return forward, reverse


def revin_fn_pair(pattern: str, **options: Any) -> tuple[Forward, Reverse]:
    """revin with ``return_statistics=True``, like the formulas, whose state holds the mean and
    variance (the statistics cost one more small operation)."""

    def forward(x: Tensor, gamma: Tensor | None, beta: Tensor | None) -> tuple[Tensor, State]:
        flat = [None if t is None else t.reshape(-1) for t in (gamma, beta)]
        y, reverse_fn, _ = revin(x, *flat, pattern=pattern, return_statistics=True, **options)
        return y, reverse_fn

    return forward, lambda y, reverse_fn: reverse_fn(y)


def clone_pair() -> tuple[Forward, Reverse]:
    return (lambda x, gamma, beta: (x.clone(), None)), (lambda y, state: y.clone())


def none_pair() -> tuple[Forward, Reverse]:
    """No normalization: the model sees x itself (the training step's baseline)."""
    return (lambda x, gamma, beta: (x, None)), (lambda y, state: y)
