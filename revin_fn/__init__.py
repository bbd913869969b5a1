"""Reversible instance normalization (RevIN) as one functional call.

``y, reverse_fn = revin(x, gamma, beta)`` normalizes every instance of ``x`` by its own
statistics and returns a closure that maps model outputs back to data units.
"""

__version__ = "0.1.0"


class RevINError(ValueError):
    """A call to revin_fn received an input it cannot handle; the message names the call."""


class RevINTypeError(RevINError, TypeError):
    """An input of the wrong type or dtype (an integer tensor, a list for ``x``, a string
    for ``eps``, a non-bool flag)."""


from ._reverse import ReverseFn  # noqa: E402
from .dataset import adapt, normalize  # noqa: E402
from .functional import Statistics, reverse, revin  # noqa: E402
from .module import RevIN  # noqa: E402
from .normalization import Normalization  # noqa: E402

__all__ = [
    "Normalization",
    "RevIN",
    "RevINError",
    "RevINTypeError",
    "ReverseFn",
    "Statistics",
    "__version__",
    "adapt",
    "normalize",
    "reverse",
    "revin",
]
