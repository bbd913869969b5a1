"""Probabilistic outputs: distributions and quantiles predicted in normalized space."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, StudentT

from revin_fn import RevINError, revin


def setup(gamma_values=(2.0, -1.5, 1.0)):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, dtype=torch.float64) * 5 + 30
    gamma = torch.tensor(gamma_values, dtype=torch.float64)
    beta = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)
    return revin(x, gamma, beta, return_statistics=True)


def test_normal_maps_to_the_normal_in_data_units():
    _, reverse_fn, _stats = setup()
    loc, scale = (
        torch.randn(4, 3, 12, dtype=torch.float64),
        torch.rand(4, 3, 12, dtype=torch.float64) + 0.1,
    )
    mapped = reverse_fn.distribution(Normal(loc, scale))
    expected = Normal(reverse_fn(loc), reverse_fn(scale, shift=False))
    value = expected.sample()
    torch.testing.assert_close(mapped.log_prob(value), expected.log_prob(value))
    torch.testing.assert_close(mapped.mean, expected.mean)
    torch.testing.assert_close(mapped.stddev, expected.stddev)
    torch.testing.assert_close(mapped.variance, expected.variance)
    levels = torch.full((4, 3, 12), 0.9, dtype=torch.float64)
    torch.testing.assert_close(mapped.icdf(levels), expected.icdf(levels))
    torch.testing.assert_close(mapped.cdf(value), expected.cdf(value))
    assert mapped.sample((5,)).shape == (5, 4, 3, 12)


def test_samples_are_the_reverse_of_normalized_samples():
    _, reverse_fn, _ = setup()
    base = StudentT(
        4.0, torch.zeros(4, 3, 6, dtype=torch.float64), torch.ones(4, 3, 6, dtype=torch.float64)
    )
    torch.manual_seed(5)
    normalized = base.sample()
    torch.manual_seed(5)
    mapped = reverse_fn.distribution(base).sample()
    torch.testing.assert_close(mapped, reverse_fn(normalized))


def test_distribution_honours_variates():
    _, reverse_fn, _ = setup()
    loc = torch.randn(4, 1, 12, dtype=torch.float64)
    mapped = reverse_fn.distribution(Normal(loc, torch.ones_like(loc)), variates=[1])
    torch.testing.assert_close(mapped.mean, reverse_fn(loc, variates=[1]))
    with pytest.raises(
        RevINError,
        match=r"reverse_fn.distribution\(dist\): dist.batch_shape has shape \(4, 1, 12\)",
    ):
        reverse_fn.distribution(Normal(loc, torch.ones_like(loc)))


def test_quantiles_keep_their_order_when_gamma_is_negative():
    _, reverse_fn, _ = setup()
    median = torch.randn(4, 3, 12, dtype=torch.float64)
    q_hat = torch.stack([median - 1, median, median + 1], dim=-1)  # levels 0.1, 0.5, 0.9
    out = reverse_fn.quantiles(q_hat)
    assert out.shape == (4, 3, 12, 3)
    assert (out.diff(dim=-1) >= 0).all()
    naive = torch.stack([reverse_fn(q_hat[..., k]) for k in range(3)], dim=-1)
    torch.testing.assert_close(out[:, [0, 2]], naive[:, [0, 2]])  # gamma > 0: unchanged
    torch.testing.assert_close(out[:, 1], naive[:, 1].flip(-1))  # gamma < 0: reversed
    assert (naive[:, 1].diff(dim=-1) < 0).all()


def test_quantiles_honour_variates():
    _, reverse_fn, _ = setup()
    q_hat = torch.randn(4, 1, 12, 5, dtype=torch.float64).sort(-1).values
    out = reverse_fn.quantiles(q_hat, variates=1)
    assert (out.diff(dim=-1) >= 0).all()
    torch.testing.assert_close(out.flip(-1)[..., 0], reverse_fn(q_hat[..., 0], variates=1))


def test_causal_distribution_and_quantiles_take_stepwise():
    """A forecast as long as the look-back, under causal statistics: stepwise=False applies
    the last step's statistics to every step, as reverse_fn(..., stepwise=False) does."""
    x = torch.randn(2, 3, 8) * 3 + 5
    _, reverse_fn = revin(x, causal=True)
    loc = torch.randn(2, 3, 8)
    want = reverse_fn(loc, stepwise=False)
    dist = reverse_fn.distribution(Normal(loc, 1.0), stepwise=False)
    torch.testing.assert_close(dist.mean, want)
    median = reverse_fn.quantiles(loc.unsqueeze(-1), stepwise=False)[..., 0]
    torch.testing.assert_close(median, want)
    assert not torch.allclose(reverse_fn.distribution(Normal(loc, 1.0)).mean, want)  # stepwise


def test_distribution_validates_as_its_base():
    _, reverse_fn = revin(torch.randn(2, 3, 8))
    base = Normal(torch.zeros(2, 3, 8), 1.0, validate_args=False)
    target = torch.randn(2, 3, 8)
    target[0, 0, 0] = float("nan")  # a missing step
    log_prob = reverse_fn.distribution(base).log_prob(target)
    assert log_prob[0, 0, 0].isnan() and log_prob[1].isfinite().all()
    with pytest.raises(ValueError):  # a validating base: the target is checked
        reverse_fn.distribution(Normal(torch.zeros(2, 3, 8), 1.0, validate_args=True)).log_prob(
            target
        )


def test_distribution_entropy_and_expand():
    x = torch.randn(2, 3, 8) * 3 + 5
    _, reverse_fn = revin(x, torch.tensor([1.0, -2.0, 0.5]), torch.zeros(3))
    loc = torch.randn(2, 3, 4)
    dist = reverse_fn.distribution(Normal(loc, 0.7))
    gain = reverse_fn(torch.ones_like(loc)) - reverse_fn(torch.zeros_like(loc))
    want = Normal(reverse_fn(loc), 0.7 * gain.abs())  # the same law, written out
    torch.testing.assert_close(dist.entropy(), want.entropy())
    wide = dist.expand((5, 2, 3, 4))  # e.g. under Independent(...).expand or a mixture
    assert wide.batch_shape == (5, 2, 3, 4)
    torch.testing.assert_close(
        wide.log_prob(want.mean), want.log_prob(want.mean).expand(5, -1, -1, -1)
    )
