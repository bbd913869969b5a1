"""A training step with revin_fn captured in a CUDA graph and replayed equals eager (GPU only).

Prints one JSON line: the backends the step ran, host reads per step, losses and the largest
parameter difference; exits 1 when the replay differs from eager.
"""

from __future__ import annotations

import json
import sys

import torch

import revin_fn
from revin_fn import backends
from revin_fn._host_reads import HostReads


def main() -> int:
    torch.manual_seed(0)
    model = torch.nn.Linear(96, 24).cuda()
    norm = revin_fn.RevIN(321).cuda()
    params = [*model.parameters(), *norm.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.05)
    x = torch.randn(32, 321, 96, device="cuda") * 10 + 100
    target = torch.randn(32, 321, 24, device="cuda") * 10 + 100

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        y, reverse_fn = norm(x)
        loss = (reverse_fn(model(y)) - target).square().mean()
        loss.backward()
        optimizer.step()
        return loss

    with backends.record() as routes, HostReads() as reads:
        step()
    start = [p.detach().clone() for p in params]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for p, s in zip(params, start, strict=True):
        p.data.copy_(s)
    eager = [step().item() for _ in range(3)]
    eager_params = [p.detach().clone() for p in params]
    for p, s in zip(params, start, strict=True):
        p.data.copy_(s)
    replayed = []
    for _ in range(3):
        graph.replay()
        replayed.append(captured.item())
    diff = max((p - e).abs().max().item() for p, e in zip(params, eager_params, strict=True))
    ok = diff <= 1e-5 and all(
        abs(a - b) <= 1e-5 * abs(b) for a, b in zip(replayed, eager, strict=True)
    )
    print(json.dumps({
        "routes": sorted(set(routes)), "host_reads_per_step": reads.count, "eager": eager,
        "replayed": replayed, "max_param_diff": diff, "ok": ok,
    }))  # fmt: skip
    return 0 if ok and reads.count == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
