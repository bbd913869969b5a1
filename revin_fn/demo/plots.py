"""The demo's figure, drawn on a ``matplotlib.figure.Figure`` (no pyplot, no global backend).

matplotlib is optional (the ``demo`` extra) and imported only when a plot is asked for; the
figure is rendered by its own Agg canvas, so a notebook's or an application's backend is left
as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import DemoError
from .forecast import Data, Windows, predict
from .statistics import window_statistics


def _matplotlib() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``, or a one-line error naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise DemoError(
            "plotting needs matplotlib: pip install matplotlib (or the revin-fn[demo] extra)"
        ) from None
    return Figure, FigureCanvasAgg


def supported_formats() -> list[str]:
    """File types the figure can be written as (``png``, ``pdf``, ``svg``, ...)."""
    figure, canvas = _matplotlib()
    return sorted(canvas(figure()).get_supported_filetypes())


def check_target(path: str | Path) -> Path:
    """``path`` as a Path, or a one-line error when its type or its folder will not do.

    Called before training, so a bad ``--plot`` fails in a second, not after the models ran.
    """
    path = Path(path)
    formats = supported_formats()
    kind = path.suffix[1:].lower()
    if kind not in formats:
        raise DemoError(
            f"cannot write the plot to {path}: file type {path.suffix or '(none)'!r} is not "
            f"supported (use one of: {', '.join('.' + f for f in formats)})"
        )
    if not path.parent.is_dir():
        raise DemoError(f"cannot write the plot: folder {path.parent} does not exist")
    return path


def forecast_figure(
    data: Data, models: Mapping[str, nn.Module], target: int, window: int | None = None
) -> Any:
    """Two panels: one test forecast vs truth (data units) and per-window mean/std over time."""
    figure_type, _ = _matplotlib()
    figure = figure_type(figsize=(11, 7), layout="constrained")
    top, bottom = figure.subplots(2, 1)
    column = data.table.columns[target]
    test = data.test
    index = len(test) // 2 if window is None else window
    x, y = test.batch(torch.tensor([index]))
    past = range(-data.lookback, 0)
    future = range(1, data.horizon + 1)
    top.plot(past, x[0, :, target], color="0.4", lw=1, label="look-back")
    top.plot(future, y[0, :, target], color="black", lw=1.5, label="truth")
    for (name, model), color in zip(models.items(), ("tab:red", "tab:blue"), strict=False):
        forecast = predict(model, _one(test, index))[0]
        top.plot(future, forecast[0, :, target], color=color, lw=1.5, label=name)
    top.axvline(0.5, color="0.7", ls="--", lw=1)
    first_row = test.start + index + data.lookback
    top.set_title(
        f"{data.table.name} {column}: test forecast from {data.table.dates[first_row]} "
        f"(look-back {data.lookback}, horizon {data.horizon})"
    )
    top.set_xlabel("step relative to the forecast origin (rows)")
    top.set_ylabel(f"{column} (data units)")
    top.legend(loc="upper left", fontsize=8)

    for name, color in (("train", "tab:green"), ("val", "tab:orange"), ("test", "tab:purple")):
        part: Windows = getattr(data, name)
        stats = window_statistics(part, data.mask)
        rows = part.first_rows() + data.lookback  # window end (the forecast origin)
        mean = stats.mean[:, 0, target]
        std = stats.variance[:, 0, target].sqrt()
        bottom.plot(rows, mean, color=color, lw=1, label=f"{name} window mean")
        bottom.fill_between(rows, mean - std, mean + std, color=color, alpha=0.2)
    bottom.set_title(f"per-window statistics of {column} (mean ± std of each look-back window)")
    bottom.set_xlabel("row of the forecast origin")
    bottom.set_ylabel(f"{column} (data units)")
    bottom.legend(loc="upper right", fontsize=8)
    return figure


def save_figure(figure: Any, path: str | Path) -> None:
    """Write ``figure`` to ``path`` through its own Agg canvas (one-line error on failure)."""
    path = check_target(path)
    _, canvas = _matplotlib()
    canvas(figure)
    try:
        figure.savefig(path, dpi=110)
    except OSError as error:
        raise DemoError(f"cannot write the plot to {path}: {error.strerror or error}") from None


def _one(windows: Windows, index: int) -> Windows:
    start = windows.start + index
    end = start + windows.lookback + windows.horizon
    return Windows(windows.series, start, end, windows.lookback, windows.horizon)
