"""The default call under every PyTorch transform and mode, and its host reads.

Each mode other than plain eager must reach the reference (no value read, one path), and give
what eager gives.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from torch._dynamo.testing import CompileCounter
from torch._subclasses.fake_tensor import FakeTensorMode

import revin_fn
from revin_fn import RevIN, backends, revin
from revin_fn._host_reads import HostReads

X = torch.randn(8, 3, 24) * 4 + 10
GAMMA = torch.tensor([1.5, -0.5, 0.0])
BETA = torch.tensor([0.1, 0.2, -0.3])


def forecast(x: torch.Tensor, gamma: torch.Tensor | None = GAMMA, beta: torch.Tensor | None = BETA):
    y, reverse_fn = revin(x, gamma, beta)
    return reverse_fn(y.flip(-1) * 0.5)


@pytest.mark.parametrize("pattern", ["b v t", "b t v"])
@pytest.mark.parametrize("offset", [0.0, 1e5])  # the second takes the shifted pass
@pytest.mark.parametrize("spread", [1.0, 1e-4])  # the second needs the eps clamp
@pytest.mark.parametrize("x_grad", [True, False])  # data, as in training, takes no gradient
@pytest.mark.parametrize("instances", [8, 1])  # those taking offset and spread; 1: rows redone
def test_host_reads_per_forward_reverse_backward(
    pattern: str, offset: float, spread: float, x_grad: bool, instances: int
):
    length = 24 if instances > 1 else 1000  # redone from 2**18 elements
    batch = 8 if instances > 1 else 88
    shape = (batch, 3, length) if pattern == "b v t" else (batch, length, 3)
    x = torch.randn(shape)
    x[:instances] = x[:instances] * spread + offset
    x.requires_grad_(x_grad)
    gamma, beta = GAMMA.clone(), BETA.clone().requires_grad_()
    if instances == 1:  # no |gamma| below eps (the guard's second pass would redo every row)
        gamma[2] = 0.7
    gamma.requires_grad_()
    with HostReads() as forward, backends.record() as calls:
        y, reverse_fn = revin(x, gamma, beta, pattern=pattern)
    assert calls[0][1].endswith("+redo") == (instances == 1 and offset > 0)
    one = y.narrow(pattern.split().index("v"), 2, 1)
    with HostReads() as reverse:
        out = reverse_fn(y) + reverse_fn(one, variates=[2]).sum() + reverse_fn(one, variates=2)
        reverse_fn(one, variates=torch.tensor([2]))
        reverse_fn(one, variates=[False, False, True])
    with HostReads() as backward:
        out.square().sum().backward()
    assert (forward.count, reverse.count, backward.count) == (1, 0, 0)


def test_the_reference_reads_no_value() -> None:
    x = X.clone().requires_grad_()
    with backends.use("reference"), HostReads() as reads:
        forecast(x).sum().backward()
        revin(x, mask=x > 10, method="robust")[0].sum().backward()
        revin(x, causal=True)[0].sum().backward()
    assert reads.count == 0


def test_compile_fullgraph_dynamic_is_one_graph_for_any_batch() -> None:
    counter = CompileCounter()
    compiled = torch.compile(forecast, backend=counter, fullgraph=True, dynamic=True)
    for batch in (2, 37, 100_000):
        x = torch.randn(batch, 3, 24) * 4 + 10
        torch.testing.assert_close(compiled(x), forecast(x), atol=1e-4, rtol=1e-5)
    assert counter.frame_count == 1


def test_compile_dynamic_variate_slices_are_one_graph_for_any_variate_count() -> None:
    def forecast_two(x: torch.Tensor) -> torch.Tensor:
        y, reverse_fn = revin(x)
        return reverse_fn(y[:, 1:3], variates=slice(1, 3))

    counter = CompileCounter()
    compiled = torch.compile(forecast_two, backend=counter, fullgraph=True, dynamic=True)
    for variates in (4, 5, 6, 9):
        x = torch.randn(2, variates, 24) * 4 + 10
        torch.testing.assert_close(compiled(x), x[:, 1:3], atol=1e-4, rtol=1e-5)
    assert counter.frame_count == 1


def test_compile_dynamic_is_one_graph_for_any_length_even_below_the_variate_count() -> None:
    """The default pattern's and the module's swapped-axes warnings compare the time length
    with the variate count: while compiling that comparison must not become a guard."""
    module = RevIN(affine=False, pattern="b v t")  # no num_variates: the module warns too

    def plain(x: torch.Tensor) -> torch.Tensor:
        return forecast(x, None, None)

    def layer(x: torch.Tensor) -> torch.Tensor:
        y, reverse_fn = module(x)
        return reverse_fn(y * 0.5)

    for function in (plain, layer):
        counter = CompileCounter()
        compiled = torch.compile(function, backend=counter, fullgraph=True, dynamic=True)
        for length in (24, 48, 2, 5):
            x = torch.randn(2, 7, length) * 4 + 10
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # eager warns below 7 steps
                want = function(x)
            torch.testing.assert_close(compiled(x), want, atol=1e-4, rtol=1e-5)
        assert counter.frame_count == 1, function.__name__


def test_export_with_a_dynamic_length() -> None:
    class Model(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return forecast(x, None, None)

    length = torch.export.Dim("length", min=2, max=10_000)
    program = torch.export.export(Model(), (X,), dynamic_shapes={"x": {2: length}})
    for size in (2, 50, 5000):
        x = torch.randn(8, 3, size) * 1e-3 + 5  # quiet data: the eps floor applies
        torch.testing.assert_close(program.module()(x), forecast(x, None, None), atol=1e-4,
                                   rtol=1e-5)  # fmt: skip


def test_vmap_over_the_native_backward() -> None:
    """``torch.func.vmap`` over ``autograd.grad`` of an eager forward (native rows with the eps
    rescale): batched vectors reach the fused backward, which gives way to the formula."""
    x = (torch.randn(4, 3, 40) * 1e-4 + 5).requires_grad_()
    with backends.record() as calls:
        y, reverse_fn = revin(x)
        out = reverse_fn(y.sin())
    assert calls[0] == ("native", "rows+shifted+clamped")
    vectors = torch.randn(2, *x.shape)
    got = torch.func.vmap(lambda v: torch.autograd.grad(out, x, v, retain_graph=True)[0])(vectors)
    for k in range(2):
        torch.testing.assert_close(
            got[k], torch.autograd.grad(out, x, vectors[k], retain_graph=True)[0]
        )


@pytest.mark.parametrize(("shape", "pattern"), [((4, 3, 40), "b v t"), ((2, 1024, 40), "b t v")])
def test_the_native_backward_traces_under_compiled_autograd(shape, pattern) -> None:
    """An eager forward (native rows, native columns) whose backward compiled autograd traces
    in one graph: the fused backward's choice of formula must not break it."""
    x = (torch.randn(shape) * 2 + 1).requires_grad_()
    with backends.record() as calls:
        y, reverse_fn = revin(x, pattern=pattern)
        loss = reverse_fn(y.sin()).square().sum()
    assert calls[0][0] == "native"
    (want,) = torch.autograd.grad(loss, x, retain_graph=True)
    compiler = torch.compile(backend="eager", fullgraph=True)
    with torch._dynamo.compiled_autograd._enable(compiler):
        loss.backward()
    torch.testing.assert_close(x.grad, want)


