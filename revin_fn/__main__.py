"""``python -m revin_fn``: the demo (see :mod:`revin_fn.demo.cli`)."""

from revin_fn.demo.cli import main

if __name__ == "__main__":
    main()
