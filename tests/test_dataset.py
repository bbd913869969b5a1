"""Dataset-level normalization: adapt (streamed moments), normalize, Normalization."""

import io
import itertools
import pickle
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.data import DataLoader, TensorDataset

import revin_fn
from revin_fn import (
    Normalization,
    RevINError,
    RevINTypeError,
    Statistics,
    adapt,
    normalize,
    reverse,
    revin,
)
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


def test_a_mask_without_the_variate_axis_applies_to_every_variate():
    x = dataset(n=12, v=3, t=12).transpose(1, 2).contiguous()  # b t v, with B == T == 12
    steps = torch.rand(12, 12) > 0.3  # (B, T), as revin takes it under "b t v"
    whole = adapt(x, pattern="b t v", mask=steps.unsqueeze(-1).expand_as(x))
    for stats in (adapt(x, pattern="b t v", mask=steps),
                  Normalization(3, pattern="b t v").adapt(x, mask=steps)):  # fmt: skip
        torch.testing.assert_close(stats.mean, whole.mean)
        torch.testing.assert_close(stats.variance, whole.variance)
    assert not torch.allclose(whole.mean, adapt(x, pattern="b t v").mean)  # the mask matters


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
        (torch.ones(2, 3, 4), {"mask": torch.ones(2, 3, 4, dtype=torch.complex64)}, RevINTypeError,
         r"mask must be a tensor of bools"),
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


def test_adapt_skips_empty_batches_and_checks_its_flags():
    x = torch.randn(1000, 7, 96) + 5
    shards = [x[:500], x[500:], x[1000:]]  # the last one is empty: 0 / 0 must not reach the merge
    torch.testing.assert_close(adapt(shards).mean, adapt(x).mean)
    with pytest.raises(RevINError, match=r"^adapt\(data\): data holds no observed value \(0 val"):
        adapt([x[:0], x[:0]])
    with pytest.raises(RevINTypeError, match=r"^adapt\(data\): progress must be True or False"):
        adapt(x, progress="no")
    with pytest.raises(RevINTypeError, match=r"distributed must be True, False or None, got str"):
        adapt(x, distributed="no")


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
    with pytest.raises(RevINTypeError, match=r"^normalize\(x, stats\): stats must be the Statis"):
        normalize(x, (torch.zeros(5), torch.ones(5)))
    with pytest.raises(RevINError, match=r"stats.mean has shape \(1,\), expected \(\) for x of"):
        normalize(x[:, 0], Statistics(torch.zeros(1), torch.ones(1), None, None), pattern="b t")
    shape = re.escape(str(tuple(x.shape)))
    with pytest.raises(
        RevINError, match=r"stats.gamma has shape \(3,\), .* for x of shape " + shape
    ):
        normalize(x, Statistics(torch.zeros(5), torch.ones(5), torch.ones(3), None))


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
    assert torch.equal(stats.mean, norm.mean) and stats.mean.data_ptr() != norm.mean.data_ptr()
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
    with pytest.raises(RevINError, match=r"forward\(x\): the loaded statistics are all NaN"):
        fresh(x)
    buffer = io.BytesIO()
    torch.save(torch.nn.Sequential(norm), buffer)
    buffer.seek(0)
    model = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(model[0](x)[0], norm(x)[0])


def test_whole_module_pickles_naming_the_0_1_0_module_load(monkeypatch):
    """0.1.0 defined Normalization in revin_fn.dataset: pickles of whole models name it there."""
    norm = Normalization(5).adapt(dataset())
    monkeypatch.setattr(Normalization, "__module__", "revin_fn.dataset")
    stream = pickle.dumps(torch.nn.Sequential(norm))
    monkeypatch.undo()
    assert b"revin_fn.dataset" in stream and b"revin_fn.normalization" not in stream
    x = dataset(n=2)
    torch.testing.assert_close(pickle.loads(stream)[0](x)[0], norm(x)[0])


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
    with pytest.raises(RevINError, match=r"Normalization.forward\(x\): x has 4 variates on axis"):
        norm(torch.randn(2, 4, 10))


