"""revin / reverse: round trip, statistics, options, parity with the published formulas."""

from __future__ import annotations

import io

import pytest
import torch
from _helpers import assert_round_trip, itransformer_revin, original_revin
from hypothesis import given, settings
from hypothesis import strategies as st

from revin_fn import Statistics, reverse, revin

LAYOUTS = {  # pattern -> where (batch, variates, time) go
    "b v t": (0, 1, 2),
    "b t v": (0, 2, 1),
    "v t": (None, 0, 1),
    "t v b": (2, 1, 0),
    "... v t": (0, 1, 2),
}


def make(pattern: str, batch: int, variates: int, time: int, **kwargs) -> torch.Tensor:
    """A random tensor of (batch, variates, time) laid out as ``pattern``."""
    x = torch.randn(batch, variates, time, **kwargs)
    order = LAYOUTS[pattern]
    if order[0] is None:
        return x[0]
    return x.permute(*sorted(range(3), key=lambda axis: order[axis])).contiguous()


@st.composite
def cases(draw):
    pattern = draw(st.sampled_from(sorted(LAYOUTS)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    batch, variates, time = (draw(st.integers(1, n)) for n in (3, 5, 40))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([0.0, 1e-4, 1e-2, 1.0, 40.0]))
    offset = draw(st.sampled_from([0.0, -3.0, 1e2, 1e4]))
    if dtype == torch.float16:
        offset = min(offset, 1e3)
    gamma_values = st.sampled_from([1.0, 0.0, -0.0, -1.5, 2.0, 1e-7, -1e-7, 0.3])
    gamma = torch.tensor([draw(gamma_values) for _ in range(variates)])
    beta = torch.tensor([draw(st.sampled_from([0.0, 0.5, -2.0])) for _ in range(variates)])
    eps_mode = draw(st.sampled_from(["clamp", "add"]))
    torch.manual_seed(seed)
    x = (make(pattern, batch, variates, time, dtype=torch.float64) * scale + offset).to(dtype)
    return pattern, x, gamma, beta, eps_mode


@settings(max_examples=150, deadline=None)
@given(cases(), st.booleans())
def test_round_trip_is_exact_to_rounding(case, affine):
    pattern, x, gamma, beta, eps_mode = case
    args = (gamma, beta) if affine else ()
    y, reverse_fn = revin(x, *args, pattern=pattern, eps_mode=eps_mode)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    assert_round_trip(x, y, reverse_fn)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset_over_std", [0.0, 1e2, 1e4, 1e6])
def test_accuracy_at_large_offsets_against_float64(dtype, offset_over_std):
    torch.manual_seed(0)
    std = 1e-2
    x = (torch.randn(8, 5, 336, dtype=torch.float64) * std + offset_over_std * std).to(dtype)
    reference = x.double()
    mean = reference.mean(-1, keepdim=True)
    expected = (reference - mean) / reference.var(-1, unbiased=False, keepdim=True).sqrt()
    y, reverse_fn = revin(x, eps=1e-12)
    assert (y.double() - expected).abs().max() < 1e-5
    assert_round_trip(x, y, reverse_fn)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_same_dtype_out_no_overflow(dtype):
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 96) * 400 + 1000).to(dtype)  # variance 1.6e5 > fp16 max
    y, reverse_fn, stats = revin(x, return_statistics=True)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert stats.variance.dtype == torch.float32 and torch.isfinite(stats.variance).all()
    expected = revin(x.float())[0]
    torch.testing.assert_close(y.float(), expected, atol=1e-2, rtol=1e-2)
    assert_round_trip(x, y, reverse_fn)


def test_statistics_fields_shapes_and_unpacking():
    x = torch.randn(4, 3, 50) * 3 + 7
    gamma, beta = torch.rand(3, 1) + 0.5, torch.randn(3, 1)
    _y, _reverse_fn, stats = revin(x, gamma, beta, return_statistics=True)
    assert isinstance(stats, Statistics) and isinstance(stats, tuple)
    assert Statistics._fields == ("mean", "variance", "gamma", "beta")
    mean, variance, stats_gamma, stats_beta = stats  # unpacks like iTransformer's
    assert mean.shape == variance.shape == (4, 3, 1)
    torch.testing.assert_close(mean, x.mean(-1, keepdim=True))
    torch.testing.assert_close(variance, x.var(-1, unbiased=False, keepdim=True))
    assert stats_gamma is gamma and stats_beta is beta


@pytest.mark.parametrize("eps_mode", ["clamp", "add"])
def test_scale_is_derived_from_variance_as_documented(eps_mode):
    eps = 1e-2
    x = torch.randn(2, 3, 30) * torch.tensor([1e-3, 1.0, 5.0]).view(1, 3, 1)
    y, _, stats = revin(x, eps=eps, eps_mode=eps_mode, return_statistics=True)
    if eps_mode == "clamp":
        scale = stats.variance.clamp(min=eps).sqrt()
    else:
        scale = (stats.variance + eps).sqrt()
    torch.testing.assert_close(y, (x - stats.mean) / scale)


