"""The fast path (``_kernels``) against the careful path (``_core.normalize_careful``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from _helpers import assert_round_trip
from hypothesis import given, settings
from hypothesis import strategies as st

from revin_fn import _core, _kernels, revin
from revin_fn.functional import Statistics

LAYOUTS = {"b v t": (0, 1), "b t v": (0, 2), "b t": (0, None), "v b t": (1, 0), "b t v c": (0, 2)}


@contextlib.contextmanager
def careful_only() -> Iterator[None]:
    """Force the careful path: the fast path reports that it does not apply."""
    original = _kernels.try_normalize
    _kernels.try_normalize = lambda *args: None  # type: ignore[assignment]
    try:
        yield
    finally:
        _kernels.try_normalize = original


@contextlib.contextmanager
def count_careful_rows() -> Iterator[list[int]]:
    """Record how many instances each fallback to the careful path recomputes."""
    seen: list[int] = []
    original = _core.normalize_careful

    def spy(x: torch.Tensor, *args: object) -> object:
        seen.append(x.shape[0])
        return original(x, *args)  # type: ignore[arg-type]

    _core.normalize_careful = spy  # type: ignore[assignment]
    try:
        yield seen
    finally:
        _core.normalize_careful = original


@contextlib.contextmanager
def columns(enabled: bool) -> Iterator[None]:
    """Send layouts with time not last down the column path (True) or the small-tensor copy
    to the row kernel (False), whatever their size."""
    original = _kernels.COLUMNS_MIN
    _kernels.COLUMNS_MIN = 0 if enabled else 1 << 62
    try:
        yield
    finally:
        _kernels.COLUMNS_MIN = original


# "b t v" takes one of two routes by size: test both on small tensors
ROUTES = [
    pytest.param("b v t", False, id="bvt"),
    pytest.param("b t v", False, id="btv-copy"),
    pytest.param("b t v", True, id="btv-columns"),
]


def shape_for(pattern: str, batch: int, variates: int, length: int) -> tuple[int, ...]:
    sizes = {"b": batch, "v": variates, "t": length, "c": 2}
    return tuple(sizes[name] for name in pattern.split())


def both_paths(x: torch.Tensor, *args: torch.Tensor | None, **kwargs: object) -> tuple:
    with count_careful_rows() as rows:
        fast = revin(x, *args, return_statistics=True, **kwargs)  # type: ignore[call-overload]
    with careful_only():
        careful = revin(x, *args, return_statistics=True, **kwargs)  # type: ignore[call-overload]
    return fast, careful, rows


def assert_same(fast: tuple, careful: tuple, x: torch.Tensor, atol: float) -> None:
    (y, reverse_fn, stats), (y_ref, _, stats_ref) = fast, careful
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    torch.testing.assert_close(y.float(), y_ref.float(), atol=atol, rtol=1e-5)
    scale = stats_ref.variance.sqrt() + 1e-3
    ulp = torch.finfo(stats.mean.dtype).eps * stats_ref.mean.abs()  # the mean's own rounding
    assert ((stats.mean - stats_ref.mean).abs() <= atol * scale + 2 * ulp).all()
    torch.testing.assert_close(stats.variance, stats_ref.variance, atol=1e-6, rtol=1e-4)
    assert_round_trip(x, y, reverse_fn)  # the reverse inverts its own forward to rounding


@settings(max_examples=60, deadline=None)
@given(
    pattern=st.sampled_from(list(LAYOUTS)),
    batch=st.integers(1, 5),
    variates=st.integers(1, 6),
    length=st.integers(1, 40),
    offset=st.sampled_from([0.0, 3.0, 30.0, 1e4]),
    scale=st.sampled_from([1e-4, 1e-2, 1.0, 1e3]),
    eps_mode=st.sampled_from(["clamp", "add"]),
    detach=st.booleans(),
    affine=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    column_path=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fast_equals_careful(
    pattern: str,
    batch: int,
    variates: int,
    length: int,
    offset: float,
    scale: float,
    eps_mode: str,
    detach: bool,
    affine: bool,
    dtype: torch.dtype,
    column_path: bool,
    seed: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    shape = shape_for(pattern, batch, variates, length)
    x = (torch.randn(shape, generator=generator) * scale + offset).to(dtype)
    gamma = beta = None
    if affine and "v" in pattern:
        gamma = torch.randn(variates, generator=generator)
        gamma[0] = 0.0  # the guard: sign(0) = +1
        beta = torch.randn(variates, generator=generator)
    with columns(column_path):
        fast, careful, _ = both_paths(
            x, gamma, beta, pattern=pattern, eps_mode=eps_mode, detach=detach
        )
    assert_same(fast, careful, x, atol=2e-2 if dtype == torch.bfloat16 else 2e-5)


@pytest.mark.parametrize(("pattern", "column_path"), ROUTES)
def test_default_call_takes_the_fast_path(pattern: str, column_path: bool) -> None:
    x = (torch.randn(shape_for(pattern, 4, 3, 50)) * 5 + 20).requires_grad_()
    with columns(column_path), count_careful_rows() as rows:
        y, reverse_fn = revin(x, torch.ones(3), torch.zeros(3), pattern=pattern)
    assert rows == []
    assert ("ColumnNorm" in type(y.grad_fn).__name__) == column_path
    assert y.is_contiguous()  # the output keeps the layout of a contiguous input
    torch.testing.assert_close(reverse_fn(y), x)


@pytest.mark.parametrize(
    "gamma",
    [[0.5, 2.0, 1.0], [-0.5, -2.0, -1.0], [-0.5, 2.0, 1.0], [1e-7, 2.0, 1.0], [-1e-7, -2.0, -1.0],
     [0.0, -0.0, 3.0], [1e-5, 1.0, 1.0]],
)  # fmt: skip
@pytest.mark.parametrize(("pattern", "column_path"), ROUTES)
def test_gamma_of_every_sign_and_size(pattern: str, column_path: bool, gamma: list[float]) -> None:
    """The row path settles one-signed gammas by one reduction and sizes the rest one by one:
    every case guards exactly like the careful path, gradients included."""
    x = torch.randn(shape_for(pattern, 4, 3, 30), dtype=torch.float64) * 2 + 1
    weights = torch.randn(x.shape, dtype=torch.float64)
    results = []
    for context in (columns(column_path), careful_only()):
        leaves = [t.clone().requires_grad_() for t in (x, torch.tensor(gamma).double())]
        with context:
            y, reverse_fn = revin(*leaves, torch.zeros(3).double(), pattern=pattern)
            (reverse_fn(y.sin()) * weights + y * weights).sum().backward()
        results.append([y.detach(), reverse_fn(y).detach()] + [t.grad for t in leaves])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("eps_mode", ["clamp", "add"])
@pytest.mark.parametrize(("pattern", "column_path"), ROUTES)
def test_large_offsets_match_float64(pattern: str, column_path: bool, eps_mode: str) -> None:
    """Offsets up to 1e6 standard deviations: within 1e-5 of float64, like the careful path."""
    torch.manual_seed(0)
    shape = shape_for(pattern, 8, 6, 336)
    time = pattern.split().index("t")
    ratios = torch.tensor([0.0, 4.0, 15.0, 16.5, 100.0, 1e3, 1e5, 1e6])
    ratio_shape = [1] * 3
    ratio_shape[0] = 8
    x = torch.randn(shape, dtype=torch.float64) * 0.01
    x = (x + ratios.view(ratio_shape).double() * 0.01).float()
    with columns(column_path):
        y, _, stats = revin(x, pattern=pattern, eps_mode=eps_mode, return_statistics=True)
    wide = x.double()
    mean = wide.mean(time, keepdim=True)
    variance = wide.var(time, keepdim=True, unbiased=False)
    std = variance.clamp(min=1e-5).sqrt() if eps_mode == "clamp" else (variance + 1e-5).sqrt()
    assert ((y.double() - (wide - mean) / std).abs().amax()) < 1e-5
    ulp = torch.finfo(torch.float32).eps * mean.abs()  # the float32 mean holds no more
    assert ((stats.mean.double() - mean).abs() <= 1e-5 * std + ulp).all()
    torch.testing.assert_close(stats.variance.double(), variance, atol=0, rtol=1e-4)


def test_only_flagged_instances_are_recomputed() -> None:
    torch.manual_seed(1)
    x = torch.randn(6, 4, 64)
    x[0, 1] += 1e5  # offset 1e5 std
    x[2, 3] = 7.0  # constant series: variance 0 < eps
    x[3, 0] *= 1e-4  # variance below eps
    x[4, 2, 5] = float("nan")  # non-finite values
    gamma, beta = torch.randn(4), torch.randn(4)
    fast, careful, rows = both_paths(x, gamma, beta)
    assert rows == [4]  # one fallback call, for the four flagged instances only
    finite = ~x.isnan().any(-1, keepdim=True)
    for got, want in zip(fast[0:1] + fast[2][:2], careful[0:1] + careful[2][:2], strict=True):
        assert torch.equal(got.isnan(), want.isnan())
        torch.testing.assert_close(
            torch.where(finite, got, 0), torch.where(finite, want, 0), atol=2e-5, rtol=1e-5
        )


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("eps_mode", ["clamp", "add"])
@pytest.mark.parametrize(("pattern", "column_path"), ROUTES)
def test_gradcheck_through_forward_and_reverse(
    pattern: str, column_path: bool, eps_mode: str, detach: bool
) -> None:
    torch.manual_seed(2)
    x = torch.randn(shape_for(pattern, 3, 2, 7), dtype=torch.float64) * 2 + 1
    x[0, 0, 0] += 100.0  # one instance takes the careful path
    gamma = torch.tensor([0.7, -1.3], dtype=torch.float64)
    beta = torch.tensor([0.2, -0.4], dtype=torch.float64)
    weights = torch.randn(x.shape, dtype=torch.float64)

    def through(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> tuple:
        y, reverse_fn, stats = revin(
            x, gamma, beta, pattern=pattern, eps_mode=eps_mode, detach=detach,
            return_statistics=True,
        )  # fmt: skip
        return y, reverse_fn(y * weights), stats.mean, stats.variance

    # detached statistics are constants by definition: then only gamma and beta are checked
    # here; the x-gradient is compared with the careful path below
    x.requires_grad_(not detach)
    with columns(column_path):
        assert torch.autograd.gradcheck(through, (x, gamma.requires_grad_(), beta.requires_grad_()))


@pytest.mark.parametrize("column_path", [False, True])
@pytest.mark.parametrize("detach", [False, True])
def test_gradients_equal_careful_path_float32(detach: bool, column_path: bool) -> None:
    torch.manual_seed(3)
    x = torch.randn(4, 40, 5) * 3 + 2
    x[1, :, 2] = 5.0  # constant: careful path, finite gradients
    gamma, beta = torch.randn(5), torch.randn(5)
    weights = torch.randn(4, 40, 5)
    grads = []
    for context in (contextlib.nullcontext(), careful_only()):
        leaves = [t.clone().requires_grad_() for t in (x, gamma, beta)]
        with context, columns(column_path):
            y, reverse_fn = revin(*leaves, pattern="b t v", detach=detach)
            (reverse_fn(y.sin()) * weights + y * weights).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for got, want in zip(*grads, strict=True):
        assert got is not None and want is not None and got.isfinite().all()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("upstream", ["sum", "transposed"])
@pytest.mark.parametrize(("pattern", "column_path"), ROUTES)
def test_non_contiguous_upstream_gradients(pattern: str, column_path: bool, upstream: str) -> None:
    """``y.sum().backward()`` sends an expanded (stride 0) gradient, a transposed product a
    transposed one: the kernels' backward must read them by their strides."""
    torch.manual_seed(7)
    x = torch.randn(shape_for(pattern, 4, 3, 50), dtype=torch.float64) * 2 + 1
    gamma = torch.rand(3, dtype=torch.float64) + 0.5
    beta = torch.randn(3, dtype=torch.float64)
    weights = torch.randn(x.shape[::-1], dtype=torch.float64).permute(2, 1, 0)
    grads = []
    for context in (columns(column_path), careful_only()):
        leaves = [t.clone().requires_grad_() for t in (x, gamma, beta)]
        with context:
            y, _ = revin(*leaves, pattern=pattern)
        (y.sum() if upstream == "sum" else (y * weights).sum()).backward()
        grads.append([leaf.grad for leaf in leaves])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("detach", [False, True])
