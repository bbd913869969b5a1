"""The data-unit law of a distribution predicted in normalized space."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import AffineTransform, Distribution, TransformedDistribution


class AffineDistribution(TransformedDistribution):
    """``offset + gain * Y`` for ``Y ~ base``, with moments as well as densities and quantiles.

    ``TransformedDistribution`` leaves ``mean``, ``variance``, ``entropy`` and ``expand``
    undefined; for an affine map they follow from the base distribution's. ``icdf`` handles
    ``gain < 0`` (a decreasing map) by mapping level ``q`` to ``1 - q``.
    """

    def __init__(self, base: Distribution, offset: Tensor, gain: Tensor) -> None:
        # validated as the base is (a base built with validate_args=False takes NaN targets)
        validate = getattr(base, "_validate_args", None)
        super().__init__(base, AffineTransform(loc=offset, scale=gain), validate_args=validate)
        self.offset = offset
        self.gain = gain

    @property
    def mean(self) -> Tensor:
        return torch.addcmul(self.offset, self.base_dist.mean, self.gain)

    @property
    def variance(self) -> Tensor:
        return self.base_dist.variance * self.gain.square()

    @property
    def stddev(self) -> Tensor:
        return self.base_dist.stddev * self.gain.abs()

    def entropy(self) -> Tensor:
        """The base's entropy plus ``log |gain|`` (the change of variables)."""
        return self.base_dist.entropy() + self.gain.abs().log()

    def expand(
        self, batch_shape: torch.Size | list[int] | tuple[int, ...], _instance: object = None
    ) -> AffineDistribution:
        shape = torch.Size(batch_shape)
        return AffineDistribution(
            self.base_dist.expand(shape), self.offset.expand(shape), self.gain.expand(shape)
        )
