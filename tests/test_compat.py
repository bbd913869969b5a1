"""revin_fn.compat against the published formulas, written out here from the equations."""

import copy
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from revin_fn import RevINError, RevINTypeError
from revin_fn.compat import (
    Normalize,
    ReversibleInstanceNorm,
    ReversibleInstanceNorm1dInput,
    ReversibleInstanceNorm1dOutput,
    RevIN,
)

EPS = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- reference formulas --------------------------------------------------------------------
def original_norm(x, weight, bias, eps=EPS, subtract_last=False, detach=True):
    """Kim et al. (2022): y = w (x - c) / sqrt(Var_t[x] + eps) + b, c = mean (or last step)."""
    mean = x.mean(1, keepdim=True)
    std = ((x - mean).square().mean(1, keepdim=True) + eps).sqrt()
    center = x[:, -1:, :] if subtract_last else mean
    if detach:
        std = std.detach()
        center = center if subtract_last else center.detach()
    y = (x - center) / std
    if weight is not None:
        y = y * weight + bias
    return y, center, std


def original_denorm(y, weight, bias, center, std, eps=EPS):
    """Original / TSLib inverse: x = (y - b) / (w + eps**2) * std + c."""
    if weight is not None:
        y = (y - bias) / (weight + eps * eps)
    return y * std + center


def keras_denorm(y, weight, bias, center, std):
    """kerasfactory's inverse: x = (y - b) / w * std + c (no eps on the weight)."""
    if weight is not None:
        y = (y - bias) / weight
    return y * std + center


def s4_norm(x, transposed=False):
    """S4 / ESPnet: s = population std over L + 1e-4 (written out of place), y = (x - m) / s."""
    z = x if transposed else x.transpose(-1, -2)
    m = z.mean(-1, keepdim=True)
    s = (z - m).square().mean(-1, keepdim=True).sqrt() + 1e-4
    y = (z - m) / s
    return (y if transposed else y.transpose(-1, -2)), m, s


def s4_denorm(y, m, s, transposed=False):
    z = y if transposed else y.transpose(-1, -2)
    z = z * s + m
    return z if transposed else z.transpose(-1, -2)


