"""The package as shipped: the library imports no demo code, the data and licences are there."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from revin_fn.demo.forecast import prepare
from revin_fn.demo.tables import load_bundled, parse, split_borders

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "revin_fn" / "demo" / "data"
SHIPPED = {
    "ETTh1.csv": "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
    "ETTh2.csv": "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",
}


def test_import_revin_fn_imports_neither_the_demo_nor_matplotlib():
    code = (
        "import sys, revin_fn\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('revin_fn.demo', 'matplotlib')))\n"
        "print(loaded)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"import revin_fn loaded {done.stdout.strip()}"


def test_the_demo_uses_the_public_api_only():
    for path in sorted((ROOT / "revin_fn" / "demo").glob("*.py")):
        text = path.read_text()
        for private in ("revin_fn._", "from .._", "from .. import _", "RevINError"):
            assert private not in text, f"{path.name} uses {private!r}"


def test_plots_leave_the_matplotlib_backend_alone():
    text = (ROOT / "revin_fn" / "demo" / "plots.py").read_text()
    assert "matplotlib.use(" not in text and "matplotlib.pyplot" not in text


def test_bundled_files_are_verbatim_copies_listed_in_the_notice():
    shipped = sorted(path.name for path in DATA.iterdir() if path.suffix == ".csv")
    assert shipped == sorted(SHIPPED), shipped
    for name, digest in SHIPPED.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name
    notice = (DATA / "NOTICE.md").read_text()
    assert "CC BY-ND 4.0" in notice
    listed = {line.split("|")[1].strip() for line in notice.splitlines() if ".csv |" in line}
    assert listed == set(SHIPPED), f"NOTICE.md lists {sorted(listed)}, shipped {shipped}"


def test_licences_and_metadata_files_are_there():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert "cff-version:" in (ROOT / "CITATION.cff").read_text()
    setup = (ROOT / "setup.py").read_text()
    assert 'license_expression="MIT AND CC-BY-ND-4.0"' in setup
    assert "License ::" not in setup  # deprecated classifiers: the SPDX expression says it


def test_standard_split_of_etth1():
    table = load_bundled("ETTh1")
    assert table.values.shape == (17420, 7) and table.columns[-1] == "OT"
    assert table.missing == 0 and table.date_column == "date"
    assert split_borders(table) == (8640, 11520, 14400)
    data = prepare(table, 336, 96)
    assert (len(data.train), len(data.val), len(data.test)) == (8209, 2785, 2785)
    assert data.val.start == 8640 - 336 and data.test.start == 11520 - 336
    # the scaler (revin_fn.Normalization) is fitted on the train rows only
    assert data.scaler.mean.allclose(table.values[:8640].double().mean(0).to(data.scaler.mean))


def test_user_csv_split_is_60_20_20():
    text = "date,a\n" + "".join(f"2020-01-01 {i % 24:02d}:00,{i}\n" for i in range(1000))
    assert split_borders(parse(text, "mine.csv")) == (600, 800, 1000)


@pytest.mark.parametrize("name", ["ETTh3", "etth1"])
def test_unknown_bundled_name(name):
    from revin_fn.demo import DemoError

    with pytest.raises(DemoError, match=f"no bundled data set '{name}'; bundled: ETTh1, ETTh2"):
        load_bundled(name)


def test_star_import_of_compat_gives_the_adapters_only():
    """``from revin_fn.compat import *`` swaps in the adapters, not torch or internals."""
    names: dict[str, object] = {}
    exec("from revin_fn.compat import *", names)
    assert set(names) - {"__builtins__"} == {
        "Normalize",
        "RevIN",
        "ReversibleInstanceNorm",
        "ReversibleInstanceNorm1dInput",
        "ReversibleInstanceNorm1dOutput",
    }