def test_clamp_mode_is_scale_invariant_for_ordinary_data():
    x = torch.randn(4, 3, 64)
    torch.testing.assert_close(revin(x * 1000)[0], revin(x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pattern", sorted(LAYOUTS))
def test_layouts_agree_with_the_default_layout(pattern):
    torch.manual_seed(1)
    x = make(pattern, 3, 4, 25) * 2 + 1
    gamma, beta = torch.randn(4), torch.randn(4)
    y, reverse_fn = revin(x, gamma, beta, pattern=pattern)
    order = LAYOUTS[pattern]
    canonical = x.unsqueeze(0) if order[0] is None else x.permute(*order)
    expected = revin(canonical.contiguous(), gamma, beta)[0]
    back = y.unsqueeze(0) if order[0] is None else y.permute(*order)
    torch.testing.assert_close(back, expected)
    assert_round_trip(x, y, reverse_fn)


def test_ellipsis_takes_any_number_of_instance_axes():
    x = torch.randn(2, 3, 4, 20, 5)
    y, reverse_fn = revin(x, torch.ones(5), torch.zeros(5), pattern="... t v")
    expected = revin(x.reshape(-1, 20, 5), pattern="b t v")[0].reshape(x.shape)
    torch.testing.assert_close(y, expected)
    assert reverse_fn(torch.zeros(2, 3, 4, 7, 5)).shape == (2, 3, 4, 7, 5)


def test_pattern_without_variates_when_no_affine():
    x = torch.randn(6, 40)
    y, reverse_fn = revin(x, pattern="b t")
    torch.testing.assert_close(y.mean(-1), torch.zeros(6), atol=1e-5, rtol=0)
    assert_round_trip(x, y, reverse_fn)


def test_forecast_of_any_horizon():
    x = torch.randn(4, 3, 96) * 5 + 2
    _y, reverse_fn, stats = revin(x, return_statistics=True)
    forecast = torch.randn(4, 3, 720)
    expected = forecast * stats.variance.clamp(min=1e-5).sqrt() + stats.mean
    torch.testing.assert_close(reverse_fn(forecast), expected)


@pytest.mark.parametrize(
    "variates, index",
    [
        (6, [6]),
        ([6], [6]),
        ([1, 4], [1, 4]),
        (slice(2, 5), [2, 3, 4]),
        (-1, [6]),
        ([i in (0, 3) for i in range(7)], [0, 3]),
        (torch.tensor([5, 0]), [5, 0]),
    ],
)
@pytest.mark.parametrize("pattern", ["b v t", "b t v"])
def test_variates_selects_the_statistics_of_those_variates(variates, index, pattern):
    torch.manual_seed(2)
    x = make(pattern, 4, 7, 48) * 3 + torch.arange(7.0).view(
        *(7 if a == "v" else 1 for a in pattern.split())
    )
    gamma, beta = torch.randn(7), torch.randn(7)
    y, reverse_fn = revin(x, gamma, beta, pattern=pattern)
    axis = pattern.split().index("v")
    part = y.index_select(axis, torch.tensor(index))
    torch.testing.assert_close(
        reverse_fn(part, variates=variates), reverse_fn(y).index_select(axis, torch.tensor(index))
    )


@pytest.mark.parametrize("gamma_value", [2.0, -2.0])
def test_shift_false_scales_by_std_over_abs_gamma(gamma_value):
    x = torch.randn(4, 3, 60) * 9 + 100
    gamma, beta = torch.full((3,), gamma_value), torch.full((3,), 5.0)
    _, reverse_fn, stats = revin(x, gamma, beta, return_statistics=True)
    sigma_hat = torch.rand(4, 3, 12)
    expected = sigma_hat * stats.variance.clamp(min=1e-5).sqrt() / abs(gamma_value)
    torch.testing.assert_close(reverse_fn(sigma_hat, shift=False), expected)


def test_reverse_from_saved_statistics_matches_the_closure(tmp_path):
    x = torch.randn(4, 50, 3) * 4 + 10
    gamma, beta = torch.randn(3), torch.randn(3)
    _y, reverse_fn, stats = revin(
        x, gamma, beta, pattern="b t v", eps_mode="add", return_statistics=True
    )
    path = tmp_path / "stats.pt"
    torch.save(stats, path)
    loaded = torch.load(path)  # weights_only=True: Statistics is an allowed global
    assert isinstance(loaded, Statistics)
    y_hat = torch.randn(4, 24, 3)
    out = reverse(y_hat, loaded, pattern="b t v", eps_mode="add")
    torch.testing.assert_close(out, reverse_fn(y_hat))
    part = reverse(y_hat[..., 1:2], loaded, pattern="b t v", eps_mode="add", variates=1)
    torch.testing.assert_close(part, reverse_fn(y_hat)[..., 1:2])


@pytest.mark.parametrize("eps_mode", ["clamp", "add", "add_std"])
def test_reverse_takes_an_edited_negative_variance_as_its_docstring_says(eps_mode):
    y, _, stats = revin(torch.randn(4, 3, 16), eps_mode=eps_mode, return_statistics=True)
    out = reverse(y, stats._replace(variance=-stats.variance - 1), eps_mode=eps_mode)
    if eps_mode == "add":  # below -eps: no real scale
        assert out.isnan().all()
    else:  # as a variance of 0
        zero = stats._replace(variance=torch.zeros_like(stats.variance))
        assert torch.equal(out, reverse(y, zero, eps_mode=eps_mode))


def test_statistics_survive_a_buffer_round_trip():
    buffer = io.BytesIO()
    _, _, stats = revin(torch.randn(2, 3, 10), return_statistics=True)
    torch.save(stats, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer).mean, stats.mean)


def test_detach_stops_gradients_through_the_statistics():
    x = torch.randn(2, 3, 20, requires_grad=True)
    y, _ = revin(x, detach=True)
    (y * torch.randn_like(y)).sum().backward()
    grad_detached = x.grad.clone()
    x.grad = None
    _, _, stats = revin(x.detach(), return_statistics=True)
    weights = torch.randn(2, 3, 20)
    torch.manual_seed(0)
    y, _, stats_live = revin(x, detach=True, return_statistics=True)
    assert not stats_live.mean.requires_grad and not stats_live.variance.requires_grad
    (y * weights).sum().backward()
    std = stats.variance.clamp(min=1e-5).sqrt()
    torch.testing.assert_close(x.grad, weights / std)
    assert grad_detached.shape == x.shape


def test_subtract_last_centers_on_the_last_step_with_the_usual_scale():
    x = torch.randn(3, 4, 30) * 2 + 5
    y, reverse_fn, stats = revin(x, subtract_last=True, return_statistics=True)
    torch.testing.assert_close(stats.mean, x[..., -1:])
    torch.testing.assert_close(stats.variance, x.var(-1, unbiased=False, keepdim=True))
    torch.testing.assert_close(y[..., -1], torch.zeros(3, 4))
    assert_round_trip(x, y, reverse_fn)


@pytest.mark.parametrize("special", ["constant", "quiet", "zero_gamma", "negative_gamma"])
def test_exact_inversion_in_the_cases_copies_get_wrong(special):
    torch.manual_seed(3)
    x = torch.randn(4, 3, 50) * 1e-2 + 1e4
    gamma, beta = torch.ones(3), torch.zeros(3)
    if special == "constant":
        x = torch.full((4, 3, 50), 42.0)
    elif special == "quiet":
        x = torch.randn(4, 3, 50) * 1e-4
    elif special == "zero_gamma":
        gamma = torch.tensor([0.0, 1.0, -0.0])
    else:
        gamma = torch.tensor([-1.0, -1e-9, -3.0])
    y, reverse_fn = revin(x, gamma, beta)
    assert torch.isfinite(y).all()
    assert_round_trip(x, y, reverse_fn)


def test_parity_with_the_itransformer_formula():
    torch.manual_seed(4)
    x = torch.randn(8, 7, 96) * 3 + 2
    gamma, beta = torch.randn(7, 1), torch.randn(7, 1)
    expected, expected_reverse, (mean, var) = itransformer_revin(x, gamma, beta)
    y, reverse_fn, stats = revin(x, gamma, beta, return_statistics=True)
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats.mean, mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats.variance, var, atol=1e-6, rtol=1e-6)
    y_hat = torch.randn(8, 7, 24)
    torch.testing.assert_close(reverse_fn(y_hat), expected_reverse(y_hat), atol=1e-5, rtol=1e-6)


def test_parity_with_the_original_revin_formula():
    torch.manual_seed(5)
    x = torch.randn(8, 96, 7) * 3 + 2
    weight, bias = torch.rand(7) + 0.5, torch.randn(7)
    expected, expected_reverse, _ = original_revin(x, weight, bias)
    y, reverse_fn = revin(x, weight, bias, pattern="b t v", eps_mode="add", detach=True)
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-6)
    y_hat = torch.randn(8, 24, 7)
    torch.testing.assert_close(reverse_fn(y_hat), expected_reverse(y_hat), atol=1e-5, rtol=1e-6)


def test_two_calls_in_flight_reverse_independently():
    a, b = torch.randn(2, 3, 20) + 100, torch.randn(2, 3, 20) * 50 - 7
    ya, reverse_a = revin(a)
    yb, reverse_b = revin(b)
    torch.testing.assert_close(reverse_a(ya), a)
    torch.testing.assert_close(reverse_b(yb), b)
