"""The demo's command line (``python -m revin_fn``): results, files written, and user errors."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from revin_fn.demo.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--lookback", "48", "--horizon", "12"]


def run_demo(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "revin_fn", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.fixture
def demo(capsys):
    """Run the CLI in this process: ``(exit code, stdout, stderr)``; torch threads restored."""
    threads = torch.get_num_threads()

    def call(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        finally:
            torch.set_num_threads(threads)
        out, err = capsys.readouterr()
        return code, out, err

    return call


def write_csv(path: Path, rows: int = 400, sep: str = ",", header: str = "date,load,temp") -> Path:
    lines = [header.replace(",", sep)]
    for i in range(rows):
        date = f"2020-01-{1 + i // 24:02d} {i % 24:02d}:00:00"
        cells = [date, f"{100 + 10 * math.sin(i / 5):.4f}", f"{20 + math.cos(i / 7):.4f}"]
        lines.append(sep.join(cells[3 - len(header.split(",")) :]))
    path.write_text("\n".join(lines) + "\n")
    return path


def one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("revin-fn: error: "), lines[0]
    return lines[0]


def test_demo_prints_the_table_and_writes_the_plot(tmp_path):
    png = tmp_path / "demo.png"
    done = run_demo("--epochs", "1", "--lookback", "96", "--horizon", "24", "--plot", str(png))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "ETTh1 (bundled): 17420 rows x 7 variates" in out
    assert "Linear" in out and "RLinear (revin_fn)" in out
    assert "MSE OT" in out and "round trip" in out and "per-window statistics" in out
    assert "missing values" not in out
    assert "epoch  1/1" in done.stderr  # progress goes to stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_user_csv_with_target_and_forecasts_written(demo, tmp_path):
    data, out = write_csv(tmp_path / "mine.csv"), tmp_path / "forecasts.csv"
    code, stdout, err = demo("--csv", str(data), "--target", "temp", "--out", str(out), *FAST)
    assert code == 0, err
    assert "mine.csv: 400 rows x 2 variates (load, temp; dates from column 'date')" in stdout
    assert "MSE temp" in stdout
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["window", "step", "date", "temp truth", "Linear", "RLinear (revin_fn)"]
    windows = (400 - (320 - 48)) - (48 + 12) + 1  # test rows [320 - 48, 400), 48 + 12 each
    assert len(rows) == 1 + windows * 12, len(rows)
    assert rows[1][:3] == ["0", "1", "2020-01-14 08:00:00"]  # row 320: the first test target
    assert abs(float(rows[1][3]) - (20 + math.cos(320 / 7))) < 1e-3


def test_forecasts_are_written_to_float32_precision(demo, tmp_path):
    data, out = write_csv(tmp_path / "mine.csv"), tmp_path / "forecasts.csv"
    code, _, err = demo("--csv", str(data), "--target", "load", "--out", str(out), *FAST)
    assert code == 0, err
    written = float(next(row for i, row in enumerate(csv.reader(out.open())) if i == 1)[3])
    source = float(f"{100 + 10 * math.sin(320 / 5):.4f}")  # 7 digits: row 320's load
    as_float32 = [torch.tensor(value, dtype=torch.float32) for value in (written, source)]
    assert torch.equal(*as_float32), (written, source)  # the text reads back as the float32


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_delimiter_is_detected(demo, tmp_path, sep):
    data = write_csv(tmp_path / "semi.csv", sep=sep)
    code, stdout, err = demo("--csv", str(data), *FAST)
    assert code == 0, err
    assert "400 rows x 2 variates (load, temp;" in stdout


def test_gaps_go_through_the_mask_and_are_reported(demo, tmp_path):
    data = write_csv(tmp_path / "gaps.csv")
    lines = data.read_text().splitlines()
    for line, cell in ((5, ""), (9, "NA"), (50, "NaN"), (300, "nan"), (380, " n/a")):
        date, load, _ = lines[line].split(",")
        lines[line] = f"{date},{load},{cell}"
    data.write_text("\n".join(lines) + "\n")
    code, stdout, err = demo("--csv", str(data), *FAST)
    assert code == 0, err
    assert '5 missing values (0.6%): left out of every statistic (revin_fn mask="nan")' in stdout
    assert "nan" not in stdout.split("test set")[1].lower(), stdout  # every score is finite


def test_no_date_column_keeps_every_numeric_column(demo, tmp_path):
    data = write_csv(tmp_path / "plain.csv", header="a,load,temp")
    lines = data.read_text().splitlines()
    data.write_text(
        "\n".join([lines[0]] + [f"{i}.5,{r.split(',', 1)[1]}" for i, r in enumerate(lines[1:])])
    )
    code, stdout, err = demo("--csv", str(data), *FAST)
    assert code == 0, err
    assert "3 variates (a, load, temp; no date column)" in stdout


def test_date_column_by_name_and_none(demo, tmp_path):
    data = write_csv(tmp_path / "named.csv", header="when,load,temp")
    code, stdout, err = demo("--csv", str(data), "--date-column", "when", *FAST)
    assert code == 0, err
    assert "2 variates (load, temp; dates from column 'when')" in stdout
    two = write_csv(tmp_path / "two.csv", header="load,temp")
    code, stdout, err = demo("--csv", str(two), "--date-column", "none", *FAST)
    assert code == 0, err
    assert "2 variates (load, temp; no date column)" in stdout


def test_date_column_without_csv_is_refused(demo):
    code, _, err = demo("--date-column", "when", *FAST)
    assert code == 2
    assert "--date-column when: names a column of --csv, none given" in err


def test_a_column_named_for_dates_is_the_date_whatever_it_holds(tmp_path):
    from revin_fn.demo.tables import load_csv

    path = tmp_path / "compact.csv"
    path.write_text("date,v\n" + "".join(f"{20200101 + i},{math.sin(i)}\n" for i in range(50)))
    table = load_csv(str(path))
    assert table.columns == ["v"] and table.date_column == "date"
    numbers = tmp_path / "numbers.csv"  # an unnamed first column of numbers: a variate
    numbers.write_text("a,v\n" + "".join(f"{i * 0.5},{math.sin(i)}\n" for i in range(50)))
    assert load_csv(str(numbers)).columns == ["a", "v"]


def test_iso_dates_in_an_unnamed_first_column_are_detected(demo, tmp_path):
    data = write_csv(tmp_path / "when.csv", header="when,load,temp")
    code, stdout, err = demo("--csv", str(data), *FAST)
    assert code == 0, err
    assert "(load, temp; dates from column 'when')" in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--csv", "/no/such/file.csv"], "no such file: /no/such/file.csv"),
        (["--target", "NOPE"], "column 'NOPE' is not in ETTh1 (columns: HUFL, HULL,"),
        (["--horizon", "20000"], "do not fit in the train part"),
        (["--lookback", "0"], "lookback and horizon must be >= 1, got 0 and 96"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--epochs", "many"], "invalid int value: 'many'"),
        (["--unknown"], "unrecognized arguments: --unknown"),
        (["--plot", "/no/such/folder/x.png"], "folder /no/such/folder does not exist"),
        (["--plot", "out.txt"], "file type '.txt' is not supported (use one of: "),
        (["--plot", "out"], "file type '(none)' is not supported"),
        (["--out", "forecasts.json"], "--out forecasts.json: expected a file name ending in .csv"),
        (["--out", "/no/such/folder/f.csv"], "folder /no/such/folder does not exist"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_code_2_before_training(demo, args, message):
    code, _, err = demo(*args)
    line = one_error_line(code, err)
    assert message in line, line
    assert "training" not in err  # refused before any model is trained


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("date,a\n2020-01-01,1.0\n2020-01-02,oops\n", "bad.csv, line 3, column 'a': 'oops' is not"),
        ("date,a,kind\n2020-01-01,1.0,x\n", "bad.csv, line 2, column 'kind': 'x' is not a number"),
        ("date,a\n2020-01-01,inf\n", "bad.csv, line 2, column 'a': 'inf' is not finite"),
        ("date,a,b\n2020-01-01,1.0\n", "bad.csv, line 2: 2 cells, expected 3 as in the header"),
        ("date,a\n", "bad.csv: no data rows below the header"),
        ("", "bad.csv: empty file, expected a header row and numeric columns"),
        ("date\n2020-01-01\n", "bad.csv: no numeric column besides the date column 'date'"),
        ("date,a,b,\n2020-01-01,1,2,\n2020-01-02,3,4,\n",
         "bad.csv, column '4 (unnamed)': no value in any row (a trailing delimiter"),
        ("date,a\n2020-01-01,1e40\n", "bad.csv, line 2, column 'a': '1e40' is beyond the float32"),
        ("date,a\n2020-01-01,100000000.25\n2020-01-02,100000000.75\n",
         "bad.csv, column 'a': values around 100000000 lose their variation in float32"),
    ],
)  # fmt: skip
def test_bad_csv_contents_name_line_and_column(demo, tmp_path, text, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    line = one_error_line(*demo("--csv", str(bad))[::2])
    assert message in line, line


def test_missing_date_column_name_is_an_error(demo, tmp_path):
    data = write_csv(tmp_path / "mine.csv")
    line = one_error_line(*demo("--csv", str(data), "--date-column", "day")[::2])
    assert "mine.csv: no date column 'day' (columns: date, load, temp)" in line


def test_binary_file_is_an_error(demo, tmp_path):
    blob = tmp_path / "blob.csv"
    blob.write_bytes(b"\xff\xfe\x00\x81" * 10)
    assert "is not a UTF-8 text file" in one_error_line(*demo("--csv", str(blob))[::2])


def test_plot_without_matplotlib_is_a_one_line_error(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from revin_fn.demo.cli import main\n"
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
