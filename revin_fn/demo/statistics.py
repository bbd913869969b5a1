"""Per-window statistics of the demo's data, as revin_fn computes them (data units)."""

from __future__ import annotations

import torch

from revin_fn import Statistics, revin

from .forecast import Data, Gaps, Windows


def window_statistics(windows: Windows, mask: Gaps = None) -> Statistics:
    """The per-window ``Statistics`` revin_fn computes for every look-back input (data units)."""
    return revin(windows.inputs(), pattern="b t v", mask=mask, return_statistics=True)[2]


def round_trip_error(windows: Windows, mask: Gaps = None) -> tuple[float, float]:
    """Max |reverse_fn(revin(x)) - x| over all (observed) inputs: in data units, and in units
    of each window's own std (the scale revin_fn divided by: ``reverse_fn`` of ones, no shift)."""
    x = windows.inputs()
    y, reverse_fn = revin(x, pattern="b t v", mask=mask)
    error = (reverse_fn(y) - x).abs()
    scaled = error / reverse_fn(torch.ones_like(y), shift=False)
    return error.nan_to_num(0.0).max().item(), scaled.nan_to_num(0.0).max().item()


def statistics_summary(data: Data, target: int) -> list[tuple[str, int, float, float, float]]:
    """Per split: (name, windows, mean and std of the window means, median window std)."""
    rows = []
    for name in ("train", "val", "test"):
        stats = window_statistics(getattr(data, name), data.mask)
        mean = stats.mean[:, 0, target]
        std = stats.variance[:, 0, target].sqrt()
        rows.append((name, len(mean), mean.mean().item(), mean.std().item(), std.median().item()))
    return rows
