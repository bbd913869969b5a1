"""Drop-in replacements for existing RevIN modules: change the import, keep the call sites.

Every class here is a thin shell over :func:`revin_fn.revin` (the formula is in its
docstring): ``mode="norm"`` calls it and keeps the returned ``reverse_fn`` on the module,
``mode="denorm"`` calls that ``reverse_fn``. Keeping the latest statistics on the module is
what the originals do and what their call sites expect (they read as the originals' attributes:
``mean``, ``stdev`` and ``last``; ``m`` and ``s`` on the S4 input half); new code should use
:class:`revin_fn.RevIN`, which hands the ``reverse_fn`` back instead. As in the originals,
``eps``, ``affine`` and ``subtract_last`` are read on every call.

- :class:`RevIN`: the original RevIN (Kim et al. 2022), PatchTST's copy; :class:`Normalize`
  is TSLib's (same, ``affine=False`` by default).
- :class:`ReversibleInstanceNorm`: kerasfactory's layer (statistics not detached).
- :class:`ReversibleInstanceNorm1dInput` / :class:`ReversibleInstanceNorm1dOutput`: the
  S4 / ESPnet pair (scale = population std + 1e-4).

The latest statistics a module keeps are per-batch state, not model state: a copy
(``copy.deepcopy``, ``torch.optim.swa_utils.AveragedModel``, EMA wrappers) and a pickled module
(``torch.save(model)``) start without them, like a new module (normalize a batch before
``denorm``). This is what lets models holding these modules be copied after a forward with
gradients, where the statistics are graph tensors that cannot be deep-copied.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import RevINError, _args
from ._options import DEFAULT_EPS, Options, check_options
from ._reference import Frame, guard_gamma, scale_from_variance
from ._reverse import ReverseFn, Variates, _check_tensor, _error, _renamed
from .functional import revin

__all__ = [
    "Normalize",
    "RevIN",
    "ReversibleInstanceNorm",
    "ReversibleInstanceNorm1dInput",
    "ReversibleInstanceNorm1dOutput",
]

S4_EPS = 1e-4  # added to the population std by the S4 / ESPnet pair


class RevIN(nn.Module):
    r"""The original RevIN: ``layer(x, mode="norm")`` then ``layer(y_hat, mode="denorm")``.

    Same constructor, parameter names (``affine_weight``, ``affine_bias``: state_dicts of the
    original load) and numerics as the original: layout (batch, time, features), statistics
    over time, :math:`\sigma = \sqrt{\mathrm{Var}[x] + \epsilon}` (``eps_mode="add"``),
    statistics detached, ``subtract_last`` centers on the last step. It is
    ``revin(x, affine_weight, affine_bias, pattern="b t v", eps_mode="add", detach=True)``.

    Intended differences from the original:

    - the weight is guarded in both directions, :math:`w' = \operatorname{sign}(w)
      \max(|w|, \epsilon)`, and denorm divides by :math:`w'`; the original divides by
      ``weight + eps * eps``, which is zero at ``weight = -eps**2``, and its forward uses the
      raw weight. Outputs agree whenever ``|weight| >= eps`` (denorm to a relative
      ``eps**2 / |weight|``).
    - ``denorm`` checks the output's shape: a one-variate forecast ``(B, H, 1)`` against
      ``num_features`` statistics raises instead of broadcasting to ``(B, H, num_features)``;
      pass ``variates=`` to say which variates it holds.
    - ``denorm`` before any ``norm`` and an unknown ``mode`` raise :class:`RevINError`.
    - with ``subtract_last=True`` the last step is detached too (the original lets the
      gradient flow through it); values are unchanged.
    - only 3-D input: the original also reduces over the middle axes of 4-D and larger input.

    As in the original, the affine output comes in ``promote_types(x.dtype, weight.dtype)``
    (float16 data through a float32 module gives float32), a weight inside ``(-eps, eps)``
    gets no gradient from the guard (its floor is a constant there), and without affine the
    feature count is not checked.

    Args:
        num_features: number of features (variates).
        eps: added to the variance (and floor of ``|affine_weight|``). Default: ``1e-5``.
        affine: learn ``affine_weight`` (ones) and ``affine_bias`` (zeros). Default: ``True``.
        subtract_last: center on the last step instead of the mean. Default: ``False``.
        non_norm: identity in both modes, returning a copy of ``x`` (ablation switch). Default:
            ``False``.

    Examples::

        >>> layer = RevIN(7)
        >>> x = torch.randn(32, 96, 7)
        >>> y = layer(x, mode="norm")
        >>> layer(torch.zeros(32, 24, 7), mode="denorm").shape
        torch.Size([32, 24, 7])
    """

    detach = True  # the original detaches the statistics
    # for the kept statistics' attributes, of the latest norm: the weight (a copy: the optimizer
    # moves the parameter) or, with statistics in the graph, the variance; eps; subtract_last
    # (class default: older pickles)
    _kept: tuple[Tensor | None, Tensor | None, float, bool] | None = None

    def __init__(
        self,
        num_features: int,
        eps: float = DEFAULT_EPS,
        affine: bool = True,
        subtract_last: bool = False,
        non_norm: bool = False,
    ) -> None:
        super().__init__()
        call = f"{type(self).__name__}(num_features={num_features!r})"
        try:
            num_features = _args.size("num_features", num_features)
            eps = _args.number("eps", eps)
            _args.flag("affine", affine)
            _args.flag("non_norm", non_norm)
            options = Options(eps, "add", self.detach, subtract_last)
            check_options(options)
        except (TypeError, ValueError) as error:
            raise _error(call, error) from None
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        self.subtract_last = subtract_last
        self.non_norm = non_norm
        if affine:
            self.affine_weight = nn.Parameter(torch.ones(num_features))
            self.affine_bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("affine_weight", None)
            self.register_parameter("affine_bias", None)
        self.reverse_fn: ReverseFn | None = None

    def forward(self, x: Tensor, mode: str = "norm", variates: Variates | None = None) -> Tensor:
        """``mode="norm"``: normalize ``x`` (B, T, F); ``"denorm"``: map ``x`` (B, H, F) back.

        ``variates`` (denorm only): which features ``x`` holds, as in ``reverse_fn``.
        """
        name = type(self).__name__
        if mode == "norm" and variates is not None:
            raise RevINError(
                f'{name}(x, mode="norm"): variates= is for mode="denorm" (the output\'s variates)'
            )
        if self.non_norm and mode in ("norm", "denorm"):  # a copy, as revin_fn.RevIN's
            return _checked(f'{name}(x, mode="{mode}")', x).clone()
        if mode == "norm":
            call = f'{name}(x, mode="norm")'
            _checked(call, x)
            if x.ndim != 3:
                raise RevINError(f"{call}: x has shape {tuple(x.shape)}, expected "
                                 "(batch, time, features)")  # fmt: skip
            if self.affine and x.shape[-1] != self.num_features:
                raise RevINError(
                    f"{call}: x has {x.shape[-1]} features (shape {tuple(x.shape)}), expected "
                    f"num_features={self.num_features}"
                )
            affine = (self.affine_weight, self.affine_bias) if self.affine else (None, None)
            # stdev from the gain, which carries the weight's graph: times the guarded weight
            # where the statistics are detached, else from the variance (kerasfactory's affine)
            variance = not self.detach and affine[0] is not None
            try:
                result = revin(  # type: ignore[call-overload]
                    x,
                    *affine,
                    pattern="b t v",
                    eps=self.eps,
                    eps_mode="add",
                    detach=self.detach,
                    subtract_last=self.subtract_last,
                    return_statistics=variance,
                )
            except RevINError as error:
                raise _renamed(call, error) from None
            y: Tensor = result[0]
            self.reverse_fn = result[1]
            weight = None if affine[0] is None or variance else affine[0].detach().clone()
            kept_variance = result[2].variance if variance else None
            self._kept = (weight, kept_variance, self.eps, self.subtract_last)
            if affine[0] is not None:  # the original's affine promotes: y * weight + bias
                y = y.to(torch.promote_types(y.dtype, affine[0].dtype))
            return y
        if mode == "denorm":
            return _denorm(f'{name}(x, mode="denorm")', self.reverse_fn, x, variates)
        raise RevINError(f'{name}(x, mode={mode!r}): mode must be "norm" or "denorm"')

    @property
    def mean(self) -> Tensor:
        """The latest batch's mean, (B, 1, F), as the original keeps it (not after a batch
        with ``subtract_last``, which keeps ``last`` instead)."""
        return self._location("mean", last=False)

    @property
    def last(self) -> Tensor:
        """The latest batch's last step, (B, 1, F), after a batch with ``subtract_last``."""
        return self._location("last", last=True)

    @property
    def stdev(self) -> Tensor:
        """The latest batch's ``sqrt(variance + eps)``, (B, 1, F): the scale that divided (to
        an ulp or two where it is the gain times that batch's guarded weight), with the
        original's gradients: none with detached statistics, only ``x``'s otherwise."""
        frame = _frame(self, "stdev")
        assert self._kept is not None  # set with the frame
        weight, variance, eps, _ = self._kept
        if variance is not None:
            return scale_from_variance(variance, eps, "add")
        if weight is None:
            return frame.gain.clone()
        return frame.gain.detach() * guard_gamma(weight.to(frame.gain.dtype), eps)

    def _location(self, name: str, last: bool) -> Tensor:
        frame = _frame(self, name)
        assert self._kept is not None  # set with the frame
        if self._kept[3] != last:  # as the original, which sets only one of the two
            raise AttributeError(f"{type(self).__name__}.{name}")
        return frame.loc.clone()  # a copy: writing into it does not move reverse_fn

    def __getstate__(self) -> dict[str, Any]:
        return _without_statistics(self)

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}, affine={self.affine}"
        if self.subtract_last:
            text += ", subtract_last=True"
        return text + (", non_norm=True" if self.non_norm else "")


