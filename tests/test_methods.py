"""Statistics kinds: robust, minmax, meanabs next to std; every option works with every kind."""

from __future__ import annotations

import pytest
import torch
from _helpers import assert_round_trip
from hypothesis import given, settings
from hypothesis import strategies as st

from revin_fn import reverse, revin

METHODS = ["std", "robust", "minmax", "meanabs"]


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(METHODS),
    st.sampled_from(["b v t", "b t v"]),
    st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    st.sampled_from([0.0, 1e-3, 1.0, 30.0]),
    st.sampled_from([0.0, -5.0, 1e3]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_round_trip_for_every_method(
    method, pattern, dtype, scale, offset, affine, subtract_last, seed
):
    torch.manual_seed(seed)
    shape = (3, 4, 25) if pattern == "b v t" else (3, 25, 4)
    x = (torch.randn(shape, dtype=torch.float64) * scale + offset).to(dtype)
    args = (
        (torch.tensor([1.0, -2.0, 0.0, 0.5]), torch.tensor([0.0, 1.0, -1.0, 0.0])) if affine else ()
    )
    y, reverse_fn, stats = revin(
        x,
        *args,
        method=method,
        pattern=pattern,
        subtract_last=subtract_last,
        return_statistics=True,
    )
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert_round_trip(x, y, reverse_fn)
    y_hat = torch.randn(shape, dtype=dtype)
    # the statistics do not record the input's dtype: reverse() answers in theirs (or y_hat's)
    wide = y_hat.to(torch.promote_types(stats.mean.dtype, dtype))
    got, want = reverse(y_hat, stats, pattern=pattern), reverse_fn(wide)
    # a few ulps of the terms of offset + y_hat * gain, which cancel where gamma is guarded
    # (gain = scale / 1e-5, y_hat near beta)
    offset = reverse_fn(torch.zeros_like(wide))
    terms = offset.abs() + ((reverse_fn(torch.ones_like(wide)) - offset) * wide).abs()
    assert got.dtype == want.dtype
    assert ((got - want).abs() <= 1e-6 * terms + 1e-5).all(), (got - want).abs().max()


def test_robust_uses_median_and_iqr_over_1349():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 100.0]]])  # an outlier barely moves the statistics
    _, _, stats = revin(x, method="robust", return_statistics=True)
    assert stats.mean.item() == 3.0
    assert stats.variance.item() == pytest.approx((2.0 / 1.349) ** 2)


def test_robust_falls_back_to_mean_absolute_deviation_then_to_eps():
    spiky = torch.tensor([[[5.0] * 9 + [15.0], [7.0] * 10]])  # IQR 0; then everything 0
    _, _, stats = revin(spiky, method="robust", eps=1e-3, return_statistics=True)
    assert stats.mean[0, :, 0].tolist() == [5.0, 7.0]
    assert stats.variance[0, 0, 0].item() == pytest.approx(1.0)  # mean |x - 5| = 1
    assert stats.variance[0, 1, 0].item() == 0.0
    y, reverse_fn = revin(spiky, method="robust", eps=1e-3)
    assert torch.isfinite(y).all() and torch.equal(y[0, 1], torch.zeros(10))
    assert_round_trip(spiky, y, reverse_fn)


def test_minmax_maps_each_instance_to_the_unit_interval():
    x = torch.randn(4, 3, 50) * 7 + 3
    y, _, stats = revin(x, method="minmax", return_statistics=True)
    torch.testing.assert_close(y.amin(-1), torch.zeros(4, 3))
    torch.testing.assert_close(y.amax(-1), torch.ones(4, 3))
    torch.testing.assert_close(stats.mean, x.amin(-1, keepdim=True))


def test_minmax_floors_a_zero_range():
    y, _, stats = revin(
        torch.full((1, 1, 5), 3.0), method="minmax", eps=1e-4, return_statistics=True
    )
    assert stats.variance.item() == 0 and torch.equal(y, torch.zeros(1, 1, 5))


def test_meanabs_has_location_zero_and_scale_mean_absolute_value():
    x = torch.randn(4, 3, 50) * 2 + 1
    y, _, stats = revin(x, method="meanabs", return_statistics=True)
    assert torch.equal(stats.mean, torch.zeros(4, 3, 1))
    torch.testing.assert_close(stats.variance, x.abs().mean(-1, keepdim=True).square())
    torch.testing.assert_close(y, x / x.abs().mean(-1, keepdim=True))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_honours_variates_and_shift(method):
    x = torch.randn(2, 5, 40) * 3 + 2
    gamma = torch.tensor([1.0, -2.0, 3.0, 0.5, 1.0])
    y, reverse_fn, stats = revin(x, gamma, torch.ones(5), method=method, return_statistics=True)
    torch.testing.assert_close(reverse_fn(y[:, 1:2], variates=1), x[:, 1:2], atol=1e-4, rtol=1e-5)
    width = torch.rand(2, 5, 6)
    scale = stats.variance.clamp(min=1e-5).sqrt()
    torch.testing.assert_close(
        reverse_fn(width, shift=False), width * scale / gamma.abs().view(5, 1)
    )


def test_robust_round_trip_when_the_first_value_dwarfs_the_median():
    # hypothesis found it: the median of this window is 1.8e-5 while its first value is ~1e-3,
    # so shift + median rounds at 1e-10, above the round trip's bound at the median's size
    torch.manual_seed(230)
    x = (torch.randn((3, 4, 25), dtype=torch.float64) * 0.001).float()
    y, reverse_fn = revin(x, method="robust")
    assert_round_trip(x, y, reverse_fn)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("outlier", [1e5, 1e7])
def test_robust_is_accurate_when_the_first_observed_value_is_an_outlier(masked, outlier):
    """Outliers are what the robust statistics are for: one at the first (observed) step must
    not round the other values at its size (the shift is the lower median, not the first
    value). Against the same float32 data in float64, to the documented 1e-5."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96)
    start = 3 if masked else 0
    x[:, :, start] = outlier
    mask = torch.arange(96) >= start if masked else None
    kwargs = {"method": "robust", "mask": None if mask is None else mask.expand(2, 3, 96)}
    y, _, stats = revin(x, return_statistics=True, **kwargs)
    y64, _, stats64 = revin(x.double(), return_statistics=True, **kwargs)
    inliers = x.abs() < 10
    assert (y.double() - y64)[inliers].abs().max() <= 1e-5
    torch.testing.assert_close(stats.mean.double(), stats64.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(stats.variance.double(), stats64.variance, rtol=1e-5, atol=0)
