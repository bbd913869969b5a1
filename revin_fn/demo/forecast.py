"""The pieces of the ETT demo: windows, the (R)Linear forecaster, training and evaluation.

``python -m revin_fn`` and the notebooks import these; nothing here prints (progress goes
through a ``log`` callback). The setup follows RLinear (Li et al., 2023): one ``nn.Linear``
from look-back to horizon shared across variates, dropout 0.1 on its input, Adam with the
learning rate halved every epoch, MSE in standardized units, the best validation epoch kept.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import RevINError
from ._core import DEFAULT_EPS
from .ett import Scaler, Table, split_borders
from .functional import Statistics, revin
from .module import RevIN


@dataclass(frozen=True)
class Windows:
    """Every (look-back, horizon) window whose rows lie in ``[start, end)`` of ``series``."""

    series: Tensor  # (rows, variates), data units
    start: int
    end: int
    lookback: int
    horizon: int

    def __len__(self) -> int:
        return max(0, self.end - self.start - self.lookback - self.horizon + 1)

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs ``(B, lookback, V)`` and targets ``(B, horizon, V)`` of windows ``index``."""
        rows = self.start + index[:, None] + torch.arange(self.lookback + self.horizon)
        chunk = self.series[rows]
        return chunk[:, : self.lookback], chunk[:, self.lookback :]

    def inputs(self) -> Tensor:
        """All look-back inputs, ``(len(self), lookback, V)``."""
        return self.batch(torch.arange(len(self)))[0]

    def first_rows(self) -> Tensor:
        """Row of the series where each window's look-back starts."""
        return self.start + torch.arange(len(self))


@dataclass(frozen=True)
class Data:
    """A table cut into train/val/test windows with the scaler fitted on the train rows."""

    table: Table
    train: Windows
    val: Windows
    test: Windows
    scaler: Scaler

    @property
    def lookback(self) -> int:
        return self.train.lookback

    @property
    def horizon(self) -> int:
        return self.train.horizon


def prepare(table: Table, lookback: int, horizon: int) -> Data:
    """Cut ``table`` as the standard split does: val and test windows start ``lookback`` early."""
    if lookback < 1 or horizon < 1:
        raise RevINError(f"lookback and horizon must be >= 1, got {lookback} and {horizon}")
    train_end, val_end, test_end = split_borders(table)
    series = table.values
    parts = {
        "train": Windows(series, 0, train_end, lookback, horizon),
        "val": Windows(series, max(train_end - lookback, 0), val_end, lookback, horizon),
        "test": Windows(series, max(val_end - lookback, 0), test_end, lookback, horizon),
    }
    for name, windows in parts.items():
        if len(windows) < 1:
            raise RevINError(
                f"look-back {lookback} + horizon {horizon} = {lookback + horizon} rows do not "
                f"fit in the {name} part of {table.name} (rows {windows.start} to "
                f"{windows.end} of {len(table.dates)}); use a shorter --lookback/--horizon"
            )
    return Data(table, parts["train"], parts["val"], parts["test"], Scaler.fit(series[:train_end]))