class Normalize(RevIN):
    """TSLib's ``Normalize`` (``layers/StandardNorm.py``): :class:`RevIN` with ``affine=False``.

    Same numerics and intended differences as :class:`RevIN`.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = DEFAULT_EPS,
        affine: bool = False,
        subtract_last: bool = False,
        non_norm: bool = False,
    ) -> None:
        super().__init__(num_features, eps, affine, subtract_last, non_norm)


class ReversibleInstanceNorm(RevIN):
    r"""kerasfactory's ``ReversibleInstanceNorm``: :class:`RevIN` with its defaults.

    Differs from :class:`RevIN` as kerasfactory does: ``affine=False`` by default, the
    statistics are *not* detached (gradients flow through mean and std), and ``name=`` is
    accepted (kept as ``self.name``). Numerics:
    :math:`y = (x - \mu) / \sqrt{\mathrm{Var}[x] + \epsilon} \cdot w + b`.

    Intended differences from kerasfactory: as :class:`RevIN` (kerasfactory's denorm divides
    by the raw ``affine_weight``, so ``weight = 0`` gives inf/nan; here the guarded
    :math:`w'` is used in both directions), and ``eps`` must be positive (kerasfactory also
    allows 0, which divides by zero on a constant series).
    """

    detach = False  # kerasfactory keeps the statistics in the graph

    def __init__(
        self,
        num_features: int,
        eps: float = DEFAULT_EPS,
        affine: bool = False,
        subtract_last: bool = False,
        non_norm: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(num_features, eps, affine, subtract_last, non_norm)
        self.name = name

    def forward(
        self,
        x: Tensor,
        mode: str = "norm",
        variates: Variates | None = None,
        training: bool | None = None,
    ) -> Tensor:
        """As :meth:`RevIN.forward`; ``training`` is kerasfactory's Keras flag, accepted and
        unused (the layer computes the same in training and inference)."""
        if training is not None:
            try:
                _args.flag("training", training)
            except TypeError as error:
                raise _error(f'{type(self).__name__}(x, mode="{mode}")', error) from None
        return super().forward(x, mode, variates)


class ReversibleInstanceNorm1dInput(nn.Module):
    r"""The S4 / ESPnet input half: ``y = (x - \mu) / (\sigma_{pop} + 10^{-4})``.

    Layout (B, L, D), or (B, D, L) with ``transposed=True`` (any leading axes); statistics
    over L, not detached, no affine. It is ``revin(x, pattern="... t v", eps=1e-4,
    eps_mode="add_std")`` (``"... v t"`` when transposed). The paired
    :class:`ReversibleInstanceNorm1dOutput` reverses with the latest call's statistics.

    ``norm`` is, as in the original, an ``nn.InstanceNorm1d(d, affine=True)`` that is never
    called: its ``weight``/``bias`` are parameters (shared with the output half), so the
    original's state_dicts *and optimizer states* load. Like the original's they get no
    gradient: under DDP pass ``find_unused_parameters=True``, or freeze them with
    ``norm.requires_grad_(False)`` (the optimizer state still loads).

    Intended differences from the original: nothing is modified in place (the original's
    ``self.s += 1e-4`` changes a tensor autograd saved, so backward raises when ``x``
    requires grad); a constant series gets a zero gradient instead of nan.
    """

    def __init__(self, d: int, transposed: bool = False) -> None:
        super().__init__()
        try:
            d = _args.size("d", d)
            _args.flag("transposed", transposed)
        except (TypeError, ValueError) as error:
            raise _error(f"ReversibleInstanceNorm1dInput(d={d!r})", error) from None
        self.d = d
        self.transposed = transposed
        self.norm = nn.InstanceNorm1d(d, affine=True, track_running_stats=False)
        self.reverse_fn: ReverseFn | None = None

    @property
    def pattern(self) -> str:
        return "... v t" if self.transposed else "... t v"

    def forward(self, x: Tensor) -> Tensor:
        call = "ReversibleInstanceNorm1dInput(x)"
        axis, other = (-2, -1) if self.transposed else (-1, -2)
        # the original takes any width; a wrong one is a wrong axis (other inputs: revin says)
        if isinstance(x, Tensor) and x.ndim >= 2 and x.shape[axis] != self.d:
            hint = "" if x.shape[other] != self.d else (
                f"; pass transposed={not self.transposed} for "
                + ("(B, L, D)" if self.transposed else "(B, D, L)") + " input"
            )  # fmt: skip
            raise RevINError(
                f"{call}: x has {x.shape[axis]} features on axis {axis} (shape "
                f"{tuple(x.shape)}, transposed={self.transposed}), expected d={self.d}{hint}"
            )
        try:
            y, self.reverse_fn = revin(x, pattern=self.pattern, eps=S4_EPS, eps_mode="add_std")
        except RevINError as error:
            raise _renamed(call, error) from None
        return y

    @property
    def m(self) -> Tensor:
        """The latest call's mean, (..., D, 1) as the original keeps it (a copy)."""
        return self._in_original_layout(_frame(self, "m").loc)

    @property
    def s(self) -> Tensor:
        """The latest call's ``sqrt(variance) + 1e-4``, (..., D, 1): the scale that divided."""
        return self._in_original_layout(_frame(self, "s").gain)

    def _in_original_layout(self, value: Tensor) -> Tensor:
        return (value if self.transposed else value.transpose(-1, -2)).clone()

    def __getstate__(self) -> dict[str, Any]:
        return _without_statistics(self)

    def extra_repr(self) -> str:
        return f"{self.d}, transposed={self.transposed}"


