"""Dataset-level normalization: adapt (streamed moments), normalize, Normalization."""

import io
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import revin_fn
from revin_fn import Normalization, RevINError, RevINTypeError, Statistics, adapt, normalize
from revin_fn import _moments as moments


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def dataset(n=300, v=5, t=40, dtype=torch.float64):
    scale = torch.arange(1, v + 1, dtype=dtype).view(1, v, 1)
    return torch.randn(n, v, t, dtype=dtype) * scale + 100 * torch.randn(1, v, 1, dtype=dtype)


def whole(x, dims=(0, 2)):
    return x.mean(dims), x.var(dims, unbiased=False)


# --- adapt ----------------------------------------------------------------------------------
def test_streaming_equals_concatenated():
    x = dataset()
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=32)  # (x, y) batches
    stats = adapt(loader)
    mean, var = whole(x)
    torch.testing.assert_close(stats.mean, mean, atol=1e-6, rtol=1e-9)
    torch.testing.assert_close(stats.variance, var, atol=1e-6, rtol=1e-9)
    assert stats.gamma is None and stats.beta is None and stats.mean.dtype == torch.float64


def test_streaming_float32_batches_accumulate_in_float64():
    x = dataset(dtype=torch.float32) * 0.01 + 1e4  # offset 1e4 times the spread
    stats = adapt(iter(x.split(7)))
    mean, var = whole(x.double())
    torch.testing.assert_close(stats.mean, mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(stats.variance, var, atol=1e-6, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 59), max_size=6, unique=True),
    seed=st.integers(0, 2**16),
    masked=st.booleans(),
)
def test_merge_of_random_splits_equals_whole(cuts, seed, masked):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 3, 9, generator=g, dtype=torch.float64) * 4 + 50
    if masked:
        x[torch.rand(x.shape, generator=g) < 0.3] = float("nan")
    bounds = [0, *sorted(cuts), 60]
    parts = [x[a:b] for a, b in itertools.pairwise(bounds)]
    stats = adapt(parts, mask="nan" if masked else None)
    observed = ~x.isnan()
    mean = x.nan_to_num().sum((0, 2)) / observed.sum((0, 2))
    var = ((x - mean.view(1, 3, 1)).nan_to_num().square().sum((0, 2))) / observed.sum((0, 2))
    torch.testing.assert_close(stats.mean, mean, atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(stats.variance, var, atol=1e-9, rtol=1e-9)


def test_bool_mask_and_never_observed_variate():
    x = dataset(n=50, v=3)
    mask = torch.rand(x.shape) > 0.5
    mask[:, 2] = False  # variate 2 never observed: mean 0, variance 1 as in revin
    stats = adapt(x, mask=mask)
    for v in range(2):
        values = x[:, v][mask[:, v]]
        torch.testing.assert_close(stats.mean[v], values.mean())
        torch.testing.assert_close(stats.variance[v], values.var(unbiased=False))
    assert stats.mean[2] == 0 and stats.variance[2] == 1


@pytest.mark.parametrize("pattern", ["b t v", "v b t", "b v t"])
def test_one_tensor_is_chunked_along_a_non_variate_axis(monkeypatch, pattern):
    monkeypatch.setattr(moments, "CHUNK", 500)
    x = dataset(n=40, v=4, t=30)  # b v t
    laid_out = {"b t v": x.transpose(1, 2), "v b t": x.transpose(0, 1), "b v t": x}[pattern]
    stats = adapt(laid_out.contiguous(), pattern=pattern)
    mean, var = whole(x)
    torch.testing.assert_close(stats.mean, mean)
    torch.testing.assert_close(stats.variance, var)


def test_pattern_without_variate_gives_one_scalar():
    x = dataset(n=20)
    stats = adapt(x, pattern="b c t")
    assert stats.mean.shape == () and stats.variance.shape == ()
    torch.testing.assert_close(stats.variance, x.var(unbiased=False))


def test_progress_lines_on_stderr(capsys):
    adapt(DataLoader(TensorDataset(dataset(n=64)), batch_size=4), progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("adapt: batch 2/16, ")
    assert err[-1].startswith("adapt: done, 16 batches, 12800 values")
    assert len(err) <= 11
    adapt((b for b in dataset(n=8).split(1)), progress=True)  # no len: powers of two
    err = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in err] == [
        "adapt: batch 1",
        "adapt: batch 2",
        "adapt: batch 4",
        "adapt: batch 8",
        "adapt: done",
    ]
    adapt(dataset(n=8))
    assert capsys.readouterr().err == ""


def test_progress_counts_chunks_of_one_tensor(monkeypatch, capsys):
    monkeypatch.setattr(moments, "CHUNK", 2000)  # 50 rows of 200 values: 5 chunks of 10 rows
    adapt(dataset(n=50, t=40), progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("adapt: batch 1/5, 2000 values")
    assert err[-1].startswith("adapt: done, 5 batches, 10000 values")


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "match"),
    [
        ([], {}, RevINError, r"adapt\(data\): data has no batches"),
        (5, {}, RevINTypeError, r"adapt\(data\): data must be a tensor or an iterable"),
        (["a"], {}, RevINTypeError, r"batch 0 is a str, expected a tensor"),
        ([torch.ones(2, 3, 4, dtype=torch.int64)], {}, RevINTypeError, r"batch 0 has dtype"),
        ([torch.ones(2, 3, 4), torch.ones(2, 4, 4)], {}, RevINError, r"batch 1 has shape"),
        ([torch.ones(2, 3)], {}, RevINError, r'pattern "b v t" needs a tensor of 3 dim'),
        ([()], {}, RevINError, r"a batch is an empty tuple"),
        ([torch.ones(2, 3, 4)], {"mask": torch.ones(2, 3, 4, dtype=torch.bool)}, RevINError,
         r"a mask tensor needs data given as one tensor"),
        (torch.ones(2, 3, 4), {"mask": torch.ones(2, 3, 4)}, RevINTypeError, r"mask must be a b"),
        (torch.full((2, 3, 4), float("nan")), {"mask": "nan"}, RevINError, r"no observed value"),
        (torch.ones(0, 3, 4), {}, RevINError, r"no observed value \(0 values seen\)"),
        (torch.ones(2, 3, 4), {"mask": torch.ones(3, 3, 1, dtype=torch.bool)}, RevINError,
         r"mask has shape \(3, 3, 1\), which does not broadcast to x of shape \(2, 3, 4\)"),
    ],
)  # fmt: skip
def test_adapt_bad_inputs(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        adapt(data, **kwargs)


# --- normalize ------------------------------------------------------------------------------
def test_normalize_matches_manual_recipe_and_round_trips():
    train = dataset()
    stats = adapt(train)
    x = dataset(n=8)
    y, reverse_fn = normalize(x, stats)
    mean, std = train.mean((0, 2)), train.std((0, 2), unbiased=False)
    torch.testing.assert_close(y, (x - mean.view(1, -1, 1)) / std.view(1, -1, 1))
    torch.testing.assert_close(reverse_fn(y), x)
    assert reverse_fn(y[..., :3]).shape == (8, 5, 3)
    assert reverse_fn(y[:, 1:2], variates=1).shape == (8, 1, 40)
    with pytest.raises(RevINError, match=r"reverse_fn\(y_hat\): y_hat has shape \(8, 1, 40\)"):
        reverse_fn(y[:, 1:2])


def test_normalize_float32_and_scalar_and_affine_stats():
    x = dataset(n=4, dtype=torch.float32)
    stats = Statistics(torch.tensor(3.0), torch.tensor(4.0), None, None)
    y, reverse_fn = normalize(x, stats)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, (x - 3) / 2)
    gamma, beta = torch.tensor([2.0, -1, 0, 1, 1]), torch.randn(5)
    stats = Statistics(torch.zeros(5), torch.ones(5), gamma, beta)
    y, reverse_fn = normalize(x, stats)
    gamma_guarded = torch.tensor([2.0, -1, 1e-5, 1, 1]).view(1, 5, 1)
    torch.testing.assert_close(y, x * gamma_guarded + beta.view(1, 5, 1))
    torch.testing.assert_close(reverse_fn(y), x, rtol=1e-4, atol=1e-4)