class Forecaster(nn.Module):
    """One linear map look-back -> horizon shared across variates; data units in and out.

    ``normalize=True`` is RLinear: each window goes through ``RevIN`` (revin_fn, learnable
    gamma/beta), the linear map, and its own ``reverse_fn``. ``normalize=False`` is the same
    linear map on data standardized by the train-fitted scaler (the usual baseline).

    Shape: ``(batch, lookback, variates) -> (batch, horizon, variates)``.
    """

    center: Tensor  # buffers: the train scaler, used by the baseline only
    scale: Tensor

    def __init__(
        self,
        data: Data,
        normalize: bool = True,
        dropout: float = 0.1,
        revin_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        variates = data.table.values.shape[1]
        self.register_buffer("center", data.scaler.mean.clone())
        self.register_buffer("scale", data.scaler.std.clone())
        self.norm = RevIN(variates, pattern="b t v", **(revin_kwargs or {})) if normalize else None
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(data.lookback, data.horizon)

    def project(self, z: Tensor) -> Tensor:
        out: Tensor = self.linear(self.dropout(z).transpose(1, 2))
        return out.transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm is None:
            return self.project((x - self.center) / self.scale) * self.scale + self.center
        y, reverse_fn = self.norm(x)
        forecast: Tensor = reverse_fn(self.project(y))
        return forecast


@dataclass(frozen=True)
class TrainConfig:
    """The RLinear reference optimisation: batch 128, Adam 0.005 kept for two epochs, then
    halved every epoch (its ``lradj="type1"``), 15 epochs."""

    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.005
    seed: int = 2021


@dataclass
class Fit:
    """What ``train`` did: per-epoch (train, val) MSE, the epoch kept (1-based), seconds."""

    history: list[tuple[float, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Scores:
    """Test metrics: standardized units over all variates, data units for the target column."""

    mse: float
    mae: float
    mse_data: float
    mae_data: float


def build(data: Data, normalize: bool, seed: int = 2021, **kwargs: Any) -> Forecaster:
    """A seeded ``Forecaster`` (same seed -> same initial linear weights for both variants)."""
    torch.manual_seed(seed)
    return Forecaster(data, normalize=normalize, **kwargs)


def train(
    model: Forecaster,
    data: Data,
    config: TrainConfig = TrainConfig(),
    log: Callable[[str], None] | None = None,
) -> Fit:
    """Train with MSE in standardized units; keep the weights of the best validation epoch."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    fit, best, state = Fit(), float("inf"), copy.deepcopy(model.state_dict())
    started = time.perf_counter()
    size = len(data.train)
    for epoch in range(config.epochs):
        lr = config.lr * 0.5 ** max(epoch - 1, 0)  # as the reference code: 1, 1, 1/2, 1/4, ...
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        order = torch.randperm(size, generator=generator)
        total, batches = 0.0, 0
        for first in range(0, max(size - config.batch_size + 1, 1), config.batch_size):
            x, y = data.train.batch(order[first : first + config.batch_size])
            loss = F.mse_loss(data.scaler.transform(model(x)), data.scaler.transform(y))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        val = evaluate(model, data.val, data.scaler).mse
        fit.history.append((total / batches, val))
        if val < best:
            best, fit.best_epoch, state = val, epoch + 1, copy.deepcopy(model.state_dict())
        if log is not None:
            mark = "  *" if fit.best_epoch == epoch + 1 else ""
            log(
                f"epoch {epoch + 1:2d}/{config.epochs}  lr {lr:.2e}"
                f"  train mse {total / batches:.4f}  val mse {val:.4f}{mark}"
                f"  ({time.perf_counter() - started:.1f} s)"
            )
    model.load_state_dict(state)
    fit.seconds = time.perf_counter() - started
    return fit


@torch.no_grad()
def predict(model: nn.Module, windows: Windows, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """``(forecast, truth)`` in data units for every window, each ``(N, horizon, V)``."""
    model.eval()
    outputs, truths = [], []
    for first in range(0, len(windows), batch_size):
        x, y = windows.batch(torch.arange(first, min(first + batch_size, len(windows))))
        outputs.append(model(x))
        truths.append(y)
    return torch.cat(outputs), torch.cat(truths)


def evaluate(
    model: nn.Module,
    windows: Windows,
    scaler: Scaler,
    target: int = -1,
    reference_batch: int | None = None,
) -> Scores:
    """MSE/MAE over all windows: standardized (all variates) and in data units (``target``).

    ``reference_batch=128`` scores only the first ``len // 128 * 128`` windows, as the
    reference RLinear/DLinear code does (its test loader has ``drop_last=True``).
    """
    forecast, truth = predict(model, windows)
    if reference_batch is not None:
        keep = len(windows) // reference_batch * reference_batch
        forecast, truth = forecast[:keep], truth[:keep]
    error = scaler.transform(forecast) - scaler.transform(truth)
    error_data = forecast[..., target] - truth[..., target]
    return Scores(
        error.square().mean().item(),
        error.abs().mean().item(),
        error_data.square().mean().item(),
        error_data.abs().mean().item(),
    )


def window_statistics(windows: Windows) -> Statistics:
    """The per-window ``Statistics`` revin_fn computes for every look-back input (data units)."""
    return revin(windows.inputs(), pattern="b t v", return_statistics=True)[2]


def round_trip_error(windows: Windows) -> tuple[float, float]:
    """Max |reverse_fn(revin(x)) - x| over all inputs: in data units, and in units of each
    window's own std (the scale revin_fn divided by)."""
    x = windows.inputs()
    y, reverse_fn, stats = revin(x, pattern="b t v", return_statistics=True)
    error = (reverse_fn(y) - x).abs()
    scaled = error / stats.variance.clamp_min(DEFAULT_EPS).sqrt()
    return error.max().item(), scaled.max().item()


def statistics_summary(data: Data, target: int) -> list[tuple[str, int, float, float, float]]:
    """Per split: (name, windows, mean and std of the window means, median window std)."""
    rows = []
    for name in ("train", "val", "test"):
        stats = window_statistics(getattr(data, name))
        mean = stats.mean[:, 0, target]
        std = stats.variance[:, 0, target].sqrt()
        rows.append((name, len(mean), mean.mean().item(), mean.std().item(), std.median().item()))
    return rows
