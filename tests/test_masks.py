"""Missing values: masked statistics equal those of the observed values alone, nothing leaks."""

from __future__ import annotations

import pytest
import torch
from _helpers import assert_round_trip
from hypothesis import given, settings
from hypothesis import strategies as st

from revin_fn import revin

METHODS = ["std", "robust", "minmax", "meanabs"]


def statistics_of(values: torch.Tensor, method: str) -> tuple[float, float]:
    """Location and squared scale of one 1-D series, from the definitions in the README."""
    if method == "std":
        return values.mean().item(), values.var(unbiased=False).item()
    if method == "robust":
        q1, median, q3 = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=values.dtype))
        scale = (q3 - q1) / 1.349
        if scale == 0:
            scale = (values - median).abs().mean()
        return median.item(), (scale**2).item()
    if method == "minmax":
        return values.min().item(), ((values.max() - values.min()) ** 2).item()
    return 0.0, (values.abs().mean() ** 2).item()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**16),
    st.sampled_from(METHODS),
    st.floats(0.0, 0.9),
    st.sampled_from(["bool", "nan"]),
)
def test_masked_statistics_equal_the_statistics_of_the_observed_values(seed, method, drop, kind):
    torch.manual_seed(seed)
    x = torch.randn(3, 4, 30, dtype=torch.float64) * 5 + 20
    observed = torch.rand(3, 4, 30) >= drop
    if kind == "nan":
        x = x.masked_fill(~observed, float("nan"))
        mask = "nan"
    else:
        x = x.masked_fill(~observed, 1e30)  # garbage in masked slots must not matter
        mask = observed
    y, reverse_fn, stats = revin(x, mask=mask, method=method, return_statistics=True)
    for b in range(3):
        for v in range(4):
            values = x[b, v][observed[b, v]]
            if values.numel() == 0:
                assert stats.mean[b, v, 0] == 0 and stats.variance[b, v, 0] == 1
                continue
            loc, variance = statistics_of(values, method)
            assert stats.mean[b, v, 0].item() == pytest.approx(loc, rel=1e-9, abs=1e-9)
            assert stats.variance[b, v, 0].item() == pytest.approx(variance, rel=1e-9, abs=1e-9)
    assert torch.isfinite(stats.mean).all() and torch.isfinite(stats.variance).all()
    assert torch.equal(y[~observed].isnan(), x[~observed].isnan())  # masked slots as given
    assert (y[~observed] == x[~observed]).all() or kind == "nan"
    assert torch.isfinite(y[observed]).all()
    assert_round_trip(x, y, reverse_fn, mask=observed)


def test_masked_slots_do_not_leak_into_other_instances():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20)
    mask = torch.ones(2, 3, 20, dtype=torch.bool)
    mask[0, 1, 5:] = False
    poisoned = x.clone()
    poisoned[0, 1, 5:] = float("nan")
    y, _ = revin(poisoned, mask=mask)
    clean, _ = revin(x)
    keep = torch.ones(2, 3, dtype=torch.bool)
    keep[0, 1] = False
    torch.testing.assert_close(y[keep], clean[keep])
    assert torch.isfinite(y[0, 1, :5]).all() and y[0, 1, 5:].isnan().all()


def test_no_observed_step_gives_mean_zero_and_unit_scale():
    x = torch.full((2, 2, 10), float("nan"))
    x[1] = torch.randn(2, 10)
    _y, reverse_fn, stats = revin(x, mask="nan", return_statistics=True)
    assert torch.equal(stats.mean[0], torch.zeros(2, 1)) and torch.equal(
        stats.variance[0], torch.ones(2, 1)
    )
    forecast = torch.randn(2, 2, 5)
    torch.testing.assert_close(reverse_fn(forecast)[0], forecast[0])


def test_one_observed_step_gives_its_value_and_the_eps_floor():
    x = torch.randn(1, 1, 10)
    mask = torch.zeros(1, 1, 10, dtype=torch.bool)
    mask[..., 3] = True
    y, _, stats = revin(x, mask=mask, return_statistics=True)
    assert stats.mean.item() == x[0, 0, 3].item() and stats.variance.item() == 0
    assert y[0, 0, 3].item() == 0


def test_subtract_last_uses_the_last_observed_step():
    x = torch.randn(2, 3, 12)
    mask = torch.ones(2, 3, 12, dtype=torch.bool)
    mask[0, 0, 9:] = False
    y, reverse_fn, stats = revin(x, mask=mask, subtract_last=True, return_statistics=True)
    assert stats.mean[0, 0, 0] == x[0, 0, 8] and stats.mean[1, 2, 0] == x[1, 2, 11]
    assert_round_trip(x, y, reverse_fn, mask=mask)


def test_mask_broadcasts_over_variates():
    x = torch.randn(2, 3, 12)
    steps = torch.rand(2, 1, 12) > 0.3
    expected = revin(x, mask=steps.expand(2, 3, 12))[0]
    torch.testing.assert_close(revin(x, mask=steps)[0], expected)


def test_gradients_stay_finite_with_nan_in_masked_slots():
    x = torch.randn(2, 3, 12)
    x[0, 0, :4] = float("nan")
    x.requires_grad_(True)
    gamma = torch.ones(3, requires_grad=True)
    y, reverse_fn = revin(x, gamma, mask="nan")
    out = reverse_fn(torch.nan_to_num(y) * 2)
    (out.nan_to_num().sum() + y.nan_to_num().sum()).backward()
    assert torch.isfinite(gamma.grad).all() and torch.isfinite(x.grad[~x.isnan()]).all()
