"""The revin_fn demo: RLinear against a plain Linear on the bundled ETT data or a user's CSV.

An application built on the library's public API only; ``import revin_fn`` never imports it.
Run it with ``python -m revin_fn`` (or the ``revin-fn`` console script); the notebooks import
its pieces:

- :mod:`revin_fn.demo.tables`: CSV files (bundled ETTh1/ETTh2 or the user's), the standard split;
- :mod:`revin_fn.demo.forecast`: windows, the (R)Linear forecaster, training and evaluation;
- :mod:`revin_fn.demo.statistics`: the per-window statistics revin_fn computes;
- :mod:`revin_fn.demo.plots`: the figure (matplotlib, imported only when a plot is asked for);
- :mod:`revin_fn.demo.cli`: the command line.
"""


class DemoError(Exception):
    """A user error of the demo (bad file, bad option): one line, exit code 2 on the CLI."""


__all__ = ["DemoError"]
