"""Benchmark revin_fn against the normalizations users would otherwise paste.

``python benchmarks/bench_revin.py`` prints two tables of median times and ratios; ``--json
PATH`` also writes every number; ``--quick`` runs tiny shapes in seconds (the CI smoke test);
``--device cuda`` times on a GPU (synchronized), ``--backend NAME`` forces a revin_fn backend.
Every run checks that revin_fn matches the formulas. Plain torch, nothing else.

The headline is the training step (``train_step.py``): eager and compiled, revin_fn against the
iTransformer formula, the original RevIN, TSLib's inline block and no normalization, each with
the same options. The micro table times forward (with statistics: revin_fn is called with
``return_statistics=True``), reverse, forward+reverse and forward+reverse+backward per shape,
layout and dtype, counts the bytes autograd saves and revin_fn's host reads per call, against
``x.clone()``, the memory-bandwidth floor. Everything compared is interleaved in every
repetition; medians are reported and every ratio compares medians from this one run.
"""

from __future__ import annotations

import argparse
import contextlib
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from formulas import clone_pair, itransformer_pair, original_pair, revin_fn_pair
from train_step import COMPILED, TARGETS, VARIANTS, Step

from revin_fn import backends, revin
from revin_fn._host_reads import HostReads
from revin_fn.demo.tables import load_bundled

FULL_SHAPES = [(32, 7, 96), (32, 7, 336), (32, 321, 336), (16, 862, 720)]
QUICK_SHAPES = [(4, 3, 16), (2, 5, 24)]
LAYOUTS = ("b v t", "b t v")
IMPLS = ("revin_fn", "itransformer", "original", "clone")
OPS = ("forward", "reverse", "fwd+rev", "fwd+rev+bwd")
STEP_SHAPES = [(32, 7, 336), (32, 321, 336)]
QUICK_STEP_SHAPES = [(4, 3, 40)]


# --- one case: a shape in one layout and dtype -----------------------------------------------


class Case:
    def __init__(
        self, shape: tuple[int, int, int], pattern: str, dtype: torch.dtype, device: str
    ) -> None:
        batch, variates, length = shape
        generator = torch.Generator().manual_seed(0)
        data = torch.randn(batch, variates, length, generator=generator) * 3 + 5
        if pattern == "b t v":
            data = data.transpose(1, 2).contiguous()
        self.shape, self.pattern, self.dtype = shape, pattern, dtype
        self.x = data.to(device, dtype)
        view = (variates, 1) if pattern == "b v t" else (variates,)
        self.gamma = (torch.rand(variates, generator=generator) + 0.5).to(device, dtype).view(view)
        self.beta = torch.randn(variates, generator=generator).to(device, dtype).view(view)
        self.grad = torch.randn(self.x.shape, generator=generator).to(device, dtype)
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

    def host_reads(self) -> dict[str, int]:
        """revin_fn's reads of tensor values on the host, per forward, reverse and backward."""
        forward, reverse = self.pairs["revin_fn"]
        x, gamma, beta = self.leaves()
        with HostReads() as in_forward:
            y, state = forward(x, gamma, beta)
        with HostReads() as in_reverse:
            out = reverse(y, state)
        with HostReads() as in_backward:
            out.backward(self.grad)
        return {"forward": in_forward.count, "reverse": in_reverse.count,
                "backward": in_backward.count}  # fmt: skip

    def matches(self) -> dict[str, float]:
        """Largest differences from the formulas (normalized output and round trip)."""
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


