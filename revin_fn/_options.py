"""Every option that changes the math, its defaults and its checks: one home for each constant."""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from ._args import flag

DEFAULT_EPS = 1e-5
EPS_MODES = ("clamp", "add", "add_std")
METHODS = ("std", "robust", "minmax", "meanabs")
CAUSAL_METHODS = ("std", "minmax", "meanabs")
IQR_PER_STD = 1.349  # interquartile range of the standard normal distribution
EMPTY_VARIANCE = 1.0  # variance given to an instance with no observed step (unit scale)
# eps must be a normal float32 number: below it the eps floor is lost to rounding in float32
MIN_EPS = float(torch.finfo(torch.float32).tiny)
MAX_EPS = float(torch.finfo(torch.float64).max)
# the dtypes of data, outputs and affine weights (statistics: float32, or float64 for float64)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Options(NamedTuple):
    """Every option that changes the math; hashable, so it can key caches."""

    eps: float = DEFAULT_EPS
    eps_mode: str = "clamp"
    detach: bool = False
    subtract_last: bool = False
    method: str = "std"
    causal: bool = False


def check_options(options: Options) -> None:
    """Raise ``ValueError``/``TypeError`` with a short fact for an option no route can take."""
    eps = options.eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):  # int, float, numpy reals
        raise TypeError(f"eps must be a float, got {type(eps).__name__} {eps!r}")
    if not MIN_EPS <= eps <= MAX_EPS:  # an int past the float range too
        raise ValueError(
            f"eps must be a finite number >= {MIN_EPS:.3g} (the smallest normal float32), "
            f"got {eps!r}"
        )
    if options.eps_mode not in EPS_MODES:
        raise ValueError(f"eps_mode must be one of {EPS_MODES}, got {options.eps_mode!r}")
    if options.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {options.method!r}")
    for name in ("detach", "subtract_last", "causal"):
        flag(name, getattr(options, name))
    if options.causal and options.method not in CAUSAL_METHODS:
        raise ValueError(
            f"causal=True supports method in {CAUSAL_METHODS}, got method={options.method!r}"
        )
    if options.causal and options.subtract_last:
        raise ValueError(
            "causal=True with subtract_last=True would center every step on itself; choose one"
        )


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are float64 for float64 input and float32 for every other float."""
    return torch.float64 if dtype == torch.float64 else torch.float32
