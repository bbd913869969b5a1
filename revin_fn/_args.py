"""Argument checks shared by the calls and the module shells (``RevIN``, ``Normalization``, compat).

Each raises a short fact (``TypeError`` for a wrong type, ``ValueError`` for a wrong value); the
call or constructor re-raises it once, naming itself.
"""

from __future__ import annotations

import numbers
import operator

import torch
from torch._subclasses.fake_tensor import is_fake

from ._patterns import Layout, parse


def size(name: str, value: object) -> int:
    """``value`` as a positive ``int``: Python and numpy integers (``operator.index``), no bools."""
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):  # numpy bools too
        raise TypeError(f"{name} must be a positive int, got {value!r} (a bool)")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must be a positive int, got {value!r} ({type(value).__name__})"
        ) from None
    if number < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return number


def flag(name: str, value: object, none: bool = False) -> None:
    """``value`` must be ``True`` or ``False`` (or ``None`` where ``none``): a string or a number
    passed by mistake would otherwise be read by its truth value."""
    kind = type(value)
    numpy_bool = kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")
    if not (isinstance(value, bool) or numpy_bool or (none and value is None)):
        expected = "True, False or None" if none else "True or False"
        raise TypeError(f"{name} must be {expected}, got {kind.__name__} {value!r}")


def dtype(name: str, value: object) -> None:
    """``value`` must be ``None`` or a floating-point ``torch.dtype`` (parameters and statistics
    are floats)."""
    if value is not None and not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise TypeError(
            f"{name} must be a floating-point torch.dtype such as torch.float32, got {value!r}"
        )


def number(name: str, value: object) -> float:
    """``value`` as a ``float``: Python and numpy reals, no bools (the range is checked later)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r} ({type(value).__name__})")
    try:
        return float(value)
    except OverflowError:  # an int past the float range
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None


def layout(pattern: object) -> Layout:
    """The pattern parsed for its explicit axes (``...`` standing for none): checks it once."""
    if not isinstance(pattern, str):
        raise TypeError(
            f'pattern must be a string such as "b v t", got {pattern!r} ({type(pattern).__name__})'
        )
    explicit = [name for name in pattern.replace("…", " ... ").split() if name != "..."]
    return parse(pattern, len(explicit))


def holds_values(*tensors: torch.Tensor) -> bool:
    """Whether the values of ``tensors`` can be read to check them: not on the meta device and
    not fake (``FakeTensorMode``, where a model is built for its shapes only)."""
    return not any(t.is_meta or is_fake(t) for t in tensors)
