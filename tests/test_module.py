"""RevIN module: parameters, options, ablation switch, statelessness, replication, compile."""

from __future__ import annotations

import copy
import io
import threading
import warnings

import numpy as np
import pytest
import torch
from _helpers import assert_round_trip
from torch._subclasses.fake_tensor import FakeTensorMode

from revin_fn import RevIN, RevINError, RevINTypeError, Statistics, revin


def test_parameters_and_forward_is_one_call_to_revin():
    norm = RevIN(num_variates=7, pattern="b t v", eps_mode="add", subtract_last=True)
    assert norm.gamma.shape == norm.beta.shape == (7,)
    assert torch.equal(norm.gamma, torch.ones(7)) and torch.equal(norm.beta, torch.zeros(7))
    with torch.no_grad():
        norm.gamma.uniform_(-2, 2)
        norm.beta.normal_()
    x = torch.randn(4, 48, 7) * 3 + 1
    y, reverse_fn, stats = norm(x, return_statistics=True)
    expected, _, expected_stats = revin(
        x,
        norm.gamma,
        norm.beta,
        pattern="b t v",
        eps_mode="add",
        subtract_last=True,
        return_statistics=True,
    )
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(stats.mean, expected_stats.mean)
    assert stats.gamma is norm.gamma
    assert_round_trip(x, y, reverse_fn)
    norm.reset_parameters()
    assert torch.equal(norm.gamma, torch.ones(7))


def test_no_affine_registers_no_parameters():
    norm = RevIN(affine=False)
    assert norm.gamma is None and norm.beta is None and list(norm.parameters()) == []
    _y, _reverse_fn, stats = norm(torch.randn(2, 3, 10), return_statistics=True)
    assert stats.gamma is None and stats.beta is None


def test_no_statistics_are_kept_on_the_module():
    norm = RevIN(3)
    attributes = dict(vars(norm))
    before = {name: value.clone() for name, value in norm.state_dict().items()}
    norm(torch.randn(2, 3, 10) * 100)
    after = norm.state_dict()
    assert before.keys() == after.keys() == {"gamma", "beta"}
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert vars(norm).keys() == attributes.keys()
    assert all(vars(norm)[name] is value for name, value in attributes.items())
    assert dict(norm.named_buffers()) == {}


def test_overlapping_calls_reverse_independently():
    norm = RevIN(3)
    a, b = torch.randn(2, 3, 10) + 50, torch.randn(2, 3, 10) * 9 - 4
    ya, reverse_a = norm(a)
    yb, reverse_b = norm(b)
    torch.testing.assert_close(reverse_a(ya), a)
    torch.testing.assert_close(reverse_b(yb), b)


def test_threads_and_replicas_share_nothing_per_call():
    norm = RevIN(3)
    replicas = [norm, copy.deepcopy(norm)]
    inputs = [torch.randn(2, 3, 40) * (i + 1) + 10 * i for i in range(8)]
    errors: list[float] = []

    def work(i: int) -> None:
        y, reverse_fn = replicas[i % 2](inputs[i])
        errors.append(float((reverse_fn(y) - inputs[i]).abs().max()))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 8 and max(errors) < 1e-4


def test_non_norm_is_the_identity_at_the_same_call_sites():
    norm = RevIN(7, pattern="b t v", non_norm=True)
    x = torch.randn(4, 48, 7) * 3 + 100
    y, reverse_fn, stats = norm(x, return_statistics=True)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()  # a copy, as on every call
    forecast = torch.randn(4, 24, 7)
    assert torch.equal(reverse_fn(forecast), forecast)
    assert torch.equal(reverse_fn(forecast[..., :1], variates=[6]), forecast[..., :1])
    assert torch.equal(norm.reverse(forecast, stats), forecast)
    assert isinstance(stats, Statistics) and stats.gamma is None
    with pytest.raises(ValueError, match=r"expected \(4, T, 7\)"):
        reverse_fn(torch.randn(4, 24, 1))
    with pytest.raises(ValueError, match=r"RevIN\(num_variates=7\).reverse\(y_hat, stats\): y_hat"):
        norm.reverse(torch.randn(9, 9), stats)  # the same checks as without non_norm
    with pytest.raises(TypeError, match=r"reverse\(y_hat, stats\): stats must be the Statistics"):
        norm.reverse(forecast, None)
    with pytest.raises(ValueError, match=r"\.forward\(x\): mask must be a tensor"):
        norm(x, mask="foo")
    added = RevIN(7, pattern="b t v", eps_mode="add", eps=0.5, non_norm=True)
    _, _, identity = added(x, return_statistics=True)
    assert torch.equal(added.reverse(forecast, identity), forecast)  # not 1 / sqrt(1 + eps)
    stats.mean.add_(100.0)  # the statistics are tensors of their own
    stats.variance.mul_(4.0)
    assert torch.equal(reverse_fn(forecast), forecast)
    assert "non_norm=True" in repr(norm)


