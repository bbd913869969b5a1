"""The demo's figure (matplotlib is optional: imported only when a plot is asked for)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import RevINError
from .demo import Data, Windows, predict, window_statistics


def pyplot() -> Any:
    """``matplotlib.pyplot`` with a file backend, or a one-line error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RevINError(
            "plotting needs matplotlib: pip install matplotlib (or the revin-fn[demo] extra)"
        ) from None
    return plt


def forecast_figure(
    data: Data, models: Mapping[str, nn.Module], target: int, window: int | None = None
) -> Any:
    """Two panels: one test forecast vs truth (data units) and per-window mean/std over time."""
    plt = pyplot()
    column = data.table.columns[target]
    test = data.test
    index = len(test) // 2 if window is None else window
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), constrained_layout=True)

    x, y = test.batch(_one(index))
    past = range(-data.lookback, 0)
    future = range(data.horizon)
    top.plot(past, x[0, :, target], color="0.4", lw=1, label="look-back")
    top.plot(future, y[0, :, target], color="black", lw=1.5, label="truth")
    for (name, model), color in zip(models.items(), ("tab:red", "tab:blue"), strict=False):
        forecast = predict(model, _slice(test, index))[0]
        top.plot(future, forecast[0, :, target], color=color, lw=1.5, label=name)
    top.axvline(0, color="0.7", ls="--", lw=1)
    first_row = test.start + index + data.lookback
    top.set_title(
        f"{data.table.name} {column}: test window starting {data.table.dates[first_row]} "
        f"(look-back {data.lookback}, horizon {data.horizon}), data units"
    )
    top.set_xlabel("step relative to forecast start")
    top.set_ylabel(column)
    top.legend(loc="upper left", fontsize=8)

    for name, color in (("train", "tab:green"), ("val", "tab:orange"), ("test", "tab:purple")):
        part: Windows = getattr(data, name)
        stats = window_statistics(part)
        rows = part.first_rows() + data.lookback  # window end (the forecast origin)
        mean = stats.mean[:, 0, target]
        std = stats.variance[:, 0, target].sqrt()
        bottom.plot(rows, mean, color=color, lw=1, label=f"{name} window mean")
        bottom.fill_between(rows, mean - std, mean + std, color=color, alpha=0.2)
    bottom.set_title(f"per-window statistics of {column} (mean ± std of each look-back window)")
    bottom.set_xlabel("row of the forecast origin")
    bottom.set_ylabel(column)
    bottom.legend(loc="upper right", fontsize=8)
    return figure


def check_target(path: str | Path) -> Path:
    """``path`` as a Path, or a one-line error when its folder does not exist."""
    path = Path(path)
    if not path.parent.is_dir():
        raise RevINError(f"cannot write the plot: folder {path.parent} does not exist")
    return path


def save_figure(figure: Any, path: str | Path) -> None:
    """Write ``figure`` to ``path`` (one-line error when the folder does not exist)."""
    figure.savefig(check_target(path), dpi=110)
    pyplot().close(figure)


def _one(index: int) -> Tensor:
    return torch.tensor([index])


def _slice(windows: Windows, index: int) -> Windows:
    start = windows.start + index
    return Windows(
        windows.series,
        start,
        start + windows.lookback + windows.horizon,
        windows.lookback,
        windows.horizon,
    )
