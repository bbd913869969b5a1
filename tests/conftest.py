"""Every test starts from the same random state, so a failure in CI is a failure here.

Set ``REVIN_TEST_SEED`` to run the suite on other data; hypothesis tests draw their own.
"""

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(int(os.environ.get("REVIN_TEST_SEED", "0")))
