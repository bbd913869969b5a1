"""``python -m revin_fn`` (console script ``revin-fn``): RLinear vs Linear on real data.

With no argument: the bundled ETTh1, look-back 336, horizon 96, the standard 12/4/4 split.
Progress goes to stderr, the results to stdout; bad arguments give one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

import torch

from . import RevINError
from .demo import (
    Data,
    Forecaster,
    TrainConfig,
    build,
    evaluate,
    prepare,
    round_trip_error,
    statistics_summary,
    train,
)
from .ett import load_bundled, load_csv


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="revin-fn",
        description="Train a linear forecaster with and without revin_fn on ETTh1 (bundled) "
        "or your own CSV, and print test MSE/MAE in standardized and data units.",
    )
    parser.add_argument("--csv", metavar="PATH", help="CSV with a date column and numeric columns")
    parser.add_argument("--target", metavar="COLUMN", help="column to report and plot (OT)")
    parser.add_argument("--lookback", type=int, default=336, help="input length (336)")
    parser.add_argument("--horizon", type=int, default=96, help="forecast length (96)")
    parser.add_argument(
        "--epochs", type=int, default=15, help="training epochs (15, as the RLinear reference)"
    )
    parser.add_argument("--seed", type=int, default=2021, help="random seed (2021)")
    parser.add_argument("--plot", metavar="PNG", help="write a figure to this file")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: the models are tiny)"
    )
    return parser


def _progress(name: str) -> Callable[[str], None]:
    def log(line: str) -> None:
        print(f"  [{name}] {line}", file=sys.stderr, flush=True)

    return log


def run(args: argparse.Namespace) -> None:
    if args.epochs < 1:
        raise RevINError(f"--epochs must be >= 1, got {args.epochs}")
    if args.threads < 1:
        raise RevINError(f"--threads must be >= 1, got {args.threads}")
    # One thread: as fast as two for a 336 -> 96 linear map, and immune to a busy machine
    # (two spinning OpenMP threads slowed training up to 10x when another job held a core).
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    table = load_csv(args.csv) if args.csv else load_bundled("ETTh1")
    target = table.column(args.target)
    data = prepare(table, args.lookback, args.horizon)
    if args.plot:
        from .plots import check_target, pyplot

        pyplot()  # fail early, before training, when matplotlib is missing
        check_target(args.plot)
    column = table.columns[target]
    print(
        f"{table.name}{' (bundled)' if not args.csv else ''}: {len(table.dates)} rows x "
        f"{len(table.columns)} variates, look-back {data.lookback}, horizon {data.horizon}; "
        f"windows train {len(data.train)} / val {len(data.val)} / test {len(data.test)}; "
        f"scaler fitted on train rows [0, {data.train.end})"
    )
    config = TrainConfig(epochs=args.epochs, seed=args.seed)
    models: dict[str, Forecaster] = {}
    results = []
    for name, normalize in (("Linear", False), ("RLinear (revin_fn)", True)):
        print(f"training {name} for {config.epochs} epochs ...", file=sys.stderr, flush=True)
        model = build(data, normalize=normalize, seed=args.seed)
        fit = train(model, data, config, log=_progress(name))
        models[name] = model
        results.append((name, evaluate(model, data.test, data.scaler, target), fit))

    print()
    print(f"test set ({len(data.test)} windows): standardized = all variates, train-fitted scaler;")
    print(f"data units = {column} only, forecasts mapped back by reverse_fn (RLinear)")
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
    if args.plot:
        from .plots import forecast_figure, save_figure

        save_figure(forecast_figure(data, models, target), args.plot)
        print(f"\nfigure written to {args.plot}")
    print(f"\ndone in {time.perf_counter() - started:.1f} s")


def _report_statistics(data: Data, target: int, column: str) -> None:
    absolute, relative = round_trip_error(data.test)
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
    except RevINError as error:
        print(f"revin-fn: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
