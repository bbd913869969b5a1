"""Smoke test of benchmarks/bench_revin.py: it runs in quick mode and revin_fn matches."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_revin.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_revin", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_runs_and_matches_the_reference_formulas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| case | op | revin_fn ms" in printed and "training step" in printed
    result = json.loads(out.read_text())
    layouts = {(tuple(row["shape"]), row["layout"], row["dtype"]) for row in result["rows"]}
    assert {layout for _, layout, _ in layouts} == {"b v t", "b t v"}
    assert {dtype for _, _, dtype in layouts} == {"float32", "bfloat16"}
    for row in result["rows"]:
        for impl in bench.IMPLS:
            assert all(row["ms"][impl][op] > 0 for op in bench.OPS)
        # no timing assertions: numbers on shared CI machines are noise
        tolerance = 1e-5 if row["dtype"] == "float32" else 5e-2
        assert all(value <= tolerance for value in row["match"].values()), row["match"]
        assert row["host_reads"] == {"forward": 1, "reverse": 0, "backward": 0}
        if row["dtype"] == "float32":  # x and the reverse's input, plus statistics that
            assert row["saved_inputs"]["revin_fn"] <= 3.0  # weigh a little at tiny shapes

    labels = {label for label, *_ in bench.VARIANTS}
    assert {(tuple(row["shape"]), row["layout"]) for row in result["steps"]} == {
        (shape, layout) for shape in bench.QUICK_STEP_SHAPES for layout in bench.LAYOUTS
    }
    for row in result["steps"]:
        assert set(row["ms"]["eager"]) == labels and all(v > 0 for v in row["ms"]["eager"].values())
        assert set(row["cost_ratio"]) == {f"{a} / {b}" for a, b in bench.TARGETS}
    # the near-constant table: real windows that take the eps remedies, against random data
    assert {row["layout"] for row in result["near_constant"]} == set(bench.LAYOUTS)
    for row in result["near_constant"]:
        assert all(value > 0 for value in row["ms"].values()) and row["ratio"] > 0
        assert any("+clamped" in route for route in row["routes"]), row["routes"]
    assert "near-constant windows" in printed
    # a few flat windows far from 0 among many variates: only their rows are redone
    assert {row["layout"] for row in result["flat_windows"]} == set(bench.LAYOUTS)
    for row in result["flat_windows"]:
        assert all(value > 0 for value in row["ms"].values()) and row["ratio"] > 0
        assert any(route.endswith("+redo") for route in row["routes"]), row
    assert "1% of windows flat" in printed


@pytest.mark.parametrize("pattern", ["b v t", "b t v"])
def test_every_training_step_variant_computes_the_same_loss_and_gradients(pattern: str) -> None:
    """The step table compares like with like: each normalization with affine parameters (the
    kernel floor included) gives the iTransformer formula's loss and gradients, each without
    them TSLib's, to the eps rules' rounding."""
    load_bench()  # puts benchmarks/ on sys.path
    import torch
    from train_step import VARIANTS, Step

    step = Step((4, 3, 40), pattern, "cpu")
    with torch.no_grad():  # a learned affine, so that gamma and beta matter
        step.gamma.copy_(torch.tensor([1.5, -0.7, 0.9]).view_as(step.gamma))
        step.beta.copy_(torch.tensor([0.2, -0.1, 0.3]).view_as(step.beta))
    parameters = [step.linear.weight, step.linear.bias, step.gamma, step.beta]

    def loss_and_grads(label: str) -> list[torch.Tensor]:
        loss = step.loss_fn(label)(step.x, step.target)
        grads = torch.autograd.grad(loss, parameters, allow_unused=True, materialize_grads=True)
        return [loss.detach(), *grads]

    expected = {True: loss_and_grads("itransformer"), False: loss_and_grads("tslib")}
    assert not torch.allclose(expected[True][0], expected[False][0])  # the affine matters
    for label, _, affine, _ in VARIANTS:
        if label != "none":
            for got, want in zip(loss_and_grads(label), expected[affine], strict=True):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=label)
