"""LoRA fine-tuning steps of a decoder language model, on every quantization path side by side.

A Llama- or Qwen2-shaped decoder is built from a ``transformers`` config with random weights (no
download), and LoRA adapters (rank 16, alpha 32) are put on all seven projections of every layer
(q, k, v, o, gate, up, down). Each mode quantizes those projections its own way, or not at all,
on a float32 base or (the ``-bf16`` modes) the same decoder converted to bfloat16; the embeddings,
the norms and ``lm_head`` keep the base's dtype. All modes train from the same weights, adapters
and synthetic batches with AdamW, so their losses differ by what their base, their quantization
and their backward change, and nothing else.

Each mode runs in a process of its own (this script, started again with ``--mode``), so that what
one mode leaves in memory, in the allocator or in qlgrad's cache never reaches the next; the child
prints one JSON line, which the parent collects into a markdown table with ratios against
``float`` and ``float-bf16``, and which targets held on this run. The ``floor`` modes leave the
projections' products out: what remains of their step is below every mode on the same base, and
the rest of each mode's time is what its projections take. With ``--alternated``, every mode is
also built in one more process (started with ``--alternate``) and their steps are taken in turn:
times only, but a machine whose speed drifts over minutes slows every mode there alike. It only
reports and never fails on a target.

    python bench/llm.py [--arch qwen2] [--size 150m] [--modes float,qd-fp32] [--steps 8] [--alternated 12]
                        [--json results.json]
"""

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

import torch

import qlgrad
from benchmarks import workloads
from benchmarks.decoder import (
    ARCHS,
    DEFAULT_SIZE,
    LEARNING_RATE,
    LORA_ALPHA,
    LORA_RANK,
    PROJECTIONS,
    SIZES,
    WARMUP_STEPS,
    TrainingRun,
    import_training_libraries,
    synthetic_batches,
)
from benchmarks.decoder_modes import MODES, REFERENCES
from benchmarks.machine import (
    CpuWaitMeter,
    cpu_description,
    peak_resident_bytes,
    reset_peak_resident_bytes,
    trimmed_resident_bytes,
)
from benchmarks.reporting import Target, markdown_table, target_report
from benchmarks.timing import milliseconds, percent, relative_spread, times
from qlgrad._deprecations import hide_upstream_deprecations

BASELINE, BF16_BASELINE = "float", "float-bf16"  # every row's ratios are against both
BASELINES = f"× {BASELINE} / × {BF16_BASELINE}"
# Each base's step without the projections' products (decoder_modes.without_projection_products).
FLOOR, BF16_FLOOR = "floor", "floor-bf16"
# The float32 base with its forward in a bfloat16 autocast region: its float step and its floor.
AUTOCAST_BASELINE, AUTOCAST_FLOOR = "float-autocast", "floor-autocast"
# The child's result line on stdout starts with this, whatever else libraries print there.
RESULT_PREFIX = "llm.py result: "


# ---- One mode, in this process ---------------------------------------------------------------


def missing_requirement(mode) -> str | None:
    """Why ``mode`` cannot run here (a library it needs is not installed), or None once that library
    is imported."""
    if mode.requires is None:
        return None
    if importlib.util.find_spec(mode.requires) is None:
        return f"{mode.requires} not installed"
    importlib.import_module(mode.requires)
    return None