def test_module_reverse_uses_the_module_options():
    norm = RevIN(3, eps_mode="add", eps=1e-1, pattern="b t v")
    x = torch.randn(2, 30, 3) * 0.2
    y, reverse_fn, stats = norm(x, return_statistics=True)
    torch.testing.assert_close(norm.reverse(y, stats), reverse_fn(y))
    torch.testing.assert_close(norm.reverse(y[..., :1], stats, variates=0), reverse_fn(y)[..., :1])


def test_extra_repr_lists_the_options_that_differ():
    text = repr(RevIN(7, eps_mode="add", detach=True, pattern="b t v"))
    assert text == "RevIN(7, affine=True, pattern='b t v', eps_mode='add', detach=True)"


def test_parameters_follow_device_and_dtype():
    norm = RevIN(5, dtype=torch.float64)
    assert norm.gamma.dtype == torch.float64
    x = torch.randn(2, 5, 10, dtype=torch.float64)
    y, _ = norm(x)
    assert y.dtype == torch.float64


def test_gamma_and_beta_learn():
    torch.manual_seed(0)
    norm = RevIN(2)
    optimizer = torch.optim.SGD(norm.parameters(), lr=0.1)
    x = torch.randn(8, 2, 16)
    for _ in range(5):
        y, _ = norm(x)
        loss = (y - 3.0).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (norm.beta > 0.5).all()


