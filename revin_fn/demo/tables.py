"""Time-series CSV files: the bundled ETT data, a user's own file, and the standard split.

Only the standard library's ``csv`` and torch (no pandas or numpy). The bundled files are
verbatim copies (CC BY-ND 4.0, see ``revin_fn/demo/data/NOTICE.md``): windows are cut in
memory, the files are never rewritten. Gaps (empty cells, ``NA``, ``NaN``) become NaN, which
the forecaster hands to the library as ``mask="nan"``.
"""

from __future__ import annotations

import csv
import datetime
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from . import DemoError

BUNDLED = ("ETTh1", "ETTh2")
HOURLY_BORDERS = (8640, 11520, 14400)  # 12 / 4 / 4 months of hourly rows (Informer split)
RATIOS = (0.6, 0.8)  # the same 12/4/4 proportions for any other file
MISSING = frozenset({"", "na", "nan", "n/a", "null", "none"})  # lower-cased cells read as gaps
DATE_NAMES = frozenset({"date", "datetime", "timestamp", "time"})
DELIMITERS = ",;\t|"
AUTO = "auto"
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True)
class Table:
    """A CSV as a float32 tensor of shape (rows, columns); NaN marks a missing value.

    ``dates`` holds the date column's text, or the line numbers when the file has none.
    """

    name: str
    dates: list[str]
    columns: list[str]
    values: Tensor
    date_column: str | None = "date"

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def missing(self) -> int:
        """Number of missing values (NaN cells)."""
        return int(self.values.isnan().sum())

    def column(self, name: str | None) -> int:
        """Index of column ``name``; ``None`` picks ``OT`` if present, else the last column."""
        if name is None:
            return self.columns.index("OT") if "OT" in self.columns else len(self.columns) - 1
        if name not in self.columns:
            raise DemoError(
                f"column {name!r} is not in {self.name} (columns: {', '.join(self.columns)})"
            )
        return self.columns.index(name)


def load_bundled(name: str = "ETTh1") -> Table:
    """Load a bundled ETT file (``"ETTh1"`` or ``"ETTh2"``: 7 columns, 17,420 hourly rows)."""
    if name not in BUNDLED:
        raise DemoError(f"no bundled data set {name!r}; bundled: {', '.join(BUNDLED)}")
    folder = resources.files("revin_fn.demo").joinpath("data")  # one name per joinpath (3.10)
    text = folder.joinpath(f"{name}.csv").read_text(encoding="utf-8")
    return parse(text, name)


