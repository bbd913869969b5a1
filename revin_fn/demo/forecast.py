"""The pieces of the ETT demo: windows, the (R)Linear forecaster, training and evaluation.

``python -m revin_fn`` and the notebooks import these; nothing here prints (progress goes
through a ``log`` callback). The setup follows RLinear (Li et al., 2023): one ``nn.Linear``
from look-back to horizon shared across variates, dropout 0.1 on its input, Adam with the
learning rate halved every epoch, MSE in standardized units, the best validation epoch kept.

The dataset-level scaler is ``revin_fn.Normalization`` fitted on the train rows; data with
gaps (NaN) goes through the library's ``mask="nan"`` and is left out of every loss and score.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from revin_fn import Normalization, RevIN

from . import DemoError
from .tables import Table, split_borders

Gaps = Literal["nan"] | None  # the mask handed to revin_fn: NaN marks a missing value


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
    """A table cut into train/val/test windows with the scaler fitted on the train rows.

    ``scaler(x)`` returns ``(standardized x, reverse_fn)`` (a ``revin_fn.Normalization``).
    """

    table: Table
    train: Windows
    val: Windows
    test: Windows
    scaler: Normalization

    @property
    def mask(self) -> Gaps:
        """``"nan"`` when the table has gaps (passed to revin_fn), else ``None``."""
        return "nan" if self.table.missing else None

    @property
    def lookback(self) -> int:
        return self.train.lookback

    @property
    def horizon(self) -> int:
        return self.train.horizon


def prepare(table: Table, lookback: int, horizon: int) -> Data:
    """Cut ``table`` as the standard split does: val and test windows start ``lookback`` early."""
    if lookback < 1 or horizon < 1:
        raise DemoError(f"lookback and horizon must be >= 1, got {lookback} and {horizon}")
    train_end, val_end, test_end = split_borders(table)
    series = table.values
    parts = {
        "train": Windows(series, 0, train_end, lookback, horizon),
        "val": Windows(series, max(train_end - lookback, 0), val_end, lookback, horizon),
        "test": Windows(series, max(val_end - lookback, 0), test_end, lookback, horizon),
    }
    for name, windows in parts.items():
        if len(windows) < 1:
            raise DemoError(
                f"look-back {lookback} + horizon {horizon} = {lookback + horizon} rows do not "
                f"fit in the {name} part of {table.name} (rows {windows.start} to "
                f"{windows.end} of {len(table)}); use a shorter --lookback/--horizon"
            )
    mask: Gaps = "nan" if table.missing else None
    scaler = Normalization(series.shape[1], pattern="b t v")
    scaler.adapt(series[None, :train_end], mask=mask)
    return Data(table, parts["train"], parts["val"], parts["test"], scaler)


class Forecaster(nn.Module):
    """One linear map look-back -> horizon shared across variates; data units in and out.

    ``normalize=True`` is RLinear: each window goes through ``RevIN`` (revin_fn, learnable
    gamma/beta), the linear map, and its own ``reverse_fn``. ``normalize=False`` is the same
    linear map on data standardized by the train-fitted scaler (the usual baseline), mapped
    back by the scaler's ``reverse_fn``. Missing inputs (NaN) are left out of the statistics
    (``mask="nan"``) and enter the linear map as 0, the window's (or the train) mean.

    Shape: ``(batch, lookback, variates) -> (batch, horizon, variates)``.
    """

    def __init__(
        self,
        data: Data,
        normalize: bool = True,
        dropout: float = 0.1,
        revin_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        variates = data.table.values.shape[1]
        self.mask = data.mask
        self.scaler = copy.deepcopy(data.scaler)  # its buffers travel in the state_dict
        self.norm = RevIN(variates, pattern="b t v", **(revin_kwargs or {})) if normalize else None
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(data.lookback, data.horizon)

    def project(self, z: Tensor) -> Tensor:
        out: Tensor = self.linear(self.dropout(z).transpose(1, 2))
        return out.transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm is None:
            y, reverse_fn = self.scaler(x)
        else:
            y, reverse_fn = self.norm(x, mask=self.mask)
        if self.mask is not None:
            y = y.nan_to_num(0.0)  # masked slots come back as given (NaN)
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
            loss = mse(data.scaler(model(x))[0], data.scaler(y)[0])
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
    scaler: Normalization,
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
    error = scaler(forecast)[0] - scaler(truth)[0]
    error_data = forecast[..., target] - truth[..., target]
    return Scores(
        _mean(error.square()),
        _mean(error.abs()),
        _mean(error_data.square()),
        _mean(error_data.abs()),
    )


def squared_errors(model: nn.Module, windows: Windows, scaler: Normalization) -> Tensor:
    """Squared test errors in standardized units, ``(N, horizon, V)`` (NaN where no truth).

    ``.nanmean((1, 2))`` is the MSE of each window, ``.nanmean((0, 2))`` that of each step.
    """
    forecast, truth = predict(model, windows)
    error: Tensor = scaler(forecast)[0] - scaler(truth)[0]
    return error.square()


def mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the observed (non-NaN) slots of ``target``."""
    if not bool(target.isnan().any()):
        return F.mse_loss(prediction, target)
    observed = ~target.isnan()
    return F.mse_loss(prediction[observed], target[observed])


def _mean(values: Tensor) -> float:
    return values.nanmean().item()
