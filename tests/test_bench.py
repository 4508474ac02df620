"""bench/compare.py runs end to end on the smallest shape, and bench/llm.py on its tiny decoder.
Nothing they time is asserted on: this only keeps the scripts from rotting as qlgrad changes."""

import json
import math
import os
import re
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
COMPARE = os.path.join(BENCH, "compare.py")
LLM = os.path.join(BENCH, "llm.py")
SMALLEST_SHAPE = "32x768x768"


def table_rows(output: str) -> list[dict[str, str]]:
    """The markdown table's data rows, each as {column header: cell}."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]  # not the |---| rule
    header, *rows = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)
    return [dict(zip(header, row)) for row in rows]


def test_compare_runs_on_the_smallest_shape(tmp_path):
    plot = tmp_path / "ratios.png"  # --plot needs matplotlib, pinned in requirements/dev.txt
    result = subprocess.run(
        [
            sys.executable,
            COMPARE,
            "--shapes",
            SMALLEST_SHAPE,
            "--repeats",
            "1",
            "--model-blocks",
            "1",
            "--no-low-bit",
            "--training-forward-tokens",
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr

    rows = table_rows(result.stdout)
    assert [(row["shape (tokens×in×out)"], row["scheme"]) for row in rows] == [
        (SMALLEST_SHAPE, "per_tensor"),
        (SMALLEST_SHAPE, "per_channel"),
    ]
    for row in rows:
        fp32_error = float(row["rel. error fp32 / bf16 / int8"].split(" / ")[0])
        assert fp32_error < 1e-5  # the exact mode and F.linear compute the same gradient
    assert "Targets on this run:" in result.stdout
    assert "Whole model: 1 blocks" in result.stdout
    # Every weight comes from the cache after the first backward, or none goes through it (read in place).
    assert "cache hit rate 100%" in result.stdout or "packing read in place" in result.stdout
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_compare_times_the_low_bit_weights_and_the_training_forwards():
    result = subprocess.run(
        [
            sys.executable,
            COMPARE,
            "--shapes",
            SMALLEST_SHAPE,
            "--repeats",
            "1",
            "--model-blocks",
            "0",
            "--training-forward-tokens",
            "1",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    low_bit, low_bit_bfloat16 = result.stdout.split("Low-bit weights")[1:3]
    low_bit_bfloat16, forwards = low_bit_bfloat16.split("Training forwards")
    rows = table_rows(low_bit)
    assert [row["tokens"] for row in rows] == ["1", "16", "256"]
    for row in rows:
        assert max(relative_errors(row)) < 1e-5  # every weight's fp32 backward is exact
    assert "int4, 1 tokens" in low_bit and "int8_group32, 256 tokens" in low_bit

    rows = table_rows(low_bit_bfloat16)
    assert [row["tokens"] for row in rows] == ["1", "16", "256"]
    for row in rows:
        # Five weights and the bfloat16 GEMM, each within bfloat16's rounding of the weight.
        errors = relative_errors(row)
        assert len(errors) == 6 and max(errors) < 1e-2
    assert "int4_group128, 1 tokens, ≤ 0.6× the bf16 GEMM" in low_bit_bfloat16
    assert "int8_group32, 256 tokens, error ≤ 1.25× the bf16 GEMM's" in low_bit_bfloat16

    rows = table_rows(forwards)
    assert [(row["layer"], row["dtype"], row["tokens"]) for row in rows] == [
        (layer, dtype, tokens)
        for layer in ("int4_group128", "torchao_int8", "torchao_intx_group32")
        for dtype in ("float32", "bfloat16")
        for tokens in ("1", "16")
    ]
    assert "torchao_int8 bfloat16, 16 tokens: training ≤ 1.0× the dense forward" in forwards


def relative_errors(row: dict[str, str]) -> list[float]:
    """The figures of a table row's "rel. error (...)" cell."""
    return [float(error) for error in next(v for k, v in row.items() if k.startswith("rel. error")).split(" / ")]


