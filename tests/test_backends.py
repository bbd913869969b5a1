"""Every backend against the reference, route by route: values, statistics and gradients.

Routes are reached by their inputs (layout, size, offset, spread), never by patching module
globals, and each case asserts which route ran (``backends.record``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from _helpers import assert_round_trip
from hypothesis import given, settings
from hypothesis import strategies as st

from revin_fn import RevINError, backends, revin
from revin_fn._options import Options
from revin_fn.backends import Request
from revin_fn.backends._checks import OFFSET_LIMIT, SHIFTED, check_code


def _takes_cpu_eager(name: str) -> bool:
    request = Request("normalize", "cpu", torch.float32, None, Options(), False, "eager")
    return not backends._REGISTRY[name].not_supported_reasons(request)


FAST = [name for name in backends.names() if name != "reference" and _takes_cpu_eager(name)]


def shape_for(pattern: str, batch: int, variates: int, length: int) -> tuple[int, ...]:
    sizes = {"b": batch, "v": variates, "t": length, "c": 2}
    return tuple(sizes[name] for name in pattern.split())


# (route, pattern, shape as (batch, variates, length), offset, spread): inputs that take it
ROUTES = [
    ("rows", "b v t", (4, 3, 40), 0.0, 1.0),
    ("rows+shifted", "b v t", (4, 3, 40), 1e4, 1.0),
    ("rows+clamped", "b v t", (4, 3, 40), 0.0, 1e-4),
    ("rows+shifted+clamped", "b v t", (4, 3, 40), 5.0, 1e-4),
    ("moved rows", "b t v", (4, 3, 40), 0.0, 1.0),
    ("moved rows+shifted", "b t v", (4, 3, 40), -3e3, 0.5),
    ("columns", "b t v", (2, 1024, 40), 0.0, 1.0),
    ("columns+shifted", "b t v", (2, 1024, 40), 1e4, 1.0),
    ("rows", "c b v t", (2, 3, 17), 1.0, 2.0),  # weights repeat along a middle axis
    ("rows", "b v t", (2, 3, 4096), 0.0, 1.0),  # long rows: the backward sums with torch.sum
    ("moved rows", "b t v", (2, 3, 4096), 2.0, 1.0),
    # one or two instances take the offset and spread (the first is constant when the spread is
    # below 1e-3): only their rows are redone
    ("rows+shifted", "b v t", (16, 3, 40, 1), 1e4, 1.0),  # below 2**18 elements: none redone
    ("rows+shifted+redo", "b v t", (64, 4, 1024, 1), 1e4, 1.0),
    ("rows+shifted+clamped+redo", "b v t", (64, 4, 1024, 2), 5.0, 1e-4),
    ("moved rows+shifted+redo", "b t v", (64, 4, 1024, 1), -3e3, 0.5),
    ("rows+clamped+redo", "b v t", (512, 7, 160, 2), 0.0, 1e-4),  # the clamp alone: 2**19 up
    ("columns+shifted+redo", "b t v", (64, 16, 256, 1), 1e6, 1.0),
]
ROUTE_IDS = [f"{route}-{pattern.replace(' ', '')}" for route, pattern, *_ in ROUTES]


def expected_route(route: str, eps_mode: str, guarded: bool) -> str:
    """The route a case of ROUTES takes with ``eps_mode`` and, if ``guarded``, some |gamma|
    below eps (the row kernel then runs again with gamma' on every row: nothing is redone)."""
    if eps_mode == "add":  # no clamp: rows below eps need no rewriting
        route = route.replace("+clamped", "")
        if "+shifted" not in route:
            route = route.replace("+redo", "")
    if guarded and "rows" in route:
        route = route.replace("+redo", "") + "+guarded"
    return route


def make_input(
    pattern: str, sizes: tuple[int, ...], offset: float, spread: float, guarded: bool = True
):
    """``sizes``: (batch, variates, length) and optionally how many instances take ``offset``
    and ``spread`` (the others are standard normal); all of them by default."""
    batch, variates, length, *lone = sizes
    generator = torch.Generator().manual_seed(0)
    shape = shape_for(pattern, batch, variates, length)
    axis = pattern.split().index("b")
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    taking = x.narrow(axis, 0, lone[0] if lone else batch)
    taking.mul_(spread).add_(offset)
    if spread < 1e-3:  # near-constant windows also hold exactly constant ones
        taking.select(pattern.split().index("t"), 0).fill_(offset)
        x.narrow(axis, 0, 1).fill_(offset)
    gamma = torch.linspace(-1.5, 2.0, variates, dtype=torch.float64)
    if guarded:
        gamma[variates // 2] = 0.0  # guarded: sign(0) = +1
    beta = torch.linspace(-0.5, 0.5, variates, dtype=torch.float64)
    return x.float(), gamma.float(), beta.float()


def run(
    backend: str,
    x: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    x_grad: bool = True,
    **kw,
) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    """Values, statistics, reverse and gradients of one revin -> reverse_fn round (gradients
    for gamma and beta, and for x if ``x_grad``: data, as in training, takes none)."""
    x_, gamma_, beta_ = (None if t is None else t.detach().clone() for t in (x, gamma, beta))
    leaves = [t.requires_grad_() for t in (x_, gamma_, beta_) if t is not None and (t is not x_
              or x_grad)]  # fmt: skip
    with backends.use(backend), backends.record() as calls:
        y, reverse_fn, stats = revin(x_, gamma_, beta_, return_statistics=True, **kw)
        horizon = reverse_fn(torch.sin(y.detach()[..., :7]) if kw["pattern"].endswith("t")
                             else torch.sin(y.detach()))  # fmt: skip
        loss = (y * torch.cos(y.detach())).sum() + reverse_fn(y).pow(2).mean() + horizon.sum()
        grads = torch.autograd.grad(loss, leaves)
    out = {"y": y, "mean": stats.mean, "variance": stats.variance, "horizon": horizon}
    out.update({f"grad{i}": g for i, g in enumerate(grads)})
    return {k: v.detach() for k, v in out.items()}, calls


def assert_as_accurate_as_reference(fast: dict, ref: dict, truth: dict, condition: float) -> None:
    """Each output of the backend is within rounding of the reference's, and no further from
    the float64 reference than a few times the float32 reference is (relative to its size).

    ``condition``: the offset in spreads. Gradients through the reverse at an offset of k
    spreads carry float32 rounding of ``y`` amplified about k times (the gain's and the
    offset's terms cancel), so beyond 1000 their floor grows with k, for the reference too."""
    for key, exact in truth.items():
        size = exact.abs().max().clamp(min=1)
        error = ((fast[key] - exact).abs().max() / size).item()
        ref_error = ((ref[key] - exact).abs().max() / size).item()
        floor = 1e-6 * max(1.0, condition / 1e3) if key.startswith("grad") else 1e-6
        assert error <= 4 * ref_error + floor, f"{key}: {error:.2e} against {ref_error:.2e}"
    torch.testing.assert_close(fast["y"], ref["y"], atol=3e-5, rtol=1e-5)
    torch.testing.assert_close(fast["variance"], ref["variance"], atol=1e-9, rtol=2e-4)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize(
    ("affine", "x_grad", "guarded"),
    [
        ("both", True, True),
        ("both", True, False),
        ("both", False, True),
        ("both", False, False),
        ("none", True, False),
        ("beta", True, False),
        ("beta", False, False),
    ],
)
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("eps_mode", ["clamp", "add"])
@pytest.mark.parametrize(("route", "pattern", "sizes", "offset", "spread"), ROUTES, ids=ROUTE_IDS)
def test_route_equals_reference(backend, route, pattern, sizes, offset, spread, eps_mode, detach,
                                affine, x_grad, guarded):  # fmt: skip
    x, gamma, beta = make_input(pattern, sizes, offset, spread, guarded)
    if affine != "both":  # "beta": a bias without a gain
        gamma, beta = None, (beta if affine == "beta" else None)
    options = {"pattern": pattern, "eps_mode": eps_mode, "detach": detach, "x_grad": x_grad}
    fast, calls = run(backend, x, gamma, beta, **options)
    ref, ref_calls = run("reference", x, gamma, beta, **options)
    wide = [None if t is None else t.double() for t in (x, gamma, beta)]
    truth, _ = run("reference", *wide, **options)
    assert calls[0] == (backend, expected_route(route, eps_mode, guarded))
    assert ref_calls[0] == ("reference", "normalize")
    assert_as_accurate_as_reference(fast, ref, truth, abs(offset) / spread)


STATISTICS_CASES = [*ROUTES, ("rows+shifted+clamped", "b v t", "few ulps wide", 0.09, None)]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("x_grad", [False, True])
@pytest.mark.parametrize("eps_mode", ["clamp", "add"])
@pytest.mark.parametrize(("route", "pattern", "sizes", "offset", "spread"), STATISTICS_CASES,
                         ids=[*ROUTE_IDS, "few-ulps-wide"])  # fmt: skip
def test_asking_for_statistics_changes_nothing_else(backend, route, pattern, sizes, offset, spread,
                                                    eps_mode, x_grad):  # fmt: skip
    # a call without statistics skips what only they need (the row route's variance in clamp
    # mode): the route, the output, the reverse and every gradient stay the same, bit for bit
    if sizes == "few ulps wide":  # the offset check counts each row's own spreads
        x, gamma, beta = few_ulps_wide(offset)
    else:
        x, gamma, beta = make_input(pattern, sizes, offset, spread)
    results = []
    for statistics in (True, False):
        x_, gamma_, beta_ = (t.clone().requires_grad_() for t in (x, gamma, beta))
        x_.requires_grad_(x_grad)  # data, as in training, takes no gradient
        leaves = [gamma_, beta_, x_] if x_grad else [gamma_, beta_]
        with backends.use(backend), backends.record() as calls:
            y, reverse_fn, *_ = revin(x_, gamma_, beta_, pattern=pattern, eps_mode=eps_mode,
                                      return_statistics=statistics)  # fmt: skip
            back = reverse_fn(torch.sin(y))
            grads = torch.autograd.grad((y * y.detach().cos()).sum() + back.square().sum(), leaves)
        results.append(([t.detach() for t in (y, back, *grads)], calls))
    (with_statistics, calls), (without, calls_without) = results
    expected = expected_route(route, eps_mode, sizes != "few ulps wide")
    assert calls == calls_without and calls[0][1] == expected
    for a, b in zip(with_statistics, without, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("x_grad", [False, True])
@pytest.mark.parametrize("guarded", [False, True])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize(("pattern", "route"), [("b v t", "rows"), ("b t v", "moved rows")])
def test_constant_rows_far_from_zero_are_exact(backend, pattern, route, detach, guarded, x_grad):
    """Constant stretches, as in real series, among ordinary windows: the constant rows' output
    is beta exactly (they take the shifted pass: the kernel cannot tell them from rows a few
    ulps wide, whose output is not beta)."""
    x, gamma, beta = make_input(pattern, (4, 3, 40), 3.0, 1.0, guarded)
    axis = pattern.split().index("b")
    x.narrow(axis, 1, 1).fill_(1e3)  # a constant window, 1e3 / sqrt(eps) from 0
    x.narrow(axis, 2, 1).fill_(-250.5)
    options = {"pattern": pattern, "eps_mode": "clamp", "detach": detach, "x_grad": x_grad}
    fast, calls = run(backend, x, gamma, beta, **options)
    ref, _ = run("reference", x, gamma, beta, **options)
    truth, _ = run("reference", *(t.double() for t in (x, gamma, beta)), **options)
    assert calls[0] == (backend, route + "+shifted+clamped" + "+guarded" * guarded)
    assert_as_accurate_as_reference(fast, ref, truth, 3.0)  # the ordinary rows' offset
    view = beta.view(-1, 1) if pattern == "b v t" else beta
    for index in (1, 2):
        constant = fast["y"].narrow(axis, index, 1).squeeze(axis)
        assert torch.equal(constant, view.expand_as(constant))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize(
    ("pattern", "sizes", "level", "route"),
    [
        ("b t v", (2, 1024, 40), 1e8, "columns+shifted+centered"),
        ("b t v", (2, 1024, 40), 1e20, "columns+shifted+centered"),
        ("b t v", (2, 1024, 40), 1e30, "columns+shifted+overflow+centered"),
        ("b t v", (2, 1024, 40), -1e34, "columns+shifted+centered"),
        ("b v t", (2, 40, 1024), 1e20, "rows+shifted+clamped+overflow"),
        ("b v t", (2, 40, 1024), 1e30, "rows+shifted+clamped+overflow"),
    ],
)
@pytest.mark.parametrize("eps_mode", ["clamp", "add"])
def test_a_constant_window_far_from_zero_is_exact(backend, pattern, sizes, level, route,
                                                  eps_mode):  # fmt: skip
    """A constant window far from 0 is a few ulps of its level from 0 after the shift, so many
    of its sqrt(eps) spreads: its output is still beta, and its gradients through the output,
    a forecast and the statistics are the reference's. At 1e30 the squares of the ulps its
    first-pass mean is off by are past the float range, which takes the shifted pass too."""
    x = torch.randn(sizes, generator=torch.Generator().manual_seed(0))
    instance = (0, slice(None), 3) if pattern == "b t v" else (0, 3)
    x[instance] = level
    gamma, beta = torch.linspace(0.5, 1.5, 40), torch.linspace(-0.2, 0.2, 40)
    results, routes = {}, {}
    for name in (backend, "reference"):
        leaves = [t.clone().requires_grad_() for t in (x, gamma, beta)]
        with backends.use(name), backends.record() as calls:
            y, reverse_fn, stats = revin(*leaves, pattern=pattern, eps=1e-8, eps_mode=eps_mode,
                                         return_statistics=True)  # fmt: skip
            weights = torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view(y.shape)
            horizon = weights.narrow(pattern.split().index("t"), 0, 7)
            loss = (y * weights).sum() + (reverse_fn(horizon) * horizon).sum()
            loss = loss + stats.mean.sum() + stats.variance.sum() * 0.5
            grads = torch.autograd.grad(loss, leaves)
        results[name], routes[name] = (y.detach(), stats.mean, stats.variance, *grads), calls[0]
    assert routes[backend] == (
        backend,
        route.replace("+clamped", "+clamped" * (eps_mode == "clamp")),
    )
    fast, ref = results[backend], results["reference"]
    assert torch.equal(fast[0][instance], beta[3].expand_as(fast[0][instance]))
    for got, want in zip(fast, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("x_grad", [False, True])
@pytest.mark.parametrize(("pattern", "route"), [("b v t", "rows"), ("b t v", "moved rows")])
def test_add_mode_variances_far_below_eps_are_exact(backend, pattern, route, x_grad):
    """With eps_mode="add" the kernel's 1 / sqrt(variance + eps) holds a variance far below eps
    only to the ulps of eps; the statistics give it to its own rounding, never 0, so a loss on
    sqrt(variance) has a finite gradient."""
    x = torch.randn(64, 4, 96, generator=torch.Generator().manual_seed(0))
    x[3, 1] = x[3, 1] * 1e-4 + 1.0  # variance about 1e-8, eps 1e-3
    x[7, 2] = x[7, 2] * 1e-3
    x[5, 0] = x[5, 0] * 1e-6 + 2.0  # about 1e-12
    if pattern == "b t v":
        x = x.transpose(1, 2).contiguous()
    variances, grads = {}, {}
    for name, dtype in ((backend, torch.float32), ("reference", torch.float32),
                        ("reference", torch.float64)):  # fmt: skip
        leaf = x.to(dtype).requires_grad_(x_grad)
        with backends.use(name), backends.record() as calls:
            affine = torch.ones(4, dtype=dtype), torch.zeros(4, dtype=dtype)
            options = {"pattern": pattern, "eps": 1e-3, "eps_mode": "add"}
            *_, stats = revin(leaf, *affine, **options, return_statistics=True)
        if x_grad:
            (grads[name, dtype],) = torch.autograd.grad(stats.variance.sqrt().sum(), leaf)
        variances[name, dtype] = stats.variance.detach().double()
        if name == backend:
            assert calls[0] == (backend, route + "+shifted")  # 1e6 spreads from 0
    truth = variances["reference", torch.float64]
    error = ((variances[backend, torch.float32] - truth).abs() / truth).max().item()
    ref_error = ((variances["reference", torch.float32] - truth).abs() / truth).max().item()
    assert error <= 4 * ref_error + 1e-6, f"{error:.2e} against {ref_error:.2e}"
    if x_grad:
        assert grads[backend, torch.float32].isfinite().all()


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize(("pattern", "route"), [("b v t", "rows"), ("b t v", "moved rows")])
@pytest.mark.parametrize("eps", [1e-5, 1.0, 1e20, 1e30])
def test_clamp_mode_variances_are_exact_for_any_eps(backend, pattern, route, eps):
    """The variance read back from the kernel's 1 / std carries the kernel's floor: kept below
    eps and below 1, every variance of unit size comes back to its rounding."""
    x = torch.randn(8, 3, 64, generator=torch.Generator().manual_seed(0)) * 3
    if pattern == "b t v":
        x = x.transpose(1, 2).contiguous()
    with backends.use(backend), backends.record() as calls:
        *_, stats = revin(x, pattern=pattern, eps=eps, return_statistics=True)
    assert calls[0] == (backend, route + ("+clamped" if eps > 9 else ""))
    truth = x.double().var(pattern.split().index("t"), correction=0, keepdim=True)
    assert ((stats.variance.double() - truth).abs() / truth).max() < 1e-6


@pytest.mark.parametrize("backend", [*FAST, "reference"])
@pytest.mark.parametrize("pattern, shape", [("b v t", (4, 3, 336)), ("b t v", (4, 336, 3)),
                                            ("b t v", (8, 336, 32))])  # fmt: skip
@pytest.mark.parametrize("eps", [1e-5, 3e-5, 1e-8, 1.0])
@pytest.mark.parametrize("level", [2.5, -7.0, 1e4])
def test_a_constant_window_has_variance_exactly_zero(backend, pattern, shape, eps, level):
    """As on the reference: code that looks for flat windows with ``variance == 0`` finds
    them on every route (the native kernel's floor is a power of 4 for this)."""
    x = torch.randn(shape)
    flat = (slice(None), 1) if pattern == "b v t" else (slice(None), slice(None), 1)
    x[flat] = level
    with backends.use(backend):
        _, _, stats = revin(x, pattern=pattern, eps=eps, return_statistics=True)
    assert torch.equal(stats.variance[flat], torch.zeros_like(stats.variance[flat]))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize(
    ("values", "eps"),
    [
        ([1e4] * 39 + [1.0000001e4], 1e-5),  # one ulp wide, far from 0: the kernel's variance is 0
        ([4e-21, -4e-21] * 4, 1e-30),  # below the kernel's floor (the smallest normal float)
    ],
    ids=["one-ulp-wide", "below-the-floor"],
)
def test_rows_the_kernel_sees_as_constant_are_not_taken_for_constant(backend, values, eps):
    x = torch.tensor(values, dtype=torch.float32).view(1, 1, -1)
    truth = revin(x.double(), pattern="b v t", eps=eps)[0]
    with backends.use("reference"):
        ref = revin(x, pattern="b v t", eps=eps)[0]
    with backends.use(backend):
        fast = revin(x, pattern="b v t", eps=eps)[0]
    assert truth.abs().max() > 1e-6  # not beta (0): the rows are not constant
    error, ref_error = ((fast - truth).abs().max().item(), (ref - truth).abs().max().item())
    assert error <= 4 * ref_error + 1e-9, f"{error:.2e} against {ref_error:.2e}"


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize(
    ("pattern", "variates", "length", "near", "route"),
    [
        ("b v t", 4, 1024, 6, "rows+shifted+redo"),  # 24 near rows and 4 far: redone
        ("b v t", 4, 1024, 63, "rows+shifted"),  # every row past REDO_OFFSET: all shifted
        ("b t v", 16, 256, 4, "columns+shifted+redo"),
    ],
)
def test_rows_near_the_offset_limit_are_redone_with_the_far_ones(backend, pattern, variates,
                                                                 length, near, route):  # fmt: skip
    # rows 24 spreads from 0 (below OFFSET_LIMIT) are a few times less exact in x's and gamma's
    # gradients in a single pass; where another row takes a remedy they take it too
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape_for(pattern, 64, variates, length), generator=generator,
                    dtype=torch.float64)  # fmt: skip
    time = pattern.split().index("t")
    x = (x - x.mean(time, keepdim=True)) / x.std(time, keepdim=True, correction=0)
    x[1 : near + 1] = x[1 : near + 1] * 3.7 + 24 * 3.7
    x[0] += 1e5  # far from 0: the remedy
    gamma = torch.linspace(-1, 1, variates, dtype=torch.float64).float()
    beta = torch.linspace(-0.5, 0.5, variates, dtype=torch.float64).float()
    options = {"pattern": pattern, "eps_mode": "clamp", "detach": False, "x_grad": True}
    fast, calls = run(backend, x.float(), gamma, beta, **options)
    ref, _ = run("reference", x.float(), gamma, beta, **options)
    truth, _ = run("reference", x.float().double(), gamma.double(), beta.double(), **options)
    assert calls[0] == (backend, route)
    assert_as_accurate_as_reference(fast, ref, truth, 24.0)


def test_the_count_of_flagged_rows_is_exact_past_float32():
    flags = torch.ones(2**24 + 1, dtype=torch.bool)
    code, count = check_code((torch.tensor(40.0), OFFSET_LIMIT, SHIFTED, 1.0), flags=flags)
    assert (code, count) == (SHIFTED, 2**24 + 1)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("x_grad", [False, True])
@pytest.mark.parametrize(("offset", "route"), [(0.0, "rows"), (1e5, "rows+shifted")])
def test_long_rows_have_gradients_as_exact_as_the_reference(backend, offset, route, x_grad):
    """Rows of 2**18 steps: the gradients sum over each row exactly enough (the group-norm
    kernel's own running sums lose 10 to 50 times more, and the batch_norm reverse's too)."""
    x = torch.randn(1, 2, 2**18, generator=torch.Generator().manual_seed(0)) * 2 + offset
    gamma, beta = torch.tensor([1.3, -0.7]), torch.tensor([0.2, -0.1])
    options = {"pattern": "b v t", "x_grad": x_grad}
    fast, calls = run(backend, x, gamma, beta, **options)
    ref, _ = run("reference", x, gamma, beta, **options)
    truth, _ = run("reference", x.double(), gamma.double(), beta.double(), **options)
    assert calls[0] == (backend, route)
    assert calls[1:] == [(backend, "multiply-add")] * 2  # a horizon of 7, the full length
    assert_as_accurate_as_reference(fast, ref, truth, 1.0)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("x_grad", [False, True])
@pytest.mark.parametrize(("pattern", "route"), [("b v t", "rows"), ("b t v", "moved rows")])
def test_many_rows_per_variate_have_gradients_as_exact_as_the_reference(backend, pattern, route,
                                                                          x_grad):  # fmt: skip
    """2**15 rows share each weight: gamma's and beta's gradients sum over them exactly enough
    (the kernel's own running sums over the batch lose 20 times more)."""
    x = torch.randn(2**15, 1, 24, generator=torch.Generator().manual_seed(0)) * 2 + 3
    if pattern == "b t v":
        x = x.transpose(1, 2).contiguous()
    options = {"pattern": pattern, "x_grad": x_grad}
    fast, calls = run(backend, x, torch.tensor([1.3]), torch.tensor([0.2]), **options)
    ref, _ = run("reference", x, torch.tensor([1.3]), torch.tensor([0.2]), **options)
    truth, _ = run("reference", x.double(), torch.tensor([1.3]).double(),
                   torch.tensor([0.2]).double(), **options)  # fmt: skip
    assert calls[0] == (backend, route)
    assert_as_accurate_as_reference(fast, ref, truth, 1.0)


def few_ulps_wide(level: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of two rows: an ordinary one and one 2 ulps wide at ``level``, with unit affine."""
    x = torch.randn(2, 1, 336, generator=torch.Generator().manual_seed(0)) * 0.1
    x[1, 0] = level
    x[1, 0, 168] = torch.nextafter(torch.nextafter(torch.tensor(level), torch.tensor(1.0)),
                                   torch.tensor(1.0))  # fmt: skip
    return x, torch.tensor([1.0]), torch.tensor([0.0])


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("x_grad", [False, True])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("eps_mode", ["clamp", "add"])
@pytest.mark.parametrize("level", [0.003, 0.09])  # 1 and 28 sqrt(eps) from 0
def test_rows_a_few_ulps_wide_near_zero_have_exact_gradients(backend, level, eps_mode, detach,
                                                             x_grad):  # fmt: skip
    """Below eps and near 0 in units of sqrt(eps), but far from 0 in their own spreads: the
    backward's sums cancel at that offset, so such rows take the shifted pass too."""
    x, gamma, beta = few_ulps_wide(level)
    options = {"pattern": "b v t", "eps_mode": eps_mode, "detach": detach, "x_grad": x_grad}
    fast, calls = run(backend, x, gamma, beta, **options)
    ref, _ = run("reference", x, gamma, beta, **options)
    truth, _ = run("reference", x.double(), gamma.double(), beta.double(), **options)
    assert calls[0] == (backend, "rows+shifted" + "+clamped" * (eps_mode == "clamp"))
    assert_as_accurate_as_reference(fast, ref, truth, level / 1e-5**0.5)


def requires_grad_pattern(backend: str, x, gamma, beta, pattern: str, detach: bool) -> dict:
    with backends.use(backend), backends.record() as calls:
        y, reverse_fn, stats = revin(x, gamma, beta, pattern=pattern, detach=detach,
                                     return_statistics=True)  # fmt: skip
        plain = reverse_fn(torch.zeros_like(y).requires_grad_(False))
    flags = {"y": y, "mean": stats.mean, "variance": stats.variance, "reverse": plain}
    return {"route": calls[0][1], **{k: t.requires_grad for k, t in flags.items()}}


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("leaves", ["x", "gamma", "beta", "x gamma beta"])
@pytest.mark.parametrize(("route", "pattern", "sizes", "offset", "spread"), ROUTES, ids=ROUTE_IDS)
def test_outputs_take_gradients_where_the_reference_does(backend, route, pattern, sizes, offset,
                                                         spread, leaves, detach):  # fmt: skip
    """A statistic or a reverse that depends on no input taking a gradient takes none."""
    x, gamma, beta = make_input(pattern, sizes, offset, spread, guarded=False)
    inputs = {"x": x, "gamma": gamma, "beta": beta}
    for name in leaves.split():
        inputs[name].requires_grad_()
    fast = requires_grad_pattern(backend, x, gamma, beta, pattern, detach)
    ref = requires_grad_pattern("reference", x, gamma, beta, pattern, detach)
    assert fast.pop("route").startswith(route.split("+")[0])
    ref.pop("route")
    assert fast == ref


@settings(max_examples=40, deadline=None)
@given(
    pattern=st.sampled_from(["b v t", "b t v", "v t", "b c v t"]),
    batch=st.integers(1, 5),
    variates=st.integers(1, 6),
    length=st.integers(1, 40),
    offset=st.sampled_from([0.0, 3.0, 30.0, 1e4, -1e6]),
    spread=st.sampled_from([0.0, 1e-4, 3.1e-3, 1.0, 1e3]),
    eps_mode=st.sampled_from(["clamp", "add"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**16),
)
def test_every_backend_equals_reference_on_any_input(pattern, batch, variates, length, offset,
                                                     spread, eps_mode, dtype, seed):  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    shape = shape_for(pattern, batch, variates, length)
    wide = torch.randn(shape, generator=generator, dtype=torch.float64) * spread + offset
    if dtype == torch.float16:
        wide = wide.clamp(-6e4, 6e4)
    x = wide.to(dtype)
    gamma = torch.randn(variates, generator=generator)
    beta = torch.randn(variates, generator=generator)
    with backends.use("reference"):
        y_ref, _, s_ref = revin(x, gamma, beta, pattern=pattern, eps_mode=eps_mode,
                                return_statistics=True)  # fmt: skip
    for backend in FAST:
        with backends.use(backend):
            y, reverse_fn, s = revin(x, gamma, beta, pattern=pattern, eps_mode=eps_mode,
                                     return_statistics=True)  # fmt: skip
        half = dtype in (torch.float16, torch.bfloat16)
        atol = 2 * torch.finfo(dtype).eps * max(1.0, y_ref.abs().max().item()) if half else 3e-5
        torch.testing.assert_close(y.double(), y_ref.double(), atol=atol, rtol=1e-5)
        spread_ref = s_ref.variance.sqrt() + 1e-3
        ulp = torch.finfo(s.mean.dtype).eps * s_ref.mean.abs()
        assert ((s.mean - s_ref.mean).abs() <= 1e-5 * spread_ref + 2 * ulp).all()
        torch.testing.assert_close(s.variance, s_ref.variance, atol=1e-9, rtol=1e-4)
        assert_round_trip(x, y, reverse_fn)


@settings(max_examples=20, deadline=None)
@given(
    pattern=st.sampled_from(["b v t", "b t v"]),
    variates=st.sampled_from([4, 16]),
    far=st.integers(1, 12),
    offset=st.sampled_from([500.0, -1e4, 1e6, 0.0]),
    spread=st.sampled_from([0.0, 1e-4, 1.0]),
    eps_mode=st.sampled_from(["clamp", "add"]),
    seed=st.integers(0, 2**16),
)
def test_every_backend_equals_reference_where_a_few_instances_are_redone(
    pattern, variates, far, offset, spread, eps_mode, seed
):  # fmt: skip
    # 2**18 elements, ``far`` of the 64 * variates instances at ``offset`` with ``spread``
    generator = torch.Generator().manual_seed(seed)
    shape = shape_for(pattern, 64, variates, 2**12 // variates)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    instances = x.movedim(pattern.split().index("t"), -1)  # a view: (batch, variates, time)
    chosen = torch.randperm(64 * variates, generator=generator)[:far]
    for index in chosen.tolist():
        row = instances[index // variates, index % variates]
        row.copy_(row * spread + offset)
    x = x.float()
    gamma = torch.randn(variates, generator=generator) + 2.0
    beta = torch.randn(variates, generator=generator)
    options = {"pattern": pattern, "eps_mode": eps_mode, "return_statistics": True}
    with backends.use("reference"):
        y_ref, _, s_ref = revin(x, gamma, beta, **options)
    for backend in FAST:
        with backends.use(backend), backends.record() as calls:
            y, reverse_fn, s = revin(x, gamma, beta, **options)
        torch.testing.assert_close(y, y_ref, atol=3e-5, rtol=1e-5)
        spread_ref = s_ref.variance.sqrt() + 1e-3
        ulp = torch.finfo(s.mean.dtype).eps * s_ref.mean.abs()
        assert ((s.mean - s_ref.mean).abs() <= 1e-5 * spread_ref + 4 * ulp).all()
        torch.testing.assert_close(s.variance, s_ref.variance, atol=1e-9, rtol=1e-4)
        assert_round_trip(x, y, reverse_fn)
        if offset != 0.0 and far <= 8 * variates:  # at most 1/8 of the instances, far from 0
            assert calls[0][1].endswith("+redo"), calls


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize(("route", "pattern", "sizes", "offset", "spread"), ROUTES[:6],
                         ids=ROUTE_IDS[:6])  # fmt: skip
def test_gradgradcheck_through_forward_and_reverse(backend, route, pattern, sizes, offset, spread):
    x, gamma, beta = (t.double() for t in make_input(pattern, (2, 3, 9), offset, spread))
    gamma[1] = 0.3  # away from the guard's kink at 0, where finite differences cross it
    leaves = [t.requires_grad_() for t in (x, gamma, beta)]

    def loss(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        with backends.use(backend):
            y, reverse_fn = revin(x, gamma, beta, pattern=pattern)
            return reverse_fn(y.square()).sin().sum()

    assert torch.autograd.gradcheck(loss, leaves)
    assert torch.autograd.gradgradcheck(loss, leaves)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize(("route", "pattern", "sizes", "offset", "spread"), ROUTES, ids=ROUTE_IDS)
def test_double_backward_equals_reference(backend, route, pattern, sizes, offset, spread, detach):
    """Gradients taken with create_graph=True, and a Hessian-vector product through them."""
    x, gamma, beta = make_input(pattern, sizes, offset, spread)
    results = []
    for name, dtype in ((backend, torch.float32), ("reference", torch.float32),
                        ("reference", torch.float64)):  # fmt: skip
        leaves = [t.to(dtype).requires_grad_() for t in (x, gamma, beta)]
        with backends.use(name):
            y, reverse_fn = revin(*leaves, pattern=pattern, detach=detach)
            loss = reverse_fn(y.square()).sin().sum() + (y * y.detach().cos()).sum()
            grads = torch.autograd.grad(loss, leaves, create_graph=True)
            penalty = sum(g.square().sum() for g in grads)
            second = torch.autograd.grad(penalty, leaves)
        results.append({str(i): t.detach() for i, t in enumerate((*grads, *second))})
    fast, ref, truth = results
    for key, exact in truth.items():
        size = exact.abs().max().clamp(min=1)
        error = ((fast[key] - exact).abs().max() / size).item()
        ref_error = ((ref[key] - exact).abs().max() / size).item()
        assert error <= 4 * ref_error + 1e-6, f"{key}: {error:.2e} against {ref_error:.2e}"


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize(("route", "pattern", "sizes", "offset", "spread"), ROUTES, ids=ROUTE_IDS)
def test_batched_gradients_are_as_exact_as_one_at_a_time(
    backend, route, pattern, sizes, offset, spread
):
    """``autograd.grad(is_grads_batched=True)`` (what ``jacobian(vectorize=True)`` runs) on every
    route: the float64 reference's vector-Jacobian products, as closely as one backward per
    vector gets them."""
    # gamma away from 0: through gamma' = eps the gradients are float32 rounding times 1 / eps
    x, gamma, beta = make_input(pattern, sizes, offset, spread, guarded=False)

    def vjps(name: str, dtype: torch.dtype, batched: bool) -> list[torch.Tensor]:
        leaves = [t.to(dtype).requires_grad_() for t in (x, gamma, beta)]
        with backends.use(name), backends.record() as calls:
            y, reverse_fn, stats = revin(*leaves, pattern=pattern, return_statistics=True)
            outputs = (reverse_fn(y.sin()), stats.mean, stats.variance)
        if name == backend:
            assert calls[0] == (backend, expected_route(route, "clamp", False))
        vectors = [v.to(dtype) for v in vectors32]
        if batched:
            return list(torch.autograd.grad(outputs, leaves, vectors, is_grads_batched=True))
        each = [torch.autograd.grad(outputs, leaves, [v[k] for v in vectors], retain_graph=True)
                for k in range(2)]  # fmt: skip
        return [torch.stack(grads) for grads in zip(*each, strict=True)]

    generator = torch.Generator().manual_seed(1)
    stats_shape = list(x.shape)
    stats_shape[pattern.split().index("t")] = 1  # the mean's and the variance's
    vectors32 = [torch.randn(2, *shape, generator=generator)
                 for shape in (x.shape, stats_shape, stats_shape)]  # fmt: skip
    truth = vjps("reference", torch.float64, False)
    single, batched = vjps(backend, torch.float32, False), vjps(backend, torch.float32, True)
    for exact, one, many in zip(truth, single, batched, strict=True):
        size = exact.abs().max().clamp(min=1)
        error = ((many - exact).abs().max() / size).item()
        one_error = ((one - exact).abs().max() / size).item()
        assert error <= 4 * one_error + 1e-6 * max(1.0, offset / 1e3), (error, one_error)


def saved_bytes(run_once: Callable[[], None]) -> int:
    """Bytes autograd saves for backward while ``run_once()`` runs, each storage once."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run_once()
    return sum(storages.values())


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("pattern", ["b v t", "b t v"])
def test_backward_saves_at_most_two_inputs(backend: str, pattern: str, detach: bool) -> None:
    x = torch.randn(shape_for(pattern, 8, 128, 256), requires_grad=True)
    gamma = torch.ones(128, requires_grad=True)
    beta = torch.zeros(128, requires_grad=True)

    def forward_reverse() -> None:
        with backends.use(backend):
            y, reverse_fn = revin(x, gamma, beta, pattern=pattern, detach=detach)
            reverse_fn(y).sum().backward()

    # forward saves the input once, the reverse its input once; statistics are small
    assert saved_bytes(forward_reverse) <= 2.1 * x.numel() * x.element_size()


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("upstream", ["sum", "transposed"])
@pytest.mark.parametrize(("route", "pattern", "sizes", "offset", "spread"), ROUTES, ids=ROUTE_IDS)
def test_non_contiguous_upstream_gradients(backend, route, pattern, sizes, offset, spread,
                                           upstream):  # fmt: skip
    x, gamma, beta = make_input(pattern, sizes, offset, spread)
    grads = []
    for name in (backend, "reference"):
        leaf = x.clone().requires_grad_()
        with backends.use(name):
            y, _ = revin(leaf, gamma, beta, pattern=pattern)
        if upstream == "sum":
            y.sum().backward()  # an expanded, stride-0 gradient
        else:  # a gradient laid out in reverse axis order
            generator = torch.Generator().manual_seed(1)
            grad = torch.randn(y.shape[::-1], generator=generator)
            y.backward(grad.permute(*reversed(range(y.ndim))))
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(4, 3, 40), (8, 64, 1024), (4, 40, 3)])
def test_reverse_kernels_agree_with_the_reference(shape: tuple[int, int, int]) -> None:
    pattern = "b v t" if shape[1] < shape[2] else "b t v"
    x = torch.randn(shape) * 3 + 10
    y, reverse_fn = revin(x, torch.rand(shape[1] if pattern == "b v t" else 3) + 0.5,
                          pattern=pattern)  # fmt: skip
    for dtype in (torch.float32, torch.bfloat16):
        outputs = {}
        for backend in [*FAST, "reference"]:
            with backends.use(backend), backends.record() as calls:
                outputs[backend] = reverse_fn(y.to(dtype))
            assert calls[0][0] == backend
        for backend in FAST:
            torch.testing.assert_close(outputs[backend], outputs["reference"], atol=1e-5, rtol=0)


def test_native_reverse_routes_by_size() -> None:
    routes = []
    for shape in [(4, 3, 40), (8, 64, 1024)]:
        y, reverse_fn = revin(torch.randn(shape))
        with backends.record() as calls:
            reverse_fn(y)
        routes.append(calls[0])
    assert routes == [("native", "multiply-add"), ("native", "batch_norm")]


def test_forcing_a_backend_that_cannot_take_the_call_lists_why() -> None:
    x = torch.randn(4, 3, 16)
    with backends.use("native"), pytest.raises(RevINError) as raised:
        revin(x, mask=x > 0, method="robust", causal=False, eps_mode="add_std")
    message = str(raised.value)
    assert message.startswith('revin(x): backend "native"')
    assert 'method "robust" (supports std)' in message
    assert 'eps_mode "add_std"' in message and "a mask (supports none)" in message
    bogus = r"backends.use\('bogus'\): no backend 'bogus'"
    with pytest.raises(RevINError, match=bogus), backends.use("bogus"):
        pass


def test_automatic_choice_sends_what_the_native_backend_cannot_take_to_the_reference() -> None:
    x = torch.randn(4, 3, 16)
    with backends.record() as calls:
        revin(x)
        revin(x, mask=x > 0)
        revin(x, method="minmax")
        revin(x, subtract_last=True)
        revin(x, eps_mode="add_std")
    assert [backend for backend, _ in calls] == ["native"] + ["reference"] * 4
    assert backends.current() is None
    with backends.use("reference"):
        assert backends.current() == "reference"


def test_native_time_not_last_route_by_size_and_width() -> None:
    def route(shape: tuple[int, int, int], grad: bool) -> str:
        x = torch.randn(shape, requires_grad=grad)
        with backends.record() as calls:
            revin(x, pattern="b t v")
        return calls[0][1]

    assert route((32, 96, 7), grad=True) == "moved rows"  # small: copies cost less
    assert route((32, 336, 7), grad=True) == "moved rows"  # narrow
    assert route((32, 336, 16), grad=False) == "columns"
    assert route((32, 336, 16), grad=True) == "columns"


def test_native_leaves_clamp_with_an_eps_near_the_smallest_normal_to_the_reference():
    """With eps near float32's smallest normal, the row kernel's variance floor would be that
    number, no longer negligible next to eps: 29% off at std 1.1e-19 (eps 1.2e-38)."""
    x = torch.randn(4, 3, 64, dtype=torch.float64) * 1.1e-19
    eps = torch.finfo(torch.float32).tiny
    exact = (x - x.mean(-1, keepdim=True)) / x.var(-1, correction=0, keepdim=True).clamp(
        min=eps
    ).sqrt()
    with backends.record() as routes:
        y, _ = revin(x.float(), eps=eps)
    assert routes == [("reference", "normalize")]
    assert float((y.double() - exact).abs().max()) < 1e-6 * float(exact.abs().max())
    with backends.use("native"), pytest.raises(RevINError, match=r"eps 1\.17549e-38 with eps_m"):
        revin(x.float(), eps=eps)
    with backends.record() as routes:  # the floor negligible: native
        revin(x.float(), eps=1e-30)
    assert routes[0][0] == "native"


@pytest.mark.parametrize("pattern", ["b v t", "b t v"])
def test_inference_tensors_with_learned_affine(pattern):
    """Data and outputs made under inference_mode, with gamma and beta that learn: autograd
    cannot save an inference tensor, so the seam hands the backends a copy (rows and columns
    routes; the reverse and the quantiles too)."""
    shape = (4, 64, 400) if pattern == "b v t" else (4, 400, 64)  # columns: 2**16 elements
    with torch.inference_mode():
        x = torch.randn(shape) * 2 + 5
        y_hat = torch.randn(shape)
    gamma, beta = torch.full((64,), 1.5, requires_grad=True), torch.zeros(64, requires_grad=True)
    grads = []
    for name in ("native", "reference"):
        with backends.use(name), backends.record() as routes:
            y, reverse_fn = revin(x, gamma, beta, pattern=pattern)
            loss = (reverse_fn(y_hat) ** 2).mean() + y.square().mean()
            loss = loss + reverse_fn(y_hat, shift=False).mean()  # a scale-like output
            loss = loss + reverse_fn.quantiles(y_hat.unsqueeze(-1)).mean()
            grads.append(torch.autograd.grad(loss, (gamma, beta)))
        assert routes[0][1] == ("rows" if pattern == "b v t" else "columns") or name != "native"
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_an_inference_mask_with_learned_affine():
    with torch.inference_mode():
        x = torch.randn(2, 3, 16)
        observed = torch.rand(2, 3, 16) > 0.2
    gamma = torch.ones(3, requires_grad=True)
    y, _ = revin(x, gamma, mask=observed)  # the reference, which saves the mask
    (grad,) = torch.autograd.grad(y.square().sum(), gamma)
    want = revin(x.clone(), gamma, mask=observed.clone())[0]
    torch.testing.assert_close(grad, torch.autograd.grad(want.square().sum(), gamma)[0])