def test_exports():
    assert revin_fn.Normalization is Normalization
    assert revin_fn.adapt is adapt and revin_fn.normalize is normalize


# --- the statistics a call hands out are its own --------------------------------------------
def test_normalization_reverse_fn_and_statistics_do_not_move_with_the_buffers():
    norm = Normalization(5).adapt(dataset())
    x = dataset(n=4, dtype=torch.float32)
    y, reverse_fn, stats = norm(x, return_statistics=True)
    before, mean = reverse_fn(y), stats.mean.clone()
    norm.adapt(dataset() * 10 + 500)  # adapt again
    torch.testing.assert_close(reverse_fn(y), before, rtol=0, atol=0)
    norm.load_state_dict(Normalization(5, mean=-3, variance=9).state_dict())
    torch.testing.assert_close(reverse_fn(y), before, rtol=0, atol=0)
    assert torch.equal(stats.mean, mean)
    stats.mean.zero_()  # writing the returned statistics leaves the module alone
    assert torch.equal(norm.mean, torch.full((5,), -3.0, dtype=torch.float64))


def test_normalize_reverse_fn_owns_its_statistics():
    stats = adapt(dataset())
    stats32 = Statistics(stats.mean.float(), stats.variance.float(), None, None)
    x = dataset(n=3, dtype=torch.float32)
    y, reverse_fn = normalize(x, stats32)
    y64, reverse64 = normalize(x, stats)
    before, before64 = reverse_fn(y), reverse64(y64)
    for passed in (stats, stats32):
        passed.mean.add_(1000)
        passed.variance.mul_(4)
    assert torch.equal(reverse_fn(y), before) and torch.equal(reverse64(y64), before64)


# --- accuracy at a large level --------------------------------------------------------------
def test_normalization_at_a_level_of_1e6_is_within_1e_5_of_float64():
    x = (1e6 + 40 * torch.randn(64, 3, 200, dtype=torch.float64)).float()
    norm = Normalization(3).adapt(x)
    y, _ = norm(x)
    stats = adapt(x)  # float64
    want = (x.double() - stats.mean.view(1, 3, 1)) / stats.variance.sqrt().view(1, 3, 1)
    assert y.dtype == torch.float32
    assert (y.double() - want).abs().max() < 1e-5


@settings(max_examples=30, deadline=None)
@given(
    level=st.floats(-1e7, 1e7),
    std=st.floats(1e-2, 1e3),
    seed=st.integers(0, 2**16),
)
def test_normalize_with_adapted_statistics_matches_float64(level, std, seed):
    g = torch.Generator().manual_seed(seed)
    x = (level + std * torch.randn(8, 2, 50, generator=g, dtype=torch.float64)).float()
    stats = adapt(x)
    y, _ = normalize(x, stats, pattern="b v t")
    sigma = stats.variance.clamp(min=1e-5).sqrt().view(1, 2, 1)
    want = (x.double() - stats.mean.view(1, 2, 1)) / sigma
    torch.testing.assert_close(y.double(), want, atol=1e-5, rtol=1e-6)


# --- inputs as users pass them --------------------------------------------------------------
def test_adapt_takes_numpy_arrays_lists_of_arrays_and_dataframes():
    x = dataset()
    want = adapt(x)
    for data in (
        x.numpy(),
        list(x.numpy().reshape(10, 30, 5, 40)),
        [(a, 0) for a in x.numpy()[:, None]],
    ):
        got = adapt(data)
        torch.testing.assert_close(got.mean, want.mean)
        torch.testing.assert_close(got.variance, want.variance)
    pd = pytest.importorskip("pandas")
    table = x.transpose(1, 2).reshape(-1, 5).numpy()  # rows are steps, one column per variate
    frame = pd.DataFrame(table, columns=list("abcde"))
    for pattern in ("b v t", "b t v", "v t", "... t v"):
        got = adapt(frame, pattern=pattern)
        torch.testing.assert_close(got.mean, want.mean)
        torch.testing.assert_close(got.variance, want.variance)
    norm = Normalization(5, pattern="b t v").adapt([frame.iloc[:100], frame.iloc[100:]])
    torch.testing.assert_close(norm.mean, want.mean)
    dates = pd.date_range("2020-01-01", periods=len(frame), freq="h")
    for column in (dates.astype(str), dates, dates - dates[0]):  # text, datetime64, timedelta64
        frame["date"] = column  # the last two convert to float64 too, as nanoseconds
        with pytest.raises(RevINTypeError, match=r"non-numeric columns \['date'\]; select"):
            adapt(frame)


