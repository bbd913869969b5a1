"""The main job end to end (``python -m revin_fn``) in a subprocess, and its argument errors."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from revin_fn.demo import prepare
from revin_fn.ett import load_bundled, load_csv, split_borders

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "revin_fn" / "data"


def run_demo(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "revin_fn", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_demo_prints_the_table_and_writes_the_plot(tmp_path):
    png = tmp_path / "demo.png"
    done = run_demo("--epochs", "1", "--lookback", "96", "--horizon", "24", "--plot", str(png))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "ETTh1 (bundled)" in out
    assert "Linear" in out and "RLinear (revin_fn)" in out
    assert "MSE OT" in out and "round trip" in out and "per-window statistics" in out
    assert "epoch  1/1" in done.stderr  # progress goes to stderr
    assert png.is_file() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_sine_csv(path: Path, rows: int = 600) -> None:
    lines = ["timestamp,load,temp"]
    for i in range(rows):
        lines.append(f"2020-01-01 {i},{100 + 10 * math.sin(i / 5):.4f},{20 + math.cos(i / 7):.4f}")
    path.write_text("\n".join(lines) + "\n")


def test_demo_on_a_user_csv_with_target(tmp_path):
    csv_path = tmp_path / "mine.csv"
    write_sine_csv(csv_path)
    args = ["--csv", str(csv_path), "--target", "temp", "--epochs", "1"]
    done = run_demo(*args, "--lookback", "48", "--horizon", "12", "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert "mine.csv: 600 rows x 2 variates" in done.stdout
    assert "MSE temp" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--csv", "/no/such/file.csv"], "no such file"),
        (["--target", "NOPE"], "column 'NOPE' is not in ETTh1"),
        (["--horizon", "20000"], "do not fit in the train part"),
        (["--lookback", "0"], "must be >= 1"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--epochs", "many"], "invalid int value"),
        (["--unknown"], "unrecognized arguments"),
        (["--plot", "/no/such/folder/x.png"], "folder /no/such/folder does not exist"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_code_2(args, message):
    done = run_demo(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("revin-fn: error: ") and message in lines[0]
    assert "Traceback" not in done.stderr


def test_bad_csv_contents(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("date,a\n2020,1.0\n2021,oops\n")
    done = run_demo("--csv", str(bad))
    assert done.returncode == 2 and "line 3: non-numeric value" in done.stderr


def test_bundled_files_are_verbatim_copies():
    import hashlib

    expected = {
        "ETTh1.csv": "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
        "ETTh2.csv": "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",
    }
    for name, digest in expected.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest
    assert "CC BY-ND 4.0" in (DATA / "NOTICE.md").read_text()


def test_standard_split_of_etth1():
    table = load_bundled("ETTh1")
    assert table.values.shape == (17420, 7) and table.columns[-1] == "OT"
    assert split_borders(table) == (8640, 11520, 14400)
    data = prepare(table, 336, 96)
    assert (len(data.train), len(data.val), len(data.test)) == (8209, 2785, 2785)
    assert data.val.start == 8640 - 336 and data.test.start == 11520 - 336
    # scaler fitted on the train rows only
    assert data.scaler.mean.allclose(table.values[:8640].mean(0))


def test_user_csv_split_is_60_20_20(tmp_path):
    csv_path = tmp_path / "mine.csv"
    write_sine_csv(csv_path, rows=1000)
    assert split_borders(load_csv(csv_path)) == (600, 800, 1000)


def test_plot_without_matplotlib_is_a_one_line_error(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from revin_fn.__main__ import main\n"
        f"main(['--plot', {str(tmp_path / 'x.png')!r}])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "revin-fn: error: plotting needs matplotlib: pip install matplotlib "
        "(or the revin-fn[demo] extra)"
    ]