def test_normalize_invert_is_the_inverse():
    stats = adapt(dataset())
    x = dataset(n=6)
    y, _ = normalize(x, stats)
    x_back, renormalize = normalize(y, stats, invert=True)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(renormalize(x), y)


def test_normalize_bad_stats():
    x = dataset(n=2)
    with pytest.raises(
        RevINError, match=r"normalize\(x, stats\): stats.mean has shape \(4,\), exp"
    ):
        normalize(x, Statistics(torch.zeros(4), torch.ones(4), None, None))
    with pytest.raises(RevINError, match=r"stats.variance has shape \(\), expected \(5,\)"):
        normalize(x, Statistics(torch.zeros(5), torch.tensor(1.0), None, None))
    with pytest.raises(RevINError, match=r"eps_mode must be one of"):
        normalize(x, Statistics(torch.zeros(5), torch.ones(5), None, None), eps_mode="max")
    with pytest.raises(RevINTypeError, match=r"x must be a floating-point tensor"):
        normalize(x.long(), Statistics(torch.zeros(5), torch.ones(5), None, None))


# --- Normalization --------------------------------------------------------------------------
def keras_normalize(x, mean, var, invert=False):
    """Keras Normalization: (x - mean) / max(sqrt(var), 1e-7), inverse mean + x * that."""
    std = torch.clamp(torch.as_tensor(var).sqrt(), min=1e-7)
    return mean + x * std if invert else (x - mean) / std


