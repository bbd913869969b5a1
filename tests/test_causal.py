"""Causal (running) statistics: step t sees steps 0..t only."""

from __future__ import annotations

import pytest
import torch
from _helpers import assert_round_trip
from hypothesis import given, settings
from hypothesis import strategies as st

from revin_fn import revin

CAUSAL_METHODS = ["std", "minmax", "meanabs"]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 40), st.sampled_from(CAUSAL_METHODS), st.booleans())
def test_a_step_is_unchanged_when_later_steps_change(seed, cut, method, masked):
    torch.manual_seed(seed)
    x = torch.randn(2, 3, 41) * 4 + 10
    mask = torch.rand(2, 3, 41) > 0.3 if masked else None
    changed = x.clone()
    changed[..., cut:] = torch.randn(2, 3, 41 - cut) * 100 - 50
    y, _ = revin(x, method=method, causal=True, mask=mask)
    y_changed, _ = revin(changed, method=method, causal=True, mask=mask)
    assert torch.equal(y[..., :cut], y_changed[..., :cut])


@pytest.mark.parametrize("method", CAUSAL_METHODS)
@pytest.mark.parametrize("pattern", ["b v t", "b t v"])
def test_running_statistics_equal_the_statistics_of_each_prefix(method, pattern):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 30, dtype=torch.float64) * 3 + 100
    x = x if pattern == "b v t" else x.transpose(1, 2)
    time = pattern.split().index("t")
    _y, _, stats = revin(x, method=method, causal=True, pattern=pattern, return_statistics=True)
    assert stats.mean.shape == stats.variance.shape == x.shape
    for t in range(30):
        _, _, prefix = revin(
            x.narrow(time, 0, t + 1), method=method, pattern=pattern, return_statistics=True
        )
        torch.testing.assert_close(stats.mean.narrow(time, t, 1), prefix.mean)
        torch.testing.assert_close(stats.variance.narrow(time, t, 1), prefix.variance)


def test_causal_with_a_mask_uses_observed_steps_only():
    torch.manual_seed(1)
    x = torch.randn(1, 1, 20, dtype=torch.float64)
    mask = torch.rand(1, 1, 20) > 0.4
    mask[..., 0] = False
    _, _, stats = revin(x, causal=True, mask=mask, return_statistics=True)
    for t in range(20):
        seen = x[0, 0, : t + 1][mask[0, 0, : t + 1]]
        if seen.numel() == 0:
            assert stats.mean[0, 0, t] == 0 and stats.variance[0, 0, t] == 1
        else:
            assert stats.mean[0, 0, t].item() == pytest.approx(seen.mean().item(), abs=1e-12)
            assert stats.variance[0, 0, t].item() == pytest.approx(
                seen.var(unbiased=False).item(), abs=1e-12
            )


def test_reverse_is_stepwise_on_the_input_length_and_uses_the_last_step_on_forecasts():
    torch.manual_seed(2)
    x = torch.randn(4, 3, 48) * 5 + 20
    y, reverse_fn, stats = revin(x, causal=True, return_statistics=True)
    assert_round_trip(x, y, reverse_fn)
    forecast = torch.randn(4, 3, 12)
    last_scale = stats.variance[..., -1:].clamp(min=1e-5).sqrt()
    torch.testing.assert_close(reverse_fn(forecast), forecast * last_scale + stats.mean[..., -1:])
    same_length = torch.randn(4, 3, 48)
    torch.testing.assert_close(
        reverse_fn(same_length, stepwise=False), same_length * last_scale + stats.mean[..., -1:]
    )
    with pytest.raises(ValueError, match="stepwise=True needs y_hat with 48 steps"):
        reverse_fn(forecast, stepwise=True)


def test_causal_accuracy_on_long_series_with_an_offset():
    torch.manual_seed(3)
    x = torch.randn(2, 2, 5000) * 1e-2 + 1e3
    y, _ = revin(x, causal=True, eps=1e-12)
    centered = x.double() - x[..., :1].double()  # float64 running moments as the reference
    steps = torch.arange(1, 5001, dtype=torch.float64)
    mean = centered.cumsum(-1) / steps
    var = (centered.square().cumsum(-1) / steps - mean.square()).clamp(min=0)
    expected = (centered - mean) / var.clamp(min=1e-12).sqrt()
    assert (y[..., 10:].double() - expected[..., 10:]).abs().max() < 1e-4


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("eps_mode", ["clamp", "add", "add_std"])
@pytest.mark.parametrize("method", ["std", "minmax"])
def test_first_observed_step_takes_an_exact_gradient(method, eps_mode, masked):
    """The first observed step is its own location, so its output is beta whatever its value;
    its scale is the eps floor (eps itself with "add_std"), where the gradient's two paths,
    through x and through the running location, cancelled only to the rounding of 1 / eps.
    float32 gradients against float64 ones on the same data."""
    torch.manual_seed(0)
    x = torch.randn(4, 7, 48) * 2 + 3
    mask = torch.rand(4, 7, 48) > 0.3 if masked else None
    weights = torch.randn(4, 7, 48, dtype=torch.float64)
    grads = []
    for data in (x, x.double()):
        data = data.clone().requires_grad_()
        y, reverse_fn = revin(data, method=method, causal=True, eps_mode=eps_mode, mask=mask)
        loss = (y.double() * weights).sum() + reverse_fn(y * 2).double().sum()
        grads.append(torch.autograd.grad(loss, data)[0].double())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)
