"""Every self-contained ```python block of the README runs (and its asserts hold).

A block is self-contained when its first code line is an import; any other python block must be
marked as a fragment by a ``<!-- fragment -->`` line right above it, so that a new block is
either run or deliberately skipped, never silently ignored.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.DOTALL)
SECONDS = 20  # per block; each takes well under a second on 2 cores


def blocks() -> list[tuple[int, str, bool]]:
    """``(line, code, is_fragment)`` of every python block."""
    text = README.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code"))
        found.append((line, match["code"], match["before"].strip() == "<!-- fragment -->"))
    return found


def first_code_line(code: str) -> str:
    return next(line for line in code.splitlines() if line.strip() and not line.startswith("#"))


RUNNABLE = [(line, code) for line, code, fragment in blocks() if not fragment]


def test_every_python_block_is_runnable_or_marked_as_a_fragment():
    for line, code, fragment in blocks():
        starts = first_code_line(code).startswith(("import ", "from "))
        assert fragment or starts, (
            f"README line {line}: a python block must start with an import (then it is run) "
            f"or follow a <!-- fragment --> line; it starts with {first_code_line(code)!r}"
        )
    assert len(RUNNABLE) >= 8, f"expected most README blocks to run, found {len(RUNNABLE)}"


def _timeout(signum: int, frame: object) -> None:
    raise TimeoutError(f"README block ran longer than {SECONDS} s")


@pytest.mark.parametrize(("line", "code"), RUNNABLE, ids=[f"line{line}" for line, _ in RUNNABLE])
def test_readme_block_runs(line, code, capsys):
    threads = torch.get_num_threads()
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(SECONDS)
    started = time.perf_counter()
    try:
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "readme_block"})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        torch.set_num_threads(threads)
    assert time.perf_counter() - started < SECONDS
