"""Inputs as users pass them: swapped axes, masks from peers, devices, dtypes, layouts, empties."""

from __future__ import annotations

import warnings

import pytest
import torch

from revin_fn import RevIN, RevINError, RevINTypeError, revin


def test_default_pattern_with_fewer_steps_than_variates_warns():
    with pytest.warns(UserWarning, match=r'default pattern "b v t" .* pattern="b t v"') as got:
        revin(torch.randn(32, 96, 7))
    assert [w.filename for w in got] == [__file__]  # the warning points at the user's line


@pytest.mark.parametrize(
    "call",
    [
        lambda: revin(torch.randn(32, 96, 7), pattern="b v t"),  # explicit: the user's choice
        lambda: revin(torch.randn(32, 7, 96)),
        lambda: revin(torch.randn(32, 96, 7), torch.ones(96)),  # gamma confirms the axis
        lambda: RevIN(96)(torch.randn(32, 96, 7)),
    ],
)
def test_no_warning_when_the_axes_are_confirmed(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert call()[0].shape


def test_the_module_warns_once():
    with pytest.warns(UserWarning) as record:
        RevIN(affine=False)(torch.randn(32, 96, 7))
    assert len([w for w in record if issubclass(w.category, UserWarning)]) == 1


def test_no_warning_while_compiling():
    compiled = torch.compile(lambda x: revin(x)[0], fullgraph=True, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert compiled(torch.randn(4, 8, 3)).shape == (4, 8, 3)


def test_neuralforecast_mask_and_hf_observed_indicator():
    x = torch.randn(8, 48, 3)
    mask = (torch.rand(8, 48) > 0.2).float()  # neuralforecast: (B, T), float 0/1
    y, _ = revin(x, pattern="b t v", mask=mask)
    expected, _ = revin(x, pattern="b t v", mask=mask.bool().unsqueeze(-1).expand(x.shape))
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    observed = (torch.rand(8, 48, 3) > 0.2).to(torch.float32)  # HF observed_indicator
    y, _ = revin(x, pattern="b t v", mask=observed)
    expected, _ = revin(x, pattern="b t v", mask=observed.bool())
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.parametrize("which", ["gamma", "beta", "mask"])
def test_another_device_is_named(which):
    x = torch.randn(2, 3, 10)
    kwargs = {
        "gamma": {"gamma": torch.ones(3, device="meta")},
        "beta": {"beta": torch.ones(3, device="meta")},
        "mask": {"mask": torch.ones(2, 3, 10, dtype=torch.bool, device="meta")},
    }[which]
    call = {"gamma": r"revin\(x, gamma\)", "beta": r"revin\(x, None, beta\)"}.get(
        which, r"revin\(x\)"
    )
    with pytest.raises(RevINError, match=rf"^{call}: {which} is on meta, expected cpu"):
        revin(x, **kwargs)


def test_outputs_on_another_device_are_named():
    _, reverse_fn = revin(torch.randn(2, 3, 10))
    for call in (reverse_fn, reverse_fn.normalize):
        with pytest.raises(RevINError, match=r"is on meta, expected cpu like the statistics"):
            call(torch.randn(2, 3, 4, device="meta"))


def test_zero_variates_give_empty_results():
    x = torch.randn(2, 10, 0)
    y, reverse_fn = revin(x, pattern="b t v")
    assert y.shape == (2, 10, 0) and reverse_fn(y).shape == (2, 10, 0)
    _, reverse_fn = revin(torch.randn(2, 10, 3), pattern="b t v")
    for variates in (slice(0, 0), []):
        assert reverse_fn(torch.randn(2, 5, 0), variates).shape == (2, 5, 0)
        assert reverse_fn.normalize(torch.randn(2, 5, 0), variates).shape == (2, 5, 0)


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (torch.randn(2, 3, 10).to(torch.float8_e4m3fn), RevINTypeError,
         r"x must be a floating-point tensor, got dtype torch.float8_e4m3fn \(supported: "
         r"float16, bfloat16, float32, float64\)"),
        (torch.randn(2, 3, 10, dtype=torch.complex64), RevINTypeError,
         r"x must be a floating-point tensor, got dtype torch.complex64 \(supported"),
        (torch.randn(2, 3, 10).to_sparse(), RevINError,
         r"x must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
        (torch.nested.nested_tensor([torch.randn(3, 10), torch.randn(3, 7)]), RevINError,
         r"x must be a dense \(strided\) tensor, got a nested tensor"),
    ],
)  # fmt: skip
def test_unsupported_inputs_are_refused_in_the_forward(x, error, message):
    with pytest.raises(error, match=r"^revin\(x\): " + message):
        revin(x)


def test_unsupported_outputs_are_refused():
    _, reverse_fn = revin(torch.randn(2, 3, 10))
    with pytest.raises(RevINTypeError, match=r"^reverse_fn\(y_hat\): y_hat must be a floating"):
        reverse_fn(torch.randn(2, 3, 4).to(torch.float8_e4m3fn))
    with pytest.raises(RevINError, match=r"^reverse_fn.normalize\(t\): t must be a dense"):
        reverse_fn.normalize(torch.randn(2, 3, 4).to_sparse())


@pytest.mark.parametrize("eps", ["1e-5", None, True, torch.tensor(1e-5)])
def test_eps_of_a_wrong_type_is_named(eps):
    with pytest.raises(RevINTypeError, match=r"^revin\(x\): eps must be a float"):
        revin(torch.randn(2, 3, 10), eps=eps)