@pytest.mark.slow
def test_compile_with_inductor_matches_eager() -> None:
    compiled = torch.compile(forecast, fullgraph=True)
    torch.testing.assert_close(compiled(X), forecast(X), atol=1e-4, rtol=1e-5)


def test_export_with_a_dynamic_batch() -> None:
    class Model(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return forecast(x)

    batch = torch.export.Dim("batch", min=2, max=100_000)
    program = torch.export.export(Model(), (X,), dynamic_shapes={"x": {0: batch}})
    for size in (2, 50, 5000):
        x = torch.randn(size, 3, 24) * 1e-3 + 5  # quiet data: the eps floor applies
        torch.testing.assert_close(program.module()(x), forecast(x), atol=1e-4, rtol=1e-5)


def test_onnx_export_with_a_dynamic_batch(tmp_path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")

    class Model(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return forecast(x)

    batch = torch.export.Dim("batch", min=2, max=100_000)
    torch.onnx.export(Model(), (X,), tmp_path / "revin.onnx", dynamo=True,
                      dynamic_shapes={"x": {0: batch}})  # fmt: skip
    assert (tmp_path / "revin.onnx").stat().st_size > 0


class _Doubling(torch.nn.Module):
    """A model holding the module: normalize, double, reverse."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = RevIN(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, reverse_fn = self.norm(x)
        return reverse_fn(y * 2)


def test_jit_trace_is_valid_for_other_inputs() -> None:
    torch.jit.trace(forecast, (X,))  # an earlier trace: the filters it leaves are overridden
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # ahead of every filter there was
        torch.jit.trace(lambda x: x * 2 if bool(x.sum() > -1e9) else x, (X,))  # the caller's
        traced = torch.jit.trace(forecast, (X,))
        model = _Doubling()
        module = torch.jit.trace(model, (X,))
    for x in (torch.randn(8, 3, 24) * 1e-3, torch.randn(8, 3, 24) + 1e6, X * 2):
        torch.testing.assert_close(traced(x), forecast(x), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(module(x), model(x), atol=1e-4, rtol=1e-5)
    # the shape checks are constants of the trace on purpose: no TracerWarning from them,
    # while the caller's are kept
    tracer = [w for w in caught if "Tracer" in type(w.message).__name__]
    package = os.path.dirname(revin_fn.__file__) + os.sep  # not a checkout named revin_fn-...
    ours = [w for w in tracer if w.filename.startswith(package)]
    assert not ours, [f"{w.filename}:{w.lineno}" for w in ours]
    assert any(w.filename == __file__ for w in tracer)


def test_torch_func_transforms_equal_autograd() -> None:
    def loss(x: torch.Tensor) -> torch.Tensor:
        return forecast(x).sin().sum()

    x = X.double()
    leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(loss(leaf), leaf)
    torch.testing.assert_close(torch.func.grad(loss)(x), expected)
    row = torch.func.jacrev(lambda v: forecast(v).sum(-1))(x[:1])
    assert row.shape == (1, 3, 1, 3, 24)
    tangent = torch.randn_like(x)
    _, jvp = torch.func.jvp(lambda v: forecast(v), (x,), (tangent,))
    with forward_ad.dual_level():
        dual = forecast(forward_ad.make_dual(x, tangent))
        torch.testing.assert_close(forward_ad.unpack_dual(dual).tangent, jvp)
    mapped = torch.func.vmap(lambda v: forecast(v.unsqueeze(0)).squeeze(0))(x)
    torch.testing.assert_close(mapped, forecast(x))


def test_gradgradcheck_on_the_default_path() -> None:
    x = (torch.randn(3, 3, 10, dtype=torch.float64) * 2 + 1).requires_grad_()
    gamma = torch.tensor([1.5, -0.7, 0.4], dtype=torch.float64, requires_grad=True)
    beta = torch.tensor([0.1, 0.2, 0.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda *a: forecast(*a).square(), (x, gamma, beta))


def test_fake_and_meta_tensors() -> None:
    with FakeTensorMode() as mode:
        y = forecast(*(mode.from_tensor(t) for t in (X, GAMMA, BETA)))
    assert y.shape == X.shape
    y = forecast(X.to("meta"), GAMMA.to("meta"), BETA.to("meta"))
    assert y.shape == X.shape and y.device.type == "meta"


def test_every_mode_reaches_the_reference() -> None:
    routes: dict[str, list[str]] = {}
    with backends.record() as calls:
        torch.jit.trace(forecast, (X,), check_trace=False)  # the check runs eagerly
    routes["tracing"] = [name for name, _ in calls]
    with backends.record() as calls:
        torch.func.grad(lambda v: forecast(v).sum())(X)
    routes["functorch"] = [name for name, _ in calls]
    with backends.record() as calls, FakeTensorMode() as mode:
        forecast(*(mode.from_tensor(t) for t in (X, GAMMA, BETA)))
    routes["fake"] = [name for name, _ in calls]
    with backends.record() as calls, forward_ad.dual_level():
        forecast(forward_ad.make_dual(X, torch.ones_like(X)))
    routes["forward_ad"] = [name for name, _ in calls]
    assert routes == {mode: ["reference", "reference"] for mode in routes}
    with backends.record() as calls:
        forecast(X)
    assert [name for name, _ in calls] == ["native", "native"]


def test_autocast_outputs_come_back_in_the_input_dtype() -> None:
    model = torch.nn.Linear(24, 24)
    x = torch.randn(8, 3, 24) * 1e5 + 3e5
    y, reverse_fn = revin(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reverse_fn(model(y))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reverse_fn(model(y)), atol=0.02 * 1e5, rtol=0)


@pytest.mark.parametrize("form", ["list", "slice"])
def test_variates_from_a_symbolic_size_compile_in_one_graph(form):
    """``variates=[N - 1]`` with ``N = x.shape[-1]`` (TimeXer's "MS" head) under
    ``dynamic=True``: N is a SymInt, which has no dtype to look up. One graph over batch
    sizes; over variate counts too for the list (dynamo fixes the fields of a slice itself)."""

    def step(x):
        y, reverse_fn = revin(x, pattern="b t v", eps_mode="add")
        n = x.shape[-1]
        variates = [n - 1] if form == "list" else slice(n - 1, n)
        return reverse_fn(y[:, :, -1:] * 2 + 1, variates=variates)

    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True, dynamic=True)
    shapes = [(4, 24, 7), (9, 24, 7)] + ([(4, 24, 5), (4, 24, 6)] if form == "list" else [])
    for shape in shapes:
        x = torch.randn(shape) * 3 + 10
        torch.testing.assert_close(compiled(x), step(x))
    assert counter.frame_count == 1


def test_bool_variates_mask_keeps_a_dynamic_variate_count():
    """The mask's message is not formatted with the output's (symbolic) variate count while
    compiling: formatting it would fix the count to one value per graph."""

    def step(x, keep, y_hat):
        _, reverse_fn = revin(x)
        return reverse_fn(y_hat, variates=keep)

    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True, dynamic=True)
    x = torch.randn(4, 7, 24) * 3 + 10
    for count in (2, 3):
        keep = torch.zeros(7, dtype=torch.bool)
        keep[:count] = True
        y_hat = torch.randn(4, count, 12)
        torch.testing.assert_close(compiled(x, keep, y_hat), step(x, keep, y_hat))
    assert counter.frame_count == 1
