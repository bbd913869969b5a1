"""Benchmark revin_fn against the RevIN formulas of iTransformer and of the original paper.

``python benchmarks/bench_revin.py`` prints a table of median times and ratios; ``--json PATH``
also writes every number; ``--quick`` runs tiny shapes in seconds (the CI smoke test). Every
run checks that revin_fn matches both reference formulas. Plain torch, nothing else.

For each shape, layout and dtype it times forward (with statistics: revin_fn is called with
``return_statistics=True`` throughout), reverse, forward+reverse and forward+reverse+backward,
and counts the bytes autograd saves over forward+reverse, for (a) revin_fn, (b) the
iTransformer formula, (c) the original RevIN formula and (d) ``x.clone()``, the
memory-bandwidth floor. The implementations and both layouts of a shape are interleaved in
every repetition; medians are reported and every ratio compares medians from this one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from revin_fn import revin

EPS = 1e-5
FULL_SHAPES = [(32, 7, 96), (32, 7, 336), (32, 321, 336), (16, 862, 720)]
QUICK_SHAPES = [(4, 3, 16), (2, 5, 24)]
LAYOUTS = ("b v t", "b t v")
IMPLS = ("revin_fn", "itransformer", "original", "clone")
OPS = ("forward", "reverse", "fwd+rev", "fwd+rev+bwd")
State = Any
Forward = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, State]]
Reverse = Callable[[Tensor, State], Tensor]


# --- the reference formulas, written from their published equations --------------------------


def itransformer_pair(dim: int) -> tuple[Forward, Reverse]:
    """iTransformer RevIN: y = (x - mean) / sqrt(max(var, eps)) * gamma + beta; its inverse
    x = (y - beta) / (sign(gamma) * max(|gamma|, eps)) * sqrt(var) + mean."""

    def forward(x: Tensor, gamma: Tensor, beta: Tensor) -> tuple[Tensor, State]:
        var = torch.var(x, dim=dim, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=dim, keepdim=True)
        return (x - mean) * var.clamp(min=EPS).rsqrt() * gamma + beta, (mean, var, gamma, beta)

    def reverse(y: Tensor, state: State) -> Tensor:
        mean, var, gamma, beta = state
        clamped_gamma = torch.sign(gamma) * gamma.abs().clamp(min=EPS)
        return (y - beta) / clamped_gamma * var.sqrt() + mean

    return forward, reverse


def original_pair(dim: int) -> tuple[Forward, Reverse]:
    """Original RevIN (Kim et al., 2022): detached mean and stdev = sqrt(var + eps),
    y = (x - mean) / stdev * weight + bias; inverse x = (y - bias) / (weight + eps^2) * stdev
    + mean."""

    def forward(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, State]:
        mean = torch.mean(x, dim=dim, keepdim=True).detach()
        stdev = torch.sqrt(torch.var(x, dim=dim, keepdim=True, unbiased=False) + EPS).detach()
        return (x - mean) / stdev * weight + bias, (mean, stdev, weight, bias)

    def reverse(y: Tensor, state: State) -> Tensor:
        mean, stdev, weight, bias = state
        return (y - bias) / (weight + EPS * EPS) * stdev + mean

    return forward, reverse


def revin_fn_pair(pattern: str, **options: Any) -> tuple[Forward, Reverse]:
    """revin with ``return_statistics=True``, like the reference formulas, whose state holds
    the mean and variance (the statistics cost one more small operation)."""

    def forward(x: Tensor, gamma: Tensor, beta: Tensor) -> tuple[Tensor, State]:
        y, reverse_fn, _ = revin(
            x, gamma.view(-1), beta.view(-1), pattern=pattern, return_statistics=True, **options
        )
        return y, reverse_fn

    return forward, lambda y, reverse_fn: reverse_fn(y)


def clone_pair() -> tuple[Forward, Reverse]:
    return (lambda x, gamma, beta: (x.clone(), None)), (lambda y, state: y.clone())


# --- one case: a shape in one layout and dtype -----------------------------------------------


class Case:
    def __init__(self, shape: tuple[int, int, int], pattern: str, dtype: torch.dtype) -> None:
        batch, variates, length = shape
        generator = torch.Generator().manual_seed(0)
        data = torch.randn(batch, variates, length, generator=generator) * 3 + 5
        if pattern == "b t v":
            data = data.transpose(1, 2).contiguous()
        self.shape, self.pattern, self.dtype = shape, pattern, dtype
        self.x = data.to(dtype)
        view = (variates, 1) if pattern == "b v t" else (variates,)
        self.gamma = (torch.rand(variates, generator=generator) + 0.5).to(dtype).view(view)
        self.beta = torch.randn(variates, generator=generator).to(dtype).view(view)
        self.grad = torch.randn(self.x.shape, generator=generator).to(dtype)
        dim = pattern.split().index("t")
        self.pairs = {
            "revin_fn": revin_fn_pair(pattern),
            "itransformer": itransformer_pair(dim),
            "original": original_pair(dim),
            "clone": clone_pair(),
        }

    @property
    def name(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.shape} {self.pattern} {dtype}"

    def leaves(self) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(t.detach().requires_grad_() for t in (self.x, self.gamma, self.beta))  # type: ignore[return-value]

    def runners(self, impl: str) -> dict[str, Callable[[], object]]:
        forward, reverse = self.pairs[impl]
        x, gamma, beta = self.x, self.gamma, self.beta
        y, state = forward(x, gamma, beta)

        def backward() -> None:
            reverse(*forward(*self.leaves())).backward(self.grad)

        return {
            "forward": lambda: forward(x, gamma, beta),
            "reverse": lambda: reverse(y, state),
            "fwd+rev": lambda: reverse(*forward(x, gamma, beta)),
            "fwd+rev+bwd": backward,
        }

    def saved_bytes(self, impl: str) -> int:
        """Bytes autograd saves for backward over forward+reverse, each storage once."""
        forward, reverse = self.pairs[impl]
        storages: dict[int, int] = {}

        def pack(tensor: Tensor) -> Tensor:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            reverse(*forward(*self.leaves()))
        return sum(storages.values())

    def matches(self) -> dict[str, float]:
        """Largest differences from the reference formulas (normalized output and round trip)."""
        x, gamma, beta = self.x, self.gamma, self.beta
        dim = self.pattern.split().index("t")
        found = {}
        original = revin_fn_pair(self.pattern, eps_mode="add", detach=True)
        for label, ours, theirs in (
            ("itransformer", revin_fn_pair(self.pattern), itransformer_pair(dim)),
            ("original", original, original_pair(dim)),
        ):
            y, state = ours[0](x, gamma, beta)
            y_ref, state_ref = theirs[0](x, gamma, beta)
            back, back_ref = ours[1](y_ref, state), theirs[1](y_ref, state_ref)
            found[f"{label} y"] = (y.float() - y_ref.float()).abs().max().item()
            found[f"{label} reverse"] = (
                ((back.float() - back_ref.float()) / x.float().std()).abs().max().item()
            )
        return found


# --- timing ------------------------------------------------------------------------------------


def time_group(
    cases: list[Case], reps: int, budget: float, spread: float = 0.0
) -> dict[tuple[str, str, str], float]:
    """Median seconds per call for every (case, impl, op), all interleaved per repetition.

    At least ``reps`` repetitions (fewer only past ``budget`` seconds), and more, up to ten
    times as many, until ``spread`` seconds have passed: the samples of a fast group then span
    seconds, so a passing stall of the machine moves the medians less.
    """
    runners = {
        (case.name, impl, op): run
        for case in cases
        for impl in IMPLS
        for op, run in case.runners(impl).items()
    }
    loops = {}
    for key, run in runners.items():  # warm up, then size the inner loop to about a millisecond
        run()
        start = time.perf_counter()
        run()
        loops[key] = max(1, min(200, math.ceil(1e-3 / max(time.perf_counter() - start, 1e-7))))
    samples: dict[tuple[str, str, str], list[float]] = {key: [] for key in runners}
    began = time.perf_counter()
    for rep in range(10 * reps):
        keys = list(runners) if rep % 2 == 0 else list(reversed(runners))
        for key in keys:
            run, count = runners[key], loops[key]
            start = time.perf_counter()
            for _ in range(count):
                run()
            samples[key].append((time.perf_counter() - start) / count)
        elapsed = time.perf_counter() - began
        if (rep >= 4 and elapsed > budget) or (rep + 1 >= reps and elapsed > spread):
            break
    return {key: statistics.median(values) for key, values in samples.items()}


def time_compile(shape: tuple[int, int, int], reps: int) -> dict[str, float]:
    """Eager (fast path) against torch.compile(fullgraph=True) for a model calling revin."""

    class Model(torch.nn.Module):
        def __init__(self, variates: int) -> None:
            super().__init__()
            self.gamma = torch.nn.Parameter(torch.rand(variates) + 0.5)
            self.beta = torch.nn.Parameter(torch.randn(variates))

        def forward(self, x: Tensor) -> Tensor:
            y, reverse_fn = revin(x, self.gamma, self.beta)
            return reverse_fn(y * 2.0)

    model = Model(shape[1])
    x = torch.randn(shape) * 3 + 5
    start = time.perf_counter()
    compiled = torch.compile(model, fullgraph=True)  # raises on any graph break
    with torch.no_grad():
        out = compiled(x)
    compile_s = time.perf_counter() - start
    with torch.no_grad():
        difference = (out - model(x)).abs().max().item()
        samples: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(reps):
            for label, fn in (("eager", model), ("compiled", compiled)):
                begin = time.perf_counter()
                fn(x)
                samples[label].append(time.perf_counter() - begin)
    result = {label: statistics.median(values) for label, values in samples.items()}
    return {**result, "compile_s": compile_s, "max_abs_difference": difference}


# --- report ------------------------------------------------------------------------------------


def run(quick: bool, compile_model: bool) -> dict[str, Any]:
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    reps, budget, spread = (3, 2.0, 0.0) if quick else (15, 12.0, 5.0)
    groups = [[Case(shape, pattern, torch.float32) for pattern in LAYOUTS] for shape in shapes]
    groups.append([Case(shapes[-2], "b v t", torch.bfloat16)])
    rows = []
    for cases in groups:
        medians = time_group(cases, reps, budget, spread)
        for case in cases:
            size = case.x.numel() * case.x.element_size()
            rows.append({
                "case": case.name,
                "shape": list(case.shape),
                "layout": case.pattern,
                "dtype": str(case.dtype).removeprefix("torch."),
                "ms": {i: {op: medians[case.name, i, op] * 1e3 for op in OPS} for i in IMPLS},
                "saved_inputs": {impl: case.saved_bytes(impl) / size for impl in IMPLS},
                "match": case.matches(),
            })  # fmt: skip
    result: dict[str, Any] = {
        "machine": machine(),
        "quick": quick,
        "rows": rows,
    }
    if compile_model:
        result["compile"] = time_compile(shapes[-2] if not quick else shapes[0], reps)
    return result


def machine() -> str:
    return (
        f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    ).replace("  ", " ")


def table(result: dict[str, Any]) -> str:
    lines = [f"machine: {result['machine']}", ""]
    head = (
        "| case | op | revin_fn ms | iTransformer ms | original ms | clone ms "
        "| revin_fn / clone | iTransformer / revin_fn | original / revin_fn |"
    )
    lines += [head, "|" + "---|" * 9]
    for row in result["rows"]:
        ms = row["ms"]
        for op in OPS:
            ours = ms["revin_fn"][op]
            lines.append(
                f"| {row['case']} | {op} | {ours:.3f} | {ms['itransformer'][op]:.3f} | "
                f"{ms['original'][op]:.3f} | {ms['clone'][op]:.3f} | "
                f"{ours / ms['clone'][op]:.2f} | "
                f"{ms['itransformer'][op] / ours:.2f} | {ms['original'][op] / ours:.2f} |"
            )
        saved = row["saved_inputs"]
        lines.append(
            f"| {row['case']} | saved for backward (x inputs) | {saved['revin_fn']:.2f} | "
            f"{saved['itransformer']:.2f} | {saved['original']:.2f} | {saved['clone']:.2f} | | | |"
        )
    lines += ["", "b t v / b v t (revin_fn, same shape, fp32):"]
    by_case = {(tuple(row["shape"]), row["layout"], row["dtype"]): row for row in result["rows"]}
    for (shape, layout, dtype), row in by_case.items():
        if layout == "b t v" and dtype == "float32":
            other = by_case[shape, "b v t", dtype]["ms"]["revin_fn"]
            ratios = ", ".join(f"{op} {row['ms']['revin_fn'][op] / other[op]:.2f}" for op in OPS)
            lines.append(f"  {shape}: {ratios}")
    lines.append("")
    for dtype in ("float32", "bfloat16"):
        worst: dict[str, float] = {}
        for row in result["rows"]:
            for key, value in row["match"].items():
                if row["dtype"] == dtype:
                    worst[key] = max(worst.get(key, 0.0), value)
        found = ", ".join(f"{key} {value:.1e}" for key, value in worst.items())
        lines.append(f"largest difference from the reference formulas ({dtype}): {found}")
    if "compile" in result:
        c = result["compile"]
        lines.append(
            f"torch.compile(fullgraph=True), forward+reverse: eager {c['eager'] * 1e3:.3f} ms, "
            f"compiled {c['compiled'] * 1e3:.3f} ms (compile {c['compile_s']:.1f} s, "
            f"max |difference| {c['max_abs_difference']:.1e})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    args = parser.parse_args(argv)
    result = run(args.quick, compile_model=not (args.quick or args.no_compile))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
