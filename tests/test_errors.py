"""Every bad input gets a RevINError (ValueError) or RevINTypeError naming the call and shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from revin_fn import RevIN, RevINError, RevINTypeError, Statistics, reverse, revin

X = torch.randn(4, 7, 32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pattern": "b v"}, r'revin\(x\): pattern "b v" has no time axis "t"'),
        ({"pattern": "b t"}, r'pattern "b t" needs a tensor of 2 dimensions, got 3'),
        ({"pattern": "b v t c"}, r"needs a tensor of 4 dimensions, got 3"),
        ({"pattern": "... b v t c"}, r"at least 4 dimensions, got 3"),
        ({"pattern": "b (v t)"}, r"groups axes with parentheses"),
        ({"pattern": "b t t"}, r"not a valid einops pattern"),
        ({"pattern": 3}, r"pattern must be a string"),
        (
            {"eps_mode": "sqrt"},
            r"eps_mode must be one of \('clamp', 'add', 'add_std'\), got 'sqrt'",
        ),
        ({"method": "median"}, r"method must be one of .* got 'median'"),
        ({"eps": 0.0}, r"eps must be a finite number >= 1.18e-38 .*, got 0.0"),
        ({"eps": -1e-5}, r"eps must be a finite number >= 1.18e-38"),
        ({"eps": 1e-40}, r"eps must be .* \(the smallest normal float32\)"),
        ({"eps": float("inf")}, r"eps must be a finite number"),
        ({"eps": 10**400}, r"eps must be a finite number >= 1.18e-38 .*, got 1000"),
        ({"causal": True, "method": "robust"}, r"causal=True supports method in"),
        ({"causal": True, "subtract_last": True}, r"choose one"),
        (
            {"mask": "zero"},
            r'mask must be a tensor \(bools, or 0/1 numbers\) or the string "nan", got \'zero\'',
        ),
        (
            {"mask": torch.ones(4, 7, 5, dtype=torch.bool)},
            r"mask has shape \(4, 7, 5\).*\(4, 7, 32\)",
        ),
    ],
)
def test_bad_options_raise_value_errors_naming_the_call(kwargs, message):
    with pytest.raises(RevINError, match=message) as info:
        revin(X, **kwargs)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("revin(x): ")


def test_gamma_with_the_wrong_variate_count():
    message = (
        r"revin\(x, gamma, beta\): gamma has shape \(5,\), expected \(7,\) or \(7, 1\) "
        r'for x of shape \(4, 7, 32\) with pattern "b v t"'
    )
    with pytest.raises(RevINError, match=message):
        revin(X, torch.ones(5), torch.zeros(5))
    with pytest.raises(RevINError, match=r"beta has shape \(1, 7\)"):
        revin(X, torch.ones(7), torch.zeros(1, 7))


def test_affine_needs_a_variate_axis():
    with pytest.raises(
        RevINError, match=r'gamma needs a variate axis "v" in the pattern, got pattern "b c t"'
    ):
        revin(X, torch.ones(7), torch.zeros(7), pattern="b c t")


def test_empty_time_axis():
    with pytest.raises(RevINError, match=r'x has shape \(4, 7, 0\): the time axis "t" is empty'):
        revin(torch.randn(4, 7, 0))


@pytest.mark.parametrize(
    "bad", [torch.arange(12).view(1, 3, 4), torch.ones(2, 2, 2, dtype=torch.bool)]
)
def test_non_floating_input_is_a_type_error(bad):
    with pytest.raises(
        RevINTypeError, match=r"x must be a floating-point tensor, got dtype torch\.(int64|bool)"
    ):
        revin(bad)
    with pytest.raises(TypeError):
        revin(bad)


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(RevINTypeError, match=r"x must be a torch\.Tensor, got list"):
        revin([[1.0, 2.0]])
    with pytest.raises(RevINTypeError, match="gamma must be a floating-point tensor"):
        revin(X, torch.ones(7, dtype=torch.long))
    with pytest.raises(
        RevINTypeError, match=r"mask must be a tensor of bools .* got torch.complex64"
    ):
        revin(X, mask=torch.ones(4, 7, 32, dtype=torch.complex64))


def test_one_target_forecast_is_never_broadcast_silently():
    _, reverse_fn = revin(X)
    message = (
        r"reverse_fn\(y_hat\): y_hat has shape \(4, 1, 24\), expected \(4, 7, T\) \(any T\) to "
        r'match the statistics of shape \(4, 7, 1\) with pattern "b v t"; pass variates='
    )
    with pytest.raises(RevINError, match=message):
        reverse_fn(torch.zeros(4, 1, 24))
    assert reverse_fn(torch.zeros(4, 1, 24), variates=[6]).shape == (4, 1, 24)


@pytest.mark.parametrize(
    "y_hat, message",
    [
        (torch.zeros(3, 7, 24), r"y_hat has shape \(3, 7, 24\), expected \(4, 7, T\)"),
        (torch.zeros(4, 7), r"y_hat has shape \(4, 7\) \(2 dimensions\), expected 3 dimensions"),
        (torch.zeros(1, 7, 24), r"y_hat has shape \(1, 7, 24\)"),
        (torch.zeros(4, 7, 24, dtype=torch.int32), r"y_hat must be a floating-point tensor"),
    ],
)
def test_reverse_fn_checks_what_it_is_given(y_hat, message):
    _, reverse_fn = revin(X)
    with pytest.raises(RevINError, match=message):
        reverse_fn(y_hat)


@pytest.mark.parametrize(
    "variates, message",
    [
        (7, r"variates=7 is out of range for 7 variates"),
        ([0, 9], r"variates=\[0, 9\] is out of range for 7 variates"),
        ([True, False], r"a bool variates mask needs 7 entries, got 2"),
        (torch.tensor([True, False]), r"a bool variates mask needs shape \(7,\), got \(2,\)"),
        (torch.tensor([True] * 2 + [False] * 5), r"must hold 1 True entry \(one per output va"),
        (slice(9, 10), r"variates=slice\(9, 10, None\) selects none of 7 variates"),
        (slice(None, None, -1), r"variates=slice\(None, None, -1\): the step must be positive"),
        (slice(0, 3, 1.5), r"variates=slice\(0, 3, 1.5\): a slice needs int \(or None\) bounds"),
        (slice(True, 3), r"variates=slice\(True, 3, None\): a slice needs int"),
        (slice(0, torch.tensor(1.5)), r"variates=slice\(0, tensor\(1.5000\), None\): a slice ne"),
        ([0, torch.tensor(True)], r"variates must hold ints \(or only bools\), got Tensor"),
        ([torch.tensor(1.5)], r"variates must hold ints \(or only bools\), got Tensor tensor\(1.5"),
        ([0.5], r"variates must hold ints \(or only bools\), got float 0.5 in \[0.5\]"),
        ([None], r"variates must hold ints \(or only bools\), got NoneType None"),
        ({0}, r"variates must be an int, a sequence of ints, a slice or a bool mask, got set"),
        (np.array([[0, 2]]), r"a slice or a bool mask, got a numpy array of shape \(1, 2\)"),
        (torch.tensor([0, 9]), r"variates= holds an index out of range for 7 variates"),
        (torch.tensor([0.5]), r"got a tensor of dtype torch.float32"),
    ],
)
def test_bad_variates_selection(variates, message):
    _, reverse_fn = revin(X)
    with pytest.raises(RevINError, match=message):
        reverse_fn(torch.zeros(4, 1, 3), variates=variates)


def test_a_bool_variates_mask_with_the_wrong_count_names_the_call_made():
    y, reverse_fn, stats = revin(X, return_statistics=True)
    mask = torch.tensor([True, False, True, False, False, False, False])
    torch.testing.assert_close(reverse_fn(y[:, [0, 2]], variates=mask), reverse_fn(y)[:, [0, 2]])
    for call, message in (
        (lambda: reverse_fn(y[:, :3], variates=mask), r"^reverse_fn\(y_hat\): the bool variates"),
        (lambda: reverse(y[:, :3], stats, variates=mask), r"^reverse\(y_hat, stats\): the bool"),
        (lambda: reverse_fn.normalize(y[:, :3], variates=mask), r"^reverse_fn\.normalize\(t\): "),
    ):
        with pytest.raises(RevINError, match=message + r".* 3 True entries .*, it holds 2$"):
            call()


def test_the_items_of_a_bool_mask_are_bools_not_the_indices_0_and_1():
    y, reverse_fn = revin(X)
    mask = [False, True, True, False, False, False, True]
    want = reverse_fn(y)[:, [1, 2, 6]]
    for items in (torch.tensor(mask), np.array(mask), torch.tensor(mask).view(7, 1)):
        torch.testing.assert_close(reverse_fn(y[:, [1, 2, 6]], variates=list(items)), want)
    with pytest.raises(RevINError, match=r"a bool variates mask needs 7 entries, got 3"):
        reverse_fn(y[:, :2], variates=list(torch.tensor(mask[:3])))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
def test_variates_of_any_integer_dtype(dtype):
    y, reverse_fn = revin(X)
    torch.testing.assert_close(
        reverse_fn(y[:, 2:3], variates=torch.tensor([2], dtype=dtype)), reverse_fn(y)[:, 2:3]
    )


def test_uint64_variates_and_other_statistics_are_refused():
    y, reverse_fn = revin(X)
    wrapping = torch.tensor([2**64 - 1], dtype=torch.uint64)  # would wrap to -1 in int64
    with pytest.raises(RevINError, match=r"got a tensor of dtype torch.uint64"):
        reverse_fn(y[:, :1], variates=wrapping)
    with pytest.raises(RevINTypeError, match=r"^reverse\(y_hat, stats\): stats must be the Stat"):
        reverse(y, None)


def test_variates_on_a_single_variate_are_checked_and_selected():
    x = torch.randn(4, 1, 32) * 3 + 5
    y, reverse_fn = revin(x)
    twice = reverse_fn(torch.cat([y, y], 1), variates=[0, 0])
    torch.testing.assert_close(twice, reverse_fn(y).expand(4, 2, 32))
    with pytest.raises(RevINError, match=r"out of range for 1 variates"):
        reverse_fn(y, variates=torch.tensor([5]))
    with pytest.raises(RevINError, match=r"variates=5 is out of range for 1 variates"):
        reverse_fn(y, variates=5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda rf, y: rf(y, shift=None), r"reverse_fn\(y_hat\): shift must be True or False"),
        (lambda rf, y: rf(y, shift="no"), r"shift must be True or False, got str 'no'"),
        (lambda rf, y: rf(y, stepwise="no"), r"stepwise must be True, False or None, got str"),
        (lambda rf, y: rf.normalize(y, stepwise=1), r"stepwise must be True, False or None"),
        (
            lambda rf, y: revin(X, return_statistics="no"),
            r"revin\(x\): return_statistics must be True or False",
        ),
        (lambda rf, y: RevIN(7, affine="no"), r"RevIN\(num_variates=7\): affine must be True"),
        (lambda rf, y: RevIN(7, non_norm=1), r"non_norm must be True or False, got int 1"),
    ],
)
def test_flags_must_be_bools(call, message):
    y, reverse_fn = revin(X)
    with pytest.raises(RevINTypeError, match=message):
        call(reverse_fn, y)


def test_variates_selection_with_the_wrong_count():
    _, reverse_fn = revin(X)
    with pytest.raises(RevINError, match=r"expected \(4, 2, T\)"):
        reverse_fn(torch.zeros(4, 1, 3), variates=[0, 1])


def test_variates_needs_a_variate_axis():
    _, reverse_fn = revin(torch.randn(4, 32), pattern="b t")
    with pytest.raises(
        RevINError, match=r'variates= needs a variate axis "v" in the pattern "b t"'
    ):
        reverse_fn(torch.zeros(4, 3), variates=0)


def test_reverse_checks_the_statistics():
    _, _, stats = revin(X, return_statistics=True)
    with pytest.raises(RevINError, match=r"^reverse\(y_hat, stats\): y_hat has shape \(9, 9\)"):
        reverse(torch.zeros(9, 9), stats)  # the closure's checks, under this call's name
    with pytest.raises(RevINError, match=r"reverse\(y_hat, stats\): stats.variance has shape"):
        reverse(torch.zeros(4, 7, 3), Statistics(stats.mean, stats.variance[:2], None, None))
    with pytest.raises(
        RevINError, match=r"stats.gamma has shape \(3,\), expected \(7,\) .* for stats.mean of sh"
    ):
        reverse(torch.zeros(4, 7, 3), Statistics(stats.mean, stats.variance, torch.ones(3), None))
    with pytest.raises(RevINError, match=r'^reverse\(y_hat, stats\): pattern "v t t" is not a v'):
        reverse(torch.zeros(4, 7, 3), stats, pattern="v t t")  # the pattern's own error, as is
    flat = Statistics(stats.mean.flatten(), stats.variance.flatten(), None, None)
    with pytest.raises(
        RevINError, match=r"^reverse\(y_hat, stats\): stats.mean has shape \(28,\): "
    ):
        reverse(torch.zeros(4, 7, 3), flat)
    with pytest.raises(RevINError, match=r"eps_mode must be one of"):
        reverse(torch.zeros(4, 7, 3), stats, eps_mode="max")


def test_module_constructor_errors():
    with pytest.raises(
        RevINError, match=r"RevIN\(num_variates=None\): affine=True needs num_variates >= 1"
    ):
        RevIN()
    with pytest.raises(RevINError, match=r"RevIN\(num_variates=7\): eps_mode must be one of"):
        RevIN(7, eps_mode="mul")
    with pytest.raises(
        RevINError, match=r'RevIN\(num_variates=7\)\.forward\(x\): x has 5 variates on axis "v"'
    ):
        RevIN(7, pattern="b t v")(torch.randn(2, 10, 5))


def test_more_inputs_are_refused_naming_the_call():
    _, reverse_fn = revin(X)
    with pytest.raises(RevINTypeError, match=r"^reverse_fn.distribution\(dist\): dist must be a "):
        reverse_fn.distribution(torch.zeros(4, 7, 3))
    law = torch.distributions.MultivariateNormal(torch.zeros(4, 7, 3, 2), torch.eye(2))
    with pytest.raises(RevINError, match=r"\(event_shape \(\)\), got event_shape \(2,\)"):
        reverse_fn.distribution(law)
    with pytest.raises(RevINError, match=r'pattern "b 1 v t" has an unnamed axis of size 1'):
        revin(torch.randn(2, 1, 3, 10), pattern="b 1 v t")
    with pytest.raises(RevINTypeError, match=r"^RevIN\(num_variates=3\): dtype must be a float"):
        RevIN(3, dtype=torch.int64)


def test_numpy_values_are_taken_like_python_ones():
    np = pytest.importorskip("numpy")
    assert revin(X, return_statistics=np.True_)[2].mean.shape == (4, 7, 1)
    assert RevIN(7, affine=np.False_).gamma is None
    y, reverse_fn = revin(X, eps=np.float32(1e-5))
    expected, _ = revin(X, eps=float(np.float32(1e-5)))
    assert torch.equal(y, expected)
    torch.testing.assert_close(
        reverse_fn(y[:, [0, 2]], variates=np.array([0, 2])), reverse_fn(y)[:, [0, 2]]
    )
    mask = np.array([i in (1, 5) for i in range(7)])
    torch.testing.assert_close(reverse_fn(y[:, [1, 5]], variates=mask), reverse_fn(y)[:, [1, 5]])


def test_shape_errors_suggest_the_swapped_pattern():
    x = torch.randn(32, 96, 7)  # (batch, time, variates) under the default "b v t"
    hint = r'; if axis "t" holds the variates, pass pattern="b t v"$'
    with pytest.raises(RevINError, match=r"gamma has shape \(7,\), expected \(96,\).*" + hint):
        revin(x, torch.ones(7), torch.zeros(7))
    with pytest.raises(RevINError, match=r"expected num_variates=7" + hint):
        RevIN(7)(x)
    _, reverse_fn = revin(torch.randn(32, 7, 96))
    with pytest.raises(RevINError, match=r"expected \(32, 7, T\).*variates" + hint):
        reverse_fn(torch.randn(32, 24, 7))
    with pytest.raises(RevINError, match=r"variates$"):  # no axis of 7: no suggestion
        reverse_fn(torch.randn(32, 24, 8))
    with pytest.raises(RevINError, match=r'if axis "b" holds the variates, pass pattern="v b t"$'):
        revin(torch.randn(3, 5, 8), torch.ones(3))  # any axis, not only time
    _, _, stats = revin(x, pattern="b t v", return_statistics=True)
    with pytest.raises(
        RevINError,
        match=r'stats.mean has 7 entries on the time axis "t" of pattern "b v t": unless they '
        r"are causal statistics, pass the pattern of the revin call$",
    ):
        reverse(torch.randn(32, 24, 7), stats)
    # reverse's pattern= is the call's: no output-pattern hint (it would not fix the call)
    with pytest.raises(RevINError, match=r"only some variates$"):
        reverse(torch.randn(32, 7, 24), stats, pattern="b t v")
    with pytest.raises(RevINError, match=r'\(7, 3\), expected \(7,\) or \(7, 1\) .*"b v t"$'):
        revin(torch.randn(2, 7, 8), torch.ones(7, 3))  # a 2-D gamma: no axis to swap


def test_zero_dimensional_gamma_is_named_without_a_hint():
    with pytest.raises(RevINError, match=r'gamma has shape \(\), expected \(3,\) .*"b v t"$'):
        revin(torch.randn(2, 3, 8), torch.tensor(1.0))


def test_one_step_warning_and_mask_strings_read_right():
    with pytest.warns(UserWarning, match=r"has 1 step on the time axis"):
        revin(torch.randn(3, 7, 1))
    with pytest.raises(RevINError, match=r"mask must be a tensor \(bools, or 0/1 numbers\) or"):
        revin(torch.randn(3, 7, 8), mask="none")


@pytest.mark.parametrize(
    "gamma, beta, call",
    [
        (None, None, "revin(x)"),
        (torch.ones(5), None, "revin(x, gamma)"),
        (None, torch.ones(5), "revin(x, None, beta)"),
        (torch.ones(7), torch.ones(5), "revin(x, gamma, beta)"),
    ],
)
def test_errors_name_the_tensors_of_the_call(gamma, beta, call):
    """The message starts with the call as written, as far as its tensors go."""
    with pytest.raises(RevINError) as info:
        revin(X, gamma, beta, eps_mode="sqrt" if gamma is None and beta is None else "clamp")
    assert str(info.value).startswith(call + ": ")