def measure(name: str, arguments: argparse.Namespace) -> dict:
    """Build and train one mode; every figure of its row."""
    mode = MODES[name]
    # Imported before the baseline: importing is not the model's memory.
    if (missing := missing_requirement(mode)) is not None:
        return {"mode": name, "skipped": missing}
    import_training_libraries()  # transformers and PEFT, likewise
    if mode.compiled:
        importlib.import_module("torch._inductor.compile_fx")  # the compiler's own modules, likewise
    size = SIZES[arguments.size]
    batches = synthetic_batches(size.vocab, arguments.batch, arguments.tokens, arguments.steps + 1)
    held_out = batches.pop()
    baseline = trimmed_resident_bytes()

    run = TrainingRun(mode, arguments.arch, size)
    model_bytes = trimmed_resident_bytes() - baseline
    peak_known = reset_peak_resident_bytes()
    seconds, losses = [], []
    warmup = min(WARMUP_STEPS, arguments.steps - 1)
    for index, input_ids in enumerate(batches):
        if index == warmup:
            cpu_wait = CpuWaitMeter()
        start = time.perf_counter()
        losses.append(run.step(input_ids))
        seconds.append(time.perf_counter() - start)
    cpu_wait_share = cpu_wait.share()
    peak = peak_resident_bytes() - baseline if peak_known else None
    after_bytes = trimmed_resident_bytes() - baseline
    elements = size.projection_weights
    beside = run.bytes_beside_projections()
    cache_bytes = qlgrad.cache_info().bytes
    return {
        "mode": name,
        "backward": mode.backward,
        "seconds_per_step": statistics.median(seconds[warmup:]),
        "step_seconds": seconds,
        "spread": None if len(seconds) - warmup < 2 else relative_spread(seconds[warmup:]),
        "cpu_wait": cpu_wait_share,
        "model_bytes": model_bytes,
        "after_steps_bytes": after_bytes,
        "peak_step_bytes": peak,
        "training_losses": losses,
        "loss": run.loss(held_out),
        "cache_bytes_per_weight": cache_bytes / elements,
        # What the quantized projections hold once trained: the model's memory but its plain
        # tensors, plus qlgrad's cache.
        "held_bytes_per_weight": (model_bytes - beside + cache_bytes) / elements,
        "projection_weights": elements,
    }


def client_versions() -> dict[str, str]:
    """The releases of the libraries the modes build, quantize and adapt the decoder with."""
    return {
        name: importlib.metadata.version(name) if importlib.util.find_spec(name) else "not installed"
        for name in ("transformers", "peft", "torchao", "bitsandbytes")
    }


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def run_child(arguments: argparse.Namespace) -> None:
    """The child's one result line: one mode's row (``--mode``), or the alternated modes' steps
    (``--alternate``)."""
    torch.set_num_threads(arguments.threads)
    hide_upstream_deprecations()
    if arguments.alternate is not None:
        result = alternate(arguments.alternate, arguments)
    else:
        try:
            result = measure(arguments.mode, arguments)
        except Exception as error:  # noqa: BLE001 - a mode that fails becomes its row
            result = {"mode": arguments.mode, "failed": first_line(error)}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def alternate(names: list[str], arguments: argparse.Namespace) -> dict:
    """Every mode of ``names`` built in this process, their steps taken in turn (the order reversed
    every other turn) ``arguments.alternated`` times each after their warm-up steps: each mode's
    median time per step, or why it has none. The machine's drift over minutes reaches every mode
    alike here."""
    size = SIZES[arguments.size]
    batches = synthetic_batches(size.vocab, arguments.batch, arguments.tokens, WARMUP_STEPS + 1)
    import_training_libraries()
    runs, outcomes = {}, {}
    for name in names:
        mode = MODES[name]
        if (missing := missing_requirement(mode)) is not None:
            outcomes[name] = {"skipped": missing}
            continue
        try:
            run = TrainingRun(mode, arguments.arch, size)
            for input_ids in batches[:WARMUP_STEPS]:
                run.step(input_ids)
        except Exception as error:  # noqa: BLE001 - a mode that fails is reported, the others go on
            outcomes[name] = {"failed": first_line(error)}
            continue
        runs[name] = run
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for turn in range(arguments.alternated):
        for name in list(runs) if turn % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            runs[name].step(batches[-1])
            seconds[name].append(time.perf_counter() - start)
    for name, taken in seconds.items():
        outcomes[name] = {"seconds_per_step": statistics.median(taken)}
    return {name: outcomes[name] for name in names}


# ---- Every mode, each in a child process -----------------------------------------------------


def run_script(options: list[str], arguments: argparse.Namespace) -> tuple[dict | None, str]:
    """This script run again in a child process with ``options``: the result it reported, or None
    and why it reported none."""
    command = [sys.executable, os.path.abspath(__file__), *options, *shared_arguments(arguments)]
    child = subprocess.run(command, capture_output=True, text=True)
    for line in child.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line.removeprefix(RESULT_PREFIX)), ""
    # The child died before it could report (killed, or a crash in native code).
    last_words = child.stderr.strip().splitlines() or ["no output"]
    return None, f"exit status {child.returncode}: {last_words[-1]}"


def run_mode(name: str, arguments: argparse.Namespace) -> dict:
    """One mode's row, from a child process running this script with ``--mode``."""
    row, failure = run_script(["--mode", name], arguments)
    return row if row is not None else {"mode": name, "failed": failure}


