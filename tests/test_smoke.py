import torch

from revin_fn import revin


def test_round_trip_default_layout():
    x = torch.randn(4, 3, 20) * 7 + 50
    y, reverse_fn = revin(x)
    torch.testing.assert_close(reverse_fn(y), x)