def test_adapt_on_data_with_nan_needs_mask_nan():
    x = dataset()
    x[3, 2, 7] = float("nan")
    with pytest.raises(
        RevINError, match=r'adapt\(data\): data holds NaN or inf in variates \[2\]; pass mask="nan"'
    ):
        Normalization(5).adapt(x)
    with pytest.raises(RevINError, match=r"data holds NaN or inf in variates \[2\]"):
        adapt(iter(x.split(50)))
    stats = adapt(x, mask="nan")
    assert stats.mean.isfinite().all()
    x[0, 0, 0] = float("inf")
    with pytest.raises(RevINError, match=r"data holds inf .* in variates \[0\]"):
        adapt(x, mask="nan")


def test_loaded_nan_statistics_are_told_apart_from_no_statistics():
    fresh = Normalization(5)
    with pytest.raises(RevINError, match=r"forward\(x\): no statistics yet: call adapt"):
        fresh(dataset(n=2))
    state = Normalization(5, mean=0, variance=1).state_dict()
    state["mean"][1] = float("nan")
    fresh.load_state_dict(state)
    with pytest.raises(RevINError, match=r"statistics hold NaN or inf \(mean in variates \[1\]\)"):
        fresh(dataset(n=2))
    with pytest.raises(RevINError, match=r"mean must be finite, got \[0.0, nan\]"):
        Normalization(2, mean=[0, float("nan")], variance=1)


def test_compile_fullgraph_after_load_state_dict():
    torch._dynamo.reset()
    norm = Normalization(5)
    norm.load_state_dict(Normalization(5).adapt(dataset()).state_dict())
    compiled = torch.compile(norm, fullgraph=True, backend="aot_eager")
    x = dataset(n=2, dtype=torch.float32)
    torch.testing.assert_close(compiled(x)[0], norm(x)[0])


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((True,), {}, RevINTypeError,
         r"^Normalization\(num_variates=True\): num_variates must be a positive int, got True"),
        ((5,), {"pattern": None}, RevINTypeError,
         r'^Normalization\(num_variates=5\): pattern must be a string such as "b v t", got None'),
        ((5,), {"eps": None}, RevINTypeError, r"eps must be a positive number, got None"),
        ((5.0,), {}, RevINTypeError, r"num_variates must be a positive int, got 5\.0"),
        ((5,), {"dtype": torch.int64}, RevINTypeError,
         r"^Normalization\(num_variates=5\): dtype must be a floating-point torch.dtype"),
        ((5,), {"mean": "a", "variance": 1.0}, RevINTypeError,
         r"mean must be a real number or a sequence, array or tensor of them, got str 'a'"),
        ((5,), {"mean": torch.zeros(5, dtype=torch.complex64), "variance": 1.0}, RevINTypeError,
         r"mean must be a real number"),
        ((5,), {"mean": 0.0, "variance": np.ones(5) + 1j}, RevINTypeError,
         r"variance must be a real number"),
    ],
)  # fmt: skip
def test_normalization_constructor_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        Normalization(*args, **kwargs)


def test_normalization_numpy_integer_size():
    norm = Normalization(np.int64(5)).adapt(dataset().numpy())
    assert norm.num_variates == 5 and type(norm.num_variates) is int
    assert norm.mean.shape == (5,)