class Forecaster(torch.nn.Module):
    """A one-target linear forecaster: the kind of model revin_fn is a one-line drop-in for."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = RevIN(7, pattern="b t v")
        self.linear = torch.nn.Linear(96, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, reverse_fn = self.norm(x)
        out = self.linear(y.transpose(1, 2)).transpose(1, 2)
        return reverse_fn(out[..., 6:], variates=[6]) + reverse_fn(out, shift=False)[..., 6:]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_matches_eager(backend):
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = Forecaster()
    x = torch.randn(8, 96, 7) * 3 + 10
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    expected = model(x)
    torch.testing.assert_close(compiled(x), expected)
    x.requires_grad_(True)
    compiled(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --- variate-axis check, sizes, constructor and call errors ---------------------------------
def test_num_variates_is_checked_on_every_call_even_without_affine():
    norm = RevIN(num_variates=7, affine=False)  # default "b v t"
    with pytest.raises(
        RevINError,
        match=r'RevIN\(num_variates=7\)\.forward\(x\): x has 96 variates on axis "v" '
        r'\(shape \(32, 96, 7\), pattern "b v t"\), expected num_variates=7',
    ):
        norm(torch.randn(32, 96, 7))
    y, _ = norm(torch.randn(32, 7, 96))
    assert y.shape == (32, 7, 96)


def test_module_call_names_the_module_not_the_functional():
    with pytest.raises(
        RevINError,
        match=r'^RevIN\(num_variates=7\)\.forward\(x\): x has 5 variates on axis "v" '
        r'\(shape \(2, 10, 5\), pattern "b t v"\), expected num_variates=7$',
    ):
        RevIN(7, pattern="b t v")(torch.randn(2, 10, 5))
    norm = RevIN(3)
    with pytest.raises(RevINError, match=r"^RevIN\(num_variates=3\)\.forward\(x\): mask has sh"):
        norm(torch.randn(2, 3, 10), mask=torch.ones(4, 3, 10, dtype=torch.bool))
    with pytest.raises(RevINTypeError, match=r"^RevIN\(num_variates=3\)\.forward\(x\): x must"):
        norm(torch.ones(2, 3, 10, dtype=torch.long))


def test_short_time_axis_warns_only_when_the_variate_axis_is_unchecked():
    with pytest.warns(
        UserWarning, match=r'has 7 steps on the time axis "t" and 96 variates'
    ) as got:
        RevIN(affine=False)(torch.randn(32, 96, 7))
    with pytest.warns(UserWarning) as direct:
        RevIN(affine=False).forward(torch.randn(32, 96, 7))
    with pytest.warns(UserWarning) as nested:
        torch.nn.Sequential(RevIN(affine=False))(torch.randn(32, 96, 7))
    files = {w.filename for w in [*got, *direct, *nested]}
    assert files == {__file__}  # the user's line, not torch's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RevIN(affine=False)(torch.randn(32, 7, 96))
        RevIN(862, affine=False)(torch.randn(4, 862, 96))  # Traffic: 862 variates, 96 steps


@pytest.mark.parametrize("size", [np.int64(7), np.int32(7), torch.tensor(7)])
def test_numpy_integers_are_sizes(size):
    norm = RevIN(size)
    assert norm.num_variates == 7 and type(norm.num_variates) is int
    assert norm.gamma.shape == (7,)
    assert RevIN(size, affine=False).num_variates == 7


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_variates": True}, RevINTypeError,
         r"^RevIN\(num_variates=True\): num_variates must be a positive int, got True \(a bool\)"),
        ({"num_variates": np.True_}, RevINTypeError, r"num_variates must be a positive int"),
        ({"num_variates": 7.0}, RevINTypeError, r"num_variates must be a positive int, got 7\.0"),
        ({"num_variates": 0}, RevINError, r"num_variates must be a positive int, got 0"),
        ({"num_variates": 7, "eps": None}, RevINTypeError,
         r"^RevIN\(num_variates=7\): eps must be a positive number, got None"),
        ({"num_variates": 7, "eps": True}, RevINTypeError, r"eps must be a positive number"),
        ({"num_variates": 7, "eps": 10**400}, RevINError,
         r"^RevIN\(num_variates=7\): eps must be a finite number, got 1000"),
        ({"num_variates": 7, "pattern": None}, RevINTypeError,
         r'^RevIN\(num_variates=7\): pattern must be a string such as "b v t", got None'),
        ({"num_variates": 7, "pattern": "b t"}, RevINError,
         r'num_variates=7 needs a variate axis "v" in the pattern, got pattern "b t"'),
    ],
)  # fmt: skip
def test_constructor_errors_name_the_constructor(kwargs, error, match):
    with pytest.raises(error, match=match):
        RevIN(**kwargs)


# --- checkpoints ----------------------------------------------------------------------------
class ITransformerRevIN(torch.nn.Module):
    """lucidrains' iTransformer RevIN parameters: (V, 1), frozen when affine=False."""

    def __init__(self, num_variates: int, affine: bool = True) -> None:
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.ones(num_variates, 1), requires_grad=affine)
        self.beta = torch.nn.Parameter(torch.zeros(num_variates, 1), requires_grad=affine)


def test_itransformer_checkpoint_loads():
    original = ITransformerRevIN(5)
    with torch.no_grad():
        original.gamma.uniform_(0.5, 2)
        original.beta.normal_()
    model = torch.nn.Sequential(original)
    norm = torch.nn.Sequential(RevIN(5))
    norm.load_state_dict(model.state_dict())
    assert torch.equal(norm[0].gamma, original.gamma.view(5))
    assert torch.equal(norm[0].beta, original.beta.view(5))
    x = torch.randn(3, 5, 20)
    y, _ = norm[0](x)
    torch.testing.assert_close(y, revin(x, original.gamma, original.beta)[0])