def run_alternated(names: list[str], arguments: argparse.Namespace) -> dict:
    """The modes' alternated steps (alternate), from one child process."""
    outcomes, failure = run_script(
        ["--alternate", ",".join(names), "--alternated", str(arguments.alternated)], arguments
    )
    return outcomes if outcomes is not None else {name: {"failed": failure} for name in names}


def alternated_table(outcomes: dict[str, dict]) -> str:
    """One row per mode: its median step among the alternated ones, over float's and float-bf16's."""
    baselines = [outcomes.get(name, {}).get("seconds_per_step") for name in (BASELINE, BF16_BASELINE)]
    rows = []
    for name, outcome in outcomes.items():
        step = outcome.get("seconds_per_step")
        text = outcome.get("failed") or outcome.get("skipped") or ""
        rows.append([name, with_ratios(milliseconds(step), step, baselines) if step is not None else text])
    return markdown_table(["mode", f"ms per step, alternated ({BASELINES})"], rows)


def median_round(mode_rounds: list[dict]) -> dict:
    """A mode's row over its rounds: the measured round with the median time per step (the lower
    of the two middle ones for an even count), with every round's time beside it."""
    timed = sorted((row for row in mode_rounds if measured(row)), key=lambda row: row["seconds_per_step"])
    if not timed:
        return mode_rounds[0]
    row = dict(timed[(len(timed) - 1) // 2])
    row["rounds_seconds_per_step"] = [row["seconds_per_step"] for row in mode_rounds if measured(row)]
    return row


def shared_arguments(arguments: argparse.Namespace) -> list[str]:
    """The options a child needs to build and train the same model on the same data."""
    return [
        *("--arch", arguments.arch, "--size", arguments.size),
        *("--tokens", str(arguments.tokens), "--batch", str(arguments.batch)),
        *("--steps", str(arguments.steps), "--threads", str(arguments.threads)),
    ]


def measured(row: dict | None) -> bool:
    return row is not None and "failed" not in row and "skipped" not in row


def mebibytes(nbytes: float | None) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**20:.0f}"


def with_ratios(text: str, value: float | None, baselines: list[float | None]) -> str:
    """``text``, and in brackets ``value`` over each of ``baselines`` where it is known."""
    if value is None or not any(baselines):
        return text
    return f"{text} ({' / '.join(times(value / baseline) if baseline else '–' for baseline in baselines)})"


def loss_difference(rows: dict[str, dict], name: str) -> float | None:
    """The relative difference of ``name``'s loss from its float64 straight-through reference's."""
    reference = MODES[name].reference
    if reference is None or not measured(rows.get(name)) or not measured(rows.get(reference)):
        return None
    return rows[name]["loss"] / rows[reference]["loss"] - 1


def floor_of(name: str) -> str:
    """The floor mode of ``name``'s base (float32, in autocast or not, or bfloat16)."""
    mode = MODES[name]
    return BF16_FLOOR if mode.bfloat16 else AUTOCAST_FLOOR if mode.autocast else FLOOR


def float_of(name: str) -> str:
    """The float mode of ``name``'s base: its projections are the dense ones."""
    mode = MODES[name]
    return BF16_BASELINE if mode.bfloat16 else AUTOCAST_BASELINE if mode.autocast else BASELINE


def projection_seconds(rows: dict[str, dict], name: str) -> float | None:
    """What ``name``'s projections take per step, forward and backward: its time per step less
    its base's floor's (None where either is unmeasured)."""
    floor = floor_of(name)
    if name == floor or not measured(rows.get(name)) or not measured(rows.get(floor)):
        return None
    return rows[name]["seconds_per_step"] - rows[floor]["seconds_per_step"]


def table(rows: dict[str, dict], steps: int) -> str:
    header = [
        "mode",
        "backward",
        f"ms per step ({BASELINES})",
        "projections ms (× the same base's float)",
        f"model MiB ({BASELINES})",
        f"after steps MiB ({BASELINES})",
        f"peak MiB ({BASELINES})",
        f"loss after {steps} steps",
        "loss vs float64 straight-through",
        "cache B/weight",
        "held B/weight",
        "spread",
        "CPU wait",
    ]
    return markdown_table(header, [cells(name, row, rows, len(header)) for name, row in rows.items()])


def cells(name: str, row: dict, rows: dict[str, dict], columns: int) -> list[str]:
    """The table's cells of ``name``'s row: what it measured, or why it measured nothing."""
    if not measured(row):
        outcome = f"failed: {row['failed']}" if "failed" in row else f"skipped: {row['skipped']}"
        outcome = outcome.replace("|", "\\|")  # an error message must not end the cell
        return [name, outcome] + ["–"] * (columns - 2)
    baselines = [rows[baseline] if measured(rows.get(baseline)) else {} for baseline in (BASELINE, BF16_BASELINE)]

    def ratios_against(key: str) -> list[float | None]:
        return [baseline.get(key) for baseline in baselines]

    difference = loss_difference(rows, name)
    projections = projection_seconds(rows, name)
    float_projections = projection_seconds(rows, float_of(name))
    return [
        name,
        row["backward"],
        with_ratios(milliseconds(row["seconds_per_step"]), row["seconds_per_step"], ratios_against("seconds_per_step")),
        "–" if projections is None else with_ratios(milliseconds(projections), projections, [float_projections]),
        *(
            with_ratios(mebibytes(row[key]), row[key], ratios_against(key))
            for key in ("model_bytes", "after_steps_bytes", "peak_step_bytes")
        ),
        f"{row['loss']:.4f}",
        "reference" if name in REFERENCES else "–" if difference is None else f"{difference:+.2%}",
        f"{row['cache_bytes_per_weight']:.2f}",
        f"{row['held_bytes_per_weight']:.2f}",
        percent(row["spread"]),
        percent(row["cpu_wait"]),
    ]


def at_most(
    description: str,
    needs: tuple[str, ...],
    value: Callable[[dict[str, dict]], float],
    limit: float,
    shown: Callable[[float], str] = times,
) -> Target:
    """A target on a run's rows: ``value(rows)`` at most ``limit``, where the rows ``needs`` names were measured."""

    def unmeasured(rows: dict[str, dict]) -> str | None:
        missing = [name for name in needs if not measured(rows.get(name))]
        return f"no result for {', '.join(missing)}" if missing else None

    def check(rows: dict[str, dict]) -> tuple[bool, str]:
        measured_value = value(rows)
        return measured_value <= limit, shown(measured_value)

    return Target(description, check, unmeasured)


def _ratio(name: str, against: str, key: str) -> Callable[[dict[str, dict]], float]:
    return lambda rows: rows[name][key] / rows[against][key]


def _time_target(name: str, limit: float, against: str = BASELINE) -> Target:
    """``name``'s time per step at most ``limit`` times ``against``'s; beside the figure, where it
    was measured, the floor's: no projections can bring the step below it."""
    floor = floor_of(name)
    ratio = _ratio(name, against, "seconds_per_step")
    target = at_most(f"{name} time per step ≤ {limit}× {against}'s", (name, against), ratio, limit)

    def check(rows: dict[str, dict]) -> tuple[bool, str]:
        holds, figure = target.check(rows)
        if measured(rows.get(floor)):
            figure += f"; {floor} {times(_ratio(floor, against, 'seconds_per_step')(rows))}"
        return holds, figure

    return Target(target.description, check, target.unmeasured)


def _no_slower(name: str, than: str, which: str) -> Target:
    """``name``'s time per step at most ``than``'s, ``which`` says what ``than`` is."""
    return at_most(
        f"{name} time per step ≤ {than}'s ({which})", (name, than), _ratio(name, than, "seconds_per_step"), 1.0
    )


MEMORY = {"model_bytes": "model memory", "after_steps_bytes": "memory after the steps"}
# What compiling may add to the int8 step's memory beyond what it adds to the float step's: a
# tenth of the int8 weights' bytes, and this much.
COMPILED_EXTRA_FLOOR_BYTES = 32 * 2**20
COMPILED_EXTRA_PER_INT8_WEIGHT = 0.1


def _compiled_extra_per_int8_weight(rows: dict[str, dict]) -> float:
    """What compiling adds to qd-fp32's memory after the steps beyond what it adds to float's,
    less COMPILED_EXTRA_FLOOR_BYTES, per byte of the int8 projection weights."""

    def growth(eager: str) -> int:
        return rows[f"{eager}-compiled"]["after_steps_bytes"] - rows[eager]["after_steps_bytes"]

    return (growth("qd-fp32") - growth("float") - COMPILED_EXTRA_FLOOR_BYTES) / rows["qd-fp32"]["projection_weights"]


def _memory_target(name: str, limit: float, against: str = BASELINE, key: str = "model_bytes") -> Target:
    return at_most(f"{name} {MEMORY[key]} ≤ {limit}× {against}'s", (name, against), _ratio(name, against, key), limit)


def _loss_target(name: str, limit: float) -> Target:
    reference = MODES[name].reference
    return at_most(
        f"{name} loss within {limit:.0%} of {reference}'s",
        (name, reference),
        lambda rows: abs(loss_difference(rows, name)),
        limit,
        "{:.2%}".format,
    )


TARGETS = (
    _time_target("qd-fp32", 0.6),
    _time_target("qd-bf16", 0.45),
    _time_target("torchao-int8", 0.6),
    _loss_target("qd-fp32", 0.01),
    _loss_target("qd-bf16", 0.02),
    _memory_target("qd-fp32", 0.45),
    _memory_target("torchao-int8", 0.4),
    _memory_target("torchao-int4", 0.4),
    at_most(
        "qd-fp32 bytes held per projection weight after training (packed weight and qlgrad's cache) ≤ 1.1",
        ("qd-fp32",),
        lambda rows: rows["qd-fp32"]["held_bytes_per_weight"],
        1.1,
        "{:.2f}".format,
    ),
    _no_slower("qd-fp32-compiled", "qd-fp32", "eager"),
    at_most(
        "qd-fp32-compiled's memory over qd-fp32's beyond float-compiled's over float's, "
        f"less {COMPILED_EXTRA_FLOOR_BYTES // 2**20} MiB, per int8 weight byte ≤ {COMPILED_EXTRA_PER_INT8_WEIGHT}",
        ("qd-fp32-compiled", "qd-fp32", "float-compiled", "float"),
        _compiled_extra_per_int8_weight,
        COMPILED_EXTRA_PER_INT8_WEIGHT,
        "{:.2f}".format,
    ),
    # On a bfloat16 base, against float-bf16; int4pack on float32, against float.
    _time_target("torchao-int8-bf16", 0.85, BF16_BASELINE),
    _time_target("torchao-int4pack-bf16", 1.0, BF16_BASELINE),
    _no_slower("torchao-int4pack-bf16", "bnb-4bit-bf16", "NF4"),
    _time_target("torchao-int4-bf16", 1.0, BF16_BASELINE),
    _time_target("torchao-int4pack", 0.6),
    _time_target("torchao-int4pack-autocast", 0.6),
    _memory_target("torchao-int8-bf16", 0.72, BF16_BASELINE, "after_steps_bytes"),
    _memory_target("torchao-int4pack-bf16", 0.58, BF16_BASELINE, "after_steps_bytes"),
    _loss_target("torchao-int8-bf16", 0.01),
    _loss_target("torchao-int4-bf16", 0.01),
    _loss_target("torchao-int4pack-bf16", 0.01),
    _loss_target("torchao-int4pack-autocast", 0.01),
)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=list(ARCHS), default="qwen2", help="decoder architecture (default qwen2)")
    parser.add_argument(
        "--size",
        choices=list(SIZES),
        default=DEFAULT_SIZE,
        help=f"decoder size (default {DEFAULT_SIZE}); "
        + "; ".join(f"{name}: {size.describe()}" for name, size in SIZES.items()),
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated modes to run, in this order (default all: {','.join(MODES)})",
    )
    parser.add_argument("--tokens", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    parser.add_argument(
        "--steps", type=int, default=8, help=f"training steps (default 8); the first {WARMUP_STEPS} are not timed"
    )
    parser.add_argument(
        "--threads", type=int, default=workloads.THREADS, help=f"torch threads (default {workloads.THREADS})"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the modes this many times in turn, each mode's row its median round by time per step "
        "(default 1): on a machine whose speed drifts over minutes, rounds that alternate the modes keep "
        "the drift out of their ratios",
    )
    parser.add_argument(
        "--alternated",
        type=int,
        default=0,
        metavar="STEPS",
        help="then build every mode in one more process and take their steps in turn, STEPS each, for a "
        "second table of times per step (default 0: none); no memory is measured there, but a machine's "
        "drift reaches every mode alike, where each process of its own meets it at another time",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results to this file")
    parser.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)  # the child's one mode
    parser.add_argument("--alternate", help=argparse.SUPPRESS)  # the alternating child's modes
    arguments = parser.parse_args()
    arguments.modes = arguments.modes.split(",")
    unknown = [name for name in arguments.modes if name not in MODES]
    if unknown:
        parser.error(f"unknown modes {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if arguments.alternate is not None:
        arguments.alternate = arguments.alternate.split(",")
    if arguments.alternated < 0:
        parser.error("--alternated must not be negative")
    if arguments.tokens < 2:
        parser.error("--tokens must be at least 2 (each token is the label of the one before)")
    for option in ("batch", "steps", "threads", "rounds"):
        if getattr(arguments, option) < 1:
            parser.error(f"--{option} must be at least 1")
    return arguments


def main() -> None:
    arguments = parse_arguments()
    if arguments.mode is not None or arguments.alternate is not None:
        run_child(arguments)
        return
    rounds: dict[str, list[dict]] = {name: [] for name in arguments.modes}
    for round_index in range(arguments.rounds):
        for name in arguments.modes:
            start = time.perf_counter()
            row = run_mode(name, arguments)
            rounds[name].append(row)
            outcome = "done" if measured(row) else row.get("failed") or row.get("skipped")
            where = f"round {round_index + 1}, " if arguments.rounds > 1 else ""
            print(f"{name}: {outcome} ({where}{time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    rows = {name: median_round(mode_rounds) for name, mode_rounds in rounds.items()}

    size = SIZES[arguments.size]
    warmup = min(WARMUP_STEPS, arguments.steps - 1)
    rounds_text = (
        f", in {arguments.rounds} rounds that took the modes in turn; each row is the mode's median round by ms "
        "per step"
        if arguments.rounds > 1
        else ""
    )
    print(f"qlgrad {qlgrad.__version__}, torch {torch.__version__}, {arguments.threads} threads")
    print(", ".join(f"{name} {version}" for name, version in client_versions().items()))
    print(cpu_description())
    print(
        f"{arguments.arch} {arguments.size}: {size.describe()}. Batch {arguments.batch} × {arguments.tokens} "
        f"tokens; LoRA rank {LORA_RANK}, alpha {LORA_ALPHA} on {', '.join(PROJECTIONS)}; AdamW, learning rate "
        f"{LEARNING_RATE:g}; {arguments.steps} steps."
    )
    print(
        f"Each mode ran in a process of its own{rounds_text}. ms per step: median wall-clock time of forward, "
        f"backward and optimizer step, the first {warmup} steps left out; spread: their interquartile range over "
        "the median; "
        f"projections: the time per step less the same base's floor's ({FLOOR}, {BF16_FLOOR}: the step with the "
        "projections' products left out), what the projections take forward and backward, beside the float mode's "
        "on that base; "
        "CPU wait: the share of that time during which some task waited for a CPU (other processes disturbed the "
        "row). Memory above the process's after its imports, each reading after gc and malloc_trim: model, once "
        "built, quantized and adapted; after steps, with AdamW's state and qlgrad's cache; peak: the kernel's "
        "high-water mark of resident memory (VmHWM, reset once the model was built) over all steps. Loss: on a "
        "held-out batch after the last step; beside it, its difference from the same quantization's float64 "
        "straight-through backward. B/weight: bytes per weight element of the projections; held: the model's "
        "memory but its plain float tensors (embeddings, norms, lm_head, adapters), plus qlgrad's cache.\n",
    )
    print(table(rows, arguments.steps))
    alternated = None
    if arguments.alternated > 0:
        alternated = run_alternated(arguments.modes, arguments)
        print(
            f"\nThe same modes built in one process, their steps taken in turn, {arguments.alternated} each after "
            f"{WARMUP_STEPS} warm-up steps (the order reversed every other turn); ms per step: the median:\n"
        )
        print(alternated_table(alternated))
    print("\nTargets on this run:")
    print(target_report(TARGETS, [rows]), flush=True)
    if arguments.json:
        with open(arguments.json, "w") as output:
            json.dump(
                {
                    "arch": arguments.arch,
                    "size": arguments.size,
                    "shape": asdict(size),
                    **{
                        option: getattr(arguments, option)
                        for option in ("tokens", "batch", "steps", "threads", "rounds", "alternated")
                    },
                    "torch": torch.__version__,
                    "qlgrad": qlgrad.__version__,
                    "clients": client_versions(),
                    "cpu": cpu_description(),
                    "rows": list(rows.values()),
                    "alternated": alternated,
                },
                output,
                indent=2,
            )


if __name__ == "__main__":
    main()