def test_normalization_matches_keras_and_inverts():
    train = dataset().transpose(1, 2)  # b t v, like Keras' axis=-1
    norm = Normalization(5, pattern="b t v", eps=1e-14, dtype=torch.float64).adapt(train)
    mean, var = train.mean((0, 1)), train.var((0, 1), unbiased=False)
    torch.testing.assert_close(norm.mean, mean)
    x = dataset(n=3).transpose(1, 2)
    y, _, stats = norm(x, return_statistics=True)
    torch.testing.assert_close(y, keras_normalize(x, mean, var), atol=1e-6, rtol=1e-6)
    assert stats.mean is norm.mean
    denorm = Normalization(5, pattern="b t v", invert=True, mean=norm.mean, variance=norm.variance)
    x_hat, renorm = denorm(y)
    torch.testing.assert_close(
        x_hat, keras_normalize(y, mean, var, invert=True), rtol=1e-6, atol=1e-5
    )
    torch.testing.assert_close(x_hat, x)
    torch.testing.assert_close(renorm(x_hat), y)
    flat = Normalization(1, mean=2.0, variance=0.0, eps=1e-14, dtype=torch.float64)
    x = torch.randn(2, 1, 5, dtype=torch.float64)
    torch.testing.assert_close(flat(x)[0], keras_normalize(x, 2.0, 0.0))  # std floor 1e-7


def test_normalization_from_scaler_arrays():
    train = dataset().transpose(1, 2).reshape(-1, 5).numpy()
    mean_, var_ = train.mean(0), train.var(0)  # what StandardScaler stores as mean_, var_
    norm = Normalization(5, pattern="b t v", mean=mean_, variance=var_)
    x = torch.randn(2, 10, 5, dtype=torch.float64)
    y, _ = norm(x)
    want = (x.numpy() - mean_) / np.sqrt(var_)  # StandardScaler.transform
    torch.testing.assert_close(y, torch.from_numpy(want).to(y.dtype))


def test_normalization_state_dict_round_trip(tmp_path):
    norm = Normalization(5).adapt(dataset())
    torch.save(norm.state_dict(), tmp_path / "norm.pt")
    fresh = Normalization(5)
    with pytest.raises(RevINError, match=r"Normalization.forward\(x\): no statistics yet"):
        fresh(dataset(n=2))
    fresh.load_state_dict(torch.load(tmp_path / "norm.pt"))
    x = dataset(n=2)
    torch.testing.assert_close(fresh(x)[0], norm(x)[0])
    fresh.load_state_dict(Normalization(5).state_dict())  # NaN again: checked again
    with pytest.raises(RevINError, match=r"no statistics yet"):
        fresh(x)
    buffer = io.BytesIO()
    torch.save(torch.nn.Sequential(norm), buffer)
    buffer.seek(0)
    model = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(model[0](x)[0], norm(x)[0])


def test_normalization_bad_arguments():
    with pytest.raises(RevINError, match=r"Normalization\(num_variates=0\): num_variates must"):
        Normalization(0)
    with pytest.raises(RevINError, match=r'pattern "b t" needs a variate axis "v"'):
        Normalization(3, pattern="b t")
    with pytest.raises(RevINError, match=r"pass both mean and variance, or neither"):
        Normalization(3, mean=[0, 0, 0])
    with pytest.raises(RevINError, match=r"mean has shape \(2,\), expected \(3,\) or \(\)"):
        Normalization(3, mean=[0, 0], variance=1)
    with pytest.raises(RevINError, match=r"variance must be >= 0"):
        Normalization(3, mean=0, variance=-1)
    with pytest.raises(RevINError, match=r"adapt\(data\): data has 5 variates, expected num_var"):
        Normalization(3).adapt(dataset(n=4))
    norm = Normalization(5, mean=0, variance=1)
    with pytest.raises(RevINError, match=r"Normalization\(x\): stats.mean has shape \(5,\), exp"):
        norm(torch.randn(2, 4, 10))


def test_exports():
    assert revin_fn.Normalization is Normalization
    assert revin_fn.adapt is adapt and revin_fn.normalize is normalize
