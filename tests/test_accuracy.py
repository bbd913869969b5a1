"""Accuracy against float64 far from zero, gradients of empty instances, the representable range."""

from __future__ import annotations

import pytest
import torch

import revin_fn
from revin_fn import revin
from revin_fn._options import CAUSAL_METHODS, METHODS

CASES = [(m, c) for m in METHODS for c in (False, True) if not c or m in CAUSAL_METHODS]


@pytest.mark.parametrize(("method", "causal"), CASES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("pattern", ["b v t", "b t v"])
@pytest.mark.parametrize("offset", [1e3, 1e6])
def test_y_within_1e_5_of_float64_far_from_zero(method, causal, masked, pattern, offset):
    generator = torch.Generator().manual_seed(0)
    std = torch.tensor([0.5, 3.0, 40.0])
    x = (torch.randn(4, 200, 3, generator=generator) + offset) * std
    if pattern == "b v t":
        x = x.transpose(1, 2).contiguous()
    mask = torch.rand(x.shape, generator=generator) > 0.2 if masked else None
    kwargs = {"pattern": pattern, "method": method, "causal": causal, "mask": mask}
    y, _, stats = revin(x, return_statistics=True, **kwargs)
    y64, _, stats64 = revin(x.double(), return_statistics=True, **kwargs)
    if causal:  # the first steps of a causal scale are eps-floored: compare after a few steps
        keep = torch.arange(200) >= 10
        keep = keep.view(1, 1, -1) if pattern == "b v t" else keep.view(1, -1, 1)
        y, y64 = y * keep, y64 * keep
    assert (y.double() - y64).abs().max() <= 1e-5
    assert ((stats.mean.double() - stats64.mean).abs() <= 1e-6 * stats64.mean.abs() + 1e-6).all()


def test_robust_far_from_zero_matches_float64():
    x = torch.randn(8, 3, 96) + 1e6
    y, _ = revin(x, method="robust")
    y64, _ = revin(x.double(), method="robust")
    assert (y.double() - y64).abs().max() <= 1e-5  # 0.044 before the shifted centring


def test_causal_first_step_100_std_away_at_length_5000():
    x = torch.randn(4, 3, 5000)
    x[..., 0] += 100
    y, _ = revin(x, causal=True)
    y64, _ = revin(x.double(), causal=True)
    assert (y.double() - y64).abs().max() <= 1e-5


def test_robust_mask_with_an_empty_instance_has_finite_gradients():
    x = torch.randn(4, 3, 20)
    gamma = torch.ones(3, requires_grad=True)
    mask = torch.ones(4, 3, 20, dtype=torch.bool)
    mask[0, 0] = False
    y, _ = revin(x, gamma, mask=mask, method="robust")
    y.pow(2).sum().backward()
    assert gamma.grad is not None and gamma.grad.isfinite().all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["huge std", "near float32 max"])
def test_past_the_float32_range_the_reference_gives_nan_not_zeros(method, case):
    # every method's scale is far past 1.8e19 here (mean |x - mu| of randn is about 0.8, so a
    # factor of 3e19 would leave some windows legitimately inside the range)
    x = torch.randn(2, 3, 50) * 1e20 if case == "huge std" else torch.rand(2, 3, 50) * 3e38
    with revin_fn.backends.use("reference"):
        y, reverse_fn = revin(x, method=method)
    assert y.isnan().all() and reverse_fn(y).isnan().all()


def test_float32_within_the_documented_range_is_exact():
    x = torch.randn(2, 3, 50) * 1e18
    y, reverse_fn = revin(x)
    assert (y.std(-1, unbiased=False) - 1).abs().max() < 1e-4
    torch.testing.assert_close(reverse_fn(y), x, rtol=1e-5, atol=1e13)


def test_float16_near_its_maximum_comes_back_finite_from_a_float32_output():
    x = (torch.rand(2, 3, 50) * 65504).half()
    x[..., 0] = 65504
    y, reverse_fn = revin(x)
    x_hat = reverse_fn(y.float())  # the model's output in float32: data units in float32
    assert x_hat.dtype == torch.float32 and x_hat.isfinite().all()
    # y is rounded to float16 (2**-11 relative): a few tens of units at this scale
    torch.testing.assert_close(x_hat, x.float(), rtol=0, atol=64)
    half = reverse_fn(y)  # y rounded to float16: inf where rounding passes 65520, else close
    finite = half.isfinite()
    assert (half[~finite].abs() == float("inf")).all()
    torch.testing.assert_close(half[finite].float(), x[finite].float(), rtol=0, atol=64)


