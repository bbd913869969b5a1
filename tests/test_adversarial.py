"""Adversarial checks of the documented guarantees: aliasing, the dtype rule, masks, shapes."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import revin_fn
from revin_fn import RevINError, revin
from revin_fn._options import CAUSAL_METHODS, METHODS

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _storages(*tensors: torch.Tensor | None) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if t is not None and t.numel()}


def _options(draw: st.DrawFn) -> dict:
    method = draw(st.sampled_from(METHODS))
    causal = draw(st.booleans()) and method in CAUSAL_METHODS
    return {
        "method": method,
        "causal": causal,
        "subtract_last": draw(st.booleans()) and not causal,
        "detach": draw(st.booleans()),
        "eps_mode": draw(st.sampled_from(("clamp", "add", "add_std"))),
    }


@st.composite
def calls(draw: st.DrawFn) -> tuple[torch.Tensor, dict, str]:
    pattern = draw(st.sampled_from(("b v t", "b t v")))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 6)))
    dtype = draw(st.sampled_from(DTYPES))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))) * 3
    kwargs = _options(draw)
    if draw(st.booleans()):
        kwargs["mask"] = torch.rand(shape) > 0.3
    if draw(st.booleans()):
        variates = shape[pattern.split().index("v")]
        kwargs["gamma"] = torch.rand(variates) + 0.5
        kwargs["beta"] = torch.randn(variates)
    return x.to(dtype), kwargs, pattern


@settings(max_examples=80, deadline=None)
@given(calls(), st.sampled_from(("reference", "native")))
def test_nothing_returned_shares_storage_with_x(call, backend):
    x, kwargs, pattern = call
    try:
        with revin_fn.backends.use(backend):
            y, reverse_fn, stats = revin(x, pattern=pattern, return_statistics=True, **kwargs)
            x_hat = reverse_fn(y)
            again = reverse_fn.normalize(x)
    except RevINError as error:
        assert "cannot take this call" in str(error)  # the native backend declines it
        return
    frame = reverse_fn._frame
    held = _storages(y, x_hat, again, stats.mean, stats.variance, *frame[1:5])
    assert _storages(x).isdisjoint(held)
    assert _storages(stats.mean, stats.variance).isdisjoint(_storages(*frame[1:5]))


@pytest.mark.parametrize("subtract_last", [False, True])
def test_writing_into_x_or_the_statistics_moves_nothing(subtract_last):
    x = torch.randn(4, 3, 20)
    y, reverse_fn, stats = revin(x, subtract_last=subtract_last, return_statistics=True)
    before, kept = reverse_fn(y), x.clone()
    stats.mean.zero_()
    stats.variance.fill_(7)
    assert torch.equal(x, kept)
    x.add_(100)
    assert torch.equal(reverse_fn(y), before)


def test_a_long_lived_reverse_fn_does_not_keep_x_alive():
    x = torch.randn(8, 3, 64)
    _, reverse_fn = revin(x, subtract_last=True)
    alive = weakref.ref(x)
    del x
    gc.collect()
    assert alive() is None and reverse_fn is not None


@settings(max_examples=60, deadline=None)
@given(calls(), st.sampled_from(DTYPES))
def test_data_units_come_back_in_the_promoted_dtype(call, out_dtype):
    x, kwargs, pattern = call
    y, reverse_fn = revin(x, pattern=pattern, **kwargs)
    expected = torch.promote_types(x.dtype, out_dtype)
    y_hat = y.to(out_dtype)
    assert reverse_fn(y_hat).dtype == expected
    assert reverse_fn.normalize(x.to(out_dtype)).dtype == expected
    assert reverse_fn.quantiles(y_hat.unsqueeze(-1)).dtype == expected
    assert reverse_fn(y_hat, shift=False).dtype == expected


@settings(max_examples=60, deadline=None)
@given(calls(), st.sampled_from(("float", "int", "uint8")))
def test_a_numeric_mask_equals_its_bool_mask(call, kind):
    x, kwargs, pattern = call
    mask = kwargs.pop("mask", torch.rand(x.shape) > 0.5)
    numeric = {"float": mask.float(), "int": mask.long(), "uint8": mask.to(torch.uint8)}[kind]
    expected, reverse_expected = revin(x, pattern=pattern, mask=mask, **kwargs)
    y, reverse_fn = revin(x, pattern=pattern, mask=numeric, **kwargs)
    torch.testing.assert_close(y, expected, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(reverse_fn(y), reverse_expected(y), equal_nan=True, rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 9), st.integers(1, 4), st.sampled_from(("b t v", "b v t")))
def test_a_mask_without_the_variate_axis_applies_to_every_variate(b, t, v, pattern):
    x = torch.randn(b, t, v) if pattern == "b t v" else torch.randn(b, v, t)
    mask = torch.rand(b, t) > 0.3
    axis = pattern.split().index("v")
    full = mask.unsqueeze(axis).expand(x.shape)
    expected, _ = revin(x, pattern=pattern, mask=full)
    y, _ = revin(x, pattern=pattern, mask=mask.float())
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_a_mask_that_does_not_fit_names_both_shapes():
    x = torch.randn(4, 20, 3)
    with pytest.raises(
        RevINError,
        match=r"revin\(x\): mask has shape \(4, 19\): a mask with one axis fewer "
        r"than x of shape \(4, 20, 3\) is read as x's shape without its variate axis, \(4, 20\)",
    ):
        revin(x, pattern="b t v", mask=torch.ones(4, 19))
    with pytest.raises(RevINError, match=r"mask has shape \(4, 19, 1, 1\), which does not"):
        revin(x, pattern="b t v", mask=torch.ones(4, 19, 1, 1))


def test_a_mask_with_one_axis_fewer_means_the_same_at_every_batch_size():
    """(V, T) under "b v t" also broadcasts when B == V; it is read as (B, T) there too, and
    refused at other batch sizes, so its meaning never depends on the batch size."""
    mask = torch.rand(3, 10) > 0.3
    mask[:, 0] = True
    x = torch.randn(3, 3, 10)
    y, _ = revin(x, mask=mask)
    expected, _ = revin(x, mask=mask.unsqueeze(1).expand(x.shape))
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    with pytest.raises(RevINError, match=r"give it all 3 axes \(e.g. mask.unsqueeze\(0\)\)"):
        revin(torch.randn(5, 3, 10), mask=mask)
    y, _ = revin(torch.randn(5, 3, 10), mask=mask.unsqueeze(0))  # per variate, every batch
    assert y.shape == (5, 3, 10)


@settings(max_examples=60, deadline=None)
@given(
    st.permutations(["b", "v", "t", "d"]),
    st.integers(1, 3),
    st.sampled_from(("b v t", "b t v")),
    st.booleans(),
)
def test_output_patterns_equal_the_reverse_of_each_slice(order, extra, pattern, causal):
    x = (torch.randn(2, 3, 10) if pattern == "b v t" else torch.randn(2, 10, 3)) * 4 + 2
    _y, reverse_fn = revin(x, pattern=pattern, causal=causal)
    out_pattern = " ".join(order)
    y_hat = torch.randn(2, 3, 10, extra) if pattern == "b v t" else torch.randn(2, 10, 3, extra)
    moved = y_hat.permute([([*pattern.split(), "d"]).index(a) for a in order])
    x_hat = reverse_fn(moved, pattern=out_pattern)
    assert x_hat.shape == moved.shape
    for k in range(extra):
        slice_k = reverse_fn(y_hat[..., k])
        back = x_hat.select(order.index("d"), k)
        names = [a for a in order if a != "d"]
        torch.testing.assert_close(back.permute([names.index(a) for a in pattern.split()]), slice_k)
    again = reverse_fn(reverse_fn.normalize(x_hat, pattern=out_pattern), pattern=out_pattern)
    torch.testing.assert_close(again, x_hat, atol=1e-5, rtol=1e-5)
