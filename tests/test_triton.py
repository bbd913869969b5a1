"""The triton backend's tests, only where triton imports.

The cases live in ``triton_cases.py``. With a GPU, or with ``TRITON_INTERPRET=1`` set before
this process started (so before triton and revin_fn.backends were imported), they run here;
otherwise one test runs them in a subprocess with ``TRITON_INTERPRET=1`` on the CPU (Triton's
interpreter) and reports its failures with pytest's own output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    from triton_cases import *  # noqa: F403
else:

    def test_triton_cases_under_the_interpreter() -> None:
        cases = Path(__file__).with_name("triton_cases.py")
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        output = done.stdout[-6000:] + done.stderr[-2000:]
        assert done.returncode == 0, f"triton_cases.py under TRITON_INTERPRET=1 failed:\n{output}"
        assert " passed" in done.stdout, output  # not skipped as a whole module
