"""Two CPU processes (gloo): RevIN under DDP, and adapt merging per-rank moments."""

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from revin_fn import Normalization, RevIN, adapt

WORLD = 2
BATCH, TIME, HORIZON, VARIATES = 8, 24, 6, 3


class Forecaster(nn.Module):
    """RevIN -> linear over time -> reverse: the usual forecasting wrapper."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = RevIN(VARIATES, pattern="b t v")
        self.head = nn.Linear(TIME, HORIZON)

    def forward(self, x):
        y, reverse_fn = self.norm(x)
        return reverse_fn(self.head(y.transpose(1, 2)).transpose(1, 2))


def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, TIME, VARIATES, generator=g, dtype=torch.float64) * 3 + 10
    target = torch.randn(BATCH, HORIZON, VARIATES, generator=g, dtype=torch.float64) + 10
    torch.manual_seed(0)  # the same head in every process
    model = Forecaster().double()
    with torch.no_grad():  # gamma/beta away from their initial values
        model.norm.gamma.copy_(torch.tensor([1.5, -0.7, 0.9]))
        model.norm.beta.copy_(torch.tensor([0.1, -0.2, 0.3]))
    shards = [
        torch.randn(n, VARIATES, 20, generator=g, dtype=torch.float64) * 2 + 5 for n in (7, 13)
    ]
    shards[1][0, 1, :5] = float("nan")  # a missing stretch on one rank
    return model, x, target, shards


def gradients(model, x, target):
    model.zero_grad()
    nn.functional.mse_loss(model(x), target).backward()
    return model.norm.gamma.grad.clone(), model.norm.beta.grad.clone()


def worker(rank, out):
    torch.set_num_threads(1)
    # A file store: no store server thread in rank 0 and no port to race for.
    # a collective left waiting (a rank that raised before it) times out instead of hanging
    dist.init_process_group(
        "gloo", init_method=f"file://{out}/store", rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    try:
        model, x, target, shards = problem()
        ddp = nn.parallel.DistributedDataParallel(model)
        share = BATCH // WORLD
        part = slice(rank * share, (rank + 1) * share)
        model.zero_grad()
        nn.functional.mse_loss(ddp(x[part]), target[part]).backward()  # DDP averages grads
        grads = model.norm.gamma.grad.clone(), model.norm.beta.grad.clone()
        stats = adapt(shards[rank], mask="nan")  # a process group is up: moments all_reduced
        norm = Normalization(VARIATES, dtype=torch.float64).adapt(shards[rank], mask="nan")
        local = adapt(shards[rank], mask="nan", distributed=False)
        # rank 1's second batch has a variate more: it raises in its own pass over the data
        batches = [shards[rank][:3], shards[rank][3:]]
        if rank == 1:
            batches[1] = torch.cat([batches[1], batches[1][:, :1]], dim=1)
        try:
            adapt(batches, mask="nan")
            failed = "no error"
        except Exception as error:
            failed = f"{type(error).__name__}: {error}"
        results = {
            "failed": failed,
            "grads": grads,
            "adapt": {"mean": stats.mean, "variance": stats.variance},
            "buffers": norm.state_dict(),
            "local": {"mean": local.mean, "variance": local.variance},
        }
        torch.save(results, f"{out}/rank{rank}.pt")
        dist.barrier()  # both ranks done before either tears its group down
        del ddp
    finally:
        dist.destroy_process_group()
    # The results are on disk. The interpreter's teardown of gloo's threads is not under test
    # and has aborted on a loaded machine ("terminate called without an active exception").
    os._exit(0)


def spawn(out):
    mp.spawn(worker, args=(str(out),), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    try:
        return spawn(tmp_path_factory.mktemp("ddp"))
    except mp.ProcessExitedException as crash:
        # A process killed by a signal (gloo's C++ threads, not this package's Python) gets
        # one more try in fresh processes; a Python error in a worker is a failure at once
        # (mp.ProcessRaisedException), and so is a second crash.
        if crash.signal_name is None:
            raise
        return spawn(tmp_path_factory.mktemp("ddp"))


@pytest.mark.slow
def test_ddp_gradients_equal_single_process_on_the_whole_batch(ranks):
    model, x, target, _ = problem()
    gamma_grad, beta_grad = gradients(model, x, target)
    assert gamma_grad.abs().min() > 0  # the check below is not vacuous
    for result in ranks:
        torch.testing.assert_close(result["grads"][0], gamma_grad, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(result["grads"][1], beta_grad, atol=1e-9, rtol=1e-9)


@pytest.mark.slow
def test_adapt_under_a_process_group_gives_whole_dataset_statistics(ranks):
    *_, shards = problem()
    whole = adapt(torch.cat(shards), mask="nan")
    for rank, result in enumerate(ranks):
        for got in (result["adapt"], result["buffers"]):
            torch.testing.assert_close(got["mean"], whole.mean, atol=1e-6, rtol=0)
            torch.testing.assert_close(got["variance"], whole.variance, atol=1e-6, rtol=0)
        own = adapt(shards[rank], mask="nan")  # no process group here: this rank's data only
        torch.testing.assert_close(result["local"]["mean"], own.mean)
        assert not torch.allclose(result["local"]["mean"], whole.mean)


@pytest.mark.slow
def test_adapt_raises_on_every_rank_when_one_rank_fails(ranks):
    # the failing rank names its own error; the other does not wait for it in all_reduce
    assert "adapt(data): batch 1 has shape (10, 4, 20)" in ranks[1]["failed"]
    assert ranks[0]["failed"].startswith("RevINError: adapt(data): another rank's data failed")