def test_autocast_outputs_keep_the_input_dtype_range():
    x = torch.randn(2, 3, 50) * 3e4 + 1e5  # beyond float16, coarse in bfloat16
    y, reverse_fn = revin(x)
    for dtype in (torch.float16, torch.bfloat16):
        x_hat = reverse_fn(y.to(dtype))
        assert x_hat.dtype == torch.float32 and x_hat.isfinite().all()
        assert (x_hat - x).abs().max() < 3e4 * 1e-2
    q = reverse_fn.quantiles(y.half().unsqueeze(-1))
    assert q.dtype == torch.float32 and q.isfinite().all()


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize(
    ("pattern", "shape", "route"),
    [("b v t", (2, 3, 50), "rows+overflow"), ("b t v", (2, 50, 3), "moved rows+overflow"),
     ("b t v", (2, 2048, 32), "columns+shifted+overflow+centered")],  # columns retry
)  # fmt: skip
def test_past_the_float32_range_the_native_backend_gives_nan_not_zeros(pattern, shape, route, grad):
    x = torch.randn(shape) * 3e19
    x[0] = torch.randn(shape[1:])  # an ordinary instance next to the huge ones stays exact
    x.requires_grad_(grad)
    with revin_fn.backends.record() as calls:
        y, reverse_fn = revin(x, pattern=pattern)
    assert calls[0] == ("native", route)
    assert y[1:].isnan().all() and reverse_fn(y)[1:].isnan().all()
    assert reverse_fn(torch.ones_like(y))[1:].isnan().all()  # any output, not only y
    with revin_fn.backends.use("reference"):
        expected, _ = revin(x[:1], pattern=pattern)
    torch.testing.assert_close(y[:1], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("gamma_row", "route"), [(1, "rows+shifted"), (0, "rows")])
def test_the_offset_check_weighs_each_row_by_its_own_gamma(gamma_row, route):
    # variate 1 sits 25 spreads from 0 (below the limit of 32 alone); a gamma of 20 on the
    # same variate scales the rounding of the fused pass 20 times and asks for the shift
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 200, generator=generator)
    x = (x - x.mean(-1, keepdim=True)) / x.std(-1, correction=0, keepdim=True)
    x[:, 1] += 25.0
    gamma = torch.ones(3)
    gamma[gamma_row] = 20.0
    with revin_fn.backends.record() as calls:
        y, _ = revin(x, gamma)
    assert calls[0] == ("native", route)
    y64, _ = revin(x.double(), gamma.double())
    assert (y.double() - y64).abs().max() <= 1e-5 * 20


@pytest.mark.parametrize("pattern", ["b v t", "b t v"])
def test_a_non_finite_instance_leaves_the_others_exact(pattern):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 64, generator=generator)
    x[1, 0] = 7.0 + 1e-5 * x[1, 0]  # near-constant: the eps floor applies
    x[2, 1] += 1e5  # far from 0: the shifted pass
    x[3, 2, 5] = float("nan")
    if pattern == "b t v":
        x = x.transpose(1, 2).contiguous()
    y, _ = revin(x, pattern=pattern)
    y64, _ = revin(x.double(), pattern=pattern)
    nan = y64.isnan()
    assert torch.equal(y.isnan(), nan) and nan.any()
    assert (y.double() - y64)[~nan].abs().max() <= 1e-5


@pytest.mark.parametrize("eps_mode", ["clamp", "add"])
def test_a_constant_instance_has_variance_zero_never_below(eps_mode):
    x = torch.randn(4, 3, 8)
    x[1, 2] = 2.5
    _, _, stats = revin(x, eps=3e-5, eps_mode=eps_mode, return_statistics=True)
    assert (stats.variance >= 0).all() and stats.variance[1, 2].abs().item() < 1e-10


def test_the_guard_passes_no_gradient_even_from_an_infinite_one():
    gamma = torch.tensor([0.0, 1.0], requires_grad=True)
    x = torch.randn(1, 2, 8, requires_grad=True)
    _, reverse_fn = revin(x, gamma)
    (reverse_fn(torch.ones(1, 2, 4)) * 1e34).sum().backward()
    assert gamma.grad is not None and gamma.grad[0].item() == 0.0