def time_runners(
    runners: dict[Any, Callable[[], object]], device: str, reps: int, budget: float, spread: float
) -> dict[Any, float]:
    """Median seconds per call of every runner, all interleaved per repetition.

    At least ``reps`` repetitions (fewer only past ``budget`` seconds), and more, up to ten
    times as many, until ``spread`` seconds have passed: the samples of a fast group then span
    seconds, so a passing stall of the machine moves the medians less. On a GPU every sample
    ends with a synchronization.
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    loops = {}
    for key, run in runners.items():  # warm up, then size the inner loop to about a millisecond
        run()
        sync()
        start = time.perf_counter()
        run()
        sync()
        loops[key] = max(1, min(200, math.ceil(1e-3 / max(time.perf_counter() - start, 1e-7))))
    samples: dict[Any, list[float]] = {key: [] for key in runners}
    began = time.perf_counter()
    for rep in range(10 * reps):
        keys = list(runners) if rep % 2 == 0 else list(reversed(runners))
        for key in keys:
            run, count = runners[key], loops[key]
            start = time.perf_counter()
            for _ in range(count):
                run()
            sync()
            samples[key].append((time.perf_counter() - start) / count)
        elapsed = time.perf_counter() - began
        if (rep >= 4 and elapsed > budget) or (rep + 1 >= reps and elapsed > spread):
            break
    return {key: statistics.median(values) for key, values in samples.items()}


def micro_rows(shapes: list, device: str, timing: tuple[int, float, float]) -> list[dict]:
    groups = [[Case(shape, pattern, torch.float32, device) for pattern in LAYOUTS]
              for shape in shapes]  # fmt: skip
    groups.append([Case(shapes[-2], "b v t", torch.bfloat16, device)])
    rows = []
    for cases in groups:
        runners = {(case.name, impl, op): run for case in cases for impl in IMPLS
                   for op, run in case.runners(impl).items()}  # fmt: skip
        medians = time_runners(runners, device, *timing)
        for case in cases:
            size = case.x.numel() * case.x.element_size()
            rows.append({
                "case": case.name,
                "shape": list(case.shape),
                "layout": case.pattern,
                "dtype": str(case.dtype).removeprefix("torch."),
                "ms": {i: {op: medians[case.name, i, op] * 1e3 for op in OPS} for i in IMPLS},
                "saved_inputs": {impl: case.saved_bytes(impl) / size for impl in IMPLS},
                "host_reads": case.host_reads(),
                "match": case.matches(),
            })  # fmt: skip
    return rows


def step_rows(shapes: list, device: str, timing: tuple, compiled: bool) -> list[dict]:
    rows = []
    for shape in shapes:
        for pattern in LAYOUTS:
            torch._dynamo.reset()  # each compiled variant shares the step's code: fresh caches
            step = Step(shape, pattern, device)
            runners: dict[Any, Callable[[], object]] = {
                ("eager", label): step.runner(label, False) for label, *_ in VARIANTS
            }
            if compiled:
                runners.update({("compiled", label): step.runner(label, True)
                                for label in COMPILED})  # fmt: skip
            medians = time_runners(runners, device, *timing)
            ms: dict[str, dict[str, float]] = {}
            for (mode, label), value in medians.items():
                ms.setdefault(mode, {})[label] = value * 1e3
            cost = {mode: {label: value - times["none"] for label, value in times.items()}
                    for mode, times in ms.items()}  # fmt: skip
            ratio = {f"{ours} / {theirs}": cost["eager"][ours] / cost["eager"][theirs]
                     for ours, theirs in TARGETS}  # fmt: skip
            rows.append({"shape": list(shape), "layout": pattern, "ms": ms, "cost": cost,
                         "cost_ratio": ratio})  # fmt: skip
    return rows


def near_constant_rows(device: str, timing: tuple, quick: bool) -> list[dict]:
    """Forward on shuffled batches of real windows, some near-constant (the ETTh2 train rows:
    about 1% of windows have a variance below eps), against random data of the same shape,
    mean and std; gamma and beta take gradients, as in training."""
    length, batch, count = (40, 4, 4) if quick else (336, 32, 64)
    rows = torch.as_tensor(load_bundled("ETTh2").values, dtype=torch.float32)[:8640]
    generator = torch.Generator().manual_seed(0)
    starts = torch.randperm(rows.shape[0] - length + 1, generator=generator)[: batch * count]
    windows = rows[starts[:, None] + torch.arange(length)]  # (windows, time, variates)
    noise = torch.randn(windows.shape, generator=generator) * windows.std() + windows.mean()
    return _against_random("ETTh2", windows, noise, batch, device, timing)


def flat_window_rows(device: str, timing: tuple, quick: bool) -> list[dict]:
    """Forward on random batches of many variates in which 1% of the windows are flat far from
    0 (a constant at 500 spreads), against the same batches without them: a wide dataset with
    a few flat stretches. Gamma and beta take gradients, as in training."""
    length, batch, variates, count = (1024, 4, 64, 2) if quick else (336, 32, 321, 4)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(batch * count, length, variates, generator=generator)
    flat = noise.clone()
    series = noise.shape[0] * variates  # one window per instance and variate
    chosen = torch.randperm(series, generator=generator)[: series // 100]
    flat[chosen // variates, :, chosen % variates] = 500.0
    return _against_random("flat", flat, noise, batch, device, timing)


def _against_random(
    name: str, data: Tensor, noise: Tensor, batch: int, device: str, timing: tuple
) -> list[dict]:
    """Forward with statistics on ``data`` and ``noise`` (windows, time, variates) in batches,
    per layout: ms per batch, their ratio and the routes ``data`` took."""
    gamma = torch.ones(data.shape[-1], device=device, requires_grad=True)
    beta = torch.zeros(data.shape[-1], device=device, requires_grad=True)
    count = data.shape[0] // batch
    result = []
    for pattern in LAYOUTS:
        split = {}
        for key, source in ((name, data), ("random", noise)):
            laid = source if pattern == "b t v" else source.transpose(1, 2)
            split[key] = [b.contiguous().to(device) for b in laid.split(batch)]

        def runner(batches: list[Tensor], pattern: str = pattern) -> Callable[[], None]:
            def forward() -> None:
                for x in batches:
                    revin(x, gamma, beta, pattern=pattern, return_statistics=True)

            return forward

        with backends.record() as calls:
            runner(split[name])()
        routes: dict[str, int] = {}
        for _, route in calls:
            routes[route] = routes.get(route, 0) + 1
        medians = time_runners({key: runner(b) for key, b in split.items()}, device, *timing)
        ms = {key: value / count * 1e3 for key, value in medians.items()}
        result.append({"layout": pattern, "shape": list(split[name][0].shape), "ms": ms,
                       "ratio": ms[name] / ms["random"], "routes": routes})  # fmt: skip
    return result


# --- report ------------------------------------------------------------------------------------


def run(quick: bool, compiled: bool, device: str) -> dict[str, Any]:
    timing = (3, 2.0, 0.0) if quick else (15, 12.0, 5.0)
    result: dict[str, Any] = {"machine": machine(device), "quick": quick, "device": device,
                              "backend": backends.current() or "automatic"}  # fmt: skip
    steps = QUICK_STEP_SHAPES if quick else STEP_SHAPES
    result["steps"] = step_rows(steps, device, timing, compiled)
    result["rows"] = micro_rows(QUICK_SHAPES if quick else FULL_SHAPES, device, timing)
    result["near_constant"] = near_constant_rows(device, timing, quick)
    result["flat_windows"] = flat_window_rows(device, timing, quick)
    return result


def machine(device: str) -> str:
    where = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    return (
        f"{where}; {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    ).replace("  ", " ")


def step_table(result: dict[str, Any]) -> list[str]:
    labels = [label for label, *_ in VARIANTS]
    lines = ["training step (normalize, Linear over time, reverse, MSE, backward), ms per step:",
             "", "| shape | layout | mode | " + " | ".join(labels) + " |",
             "|" + "---|" * (3 + len(labels))]  # fmt: skip
    for row in result["steps"]:
        for mode, times in row["ms"].items():
            cells = " | ".join(f"{times[label]:.3f}" if label in times else "" for label in labels)
            lines.append(f"| {tuple(row['shape'])} | {row['layout']} | {mode} | {cells} |")
    lines += ["", "normalization cost (step minus the step without it), revin_fn over the formula:"]
    for row in result["steps"]:
        ratios = ", ".join(f"{key} {value:.2f}" for key, value in row["cost_ratio"].items())
        line = f"  {tuple(row['shape'])} {row['layout']} eager: {ratios}"
        compiled = row["ms"].get("compiled")
        if compiled:
            line += (
                "; compiled step revin_fn / iTransformer {:.2f}, no affine / TSLib {:.2f}".format(
                    compiled["revin_fn"] / compiled["itransformer"],
                    compiled["revin_fn no affine"] / compiled["tslib"],
                )
            )
        lines.append(line)
    return lines


def table(result: dict[str, Any]) -> str:
    lines = [f"machine: {result['machine']}; revin_fn backend: {result['backend']}", ""]
    lines += step_table(result)
    head = (
        "| case | op | revin_fn ms | iTransformer ms | original ms | clone ms "
        "| revin_fn / clone | iTransformer / revin_fn | original / revin_fn |"
    )
    lines += ["", head, "|" + "---|" * 9]
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
        saved, reads = row["saved_inputs"], row["host_reads"]
        lines.append(
            f"| {row['case']} | saved for backward (x inputs) | {saved['revin_fn']:.2f} | "
            f"{saved['itransformer']:.2f} | {saved['original']:.2f} | {saved['clone']:.2f} | | | |"
        )
        lines.append(
            f"| {row['case']} | revin_fn host reads (fwd / rev / bwd) | {reads['forward']} / "
            f"{reads['reverse']} / {reads['backward']} | | | | | | |"
        )
    lines += ["", "b t v / b v t (revin_fn, same shape, fp32):"]
    by_case = {(tuple(row["shape"]), row["layout"], row["dtype"]): row for row in result["rows"]}
    for (shape, layout, dtype), row in by_case.items():
        if layout == "b t v" and dtype == "float32":
            other = by_case[shape, "b v t", dtype]["ms"]["revin_fn"]
            ratios = ", ".join(f"{op} {row['ms']['revin_fn'][op] / other[op]:.2f}" for op in OPS)
            lines.append(f"  {shape}: {ratios}")
    titles = {
        ("near_constant", "ETTh2"): "shuffled ETTh2 batches (near-constant windows)",
        ("flat_windows", "flat"): "random batches with 1% of windows flat at 500 spreads",
    }
    for (table_name, name), title in titles.items():
        lines += ["", f"forward on {title} against random data:"]
        for row in result[table_name]:
            lines.append(
                f"  {tuple(row['shape'])} {row['layout']}: {name} {row['ms'][name]:.3f} ms, "
                f"random {row['ms']['random']:.3f} ms per batch, ratio {row['ratio']:.2f}; "
                "routes " + ", ".join(f"{route} {n}" for route, n in row["routes"].items())
            )
    lines.append("")
    for dtype in ("float32", "bfloat16"):
        worst: dict[str, float] = {}
        for row in result["rows"]:
            for key, value in row["match"].items():
                if row["dtype"] == dtype:
                    worst[key] = max(worst.get(key, 0.0), value)
        found = ", ".join(f"{key} {value:.1e}" for key, value in worst.items())
        lines.append(f"largest difference from the formulas ({dtype}): {found}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled steps")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--backend", choices=backends.names(), help="force a revin_fn backend")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with backends.use(args.backend) if args.backend else contextlib.nullcontext():
            result = run(args.quick, not (args.quick or args.no_compile), args.device)
    finally:
        torch.set_num_threads(threads)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