def test_shifted_pass_over_every_row_matches_the_careful_path(detach: bool) -> None:
    """Most rows far from 0 (offsets 50 to 1e3 std): one more kernel pass over all of them."""
    torch.manual_seed(4)
    x = torch.randn(6, 5, 48) + torch.logspace(1.7, 3, 6).view(6, 1, 1)
    x[2, 1] = 3.0  # constant: still redone by the careful path after the shifted pass
    gamma, beta = torch.randn(5), torch.randn(5)
    fast, careful, rows = both_paths(x, gamma, beta)  # no gradients: in the first pass's buffer
    assert rows == [1]
    assert_same(fast, careful, x, atol=2e-5)
    weights = torch.randn(6, 5, 48)
    results = []
    for context in (contextlib.nullcontext(), careful_only()):
        leaves = [t.clone().requires_grad_() for t in (x, gamma, beta)]
        with context:
            y, reverse_fn = revin(*leaves, detach=detach)
            (reverse_fn(y.sin()) * weights + y * weights).sum().backward()
        results.append([y.detach()] + [leaf.grad for leaf in leaves])
    for got, want in zip(*results, strict=True):
        assert got is not None and want is not None and got.isfinite().all()
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def saved_bytes(run: object) -> int:
    """Bytes autograd saves for backward while ``run()`` executes, each storage counted once."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()  # type: ignore[operator]
    return sum(storages.values())


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize(("pattern", "column_path"), ROUTES)
def test_backward_saves_at_most_two_inputs(pattern: str, column_path: bool, detach: bool) -> None:
    x = torch.randn(shape_for(pattern, 8, 16, 256), requires_grad=True)
    gamma = torch.ones(16, requires_grad=True)
    beta = torch.zeros(16, requires_grad=True)

    def forward_reverse() -> None:
        y, reverse_fn = revin(x, gamma, beta, pattern=pattern, detach=detach)
        reverse_fn(y).sum().backward()

    # forward saves the input once, reverse saves its input once; statistics are small
    with columns(column_path):
        assert saved_bytes(forward_reverse) <= 2.1 * x.numel() * x.element_size()


@pytest.mark.slow
def test_compile_fullgraph_matches_eager() -> None:
    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gamma = torch.nn.Parameter(torch.rand(3) + 0.5)
            self.beta = torch.nn.Parameter(torch.randn(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, reverse_fn = revin(x, self.gamma, self.beta)
            return reverse_fn(y[..., -4:] * 2)

    model = Model()
    x = torch.randn(2, 3, 16) * 4 + 1
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("pattern", "column_path"), ROUTES)
def test_asking_for_statistics_changes_nothing_else(pattern: str, column_path: bool) -> None:
    """Without return_statistics the row path skips the variance: y and the inverse are the
    same bit for bit, flagged instances included."""
    torch.manual_seed(8)
    x = torch.randn(shape_for(pattern, 5, 4, 40)) * 3 + 2
    x[0] += 1e4  # batch element 0 far from 0 (a second look), 1 constant (the careful path)
    x[1] = 7.0
    gamma, beta = torch.randn(4), torch.randn(4)
    y_hat = torch.randn(shape_for(pattern, 5, 4, 12))
    with columns(column_path):
        y, reverse_fn = revin(x, gamma, beta, pattern=pattern)
        y_stats, reverse_stats, stats = revin(
            x, gamma, beta, pattern=pattern, return_statistics=True
        )
    assert torch.equal(y, y_stats)
    assert torch.equal(reverse_fn(y_hat), reverse_stats(y_hat))
    one = y_hat.narrow(pattern.split().index("v"), 2, 1)  # a forecast of variate 2 alone
    assert torch.equal(reverse_fn(one, variates=[2]), reverse_stats(one, variates=[2]))
    assert stats.variance.shape == stats.mean.shape


def test_statistics_is_a_plain_namedtuple() -> None:
    _, _, stats = revin(torch.randn(2, 3, 8), return_statistics=True)
    assert type(stats) is Statistics and stats.mean.grad_fn is None


@pytest.mark.parametrize("pattern", ["b v t", "b t v"])
def test_reverse_kernels_agree_with_gradients(pattern: str, monkeypatch) -> None:
    """The reverse kernels (batch_norm for large outputs, multiply-add for small) agree."""
    torch.manual_seed(5)
    shape = shape_for(pattern, 3, 4, 24)
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 5).requires_grad_()
    gamma = torch.tensor([1.5, -0.5, 2.0, 0.7], dtype=torch.float64, requires_grad=True)
    beta = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y_hat = torch.randn(shape, dtype=torch.float64, requires_grad=True)

    def run(x, gamma, beta, y_hat):
        _, reverse_fn = revin(x, gamma, beta, pattern=pattern)
        return reverse_fn(y_hat)

    outputs = []
    for smallest in (0, 1 << 62):  # every output takes the batch_norm / the multiply-add
        monkeypatch.setattr(_kernels, "SCALE_SHIFT_MIN", smallest)
        outputs.append(run(x, gamma, beta, y_hat))
        assert torch.autograd.gradcheck(run, (x, gamma, beta, y_hat))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-15, atol=1e-15)
    big = torch.randn(32, 64, 48)
    _, reverse_fn = revin(big * 7 + 3, torch.rand(64) + 0.5, torch.randn(64))
    monkeypatch.setattr(_kernels, "SCALE_SHIFT_MIN", 0)
    torch.testing.assert_close(
        reverse_fn(big), reverse_fn._frame.offset + big * reverse_fn._frame.gain
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_reverse_kernels_agree(dtype: torch.dtype, monkeypatch) -> None:
    """Half-precision outputs: batch_norm with float32 factors rounds once, like the float32
    multiply-add followed by the cast."""
    torch.manual_seed(9)
    _, reverse_fn = revin(torch.randn(6, 5, 40) * 4 + 9, torch.rand(5) + 0.5, torch.randn(5))
    y_hat = torch.randn(6, 5, 24).to(dtype)
    outputs = []
    for smallest in (0, 1 << 62):
        monkeypatch.setattr(_kernels, "SCALE_SHIFT_MIN", smallest)
        outputs.append(reverse_fn(y_hat))
    assert outputs[0].dtype == outputs[1].dtype == dtype
    # both round a float32 result once (a fused multiply-add may move a tie by one unit)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize(("pattern", "column_path"), [*ROUTES, pytest.param("v b t", False)])
def test_strided_affine_vectors_equal_contiguous_ones(pattern: str, column_path: bool) -> None:
    """The kernels read their weights as contiguous vectors: a strided gamma must not leak."""
    torch.manual_seed(6)
    x = torch.randn(shape_for(pattern, 3, 4, 20)) * 2 + 1
    gamma, beta = torch.randn(8)[::2], torch.randn(12)[::3]
    with columns(column_path):
        y, _ = revin(x, gamma, beta, pattern=pattern)
        y_ref, _ = revin(x, gamma.contiguous(), beta.contiguous(), pattern=pattern)
    assert not gamma.is_contiguous()
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
