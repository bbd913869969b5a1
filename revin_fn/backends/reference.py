"""The reference backend: ``revin_fn._reference`` itself, for every call in every mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from .. import _reference
from ._base import Backend, note

if TYPE_CHECKING:
    from .._options import Options
    from .._patterns import Layout
    from .._reference import Frame


class ReferenceBackend(Backend):
    """The specification: any device, dtype, option and mode."""

    name = "reference"
    devices: ClassVar[tuple[str, ...]] = ()  # every device: see not_supported_reasons

    def not_supported_reasons(self, request: object) -> list[str]:
        return []

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
        note(self.name, "normalize")
        return _reference.normalize(x, layout, gamma, beta, observed, options)

    def scale_shift(self, y: Tensor, gain: Tensor, offset: Tensor) -> Tensor:
        note(self.name, "addcmul")
        return _reference.scale_shift(y, gain, offset)
