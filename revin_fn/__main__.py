"""``python -m revin_fn``: a short runnable example (the ETTh1 demo replaces it)."""

from __future__ import annotations

import torch

from . import RevIN


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 96, 7) * 40 + 1000  # (batch, time, variates), far from N(0, 1)
    norm = RevIN(num_variates=7, pattern="b t v")
    y, reverse_fn, stats = norm(x, return_statistics=True)
    print(f"x: {tuple(x.shape)} mean {x.mean():.1f} std {x.std():.1f}")
    print(f"y: {tuple(y.shape)} mean {y.mean():.4f} std {y.std(unbiased=False):.4f}")
    print(f"round trip max |reverse_fn(y) - x| = {(reverse_fn(y) - x).abs().max():.2e}")
    forecast = reverse_fn(torch.zeros(32, 24, 1), variates=[6])
    print(f"one-target forecast back in data units: {tuple(forecast.shape)}")
    print(f"statistics: mean {tuple(stats.mean.shape)}, variance {tuple(stats.variance.shape)}")


if __name__ == "__main__":
    main()