def test_itransformer_training_resumes_with_its_optimizer_state():
    """A checkpoint of model and Adam state from the (V, 1) original: with the optimizer's
    moments reshaped as the README shows, the next step with RevIN swapped in is the original's
    next step; a model that already took a step loads it too."""
    torch.manual_seed(0)
    x, target = torch.randn(4, 3, 16) * 2 + 1, torch.randn(4, 3, 16)

    def step(norm, optimizer):
        y, reverse_fn = norm(x) if isinstance(norm, RevIN) else revin(x, norm.gamma, norm.beta)
        loss = (reverse_fn(y * 1.5 + 0.2) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    original = ITransformerRevIN(3)
    optimizer = torch.optim.Adam(original.parameters(), lr=0.1)
    step(original, optimizer)
    saved = io.BytesIO()
    torch.save({"model": original.state_dict(), "optimizer": optimizer.state_dict()}, saved)
    step(original, optimizer)
    for trained_first in (False, True):
        saved.seek(0)
        checkpoint = torch.load(saved)  # the optimizer's state tensors are loaded, not copied
        norm = RevIN(3)
        resumed = torch.optim.Adam(norm.parameters(), lr=0.1)
        if trained_first:  # its own step first: autograd and the optimizer know the parameters
            step(norm, resumed)
        norm.load_state_dict(checkpoint["model"])
        resumed.load_state_dict(checkpoint["optimizer"])
        for state in resumed.state.values():  # the README's line
            state.update(
                {k: v.reshape(-1) for k, v in state.items() if v.ndim == 2 and v.shape[1] == 1}
            )
        step(norm, resumed)
        torch.testing.assert_close(norm.gamma, original.gamma.view(3))
        torch.testing.assert_close(norm.beta, original.beta.view(3))


def test_itransformer_checkpoint_without_affine_loads_and_learned_values_are_refused():
    frozen = ITransformerRevIN(5, affine=False).state_dict()
    norm = RevIN(5, affine=False)
    result = norm.load_state_dict(frozen)  # strict: the identity keys are accepted
    assert result.missing_keys == result.unexpected_keys == []
    assert norm.gamma is None and list(norm.parameters()) == []
    learned = {"gamma": torch.full((5, 1), 2.0), "beta": torch.zeros(5, 1)}
    with pytest.raises(RevINError, match=r"gamma holds learned values, but this RevIN has aff"):
        norm.load_state_dict(learned)
    with pytest.raises(RuntimeError, match=r"size mismatch for gamma"):
        RevIN(4).load_state_dict(ITransformerRevIN(5).state_dict())
    anywidth = RevIN(affine=False)  # no num_variates: any width, as the data's
    assert anywidth.load_state_dict(frozen).missing_keys == []
    with pytest.raises(RevINError, match=r"gamma holds learned values, but this RevIN has aff"):
        anywidth.load_state_dict(learned)
    # identity values of another model's width are refused too, not dropped
    with pytest.raises(RevINError, match=r"gamma has shape \(5, 1\), expected 4 values: the chec"):
        RevIN(4, affine=False).load_state_dict(frozen)
    for shape in ((1, 5, 1), (1, 1, 5), (5,)):  # other codebases' shapes of the same values
        identity = {"gamma": torch.ones(shape), "beta": torch.zeros(shape)}
        assert RevIN(5, affine=False).load_state_dict(identity).missing_keys == []
        assert anywidth.load_state_dict(identity).missing_keys == []
    with FakeTensorMode() as mode:  # a model built for its shapes: the values are not read
        fake = {key: mode.from_tensor(value) for key, value in learned.items()}
        assert RevIN(5, affine=False).load_state_dict(fake).missing_keys == []


def test_the_original_call_with_a_mode_says_where_that_interface_lives():
    norm = RevIN(3)
    for mode in ("norm", "denorm"):
        with pytest.raises(RevINError, match=rf"got mask='{mode}', the original RevIN's mode: .*c"):
            norm(torch.randn(2, 3, 8), mode)
    x, observed = torch.randn(2, 3, 8), torch.rand(2, 3, 8) > 0.2
    y, _ = norm(x, observed)  # the mask may be passed by position
    torch.testing.assert_close(y, norm(x, mask=observed)[0])
