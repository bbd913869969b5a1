"""The triton backend against the reference: run by ``test_triton.py`` on a GPU, or on the CPU
with ``TRITON_INTERPRET=1`` set before revin_fn is imported (Triton's interpreter: slow, so the
shapes are tiny). Not collected on its own (no ``test_`` prefix)."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import revin_fn
from revin_fn import backends

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs a GPU or TRITON_INTERPRET=1 before import", allow_module_level=True)
if "triton" not in backends.names():
    pytest.fail("triton imports but the triton backend is not registered", pytrace=False)

# Both backends are measured against the reference in float64: triton may be off by at most
# FACTOR times the reference's own error plus TOLERANCE times the largest exact value (where
# the reference is exact by luck; float32 allows for the interpreter's sequential sums).
# Ill-conditioned outputs (gamma clamped to eps) then get the bound their conditioning allows,
# well-conditioned ones a few units of their precision.
FACTOR = 4.0
TOLERANCE = {torch.float32: 4e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
LAYOUTS = {"b v t": (2, 3, 8), "b t v": (2, 8, 3)}


@pytest.fixture(autouse=True)
def _seed():
    """Fixed inputs: gradients through gain = std / 1e-5 (gamma clamped) cancel terms of 1e5
    times their size, so their rounding depends on the draw."""
    torch.manual_seed(0)


def _affine(variates: int, clamped: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """gamma holding negative entries, and 0 and -3e-6 (the guard clamps them) if ``clamped``;
    and beta."""
    gamma = torch.linspace(-1.5, 1.2, variates, device=DEVICE)
    if clamped:
        gamma[variates // 2] = 0.0
    if clamped and variates > 3:
        gamma[0] = -3e-6
    beta = torch.linspace(-0.5, 0.7, variates, device=DEVICE)
    return gamma.requires_grad_(), beta.requires_grad_()


def _step(name, x, gamma, beta, pattern, horizon=None, variates=None, move=True, **options):
    """Forward, reverse (of ``horizon`` steps, ``variates=``), statistics and the gradients of a
    loss linear in all of them (fixed weights, so both backends get the same upstream grads)."""
    x = x.detach().clone().requires_grad_()
    inputs = [x] + [p for p in (gamma, beta) if p is not None]
    with backends.use(name), backends.record() as routes:
        y, reverse_fn, stats = revin_fn.revin(
            x, gamma, beta, pattern=pattern, return_statistics=True, **options
        )
        time = pattern.split().index("t")
        y_hat = y if horizon is None else y.narrow(time, 0, horizon)
        if move:  # (not for float16: x_hat = y_hat / 1e-5 for gamma 0 would overflow)
            y_hat = y_hat * 1.5 + 0.3
        if variates is not None:
            y_hat = y_hat.index_select(pattern.split().index("v"), torch.tensor(variates))
        x_hat = reverse_fn(y_hat, variates)
        outputs = [y, x_hat, stats.mean, stats.variance]
        generator = torch.Generator().manual_seed(1)
        weights = [torch.randn(o.shape, generator=generator).to(DEVICE) for o in outputs]
        terms = zip(outputs, weights, strict=True)
        loss = sum((o.float() * w).sum() for o, w in terms if o.requires_grad)
        grads = torch.autograd.grad(loss, inputs)
    return [o.detach() for o in outputs] + list(grads), routes


def _compare(x, gamma=None, beta=None, pattern="b v t", **kwargs):
    """Triton against the reference, value for value and gradient for gradient, both measured
    against the reference in float64."""
    kwargs.setdefault("move", x.dtype != torch.float16)
    got, routes = _step("triton", x, gamma, beta, pattern, **kwargs)
    want, _ = _step("reference", x, gamma, beta, pattern, **kwargs)
    wide = [None if p is None else p.detach().double().requires_grad_() for p in (gamma, beta)]
    exact, _ = _step("reference", x.double(), *wide, pattern, **kwargs)
    assert [r[0] for r in routes] == ["triton", "triton"], routes
    labels = ["y", "x_hat", "mean", "variance", "dx", "dgamma", "dbeta"]
    labels = labels[: len(got)]  # no dgamma, dbeta without affine
    for label, a, b, e in zip(labels, got, want, exact, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, (label, a.shape, b.shape, a.dtype)
        error = (a.double() - e).abs().max().item()
        own = (b.double() - e).abs().max().item()
        bound = FACTOR * own + TOLERANCE[x.dtype] * e.abs().max().item()
        assert error <= bound, f"{label}: off by {error:.3e}, reference by {own:.3e}"
    return routes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pattern", list(LAYOUTS))
@pytest.mark.parametrize("eps_mode", ["clamp", "add", "add_std"])
def test_matches_reference(pattern, dtype, eps_mode):
    x = torch.randn(LAYOUTS[pattern], generator=torch.Generator().manual_seed(0)) * 3 + 5
    variates = x.shape[pattern.split().index("v")]
    # float16 keeps gamma away from 0: y loses the 1e-5 * (x - mean) / std part to rounding
    # and the gradients through gain = std / 1e-5 overflow, in the reference as well
    affine = _affine(variates, clamped=dtype != torch.float16)
    _compare(x.to(DEVICE, dtype), *affine, pattern, eps_mode=eps_mode, horizon=5)


@pytest.mark.parametrize("pattern", list(LAYOUTS))
@pytest.mark.parametrize("affine", [False, True])
def test_detach(pattern, affine):
    x = torch.randn(LAYOUTS[pattern], device=DEVICE) + 2
    variates = x.shape[pattern.split().index("v")]
    gamma, beta = _affine(variates) if affine else (None, None)
    _compare(x, gamma, beta, pattern, detach=True)


@pytest.mark.parametrize("eps_mode", ["clamp", "add", "add_std"])
def test_variance_below_eps(eps_mode):
    """Constant and near-constant rows (variance 0 and 1e-8, eps 1e-5), with gradients."""
    x = torch.randn(2, 4, 16, device=DEVICE)
    x[0, 0] = 3.0
    x[0, 1] = -2.0 + 1e-4 * torch.randn(16)
    x[1, 2] = 0.0
    _compare(x, *_affine(4), eps_mode=eps_mode)


@pytest.mark.parametrize("pattern", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_large_offsets(pattern, dtype):
    """Offsets of 1e6 std (float32) or 100 std (half precision): the statistics are those of
    the rounded input, computed in float64, to float32 accuracy."""
    offset = 1e6 if dtype == torch.float32 else 100.0
    shape = (2, 3, 64) if pattern == "b v t" else (2, 64, 3)
    x = (torch.randn(shape, device=DEVICE) * 0.5 + offset * 0.5).to(dtype)
    with backends.use("triton"):
        y, _, stats = revin_fn.revin(x, pattern=pattern, return_statistics=True)
    exact, _, exact_stats = revin_fn.revin(x.double(), pattern=pattern, return_statistics=True)
    assert (stats.mean.double() - exact_stats.mean).abs().max() <= 1e-7 * offset
    assert (stats.variance.double() - exact_stats.variance).abs().max() <= 1e-5 * 0.25
    assert (y.double() - exact).abs().max() <= 2 * TOLERANCE[dtype] * exact.abs().max()


@pytest.mark.parametrize("pattern,shape", [("b v t", (1, 2, 9000)), ("b t v", (1, 3000, 3))])
def test_chunked(pattern, shape):
    """Instances longer than a block: statistics in chunks (Chan's update), then the output."""
    x = torch.randn(shape, device=DEVICE) * 2 + 1e4
    routes = _compare(x, *_affine(shape[pattern.split().index("v")]), pattern)
    assert routes[0] == ("triton", "fused, chunked")


@pytest.mark.parametrize("shape", [(2, 300, 40), (2, 2100, 19)])
def test_wide_instances_take_several_column_blocks(shape):
    """ "b t v" wider than a program's columns (16 at 300 steps, 8 at 2100): each outer index spans
    several programs, counted on grid axis 0 with it; one pass and chunks."""
    x = torch.randn(shape, device=DEVICE) * 3 + 40
    routes = _compare(x, *_affine(shape[-1]), "b t v", horizon=5)
    assert routes[0] == ("triton", "fused" if shape[1] == 300 else "fused, chunked")


def test_launch_grid_fits_cuda_limits():
    """4096 x 321 instances of 512 steps laid out "t b v": 82 176 column blocks, more than
    grid axes 1 and 2 take (65535; the interpreter does not enforce it), so they go on axis 0."""
    from revin_fn.backends import _triton_ops

    x = torch.empty(1, 512, 4096 * 321, device="meta")
    grid = _triton_ops._launch_shape(x)[0]
    assert grid == (82176,) and all(n <= 65535 for n in grid[1:])


def test_offsets_past_32_bits():
    """Steps 2**30 elements apart, so that step 2's offset is 2**31: the forward, the reverse and
    both backwards index in 64 bits (in 32 bits the offset wraps negative and the read lands
    outside the tensor). One float16 storage of 2**31 + 32 elements holds x, y_hat and the
    upstream gradients, each 3 steps long; its other pages are never touched."""
    stride = 2**30
    storage = torch.empty(2 * stride + 32, dtype=torch.float16, device=DEVICE)

    def strided(start, values):
        view = storage.as_strided((1, 1, 3), (3, 3, stride), start)
        view.copy_(torch.tensor(values, dtype=torch.float16).view(1, 1, 3))
        return view

    x, y_hat = strided(0, [1.0, 2.0, 6.0]), strided(8, [0.5, -1.0, 2.0])
    upstream = strided(16, [0.3, -0.7, 1.1]), strided(24, [1.0, 0.25, -2.0])
    results = []
    for name, views in (("triton", (x, y_hat)), ("reference", (x.clone(), y_hat.clone()))):
        inputs = [t.requires_grad_() for t in views]
        gamma = torch.tensor([1.5], device=DEVICE, requires_grad=True)
        beta = torch.tensor([-0.25], device=DEVICE, requires_grad=True)
        with backends.use(name):
            y, reverse_fn = revin_fn.revin(inputs[0], gamma, beta)
            x_hat = reverse_fn(inputs[1])
        grads = torch.autograd.grad((y, x_hat), [*inputs, gamma, beta], upstream)
        results.append([y, x_hat, *grads])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("pattern", list(LAYOUTS))
def test_reverse_variates_and_horizons(pattern):
    x = torch.randn((2, 5, 8) if pattern == "b v t" else (2, 8, 5), device=DEVICE) * 4 - 3
    for horizon, variates in ((3, [0, 3]), (11, [4]), (1, None)):
        if horizon > 8:
            x = torch.cat([x, x.flip(pattern.split().index("t"))], pattern.split().index("t"))
        _compare(x, *_affine(5), pattern, horizon=horizon, variates=variates)


def test_reverse_scale_only_and_other_frames():
    """shift=False is plain ops; a causal frame (factors of y's shape) is elementwise."""
    x = torch.randn(2, 3, 8, device=DEVICE)
    with backends.use("triton"), backends.record() as routes:
        y, reverse_fn = revin_fn.revin(x)
        scale = reverse_fn(y.abs(), shift=False)
    with backends.use("reference"):
        y_ref, reverse_ref = revin_fn.revin(x)
        assert torch.allclose(scale, reverse_ref(y_ref.abs(), shift=False), rtol=1e-5, atol=1e-6)
        y_causal, reverse_causal = revin_fn.revin(x, causal=True)
        want = reverse_causal(y_causal)
    assert routes == [("triton", "fused")]
    with backends.use("triton"), backends.record() as routes:
        got = reverse_causal(y_causal)
    assert routes == [("triton", "fused")] and torch.allclose(got, want)


class _Ops(TorchDispatchMode):
    """Counts the ops dispatched inside the block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_no_host_reads_and_fused_backward():
    x = torch.randn(2, 8, 3, device=DEVICE, requires_grad=True)
    gamma, beta = _affine(3)
    with backends.use("triton"), _Ops() as ops:
        y, reverse_fn = revin_fn.revin(x, gamma, beta, pattern="b t v")
        reverse_fn(y.narrow(1, 0, 4) * 2).square().sum().backward()
    assert ops.counts.get("aten._local_scalar_dense", 0) == 0, ops.counts
    for op in ("normalize", "normalize_backward", "scale_shift", "scale_shift_backward"):
        assert ops.counts.get(f"revin_fn.triton_{op}") == 1, (op, ops.counts)
    with _Ops() as control:  # the counter sees a host read
        x.sum().item()
    assert control.counts.get("aten._local_scalar_dense") == 1


def test_double_backward():
    x = torch.randn(2, 3, 8, device=DEVICE) + 1
    results = []
    for name in ("triton", "reference"):
        leaf = x.clone().requires_grad_()
        gamma, beta = _affine(3, clamped=False)  # cos(x_hat) would amplify rounding by 1e5
        with backends.use(name):
            y, reverse_fn = revin_fn.revin(leaf, gamma, beta)
            loss = (y.sin() + reverse_fn(y * 0.5).cos()).sum()
            grads = torch.autograd.grad(loss, (leaf, gamma, beta), create_graph=True)
            second = torch.autograd.grad(sum(g.square().sum() for g in grads), (leaf, gamma))
        results.append([*grads, *second])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("pattern", list(LAYOUTS))
def test_batched_gradients(pattern):
    """``autograd.grad(is_grads_batched=True)``: the reference's vector-Jacobian products."""
    x = torch.randn(*LAYOUTS[pattern], device=DEVICE) * 3 + 5
    vectors = torch.randn(2, *x.shape, device=DEVICE)
    results = []
    for name in ("triton", "reference"):
        leaf = x.clone().requires_grad_()
        gamma, beta = _affine(3, clamped=False)
        with backends.use(name):
            y, reverse_fn = revin_fn.revin(leaf, gamma, beta, pattern=pattern)
            out = reverse_fn(y.sin())
        leaves = (leaf, gamma, beta)
        results.append(torch.autograd.grad(out, leaves, vectors, is_grads_batched=True))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()


def test_selection():
    x = torch.randn(2, 3, 8, device=DEVICE)
    expected = "triton" if DEVICE == "cuda" else "native"  # native is the CPU backend
    with backends.record() as routes:
        revin_fn.revin(x)
        revin_fn.revin(x.double())  # float64 stays on the reference on GPUs
        revin_fn.revin(x, mask=x > 0)
    assert [r[0] for r in routes] == [expected, "native" if DEVICE == "cpu" else "reference",
                                      "reference"]  # fmt: skip
    with backends.use("triton"), pytest.raises(revin_fn.RevINError, match=r"a mask.*causal"):
        revin_fn.revin(x, mask=x > 0, causal=True)


def _sample_inputs():
    x = torch.randn(2, 8, 3, device=DEVICE, requires_grad=True)
    gamma, beta = _affine(3)
    gamma = gamma.detach().requires_grad_()
    return x, gamma, beta


def test_opcheck():
    """Schema, fake (meta) implementations and autograd registration of the custom ops."""
    x, gamma, beta = _sample_inputs()
    ops = torch.ops.revin_fn
    torch.library.opcheck(ops.triton_normalize, (x, gamma, beta, 1, False, 1e-5, 0, False))
    wide = torch.randn(3, 8, 6, device=DEVICE)[..., ::2].requires_grad_()  # strided, "b t v"
    torch.library.opcheck(ops.triton_normalize, (wide, gamma, None, 1, False, 1e-5, 2, True))
    rows = torch.randn(6, 8, 1, device=DEVICE, requires_grad=True)  # "b v t" (2, 3, 8)
    torch.library.opcheck(ops.triton_normalize, (rows, None, beta, 1, True, 1e-5, 1, False))
    y = torch.randn(6, 5, 1, device=DEVICE, requires_grad=True)
    gain = (torch.rand(6, 1, 1, device=DEVICE) + 0.5).requires_grad_()
    offset = torch.randn(6, 1, 1, device=DEVICE, requires_grad=True)
    torch.library.opcheck(ops.triton_scale_shift, (y, gain, offset))
    torch.library.opcheck(ops.triton_scale_shift, (y.detach().bfloat16(), gain, offset))


def test_compile_fullgraph_keeps_the_kernels():
    """torch.compile(fullgraph=True): the graph holds the custom ops, values and grads as eager.
    (Backend aot_eager: inductor's own kernels are not what this checks, and it runs on CPU.)"""
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm

    def step(x, gamma, beta):
        y, reverse_fn = revin_fn.revin(x, gamma, beta, pattern="b t v")
        return reverse_fn(y[:, :4] * 2 + 1)

    from torch._dynamo.backends.common import aot_autograd

    backend = aot_autograd(fw_compiler=keep, bw_compiler=keep)
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    x, gamma, beta = _sample_inputs()
    with backends.use("triton"):
        got = compiled(x, gamma, beta)
        got.sum().backward()
        grads = [x.grad, gamma.grad, beta.grad]
        x.grad = gamma.grad = beta.grad = None
        want = step(x, gamma, beta)
        want.sum().backward()
    assert torch.allclose(got, want)
    for a, b in zip(grads, [x.grad, gamma.grad, beta.grad], strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    targets = {str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"}
    for op in ("normalize", "normalize_backward", "scale_shift", "scale_shift_backward"):
        assert f"revin_fn.triton_{op}.default" in targets, targets


def test_export_keeps_the_kernel():
    class Model(torch.nn.Module):
        def forward(self, x):
            y, reverse_fn = revin_fn.revin(x)
            return reverse_fn(y * 2)

    x = torch.randn(2, 3, 8, device=DEVICE)
    steps = torch.export.Dim("steps", min=5, max=4096)
    with backends.use("triton"):  # a dynamic length: no size test of the route may guard it
        program = torch.export.export(Model(), (x,), dynamic_shapes=({2: steps},))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "revin_fn.triton_normalize.default" in targets, targets
    for length in (8, 3000):  # one pass, and chunks
        other = torch.randn(2, 3, length, device=DEVICE)
        assert torch.allclose(program.module()(other), Model()(other), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eps_mode", ["clamp", "add", "add_std"])
def test_non_finite_inputs_give_nan_as_the_reference(eps_mode):
    """A variance past float32 (scale 1e20), a NaN in x and a NaN gamma: NaN outputs and
    scales, as on the reference (Triton's maximum drops NaN unless asked to keep it)."""
    x = torch.randn(2, 3, 8, device=DEVICE)
    x[0] *= 1e20
    x[1, 0, 2] = float("nan")
    gamma, beta = _affine(3, clamped=False)
    gamma = gamma.detach().clone()
    gamma[2] = float("nan")
    results = {}
    for name in ("reference", "triton"):
        with backends.use(name):
            y, reverse_fn = revin_fn.revin(x, gamma, beta.detach(), eps_mode=eps_mode)
            width = reverse_fn(torch.ones_like(x), shift=False)
        results[name] = y.isnan(), width.isnan()
    for want, got in zip(results["reference"], results["triton"], strict=True):
        assert torch.equal(got, want)
    assert results["triton"][0][0].all() and results["triton"][0][:, 2].all()


def test_detach_without_affine_reverses_with_constants():
    x = torch.randn(2, 3, 8, device=DEVICE, requires_grad=True)
    with backends.use("triton"):
        _, reverse_fn = revin_fn.revin(x, detach=True)
        out = reverse_fn(torch.ones(2, 3, 4, device=DEVICE))
    assert not out.requires_grad  # as on the reference: nothing of x's graph


def test_forced_reverse_it_cannot_take_raises_revin_error():
    x = torch.randn(2, 3, 8, device=DEVICE, dtype=torch.float16)
    with backends.use("triton"):
        y, reverse_fn, stats = revin_fn.revin(x, return_statistics=True)
        with pytest.raises(revin_fn.RevINError, match=r"^reverse_fn\(y_hat\): backend \"triton"):
            reverse_fn(y.double())  # float64: the reference's
        with pytest.raises(revin_fn.RevINError, match=r"^reverse\(y_hat, stats\): backend"):
            revin_fn.reverse(y.double(), stats)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_training_step():
    """A training step with revin_fn captured in a CUDA graph and replayed equals eager."""
    torch.manual_seed(0)
    model = torch.nn.Linear(96, 24).cuda()
    revin = revin_fn.RevIN(7).cuda()
    params = [*model.parameters(), *revin.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)
    x = torch.randn(32, 7, 96, device="cuda")
    target = torch.randn(32, 7, 24, device="cuda")

    def step():
        optimizer.zero_grad(set_to_none=False)
        y, reverse_fn = revin(x)
        loss = (reverse_fn(model(y)) - target).square().mean()
        loss.backward()
        optimizer.step()
        return loss

    start = [p.detach().clone() for p in params]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm up (triton compiles, autograd allocates)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured_loss = step()
    for p, s in zip(params, start, strict=True):
        p.data.copy_(s)
    eager_losses = [step().item() for _ in range(2)]
    eager_params = [p.detach().clone() for p in params]
    for p, s in zip(params, start, strict=True):
        p.data.copy_(s)
    replayed = []
    for _ in range(2):
        graph.replay()
        replayed.append(captured_loss.item())
    assert replayed == pytest.approx(eager_losses, rel=1e-5)
    for p, e in zip(params, eager_params, strict=True):
        assert torch.allclose(p, e, rtol=1e-5, atol=1e-6)