class ReversibleInstanceNorm1dOutput(nn.Module):
    """The S4 / ESPnet output half: ``x_hat = y_hat * (sigma_pop + 1e-4) + mu``.

    Uses the statistics of the latest call of ``norm_input`` (same layout). Intended
    differences from the original: a ``y_hat`` whose variate axis does not match (a
    one-variate output against D statistics) raises instead of broadcasting to D variates;
    pass ``variates=`` to say which variates it holds. Calling it before ``norm_input`` raises
    :class:`RevINError`.
    """

    def __init__(self, norm_input: ReversibleInstanceNorm1dInput) -> None:
        super().__init__()
        if not isinstance(norm_input, ReversibleInstanceNorm1dInput):
            raise RevINError(
                "ReversibleInstanceNorm1dOutput(norm_input): expected a "
                f"ReversibleInstanceNorm1dInput, got {type(norm_input).__name__}"
            )
        self.transposed = norm_input.transposed
        self.norm_input = norm_input
        self.weight = norm_input.norm.weight  # the input half's parameters, as in the original
        self.bias = norm_input.norm.bias  # (unused by the math)

    def forward(self, x: Tensor, variates: Variates | None = None) -> Tensor:
        call = "ReversibleInstanceNorm1dOutput(x)"
        return _denorm(call, self.norm_input.reverse_fn, x, variates)


