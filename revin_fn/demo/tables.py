"""Time-series CSV files: the bundled ETT data, a user's own file, the standard split, the scaler.

Only the standard library's ``csv`` and torch: the package has no pandas or numpy dependency.
The bundled files are verbatim copies (CC BY-ND 4.0, see ``revin_fn/data/NOTICE.md``): windows
are cut in memory, the files are never rewritten.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import torch
from torch import Tensor

from . import RevINError

BUNDLED = ("ETTh1", "ETTh2")
HOURLY_BORDERS = (8640, 11520, 14400)  # 12 / 4 / 4 months of hourly rows (Informer split)
RATIOS = (0.6, 0.8)  # the same 12/4/4 proportions for any other file


@dataclass(frozen=True)
class Table:
    """A CSV loaded as a float32 tensor of shape (rows, columns), dates kept as text."""

    name: str
    dates: list[str]
    columns: list[str]
    values: Tensor

    def column(self, name: str | None) -> int:
        """Index of column ``name``; ``None`` picks ``OT`` if present, else the last column."""
        if name is None:
            return self.columns.index("OT") if "OT" in self.columns else len(self.columns) - 1
        if name not in self.columns:
            raise RevINError(
                f"column {name!r} is not in {self.name} (columns: {', '.join(self.columns)})"
            )
        return self.columns.index(name)


def bundled_file(name: str) -> Traversable:
    """The packaged copy of ``name`` (``"ETTh1"`` or ``"ETTh2"``), read with importlib.resources."""
    if name not in BUNDLED:
        raise RevINError(f"no bundled data set {name!r}; bundled: {', '.join(BUNDLED)}")
    return resources.files("revin_fn").joinpath("data", f"{name}.csv")


def load_bundled(name: str = "ETTh1") -> Table:
    """Load a bundled ETT file (7 columns, 17,420 hourly rows)."""
    text = bundled_file(name).read_text(encoding="utf-8")
    return _parse(csv.reader(text.splitlines()), name)


def load_csv(path: str | Path) -> Table:
    """Load a CSV with a header, one date column and numeric columns.

    The date column is the one named ``date`` (any case), else the first column. Every other
    cell must parse as a float (``nan`` is refused: fill gaps first).
    """
    path = Path(path)
    if not path.is_file():
        raise RevINError(f"no such file: {path}")
    try:
        with path.open("r", encoding="utf-8", newline="") as stream:
            return _parse(csv.reader(stream), path.name)
    except UnicodeDecodeError:
        raise RevINError(f"{path} is not a UTF-8 text CSV file") from None


def _parse(reader: Iterator[list[str]], name: str) -> Table:
    header = next(reader, None)
    if not header or len(header) < 2:
        raise RevINError(f"{name}: expected a header with a date column and numeric columns")
    lowered = [column.strip().lower() for column in header]
    date_at = lowered.index("date") if "date" in lowered else 0
    keep = [i for i in range(len(header)) if i != date_at]
    dates: list[str] = []
    rows: list[list[float]] = []
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise RevINError(f"{name}, line {line}: {len(row)} cells, expected {len(header)}")
        try:
            values = [float(row[i]) for i in keep]
        except ValueError:
            raise RevINError(f"{name}, line {line}: non-numeric value in {row!r}") from None
        if any(value != value for value in values):  # NaN
            raise RevINError(f"{name}, line {line}: missing value (nan); fill gaps first")
        dates.append(row[date_at])
        rows.append(values)
    if not rows:
        raise RevINError(f"{name}: no data rows")
    columns = [header[i].strip() for i in keep]
    return Table(name, dates, columns, torch.tensor(rows, dtype=torch.float32))


def split_borders(table: Table) -> tuple[int, int, int]:
    """Row borders ``(train_end, val_end, test_end)`` of the chronological 12/4/4 split.

    ETTh files use the standard borders (8640, 11520, 14400), ETTm files four times those;
    any other file is cut 60 / 20 / 20 % over all its rows.
    """
    rows = len(table.dates)
    scale = 4 if table.name.startswith("ETTm") else 1
    if table.name.startswith("ETT") and rows >= HOURLY_BORDERS[2] * scale:
        first, second, third = HOURLY_BORDERS
        return first * scale, second * scale, third * scale
    return int(rows * RATIOS[0]), int(rows * RATIOS[1]), rows


@dataclass(frozen=True)
class Scaler:
    """Per-column standard scaler (population std) fitted on the training rows only."""

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, values: Tensor) -> Scaler:
        std = values.std(dim=0, unbiased=False)
        return cls(values.mean(dim=0), torch.where(std > 0, std, torch.ones_like(std)))

    def transform(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean
