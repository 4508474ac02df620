"""bench/llm.py trains its tiny decoder in every mode, each in a process of its own. Nothing it
times is asserted on: this only keeps the script from rotting as qlgrad changes."""

import json
import math
import re
import subprocess
import sys

from helpers import REPOSITORY, markdown_table_rows

LLM = str(REPOSITORY / "bench" / "llm.py")
ALTERNATED_HEADING = "The same modes built in one process"


def train_tiny_decoder(modes: list[str], *options: str) -> tuple[str, list[dict[str, str]]]:
    """bench/llm.py's output over two steps of ``modes`` on its tiny decoder, and its table's rows,
    once each mode was measured (neither failed nor skipped)."""
    command = [sys.executable, LLM, "--size", "tiny", "--steps", "2", "--modes", ",".join(modes), *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    # The table of the modes' own processes (an alternated one may follow it).
    rows = markdown_table_rows(result.stdout.split(ALTERNATED_HEADING)[0])
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


def test_llm_alternates_the_modes_in_one_process(tmp_path):
    results = tmp_path / "llm.json"
    modes = ["float", "float-bf16", "torchao-int8-bf16"]
    output, _ = train_tiny_decoder(modes, "--alternated", "3", "--json", str(results))
    assert f"{ALTERNATED_HEADING}, their steps taken in turn, 3 each" in output
    rows = markdown_table_rows(output.split(ALTERNATED_HEADING)[1])
    assert [row["mode"] for row in rows] == modes
    for row in rows:
        # Each time against both baselines, float32 and bfloat16.
        assert row["ms per step, alternated (× float / × float-bf16)"].count("×") == 2
    recorded = json.loads(results.read_text())["alternated"]
    assert list(recorded) == modes and all(recorded[name]["seconds_per_step"] > 0 for name in modes)


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
