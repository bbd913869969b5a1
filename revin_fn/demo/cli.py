"""``python -m revin_fn`` (console script ``revin-fn``): RLinear vs Linear on real data.

With no argument: the bundled ETTh1, look-back 336, horizon 96, the standard 12/4/4 split.
Progress goes to stderr, the results to stdout; a user error (bad option, bad file, bad cell)
prints one line ``revin-fn: error: ...`` on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import torch
from torch import nn

from . import DemoError
from .forecast import (
    Data,
    Forecaster,
    TrainConfig,
    build,
    evaluate,
    predict,
    prepare,
    train,
)
from .statistics import round_trip_error, statistics_summary
from .tables import AUTO, load_bundled, load_csv


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="revin-fn",
        description="Train a linear forecaster with and without revin_fn on ETTh1 (bundled) "
        "or your own CSV, and print test MSE/MAE in standardized and data units.",
    )
    add = parser.add_argument
    add("--csv", metavar="PATH", help="CSV with a header and numeric columns (gaps allowed)")
    add(
        "--date-column",
        metavar="NAME",
        default=AUTO,
        help="the CSV's date column, or 'none' (auto: a column named date/datetime/timestamp/"
        "time, else the first column if it holds ISO dates)",
    )
    add("--target", metavar="COLUMN", help="column to report and plot (OT, else the last)")
    add("--lookback", type=int, default=336, help="input length (336)")
    add("--horizon", type=int, default=96, help="forecast length (96)")
    add("--epochs", type=int, default=15, help="training epochs (15, as the RLinear reference)")
    add("--seed", type=int, default=2021, help="random seed (2021)")
    add("--plot", metavar="FILE", help="write a figure to this file (.png, .pdf, .svg, ...)")
    add("--out", metavar="FILE.csv", help="write the target's test forecasts to this CSV")
    add("--threads", type=int, default=1, help="torch CPU threads (1: the models are tiny)")
    return parser


def _progress(name: str) -> Callable[[str], None]:
    def log(line: str) -> None:
        print(f"  [{name}] {line}", file=sys.stderr, flush=True)

    return log


def _check_out(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".csv":
        raise DemoError(f"--out {path}: expected a file name ending in .csv")
    if not out.parent.is_dir():
        raise DemoError(f"cannot write the forecasts: folder {out.parent} does not exist")
    return out


def run(args: argparse.Namespace) -> None:
    """The demo for parsed arguments; raises ``DemoError`` for every user error."""
    for option in ("epochs", "threads"):
        if getattr(args, option) < 1:
            raise DemoError(f"--{option} must be >= 1, got {getattr(args, option)}")
    # One thread: as fast as two for a 336 -> 96 linear map, and immune to a busy machine.
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.date_column != AUTO and not args.csv:
        raise DemoError(f"--date-column {args.date_column}: names a column of --csv, none given")
    date_column = None if args.date_column.lower() == "none" else args.date_column
    table = load_csv(args.csv, date_column) if args.csv else load_bundled("ETTh1")
    target = table.column(args.target)
    data = prepare(table, args.lookback, args.horizon)
    if args.plot:  # checked before training: a bad file name fails at once
        from .plots import check_target

        check_target(args.plot)
    out = _check_out(args.out) if args.out else None
    column = table.columns[target]
    dates = f"dates from column {table.date_column!r}" if table.date_column else "no date column"
    print(
        f"{table.name}{' (bundled)' if not args.csv else ''}: {len(table)} rows x "
        f"{len(table.columns)} variates ({', '.join(table.columns)}; {dates}), look-back "
        f"{data.lookback}, horizon {data.horizon}; windows train {len(data.train)} / val "
        f"{len(data.val)} / test {len(data.test)}; scaler fitted on train rows "
        f"[0, {data.train.end})"
    )
    if table.missing:
        print(
            f"{table.missing} missing values ({table.missing / table.values.numel():.1%}): "
            'left out of every statistic (revin_fn mask="nan"), loss and score'
        )
    config = TrainConfig(epochs=args.epochs, seed=args.seed)
    models: dict[str, nn.Module] = {}
    results = []
    for name, normalize in (("Linear", False), ("RLinear (revin_fn)", True)):
        print(f"training {name} for {config.epochs} epochs ...", file=sys.stderr, flush=True)
        model: Forecaster = build(data, normalize=normalize, seed=args.seed)
        fit = train(model, data, config, log=_progress(name))
        models[name] = model
        results.append((name, evaluate(model, data.test, data.scaler, target), fit))

    print()
    print(f"test set ({len(data.test)} windows): standardized = all variates, train-fitted scaler;")
    print(f"data units = {column} only, forecasts mapped back by reverse_fn")
    header = f"{'model':<20} {'MSE':>8} {'MAE':>8}   {'MSE ' + column:>12} {'MAE ' + column:>12}"
    print(f"{'':<20} {'standardized':^17}   {'data units':^25}   best epoch")
    print(header + "   ----------")
    for name, scores, fit in results:
        print(
            f"{name:<20} {scores.mse:8.4f} {scores.mae:8.4f}   {scores.mse_data:12.4f} "
            f"{scores.mae_data:12.4f}   {fit.best_epoch:>2d} of {len(fit.history)} "
            f"({fit.seconds:.1f} s)"
        )
    _report_statistics(data, target, column)
    if out is not None:
        write_forecasts(out, data, models, target)
        print(f"\nforecasts of {column} for the {len(data.test)} test windows written to {out}")
    if args.plot:
        from .plots import forecast_figure, save_figure

        save_figure(forecast_figure(data, models, target), args.plot)
        print(f"\nfigure written to {args.plot}")
    print(f"\ndone in {time.perf_counter() - started:.1f} s")


def write_forecasts(path: Path, data: Data, models: Mapping[str, nn.Module], target: int) -> None:
    """One row per test window and horizon step: date, truth and each model's forecast."""
    truth = predict(next(iter(models.values())), data.test)[1][..., target]
    columns = [truth] + [predict(model, data.test)[0][..., target] for model in models.values()]
    values = torch.stack(columns, dim=-1).tolist()  # (windows, horizon, 1 + models)
    first = (data.test.first_rows() + data.lookback).tolist()  # each window's first forecast row
    column = data.table.columns[target]
    try:
        with path.open("w", encoding="utf-8", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["window", "step", "date", f"{column} truth", *models])
            for window, (row, steps) in enumerate(zip(first, values, strict=True)):
                for step, cells in enumerate(steps):
                    date = data.table.dates[row + step]
                    writer.writerow([window, step + 1, date, *(f"{v:.9g}" for v in cells)])
    except OSError as error:
        raise DemoError(f"cannot write the forecasts to {path}: {error.strerror}") from None


def _report_statistics(data: Data, target: int, column: str) -> None:
    absolute, relative = round_trip_error(data.test, data.mask)
    print(
        f"\nround trip on the {len(data.test)} test inputs: max |reverse_fn(revin(x)) - x| = "
        f"{absolute:.2e} (data units), {relative:.2e} in units of each window's std"
    )
    print(f"\nper-window statistics of {column} (data units, one per look-back window):")
    print(f"{'split':<6} {'windows':>8} {'mean of means':>14} {'std of means':>13}", end="")
    print(f" {'median std':>11}")
    for name, count, mean, spread, std in statistics_summary(data, target):
        print(f"{name:<6} {count:>8d} {mean:>14.3f} {spread:>13.3f} {std:>11.3f}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m revin_fn`` and the ``revin-fn`` console script."""
    args = _parser().parse_args(argv)
    try:
        run(args)
    except DemoError as error:
        print(f"revin-fn: error: {error}", file=sys.stderr)
        sys.exit(2)
