"""float64 gradcheck through forward and reverse, for x, gamma and beta, every option."""

from __future__ import annotations

import pytest
import torch

from revin_fn import revin

OPTIONS = [
    {},
    {"detach": True},
    {"eps_mode": "add"},
    {"eps_mode": "add", "detach": True},
    {"subtract_last": True},
    {"subtract_last": True, "detach": True},
    {"pattern": "b t v"},
    {"method": "robust"},
    {"method": "minmax"},
    {"method": "meanabs"},
    {"causal": True},
    {"causal": True, "method": "minmax"},
    {"mask": "observed"},
    {"mask": "observed", "causal": True},
]


@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default"
)
def test_gradcheck_forward_and_reverse(options):
    options = dict(options)
    torch.manual_seed(0)
    pattern = options.pop("pattern", "b v t")
    shape = (2, 3, 9) if pattern == "b v t" else (2, 9, 3)
    # detached statistics are constants by definition, so the x-gradient is checked separately
    x = (torch.randn(*shape, dtype=torch.float64) * 2 + 1).requires_grad_(not options.get("detach"))
    gamma = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    beta = torch.randn(3, dtype=torch.float64, requires_grad=True)
    forecast = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    if options.get("mask") == "observed":
        options["mask"] = torch.rand(shape) > 0.3

    def forward(x, gamma, beta, forecast):
        y, reverse_fn = revin(x, gamma, beta, pattern=pattern, **options)
        return (
            y,
            reverse_fn(forecast),
            reverse_fn(forecast[..., :4] if pattern == "b v t" else forecast[:, :4]),
        )

    assert torch.autograd.gradcheck(forward, (x, gamma, beta, forecast))


def test_gradcheck_at_variance_below_eps_and_tiny_gamma():
    x = (torch.randn(2, 3, 8, dtype=torch.float64) * 1e-4).requires_grad_()
    gamma = torch.tensor([5e-6, -2.0, 1.0], dtype=torch.float64, requires_grad=True)  # clamped
    beta = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def forward(x, gamma, beta):
        y, reverse_fn = revin(x, gamma, beta)
        return y, reverse_fn(y * 2)

    assert torch.autograd.gradcheck(forward, (x, gamma, beta))


@pytest.mark.parametrize("method", ["std", "robust", "minmax", "meanabs"])
@pytest.mark.parametrize("eps_mode", ["clamp", "add"])
@pytest.mark.parametrize("subtract_last", [False, True])
def test_detach_gradient_treats_the_statistics_as_constants(method, eps_mode, subtract_last):
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    x[0, 0] = torch.tensor([0.0] * 7 + [10.0])  # robust: IQR 0, the mean absolute deviation
    x.requires_grad_()
    gamma = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    options = {"eps_mode": eps_mode, "subtract_last": subtract_last, "method": method}
    y, reverse_fn, _stats = revin(x, gamma, detach=True, return_statistics=True, **options)
    weights = torch.randn_like(y)
    grad = torch.autograd.grad((y * weights).sum(), x, retain_graph=True)[0]
    _, _, frozen = revin(x.detach(), gamma, return_statistics=True, **options)
    scale = (
        frozen.variance.clamp(min=1e-5) if eps_mode == "clamp" else frozen.variance + 1e-5
    ).sqrt()
    torch.testing.assert_close(grad, weights * gamma.view(3, 1) / scale)
    out_grad = torch.autograd.grad(reverse_fn(y * 3).sum(), x)[0]
    torch.testing.assert_close(out_grad, torch.full_like(x, 3.0))


@pytest.mark.parametrize("method", ["std", "minmax"])
def test_detached_causal_statistics_are_constants_at_every_step(method):
    """The first step too: y_0 = (x_0 - x_0) / scale_0 with the statistics held fixed has the
    gradient gamma' / scale_0 (1 / sqrt(eps) here), not 0."""
    x = (torch.randn(2, 3, 8, dtype=torch.float64) * 2 + 1).requires_grad_()
    y, _, stats = revin(x, method=method, causal=True, detach=True, return_statistics=True)
    weights = torch.randn_like(y)
    grad = torch.autograd.grad((y * weights).sum(), x)[0]
    scale = stats.variance.clamp(min=1e-5).sqrt()
    torch.testing.assert_close(grad, weights / scale)