def _without_statistics(module: nn.Module) -> dict[str, Any]:
    """The module's state for copies and pickles, without the latest call's statistics."""
    state: dict[str, Any] = nn.Module.__getstate__(module)  # type: ignore[no-untyped-call]
    state["reverse_fn"] = None
    state.pop("_kept", None)
    return state


def _frame(module: RevIN | ReversibleInstanceNorm1dInput, name: str) -> Frame:
    """The latest batch's statistics, for the attribute ``name``; before any batch an
    ``AttributeError``, as the originals' (``hasattr`` is False, ``getattr`` takes a default;
    ``nn.Module`` reports the attribute as missing, whatever this one says)."""
    if module.reverse_fn is None:
        raise AttributeError(f"{type(module).__name__}.{name}")
    return module.reverse_fn._frame


def _denorm(
    call: str, reverse_fn: ReverseFn | None, y: Tensor, variates: Variates | None
) -> Tensor:
    if reverse_fn is None:
        raise RevINError(
            f"{call}: no statistics yet: normalize a batch first (the statistics of the "
            "latest normalization are used)"
        )
    try:
        return reverse_fn(y, variates)
    except RevINError as error:
        raise _renamed(call, error) from None


def _checked(call: str, x: object) -> Tensor:
    """``x`` if it is a floating tensor, else the error under ``call``'s name."""
    try:
        return _check_tensor("x", x)
    except (TypeError, ValueError) as error:
        raise _error(call, error) from None