def ordinary(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(shape[-1], generator=g) * 5 + 0.5
    return (torch.randn(*shape, generator=g) * scale + 10 * torch.randn(shape[-1], generator=g)).to(
        dtype
    )


# Normalized outputs against the formula's exact (float64) value. Float64 input: 1e-6. Float32
# input with offsets of up to ~20 std (``ordinary``): the published formula evaluated in float32
# is itself 1.1e-6 away from its exact value here, so the bound is the library's float32
# guarantee, 1e-5 against float64 (the fast path's single pass rounds at the offset's size).
PARITY = {torch.float64: 1e-6, torch.float32: 1e-5}


def wide(t):
    """The reference is the formula's exact value: evaluated in float64 on the same input."""
    return None if t is None else t.detach().double()


def assert_close_in_data_units(got, want, x):
    """Denormalized values to 1e-6 relative to the data's magnitude (in float32 the terms of
    ``offset + y * gain`` are that large, so values near 0 carry their rounding)."""
    scale = float(x.detach().abs().max())
    torch.testing.assert_close(wide(got), wide(want), atol=1e-6 * scale, rtol=1e-6)


def set_affine(layer, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        n = layer.affine_weight.numel()
        sign = torch.where(torch.rand(n, generator=g) < 0.3, -1.0, 1.0)
        layer.affine_weight.copy_(sign * (torch.rand(n, generator=g) + 0.2))
        layer.affine_bias.copy_(torch.randn(n, generator=g))


# --- original RevIN / TSLib / PatchTST -----------------------------------------------------
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("subtract_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_revin_matches_original(affine, subtract_last, dtype):
    layer = RevIN(7, affine=affine, subtract_last=subtract_last).to(dtype)
    if affine:
        set_affine(layer)
    x = ordinary(16, 96, 7, dtype=dtype)
    w, b = wide(layer.affine_weight), wide(layer.affine_bias)
    y_ref, center, std = original_norm(wide(x), w, b, subtract_last=subtract_last)
    y = layer(x, mode="norm")
    torch.testing.assert_close(wide(y), y_ref, atol=PARITY[dtype], rtol=0)
    y_hat = torch.randn(16, 24, 7, dtype=dtype)
    x_ref = original_denorm(wide(y_hat), w, b, center, std)
    assert_close_in_data_units(layer(y_hat, mode="denorm"), x_ref, x)


def test_revin_gradients_match_original_detached_statistics():
    layer = RevIN(5).double()
    set_affine(layer)
    x = ordinary(4, 48, 5, dtype=torch.float64).requires_grad_()
    target = torch.randn(4, 12, 5, dtype=torch.float64)
    loss = (layer(layer(x, mode="norm")[:, -12:], mode="denorm") - target).square().sum()
    grads = torch.autograd.grad(loss, [x, layer.affine_weight, layer.affine_bias])
    w, b = layer.affine_weight, layer.affine_bias
    y, center, std = original_norm(x, w, b)
    loss_ref = (original_denorm(y[:, -12:], w, b, center, std) - target).square().sum()
    grads_ref = torch.autograd.grad(loss_ref, [x, w, b])
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_revin_loads_original_state_dict():
    original = {"affine_weight": torch.rand(7) + 0.5, "affine_bias": torch.randn(7)}
    layer = RevIN(7)
    layer.load_state_dict(original)  # strict: same names and shapes
    assert set(layer.state_dict()) == set(original)
    assert not list(RevIN(7, affine=False).parameters())


def test_revin_weight_at_minus_eps_squared_does_not_divide_by_zero():
    # intended difference: the original's denorm divisor weight + eps**2 is zero here
    layer = RevIN(3)
    with torch.no_grad():
        layer.affine_weight.fill_(-EPS * EPS)
    x = ordinary(2, 30, 3)
    y = layer(x, mode="norm")
    _, center, std = original_norm(x, layer.affine_weight, layer.affine_bias)
    assert (
        not original_denorm(y, layer.affine_weight, layer.affine_bias, center, std).isfinite().all()
    )
    x_hat = layer(y, mode="denorm")
    torch.testing.assert_close(x_hat, x, atol=1e-3, rtol=1e-5)  # |w'| = eps: y carries 1e-5 x


@settings(max_examples=30, deadline=None)
@given(
    weight=st.floats(-3, 3).filter(lambda w: w == 0 or abs(w) > 1e-12),
    offset=st.floats(-1e3, 1e3),
    scale=st.floats(1e-2, 1e2),
)
def test_revin_round_trip_any_weight(weight, offset, scale):
    layer = RevIN(2).double()
    with torch.no_grad():
        layer.affine_weight.fill_(weight)
    x = ordinary(3, 20, 2, dtype=torch.float64) * scale + offset
    x_hat = layer(layer(x, mode="norm"), mode="denorm")
    torch.testing.assert_close(x_hat, x, atol=1e-9 * (abs(offset) + scale), rtol=1e-9)


def test_revin_one_variate_output_raises_unless_variates_given():
    # intended difference: the original broadcasts (B, H, 1) against 7 variates silently
    layer = RevIN(7)
    set_affine(layer)
    x = ordinary(8, 96, 7)
    layer(x, mode="norm")
    y_hat = torch.randn(8, 24, 1)
    with pytest.raises(
        RevINError, match=r"y_hat has shape \(8, 24, 1\), expected \(8, T, 7\) \(any T\)"
    ):
        layer(y_hat, mode="denorm")
    w, b = layer.affine_weight, layer.affine_bias
    _, center, std = original_norm(x, w, b)
    want = original_denorm(y_hat, w[6:], b[6:], center[..., 6:], std[..., 6:])
    assert_close_in_data_units(layer(y_hat, mode="denorm", variates=[6]), want, x)


@pytest.mark.parametrize("cls", [RevIN, Normalize, ReversibleInstanceNorm])
def test_denorm_before_norm_and_bad_mode_raise(cls):
    layer = cls(3)
    with pytest.raises(RevINError, match=r'mode="denorm"\): no statistics yet'):
        layer(torch.randn(2, 5, 3), mode="denorm")
    with pytest.raises(RevINError, match=r"mode='forward'\): mode must be \"norm\" or \"denorm\""):
        layer(torch.randn(2, 5, 3), mode="forward")
    with pytest.raises(RevINError, match=r"x has shape \(2, 5, 3, 1\), expected \(batch, time"):
        layer(torch.randn(2, 5, 3, 1), mode="norm")
    with pytest.raises(RevINError, match=r"num_features must be a positive int, got 0"):
        cls(0)
    with pytest.raises(RevINError, match=r"eps must be a finite number >= 1.18e-38"):
        cls(3, eps=0.0)


def test_non_norm_is_identity_in_both_modes():
    layer = RevIN(3, non_norm=True)
    x = ordinary(2, 10, 3)
    for mode in ("norm", "denorm"):
        y = layer(x, mode=mode)
        assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()  # a copy, as revin_fn.RevIN's
        with pytest.raises(RevINError, match=rf'^RevIN\(x, mode="{mode}"\): x must be a float'):
            layer(x.long(), mode=mode)


def test_s4_input_half_transposed_must_be_a_bool():
    with pytest.raises(RevINTypeError, match=r"transposed must be True or False, got str"):
        ReversibleInstanceNorm1dInput(3, transposed="False")


def test_normalize_is_tslib_signature():
    layer = Normalize(7)
    assert not layer.affine and not list(layer.parameters())
    x = ordinary(4, 50, 7)
    y_ref, _, _ = original_norm(x, None, None)
    torch.testing.assert_close(layer(x, mode="norm"), y_ref, atol=1e-6, rtol=0)


# --- kerasfactory ---------------------------------------------------------------------------
def test_kerasfactory_signature_and_defaults():
    layer = ReversibleInstanceNorm(num_features=8, eps=1e-5, name="revin")
    assert layer.name == "revin" and not layer.affine and layer.detach is False
    assert ReversibleInstanceNorm(8, affine=True).affine_weight.shape == (8,)


@pytest.mark.parametrize("subtract_last", [False, True])
def test_kerasfactory_matches_formula_with_gradients(subtract_last):
    layer = ReversibleInstanceNorm(5, affine=True, subtract_last=subtract_last).double()
    set_affine(layer)
    w, b = layer.affine_weight, layer.affine_bias
    x = ordinary(4, 40, 5, dtype=torch.float64).requires_grad_()
    y = layer(x, mode="norm")
    y_ref, center, std = original_norm(x, w, b, subtract_last=subtract_last, detach=False)
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=0)
    y_hat = y[:, -10:] * 2
    x_hat = layer(y_hat, mode="denorm")
    x_ref = keras_denorm(y_ref[:, -10:] * 2, w, b, center, std)
    torch.testing.assert_close(x_hat, x_ref, atol=1e-6, rtol=1e-6)
    grads = torch.autograd.grad(x_hat.square().sum(), [x, w, b])
    grads_ref = torch.autograd.grad(x_ref.square().sum(), [x, w, b])
    for got, want in zip(grads, grads_ref, strict=True):  # statistics are not detached
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_kerasfactory_weight_zero_is_guarded():
    # intended difference: kerasfactory divides by the raw weight (inf at 0)
    layer = ReversibleInstanceNorm(2, affine=True)
    with torch.no_grad():
        layer.affine_weight.zero_()
    x = ordinary(2, 20, 2)
    assert layer(layer(x, mode="norm"), mode="denorm").isfinite().all()


# --- S4 / ESPnet ----------------------------------------------------------------------------
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_s4_pair_matches_formula(transposed, dtype):
    norm_in = ReversibleInstanceNorm1dInput(6, transposed=transposed)
    norm_out = ReversibleInstanceNorm1dOutput(norm_in)
    x = ordinary(4, 80, 6, dtype=dtype)
    if transposed:
        x = x.transpose(1, 2).contiguous()
    y_ref, m, s = s4_norm(wide(x), transposed)
    torch.testing.assert_close(wide(norm_in(x)), y_ref, atol=1e-6, rtol=0)
    y_hat = torch.randn_like(x)
    want = s4_denorm(wide(y_hat), m, s, transposed)
    assert_close_in_data_units(norm_out(y_hat), want, x)


def test_s4_backward_works_where_the_in_place_original_crashes():
    x = ordinary(2, 30, 3, dtype=torch.float64).requires_grad_()
    z = x.transpose(-1, -2)
    s, m = torch.std_mean(z, dim=-1, unbiased=False, keepdim=True)
    s += 1e-4  # the published code: modifies a tensor std_mean saved for backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        ((z - m) / s).sum().backward()
    norm_in = ReversibleInstanceNorm1dInput(3)
    norm_out = ReversibleInstanceNorm1dOutput(norm_in)
    out = norm_out(norm_in(x) * 2)
    grad = torch.autograd.grad(out.square().sum(), x)[0]
    y_ref, m, s = s4_norm(x)
    want = torch.autograd.grad(s4_denorm(y_ref * 2, m, s).square().sum(), x)[0]
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-6)


def test_s4_output_checks_shape_and_order():
    norm_in = ReversibleInstanceNorm1dInput(4)
    norm_out = ReversibleInstanceNorm1dOutput(norm_in)
    with pytest.raises(RevINError, match=r"ReversibleInstanceNorm1dOutput\(x\): no statistics yet"):
        norm_out(torch.randn(2, 10, 4))
    x = ordinary(2, 10, 4)
    norm_in(x)
    # intended difference: the original broadcasts (B, L, 1) to (B, L, 4)
    with pytest.raises(
        RevINError, match=r"y_hat has shape \(2, 10, 1\), expected \(2, T, 4\) \(any T\)"
    ):
        norm_out(torch.randn(2, 10, 1))
    _, m, s = s4_norm(x)
    y_hat = torch.randn(2, 10, 1)
    want = s4_denorm(y_hat, m[:, 1:2], s[:, 1:2])
    assert_close_in_data_units(norm_out(y_hat, variates=1), want, x)
    with pytest.raises(RevINError, match=r"expected a ReversibleInstanceNorm1dInput, got RevIN"):
        ReversibleInstanceNorm1dOutput(RevIN(3))  # type: ignore[arg-type]
    with pytest.raises(RevINError, match=r"d must be a positive int"):
        ReversibleInstanceNorm1dInput(0)


def test_s4_input_refuses_another_feature_count_and_names_the_layout():
    """The original never reads ``d``, so a (B, D, L) batch without ``transposed=True`` was
    normalized across its features; here the width is checked (and nothing is kept)."""
    norm_in = ReversibleInstanceNorm1dInput(7)
    with pytest.raises(RevINError, match=r"x has 5 features on axis -1 \(shape \(2, 96, 5\), "
                       r"transposed=False\), expected d=7$"):  # fmt: skip
        norm_in(torch.randn(2, 96, 5))
    with pytest.raises(RevINError, match=r"expected d=7; pass transposed=True for \(B, D, L\)"):
        norm_in(torch.randn(2, 7, 96))
    with pytest.raises(RevINError, match=r"axis -2 .* pass transposed=False for \(B, L, D\)"):
        ReversibleInstanceNorm1dInput(7, transposed=True)(torch.randn(2, 96, 7))
    assert norm_in.reverse_fn is None
    assert norm_in(torch.randn(2, 96, 7)).shape == (2, 96, 7)


def test_s4_state_dict_keys_match_the_original():
    norm_in = ReversibleInstanceNorm1dInput(4)
    norm_out = ReversibleInstanceNorm1dOutput(norm_in)
    assert set(norm_in.state_dict()) == {"norm.weight", "norm.bias"}
    assert set(norm_out.state_dict()) == {
        "weight",
        "bias",
        "norm_input.norm.weight",
        "norm_input.norm.bias",
    }
    original_in = OriginalS4Input(4)
    original_out = OriginalS4Output(original_in)
    assert [n for n, _ in norm_in.named_parameters()] == ["norm.weight", "norm.bias"]
    assert [n for n, _ in norm_out.named_parameters()] == [
        n for n, _ in original_out.named_parameters()
    ]
    assert norm_out.weight is norm_in.norm.weight and norm_in.norm.weight.requires_grad


class OriginalS4Input(torch.nn.Module):
    """The S4 / ESPnet input half's structure: an InstanceNorm1d(d, affine=True) never called."""

    def __init__(self, d, transposed=False):
        super().__init__()
        self.transposed = transposed
        self.norm = torch.nn.InstanceNorm1d(d, affine=True, track_running_stats=False)


class OriginalS4Output(torch.nn.Module):
    def __init__(self, norm_input):
        super().__init__()
        self.transposed = norm_input.transposed
        self.weight = norm_input.norm.weight
        self.bias = norm_input.norm.bias
        self.norm_input = norm_input


class S4Forecaster(torch.nn.Module):
    def __init__(self, input_cls, output_cls, d=3):
        super().__init__()
        self.norm_in = input_cls(d)
        self.linear = torch.nn.Linear(20, 20)
        self.norm_out = output_cls(self.norm_in)


def test_s4_optimizer_state_of_the_original_loads():
    original = S4Forecaster(OriginalS4Input, OriginalS4Output)
    optimizer = torch.optim.AdamW(original.parameters(), lr=1e-3)
    original.linear(torch.randn(4, 20)).sum().backward()
    optimizer.step()
    model = S4Forecaster(ReversibleInstanceNorm1dInput, ReversibleInstanceNorm1dOutput)
    model.load_state_dict(original.state_dict())
    ours = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ours.load_state_dict(optimizer.state_dict())
    moved = 0
    for ours_param, original_param in zip(model.parameters(), original.parameters(), strict=True):
        assert ours_param.shape == original_param.shape
        if original_param in optimizer.state:  # the linear layer's: moved with the state
            got, want = ours.state[ours_param], optimizer.state[original_param]
            moved += torch.equal(got["exp_avg"], want["exp_avg"])
    assert moved == 2
    norm = model.norm_in
    y = norm(torch.randn(2, 20, 3) * 4 + 1)
    x_hat = model.norm_out(model.linear(y.transpose(1, 2)).transpose(1, 2))
    x_hat.sum().backward()
    ours.step()  # the unused affine parameters get no gradient, as in the original


class Wrapped(torch.nn.Module):
    """A layer before the norm, so the statistics are graph tensors even without affine."""

    def __init__(self, norm, denorm=None):
        super().__init__()
        self.embed = torch.nn.Linear(3, 3)
        self.norm = norm
        self.denorm = denorm
        self.head = torch.nn.Linear(16, 8)

    def forward(self, x):
        x = self.embed(x)
        if self.denorm is None:
            y = self.norm(x, mode="norm")
            return self.norm(self.head(y.transpose(1, 2)).transpose(1, 2), mode="denorm")
        y = self.norm(x)
        return self.denorm(self.head(y.transpose(1, 2)).transpose(1, 2))


def _models():
    s4_in = ReversibleInstanceNorm1dInput(3)
    return [
        Wrapped(RevIN(3)),
        Wrapped(Normalize(3, affine=True)),
        Wrapped(ReversibleInstanceNorm(3)),
        Wrapped(ReversibleInstanceNorm(3, affine=True, subtract_last=True)),
        Wrapped(s4_in, ReversibleInstanceNorm1dOutput(s4_in)),
    ]


@pytest.mark.parametrize("index", range(5), ids=["revin", "normalize", "keras", "keras-last", "s4"])
def test_models_copy_and_pickle_after_a_forward_with_gradients(index):
    model = _models()[index]
    x = torch.randn(4, 16, 3) * 3 + 5
    model(x).sum().backward()  # keeps the latest statistics, graph tensors
    twin = copy.deepcopy(model)
    assert twin.norm.reverse_fn is None and model.norm.reverse_fn is not None  # per-batch state
    averaged = torch.optim.swa_utils.AveragedModel(model)
    averaged.update_parameters(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    expected = model(x)
    for other in (twin, averaged, loaded):
        torch.testing.assert_close(other(x), expected)


@pytest.mark.parametrize(
    "cls", [RevIN, Normalize, ReversibleInstanceNorm, ReversibleInstanceNorm1dInput]
)
def test_numpy_integer_sizes_and_bool_refused(cls):
    layer = cls(np.int64(7))
    size = layer.d if cls is ReversibleInstanceNorm1dInput else layer.num_features
    assert size == 7 and type(size) is int
    with pytest.raises(RevINError, match=r"\(.*=True\): .* must be a positive int, got True"):
        cls(True)


def test_errors_name_the_compat_call_the_user_made():
    with pytest.raises(RevINError, match=r"^RevIN\(num_features=3\): non_norm must be True or F"):
        RevIN(3, non_norm="False")  # the string would switch normalization off
    layer = RevIN(3)
    with pytest.raises(
        RevINError,
        match=r'^RevIN\(x, mode="norm"\): x has 5 features \(shape \(4, 10, 5\)\), '
        r"expected num_features=3",
    ):
        layer(torch.randn(4, 10, 5), mode="norm")
    layer(torch.randn(4, 10, 3), mode="norm")
    with pytest.raises(
        RevINError, match=r'^RevIN\(x, mode="denorm"\): y_hat has shape \(4, 5, 1\)'
    ):
        layer(torch.randn(4, 5, 1), mode="denorm")
    assert Normalize(3)(torch.randn(4, 10, 5), mode="norm").shape == (4, 10, 5)  # as TSLib
    inputs = ReversibleInstanceNorm1dInput(3)
    outputs = ReversibleInstanceNorm1dOutput(inputs)
    inputs(torch.randn(2, 10, 3))
    with pytest.raises(RevINError, match=r"^ReversibleInstanceNorm1dOutput\(x\): y_hat has shape"):
        outputs(torch.randn(2, 5, 2))
    with pytest.raises(RevINError, match=r"^ReversibleInstanceNorm1dInput\(x\): x must be"):
        inputs(torch.randn(2, 10, 3).long())


@pytest.mark.parametrize("cls", [RevIN, Normalize, ReversibleInstanceNorm])
@pytest.mark.parametrize("subtract_last", [False, True])
def test_kept_statistics_read_as_the_originals_attributes(cls, subtract_last):
    layer = cls(3, subtract_last=subtract_last)
    assert not hasattr(layer, "stdev")  # before any batch, as the original's attributes
    with pytest.raises(AttributeError, match="no attribute 'mean'"):  # nn.Module's message
        _ = layer.mean
    if layer.affine:  # stdev from the gain and the guarded weight
        set_affine(layer)
    x = ordinary(4, 16, 3)
    layer(x, mode="norm")
    _, center, std = original_norm(x, None, None, subtract_last=subtract_last)
    torch.testing.assert_close(layer.stdev, std)
    kept, other = ("last", "mean") if subtract_last else ("mean", "last")
    torch.testing.assert_close(getattr(layer, kept), center)
    assert getattr(layer, other, None) is None  # the original sets only one of the two
    getattr(layer, kept).add_(1.0)  # a copy: the module's reverse is unchanged
    torch.testing.assert_close(getattr(layer, kept), center)
    assert not hasattr(copy.deepcopy(layer), "stdev")  # per-batch state, as reverse_fn


@pytest.mark.parametrize("transposed", [False, True])
def test_s4_input_keeps_m_and_s_as_the_original(transposed):
    layer = ReversibleInstanceNorm1dInput(3, transposed=transposed)
    x = ordinary(2, 16, 3)
    x = x.transpose(1, 2) if transposed else x
    layer(x)
    _, m, s = s4_norm(x, transposed)
    torch.testing.assert_close(layer.m, m)
    torch.testing.assert_close(layer.s, s)


def test_eps_affine_and_subtract_last_are_read_on_every_call():
    layer, x = RevIN(3), ordinary(4, 16, 3)
    set_affine(layer)
    layer.eps, layer.subtract_last = 0.1, True  # |weight| >= 0.2: unguarded
    weight, bias = layer.affine_weight, layer.affine_bias
    want, _, std = original_norm(x, weight, bias, eps=0.1, subtract_last=True)
    assert_close_in_data_units(layer(x, mode="norm"), want, x)
    torch.testing.assert_close(layer.stdev, std)
    layer.affine = False
    want, _, _ = original_norm(x, None, None, eps=0.1, subtract_last=True)
    assert_close_in_data_units(layer(x, mode="norm"), want, x)
    assert_close_in_data_units(layer(want, mode="denorm"), x, x)


def test_norm_refuses_variates_and_kerasfactory_takes_training():
    layer = RevIN(3)
    for layer in (RevIN(3), RevIN(3, non_norm=True)):
        with pytest.raises(RevINError, match=r'^RevIN\(x, mode="norm"\): variates= is for mode='):
            layer(torch.randn(4, 10, 3), mode="norm", variates=[0])
    keras = ReversibleInstanceNorm(3)
    x = ordinary(4, 16, 3)
    y = keras(x, "norm", training=True)
    torch.testing.assert_close(keras(y, "denorm", training=False), x)
    with pytest.raises(RevINTypeError, match=r"training must be True or False, got str"):
        keras(x, "norm", training="no")


def test_affine_output_dtype_promotes_as_the_original():
    layer = RevIN(3)
    x = ordinary(4, 16, 3).half()
    y = layer(x, mode="norm")
    assert y.dtype == torch.float32  # the original's y * weight + bias with float32 weights
    assert Normalize(3)(x, mode="norm").dtype == torch.float16  # no affine: the data's
    assert layer(y, mode="denorm").dtype == torch.float32


@pytest.mark.parametrize("cls", [RevIN, ReversibleInstanceNorm])
def test_kept_stdev_has_the_originals_gradients(cls):
    """stdev takes no gradient from the weight (the original's is the data's scale): detached
    with RevIN (read after an optimizer step, it is the batch's scale still); with
    kerasfactory's statistics in the graph, only x's."""
    layer = cls(3, affine=True)
    set_affine(layer)
    with torch.no_grad():
        layer.affine_weight[1] = 0.0  # guarded
    x = ordinary(4, 16, 3).requires_grad_()
    layer(x, mode="norm")
    if cls is RevIN:
        with torch.no_grad():
            layer.affine_weight.add_(0.5)  # as an optimizer step would, before the read
    _, _, std = original_norm(x, None, None, detach=cls is RevIN)
    torch.testing.assert_close(layer.stdev, std)
    assert layer.stdev.requires_grad == (cls is ReversibleInstanceNorm)
    if cls is ReversibleInstanceNorm:
        got = torch.autograd.grad(layer.stdev.sum(), (x, layer.affine_weight), allow_unused=True)
        want = torch.autograd.grad(std.sum(), x)[0]
        torch.testing.assert_close(got[0], want)
        assert got[1] is None  # the weight takes none
