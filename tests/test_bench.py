"""bench/compare.py runs end to end on the smallest shape. Nothing it times is asserted on: this
only keeps the script from rotting as qlgrad changes."""

import subprocess
import sys

from helpers import REPOSITORY, markdown_table_rows

COMPARE = str(REPOSITORY / "bench" / "compare.py")
SMALLEST_SHAPE = "32x768x768"


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

    rows = markdown_table_rows(result.stdout)
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
    rows = markdown_table_rows(low_bit)
    assert [row["tokens"] for row in rows] == ["1", "16", "256"]
    for row in rows:
        assert max(relative_errors(row)) < 1e-5  # every weight's fp32 backward is exact
    assert "int4, 1 tokens" in low_bit and "int8_group32, 256 tokens" in low_bit

    rows = markdown_table_rows(low_bit_bfloat16)
    assert [row["tokens"] for row in rows] == ["1", "8", "16", "256"]
    for row in rows:
        # Five weights and the bfloat16 GEMM, each within bfloat16's rounding of the weight.
        errors = relative_errors(row)
        assert len(errors) == 6 and max(errors) < 1e-2
    assert "int4_group128, 1 tokens, ≤ 0.6× the bf16 GEMM" in low_bit_bfloat16
    assert "fp16, 8 tokens, ≤ 0.6× the bf16 GEMM" in low_bit_bfloat16
    assert "int8_group32, 256 tokens, error ≤ 1.25× the bf16 GEMM's" in low_bit_bfloat16

    rows = markdown_table_rows(forwards)
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
