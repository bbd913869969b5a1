"""What users feel: one RLinear-like training step with each normalization, eager and compiled.

The step: normalize the look-back window, a ``Linear(T -> H)`` over time, the reverse, the MSE
against the target in data units, the backward (gradients for the model and, with affine, for
gamma/beta). The normalization's cost is the step's time minus that of the same step without
normalization. Each revin_fn variant runs with the options of the formula it is compared with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from formulas import (
    floor_pair,
    itransformer_pair,
    none_pair,
    original_pair,
    revin_fn_pair,
    tslib_pair,
)
from torch import Tensor, nn

HORIZON = 96
# (label, formula, affine, revin_fn options that match it)
VARIANTS: list[tuple[str, str, bool, dict[str, Any]]] = [
    ("none", "none", False, {}),
    ("revin_fn", "revin_fn", True, {}),
    ("itransformer", "itransformer", True, {}),
    ("revin_fn original", "revin_fn", True, {"eps_mode": "add", "detach": True}),
    ("original", "original", True, {}),
    ("revin_fn no affine", "revin_fn", False, {"eps_mode": "add"}),
    ("tslib", "tslib", False, {}),
    ("kernel floor", "floor", True, {}),
    ("kernel floor, no affine", "floor", False, {}),
]
COMPILED = ("none", "revin_fn", "itransformer", "revin_fn no affine", "tslib")
# (revin_fn label, formula label): the normalization's cost of the first over the second
TARGETS = [("revin_fn", "itransformer"), ("revin_fn original", "original"),
           ("revin_fn no affine", "tslib"), ("kernel floor", "itransformer"),
           ("kernel floor, no affine", "tslib")]  # fmt: skip


class Step:
    """The step for one shape ``(batch, variates, length)`` in one layout, on one device."""

    def __init__(self, shape: tuple[int, int, int], pattern: str, device: str) -> None:
        batch, variates, length = shape
        generator = torch.Generator().manual_seed(0)
        data = torch.randn(batch, variates, length + HORIZON, generator=generator) * 3 + 5
        self.time_last = pattern == "b v t"
        if not self.time_last:
            data = data.transpose(1, 2).contiguous()
        dim = pattern.split().index("t")
        self.x = data.narrow(dim, 0, length).contiguous().to(device)
        self.target = data.narrow(dim, length, HORIZON).contiguous().to(device)
        self.linear = nn.Linear(length, HORIZON).to(device)
        view = (variates, 1) if self.time_last else (variates,)
        self.gamma = nn.Parameter(torch.ones(view, device=device))
        self.beta = nn.Parameter(torch.zeros(view, device=device))
        self.pairs = {
            "none": none_pair(),
            "itransformer": itransformer_pair(dim),
            "original": original_pair(dim),
            "tslib": tslib_pair(dim),
            "floor": floor_pair(dim),
        }
        self.pattern = pattern

    def loss_fn(self, label: str) -> Callable[[Tensor, Tensor], Tensor]:
        _, formula, affine, options = next(v for v in VARIANTS if v[0] == label)
        forward, reverse = (
            revin_fn_pair(self.pattern, **options) if formula == "revin_fn" else self.pairs[formula]
        )
        gamma, beta = (self.gamma, self.beta) if affine else (None, None)

        def loss(x: Tensor, target: Tensor) -> Tensor:
            y, state = forward(x, gamma, beta)
            hidden = self.linear(y) if self.time_last else self.linear(y.transpose(1, 2))
            out = reverse(hidden if self.time_last else hidden.transpose(1, 2), state)
            return nn.functional.mse_loss(out, target)

        return loss

    def runner(self, label: str, compiled: bool) -> Callable[[], None]:
        loss_fn = self.loss_fn(label)
        if compiled:  # the variants share one code object: allow one graph each
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
            loss_fn = torch.compile(loss_fn, fullgraph=True)
        parameters = [self.linear.weight, self.linear.bias, self.gamma, self.beta]

        def step() -> None:
            loss_fn(self.x, self.target).backward()
            for parameter in parameters:
                parameter.grad = None

        return step
