"""bench/compare.py runs end to end on the smallest shape. Nothing it times is asserted on:
this only keeps the script from rotting as qlgrad changes."""

import os
import subprocess
import sys

COMPARE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "compare.py")
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
    assert "Whole model: 1 blocks" in result.stdout and "cache hit rate 100%" in result.stdout
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_compare_times_the_low_bit_weights():
    result = subprocess.run(
        [sys.executable, COMPARE, "--shapes", SMALLEST_SHAPE, "--repeats", "1", "--model-blocks", "0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    low_bit = result.stdout.split("Low-bit weights")[1]
    rows = table_rows(low_bit)
    assert [row["tokens"] for row in rows] == ["1", "16", "256"]
    for row in rows:
        errors = [float(error) for error in next(v for k, v in row.items() if k.startswith("rel. error")).split(" / ")]
        assert max(errors) < 1e-5  # every weight's fp32 backward is exact
    assert "int4, 1 tokens" in low_bit and "int8_group32, 256 tokens" in low_bit
