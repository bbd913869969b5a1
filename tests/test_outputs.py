"""reverse_fn.normalize and output layouts (pattern=): the statistics applied to other tensors."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from revin_fn import RevINError, revin


def _call(pattern: str = "b t v", **kwargs):
    x = torch.randn(4, 48, 3) * torch.tensor([1.0, 10.0, 100.0]) + torch.tensor([5.0, -50.0, 1e3])
    if pattern == "b v t":
        x = x.transpose(1, 2).contiguous()
    return x, *revin(x, pattern=pattern, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"subtract_last": True},
        {"method": "robust"},
        {"method": "minmax"},
        {"method": "meanabs"},
    ],
)
def test_normalize_of_the_input_is_y(kwargs):
    x, y, reverse_fn = _call(**kwargs)
    torch.testing.assert_close(reverse_fn.normalize(x), y, atol=2e-5, rtol=1e-5)


def test_normalize_is_the_inverse_of_reverse_fn_for_any_horizon():
    gamma, beta = torch.tensor([0.5, 2.0, -1.5]), torch.tensor([0.1, 0.0, -0.3])
    _x, _y, reverse_fn = _call(gamma=gamma, beta=beta)
    target = torch.randn(4, 24, 3) * 10 + 100
    torch.testing.assert_close(reverse_fn(reverse_fn.normalize(target)), target)
    y_hat = torch.randn(4, 7, 3)
    torch.testing.assert_close(reverse_fn.normalize(reverse_fn(y_hat)), y_hat, atol=1e-5, rtol=0)


def test_normalize_with_variates_and_a_pattern():
    x, y, reverse_fn = _call()
    target = x[..., [2]]
    torch.testing.assert_close(
        reverse_fn.normalize(target, variates=[2]), y[..., [2]], atol=2e-5, rtol=1e-5
    )
    moved = x.permute(1, 0, 2)[..., 1:]  # (t, b, v) holding variates 1 and 2
    picked = reverse_fn.normalize(moved, variates=slice(1, 3), pattern="t b v")
    torch.testing.assert_close(picked, y.permute(1, 0, 2)[..., 1:], atol=2e-5, rtol=1e-5)


def test_normalize_gradients_reach_the_target_and_the_statistics():
    gamma = torch.ones(3, requires_grad=True)
    x = (torch.randn(4, 48, 3) * 3).requires_grad_()
    _, reverse_fn = revin(x, gamma, pattern="b t v")
    target = torch.randn(4, 12, 3, requires_grad=True)
    reverse_fn.normalize(target).square().sum().backward()
    for grad in (gamma.grad, x.grad, target.grad):
        assert grad is not None and grad.abs().sum() > 0 and grad.isfinite().all()


def test_normalize_dtype_rule():
    x, _, reverse_fn = _call()
    assert reverse_fn.normalize(torch.randn(4, 5, 3, dtype=torch.float16)).dtype == torch.float32
    x16, _y16, reverse16 = (lambda x: (x, *revin(x, pattern="b t v")))(x.half())
    assert reverse16.normalize(x16).dtype == torch.float16
    assert reverse16.normalize(x16.double()).dtype == torch.float64


def test_loss_in_normalized_units_recipe():
    _x, _y, reverse_fn = _call()
    target = torch.randn(4, 12, 3) * 10 + 100
    y_hat = torch.zeros(4, 12, 3, requires_grad=True)
    loss = torch.nn.functional.mse_loss(y_hat, reverse_fn.normalize(target))
    loss.backward()
    assert loss.isfinite() and y_hat.grad is not None


@pytest.mark.parametrize(
    ("pattern", "out", "shape"),
    [
        ("b v t", "t b v d", (48, 4, 3, 8)),  # lucidrains' iTransformer hidden tokens
        ("b t v", "s b t v", (5, 4, 12, 3)),  # samples
        ("b v t", "b v t q", (4, 3, 12, 9)),  # quantiles as a plain output
        ("b t v", "v t b", (3, 12, 4)),  # a permutation
    ],
)
def test_reverse_with_an_output_pattern_broadcasts_over_new_axes(pattern, out, shape):
    _x, _y, reverse_fn = _call(pattern)
    y_hat = torch.randn(shape)
    x_hat = reverse_fn(y_hat, pattern=out)
    assert x_hat.shape == y_hat.shape
    names = out.split()
    new = [n for n in names if n not in pattern.split()]
    plain = y_hat
    for name in new:  # take the first entry of every new axis, then move to the input layout
        plain = plain.select([n for n in names if n in pattern.split() or n in new].index(name), 0)
        names = [n for n in names if n != name]
    expected = reverse_fn(plain.permute([names.index(n) for n in pattern.split()]))
    got = x_hat
    names = out.split()
    for name in new:
        got = got.select(names.index(name), 0)
        names = [n for n in names if n != name]
    torch.testing.assert_close(got.permute([names.index(n) for n in pattern.split()]), expected)


def test_output_pattern_does_not_copy_the_statistics_into_y_hat_shape():
    _x, _y, reverse_fn = _call("b v t")
    gain = reverse_fn._frame.gain
    from revin_fn._outputs import output_layout

    out = output_layout(reverse_fn._frame.layout, "t b v d", (48, 4, 3, 8), "y_hat")
    view = out.arrange(gain)
    assert view.untyped_storage().data_ptr() == gain.untyped_storage().data_ptr()
    assert view.shape == (1, 4, 3, 1)


def test_output_pattern_with_variates_distribution_and_quantiles():
    _x, _y, reverse_fn = _call("b v t", gamma=torch.tensor([1.0, -2.0, 0.5]))
    y_hat = torch.randn(6, 4, 2, 12)  # samples of variates 0 and 2
    x_hat = reverse_fn(y_hat, variates=[0, 2], pattern="s b v t")
    torch.testing.assert_close(x_hat[3], reverse_fn(y_hat[3], variates=[0, 2]))
    dist = Normal(torch.zeros(12, 4, 3), torch.ones(12, 4, 3))
    law = reverse_fn.distribution(dist, pattern="t b v")
    torch.testing.assert_close(law.mean.permute(1, 2, 0), reverse_fn(torch.zeros(4, 3, 12)))
    q_hat = torch.randn(12, 4, 3, 5).sort(-1).values
    q = reverse_fn.quantiles(q_hat, pattern="t b v")
    torch.testing.assert_close(
        q.permute(1, 2, 0, 3), reverse_fn.quantiles(q_hat.permute(1, 2, 0, 3))
    )
    assert (q.diff(dim=-1) >= 0).all()


@pytest.mark.parametrize(
    ("pattern", "x_shape", "out", "shape", "message"),
    [
        ("b v t", (4, 3, 12), "t b d", (12, 4, 8), r"lacks the input axes v of pattern \"b v t\""),
        (
            "b v t",
            (4, 3, 12),
            "b v t d",
            (4, 3, 12),
            r"has 3 dimensions, pattern \"b v t d\" names 4",
        ),
        ("b v t", (4, 3, 12), "b v (t d)", (4, 3, 12), r"name each axis on its own"),
        (
            "b v t",
            (4, 3, 12),
            "... v t",
            (4, 3, 12),
            r"has \"...\" but the input pattern \"b v t\"",
        ),
        ("... v t", (3, 12), "b ... v t", (1, 1, 3, 12), r"stand for 1 axes, but it stands for 0"),
        ("... v t", (3, 12), "v t", (3, 12), None),
        ("... v t", (2, 3, 3, 12), "... v t d", (2, 3, 3, 12, 5), None),
        ("... v t", (2, 3, 12), "v t d", (3, 12, 5), r"lacks the input axes \.\.\."),
        (
            "b v t",
            (4, 3, 12),
            "b v t d",
            (4, 2, 12, 8),
            r"expected \(4, 3, T, \*\) \(any T, any size",
        ),
        ("b v t", (4, 3, 12), "b v t v", (4, 3, 12, 3), r"not a valid einops pattern"),
    ],
)
def test_output_pattern_errors(pattern, x_shape, out, shape, message):
    _y, reverse_fn = revin(torch.randn(x_shape), pattern=pattern)
    if message is None:
        assert reverse_fn(torch.randn(shape), pattern=out).shape == shape
        return
    with pytest.raises(RevINError, match=r"^reverse_fn\(y_hat\): .*" + message):
        reverse_fn(torch.randn(shape), pattern=out)


def test_compile_fullgraph_reverse_with_a_pattern_and_a_bool_variates_mask():
    _x, _y, reverse_fn = _call("b v t")
    keep = torch.tensor([True, False, True])

    def step(y_hat: torch.Tensor) -> torch.Tensor:
        return reverse_fn(y_hat, variates=keep, pattern="t b v d")

    y_hat = torch.randn(12, 4, 2, 8)
    compiled = torch.compile(step, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(y_hat), step(y_hat))
    torch.testing.assert_close(
        step(y_hat)[..., 0].permute(1, 2, 0),
        reverse_fn(y_hat[..., 0].permute(1, 2, 0), variates=[0, 2]),
    )