def train_tiny_decoder(modes: list[str], *options: str) -> tuple[str, list[dict[str, str]]]:
    """bench/llm.py's output over two steps of ``modes`` on its tiny decoder, and its table's rows,
    once each mode was measured (neither failed nor skipped)."""
    command = [sys.executable, LLM, "--size", "tiny", "--steps", "2", "--modes", ",".join(modes), *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert [row["mode"] for row in rows] == modes
    for row in rows:
        assert not row["backward"].startswith(("failed", "skipped")), row["backward"]
        assert math.isfinite(float(row["loss after 2 steps"]))
    return result.stdout, rows


def test_llm_trains_the_tiny_decoder_in_each_mode(tmp_path):
    modes = ["float", "float-compiled", "qd-fp32", "qd-fp32-compiled", "torchao-int8"]
    results = tmp_path / "llm.json"
    output, rows = train_tiny_decoder(modes, "--json", str(results))
    # Every mode starts from the same weights, adapters and batches; int8 weights and activations
    # move the loss by far less than the two steps do.
    float_loss, *quantized_losses = (float(row["loss after 2 steps"]) for row in rows)
    assert all(abs(loss / float_loss - 1) < 0.05 for loss in quantized_losses)
    assert "Targets on this run:" in output and "qd-fp32 time per step" in output
    assert "qd-fp32-compiled's memory over qd-fp32's beyond float-compiled's over float's" in output
    assert [row["mode"] for row in json.loads(results.read_text())["rows"]] == modes


def test_llm_rounds_take_the_modes_in_turn(tmp_path):
    results = tmp_path / "llm.json"
    output, rows = train_tiny_decoder(["float", "float-bf16"], "--rounds", "3", "--json", str(results))
    assert "in 3 rounds that took the modes in turn" in output
    for row in json.loads(results.read_text())["rows"]:
        # The row is its median round: the middle one of the three by time per step.
        times = row["rounds_seconds_per_step"]
        assert len(times) == 3 and row["seconds_per_step"] == sorted(times)[1]


def test_llm_trains_the_tiny_decoder_on_bfloat16_and_int4pack():
    modes = [
        "float",
        "float-bf16",
        "floor-bf16",
        "torchao-int8-bf16",
        "torchao-int8-bf16-int8",
        "torchao-int4-bf16",
        "torchao-int4pack",
        "torchao-int4pack-ste64",
        "torchao-int4pack-bf16",
        "torchao-int4pack-bf16-ste64",
        "float-autocast",
        "floor-autocast",
        "torchao-int4pack-autocast",
    ]
    output, rows = train_tiny_decoder(modes)
    for row in rows:
        # Each time against both baselines, float32 and bfloat16.
        assert row["ms per step (× float / × float-bf16)"].count("×") == 2
    # A bfloat16 base and int4 weights move the loss by far less than the two steps do (the
    # floor's projections output zeros: its loss means nothing).
    float_loss, *other_losses = (
        float(row["loss after 2 steps"]) for row in rows if not row["mode"].startswith("floor")
    )
    assert all(abs(loss / float_loss - 1) < 0.05 for loss in other_losses)
    # What the projections take: each mode's step less its base's floor, beside the float mode's.
    projections = {row["mode"]: row["projections ms (× the same base's float)"] for row in rows}
    assert projections["floor-bf16"] == "–" and projections["float"] == "–"  # float32's floor was not run
    assert projections["float-bf16"].endswith("(1.00×)") and projections["torchao-int8-bf16"].count("×") == 1
    assert re.search(
        r"torchao-int4pack-bf16 time per step ≤ 1\.0× float-bf16's: \w+ \([\d.]+×; floor-bf16 [\d.]+×\)", output
    )
    # The float64 straight-through reference of torch's int4 packing, against which qlgrad's loss is compared.
    assert "torchao-int4pack-bf16 loss within 1% of torchao-int4pack-bf16-ste64's: HOLDS" in output
    # The float32 base in a bfloat16 autocast region: against the float32 step, its own floor beside it,
    # its projections against float-autocast's.
    assert projections["float-autocast"].endswith("(1.00×)")
    assert re.search(
        r"torchao-int4pack-autocast time per step ≤ 0\.6× float's: \w+ \([\d.]+×; floor-autocast [\d.]+×\)", output
    )
    assert "torchao-int4pack-autocast loss within 1% of torchao-int4pack-ste64's: HOLDS" in output