def load_csv(path: str | Path, date_column: str | None = AUTO) -> Table:
    """Load a CSV with a header row and numeric columns (and at most one date column).

    The delimiter (``,`` ``;`` tab ``|``) is detected. ``date_column``: a column name, ``None``
    for a file without dates, or ``"auto"``: the column named date/datetime/timestamp/time (any
    case), else the first column if its first cell reads as an ISO date, else none. Gaps (empty,
    ``NA``, ``NaN``, ``null``) are kept as NaN.
    """
    path = Path(path)
    if not path.is_file():
        raise DemoError(f"no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DemoError(f"{path} is not a UTF-8 text file") from None
    return parse(text, path.name, date_column)


def sniff_delimiter(text: str) -> str:
    """The delimiter of a CSV text, from its first lines (``,`` when nothing else fits)."""
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        counts = {d: sample.splitlines()[0].count(d) if sample else 0 for d in DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else ","


def parse(text: str, name: str, date_column: str | None = AUTO) -> Table:
    """Parse CSV ``text`` (see :func:`load_csv`); ``name`` appears in every error."""
    rows = csv.reader(text.splitlines(), delimiter=sniff_delimiter(text))
    header = [cell.strip() for cell in next(rows, [])]
    if not any(header):
        raise DemoError(f"{name}: empty file, expected a header row and numeric columns")
    lines = [(number, row) for number, row in enumerate(rows, start=2) if any(row)]
    if not lines:
        raise DemoError(f"{name}: no data rows below the header")
    date_at = _date_index(header, lines[0][1], date_column, name)
    keep = [i for i in range(len(header)) if i != date_at]
    if not keep:
        raise DemoError(f"{name}: no numeric column besides the date column {header[0]!r}")
    dates, values = [], []
    for number, row in lines:
        if len(row) != len(header):
            raise DemoError(
                f"{name}, line {number}: {len(row)} cells, expected {len(header)} as in the header"
            )
        values.append([_number(row[i], header[i], name, number) for i in keep])
        dates.append(row[date_at].strip() if date_at is not None else str(number))
    columns = [header[i] for i in keep]
    date_name = None if date_at is None else header[date_at]
    exact = torch.tensor(values, dtype=torch.float64)
    stored = exact.float()
    for index, column in enumerate(columns):
        _check_column(
            exact[:, index], stored[:, index], column or f"{keep[index] + 1} (unnamed)", name
        )
    return Table(name, dates, columns, stored, date_name)


def _check_column(exact: Tensor, stored: Tensor, column: str, name: str) -> None:
    """A column the demo can train on: some value observed, and its variation kept in float32
    (the dtype it trains in), which is 1 apart at 1.7e7 and 8 apart at 1e8."""
    seen = ~exact.isnan()
    if not bool(seen.any()):
        raise DemoError(
            f"{name}, column {column!r}: no value in any row (a trailing delimiter leaves an empty "
            "last column); remove the column"
        )
    values = exact[seen]
    spread = float(values.std(correction=0))
    lost = float((stored[seen].double() - values).abs().max())
    if spread > 0 and lost > 0.01 * spread:  # a constant column has no variation to lose
        raise DemoError(
            f"{name}, column {column!r}: values around {float(values.mean()):.9g} lose their "
            f"variation in float32, the dtype the demo trains in (off by up to {lost:.3g} "
            f"against a spread of {spread:.3g}); subtract a constant from the column first"
        )


def _date_index(
    header: list[str], first: list[str], date_column: str | None, name: str
) -> int | None:
    if date_column is None or date_column.lower() == "none":
        return None
    if date_column != AUTO:
        if date_column not in header:
            raise DemoError(
                f"{name}: no date column {date_column!r} (columns: {', '.join(header)}); "
                "use --date-column none for a file without dates"
            )
        return header.index(date_column)
    named = [i for i, column in enumerate(header) if column.lower() in DATE_NAMES]
    if named:  # whatever it holds: ISO dates, 20200101, epoch seconds
        return named[0]
    return 0 if first and _is_date(first[0]) else None


def _is_date(cell: str) -> bool:
    cell = cell.strip()
    try:
        float(cell)
        return False  # a number in an unnamed first column is a variate, never a date
    except ValueError:
        pass
    try:
        datetime.datetime.fromisoformat(cell.replace("/", "-"))
    except ValueError:
        return False
    return True


def _number(cell: str, column: str, name: str, line: int) -> float:
    text = cell.strip()
    if text.lower() in MISSING:
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        raise DemoError(
            f"{name}, line {line}, column {column!r}: {cell!r} is not a number "
            "(expected a number, or an empty/NA cell for a gap)"
        ) from None
    if value in (float("inf"), float("-inf")):
        raise DemoError(f"{name}, line {line}, column {column!r}: {cell!r} is not finite")
    if abs(value) > FLOAT32_MAX:
        raise DemoError(
            f"{name}, line {line}, column {column!r}: {cell!r} is beyond the float32 range the "
            "demo trains in (about 3.4e38)"
        )
    return value


def split_borders(table: Table) -> tuple[int, int, int]:
    """Row borders ``(train_end, val_end, test_end)`` of the chronological 12/4/4 split.

    ETTh files use the standard borders (8640, 11520, 14400), ETTm files four times those;
    any other file is cut 60 / 20 / 20 % over all its rows.
    """
    rows = len(table)
    scale = 4 if table.name.startswith("ETTm") else 1
    if table.name.startswith("ETT") and rows >= HOURLY_BORDERS[2] * scale:
        first, second, third = HOURLY_BORDERS
        return first * scale, second * scale, third * scale
    return int(rows * RATIOS[0]), int(rows * RATIOS[1]), rows