def test_normalization_forward_checks_the_variate_count():
    norm = Normalization(3, pattern="b t v", mean=0.0, variance=1.0)
    with pytest.raises(
        RevINError,
        match=r'^Normalization.forward\(x\): x has 5 variates on axis "v" \(shape \(2, 10, 5\), '
        r'pattern "b t v"\), expected num_variates=3',
    ):
        norm(torch.randn(2, 10, 5))
    with pytest.raises(RevINError, match=r"^Normalization.forward\(x\): x must be a torch.Tensor"):
        norm([1.0, 2.0])


def test_normalization_statistics_stay_out_of_half_precision():
    """``model.half()`` would overflow a variance of 400**2 in float16 (the output became 0) and
    round a mean of 1000.3 to 1000 in bfloat16; the statistics keep their dtype instead."""
    norm = Normalization(2, pattern="b t v", mean=[1000.3, 5.0], variance=[400.0**2, 1.0])
    x = torch.tensor([[[600.3, 4.0], [1400.3, 6.0]]])
    expected = torch.tensor([[[-1.0, -1.0], [1.0, 1.0]]])
    casts = (torch.nn.Module.half, torch.nn.Module.bfloat16, lambda m: m.to(torch.float16),
             lambda m: m.to(torch.float8_e4m3fn))  # fmt: skip
    for cast in casts:
        copy = cast(Normalization(2, pattern="b t v", mean=norm.mean, variance=norm.variance))
        assert torch.equal(copy.mean, norm.mean) and torch.equal(copy.variance, norm.variance)
        y, reverse_fn = copy(x.to(torch.float16))
        assert y.dtype == torch.float16
        torch.testing.assert_close(y.float(), expected, rtol=0.0, atol=2e-3)  # x rounded to fp16
        torch.testing.assert_close(reverse_fn(y).float(), x, rtol=1e-3, atol=0.0)
    assert norm.double().mean.dtype == torch.float64 and norm.float().mean.dtype == torch.float32
    for dtype in (torch.float16, torch.float8_e4m3fn):
        with pytest.raises(RevINError, match=rf"dtype={dtype} cannot hold the statistics"):
            Normalization(2, dtype=dtype)
    for cast, finite in ((torch.Tensor.bfloat16, True), (torch.Tensor.half, False)):
        checkpoint = {name: cast(value) for name, value in norm.state_dict().items()}
        loaded = Normalization(2, pattern="b t v")
        loaded.load_state_dict(checkpoint, assign=True)  # its own tensors, made float32
        assert loaded.mean.dtype == loaded.variance.dtype == torch.float32
        if finite:
            torch.testing.assert_close(loaded(x)[0], expected, rtol=0.0, atol=2e-3)
        else:  # 400**2 was inf in the float16 checkpoint itself
            with pytest.raises(RevINError, match=r"statistics hold NaN or inf \(variance in var"):
                loaded(x)


def test_normalization_statistics_written_outside_its_three_setters_do_not_count():
    """In-place writes (an EMA copy made before adapt) are not seen: the module keeps saying it
    has no statistics, with the way out; functional_call works on a module that has them."""
    data = torch.randn(64, 3, 16) * 4 + 20
    model = Normalization(3)
    ema = torch.optim.swa_utils.AveragedModel(model, use_buffers=True)
    model.adapt(data)
    ema.update_parameters(model)
    x = torch.randn(2, 3, 16) * 4 + 20
    with pytest.raises(RevINError, match=r"no statistics yet: .* AveragedModel\(use_buffers=True"):
        ema.module(x)
    ema.module.load_state_dict(ema.module.state_dict())  # the buffers through load_state_dict
    torch.testing.assert_close(ema.module(x)[0], model(x)[0])
    other = Normalization(3).adapt(data * 2)
    stats = {"mean": other.mean, "variance": other.variance}
    torch.testing.assert_close(torch.func.functional_call(model, stats, (x,))[0], other(x)[0])
    with pytest.raises(RevINError, match=r"^Normalization.forward\(x\): no statistics yet"):
        torch.func.functional_call(Normalization(3), stats, (x,))
    meta = Normalization(3, mean=[1.0, 2.0, 3.0], variance=1.0, device="meta")
    with pytest.raises(RevINError, match=r"set on the meta device, so they hold no values"):
        meta.to_empty(device="cpu")(x)  # uninitialised memory, not statistics


def test_normalization_flags_must_be_bools():
    with pytest.raises(RevINTypeError, match=r"invert must be True or False, got str 'False'"):
        Normalization(2, invert="False")
    norm = Normalization(2, mean=0.0, variance=1.0)
    with pytest.raises(RevINTypeError, match=r"^Normalization.forward\(x\): return_statistics mus"):
        norm(torch.randn(3, 2, 4), return_statistics="no")


def test_normalization_with_given_statistics_on_the_meta_device():
    norm = Normalization(3, pattern="b t v", mean=[1.0, 2.0, 3.0], variance=1.0, device="meta")
    y, reverse_fn = norm(torch.empty(2, 8, 3, device="meta"))
    assert y.is_meta and y.shape == (2, 8, 3) and reverse_fn(y).shape == (2, 8, 3)


def test_normalization_is_built_loaded_and_run_under_fake_tensor_mode():
    """A model built under FakeTensorMode (for its shapes only): no value is read or checked."""
    state = Normalization(3, pattern="b t v").adapt(torch.randn(50, 24, 3) * 3 + 5).state_dict()
    with FakeTensorMode() as mode:
        given = Normalization(3, pattern="b t v", mean=[1.0, 2.0, 3.0], variance=[1.0, 1.0, 1.0])
        loaded = Normalization(3, pattern="b t v")
        loaded.load_state_dict({key: mode.from_tensor(value) for key, value in state.items()})
        for norm in (given, loaded):
            y, reverse_fn = norm(torch.empty(4, 24, 3))
            assert y.shape == reverse_fn(y).shape == (4, 24, 3)
        with pytest.raises(RevINError, match=r"batch 0 is a fake tensor .*: it holds no values"):
            Normalization(3, pattern="b t v").adapt(torch.empty(50, 24, 3))
    with pytest.raises(RevINError, match=r"^adapt\(data\): batch 0 is on the meta device"):
        adapt(torch.empty(50, 24, 3, device="meta"), pattern="b t v")


def test_normalization_adapt_errors_name_the_method():
    with pytest.raises(RevINError, match=r'^Normalization.adapt\(data\): pattern "b v t" needs a'):
        Normalization(3).adapt(torch.randn(4, 3))


def test_adapt_takes_a_numpy_mask_with_numpy_data():
    data = np.random.default_rng(0).normal(3.0, 2.0, (4, 3, 10))
    mask = np.ones(data.shape, dtype=bool)
    mask[0, 0, :5] = False
    got = adapt(data, mask=mask)
    want = adapt(torch.from_numpy(data), mask=torch.from_numpy(mask))
    torch.testing.assert_close(got.mean, want.mean)
    torch.testing.assert_close(got.variance, want.variance)
    kept = data[:, 0][mask[:, 0]]
    assert abs(float(got.mean[0]) - kept.mean()) < 1e-12  # the masked steps are left out


def test_fixed_statistics_on_another_device_are_named():
    x = torch.randn(2, 3, 8)
    meta = Statistics(torch.zeros(3, device="meta"), torch.ones(3, device="meta"), None, None)
    with pytest.raises(RevINError, match=r"^normalize\(x, stats\): stats.mean is on meta \(no"):
        normalize(x, meta)
    _, _, stats = revin(x, return_statistics=True)
    apart = Statistics(stats.mean, stats.variance.to("meta"), None, None)
    with pytest.raises(RevINError, match=r"stats.variance is on meta, expected cpu like stats.m"):
        reverse(x, apart)
