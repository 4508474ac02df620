"""Side-by-side comparison of qlgrad's backward precisions with the float and naive baselines.

For each shape and weight scheme, all operations are timed interleaved in this one
process: round-robin over the operations for ``--repeats`` rounds, then the median of
each. Load from other processes then slows every operation alike, so the ratios hold
even when absolute times wander. Prints one markdown table and which targets held on
this run; it only reports, and never fails on a target.

    python bench/compare.py [--shapes 32x768x768 ...] [--repeats 15] [--plot ratios.png]
"""

import argparse
import dataclasses
import gc
import math
import os
import sys
from collections.abc import Callable
from functools import partial

import torch

import qlgrad
from benchmarks import training_forwards, workloads
from benchmarks.comparison import (
    BASELINE,
    BF16_COPY,
    FORWARD_REQUIRES_GRAD,
    FORWARD_STOCK,
    INT8_GEMM,
    NAIVE,
    ONEDNN,
    ONEDNN_OWN,
    LowBitRow,
    ModelRow,
    Row,
    cold,
)
from benchmarks.machine import CpuWaitMeter, cpu_description, resident_bytes
from benchmarks.plots import Panel, ReferenceLine, bar_panels
from benchmarks.reporting import Target, markdown_table, target_report, verdict
from benchmarks.timing import Timed, interleaved_samples, medians, milliseconds, percent, relative_spread, times
from benchmarks.training_forwards import measure_training_forward, training_forward_report
from benchmarks.workloads import PRECISIONS, SCHEMES, SHAPES, Shape, Workload

# Targets. The exact backward, from the int8 codes, against F.linear's by token count: from
# (first, last) tokens at most this ratio; with a few tokens, reading a quarter of the bytes
# makes it faster.
FP32_TARGETS = (((64, None), 1.05), ((5, 63), 1.15), ((1, 4), 0.5))
# The same against the best fp32 GEMM of the CPU (F.linear's MKL or oneDNN, whichever is faster),
# and from 9 tokens against oneDNN's GEMM alone, on its own tensors.
FP32_BEST_GEMM_TARGETS = (((9, None), 1.10), ((1, 8), 0.5))
# bf16 from the int8 codes, against the product with a bfloat16 copy of the weight.
BF16_COPY_MAX_RATIO = 1.05
# bf16 and int8 against fp32 at every token count: a reduced precision is never the slower.
REDUCED_OVER_FP32_MAX_RATIO = 1.05
# int8 from SPEEDUP_MIN_TOKENS tokens, against the integer GEMM alone (torch._int_mm).
INT8_GEMM_MAX_RATIO = 1.10
# The reduced precisions pay off from SPEEDUP_MIN_TOKENS tokens on, at (speedup over
# F.linear, largest relative error).
SPEEDUP_MIN_TOKENS = 256
SPEEDUP_TARGETS = {"bf16": (3.0, 0.01), "int8": (4.0, 0.02)}
FORWARD_MAX_MICROSECONDS = 3.0  # forward with an input that requires grad, over the stock forward
MODEL_MAX_RATIO = 1.1  # the whole int8 model's backward over the float model's
# Low-bit weights read in place: int4 against F.linear with a few tokens (it reads an eighth of
# the bytes) and against the best fp32 GEMM of the CPU from 64 tokens; group-wise int8 against
# int8 per channel at the same shape.
INT4_FEW_TOKENS_MAX_RATIO = 0.3
INT4_MANY_TOKENS_MAX_RATIO = 1.10
GROUPWISE_MAX_RATIO = 1.10
# Every stored weight's fp32 backward against the best fp32 GEMM with 1 to 8 tokens (from 9, the
# 1.10 of FP32_BEST_GEMM_TARGETS): a quarter of the bytes for int8 codes, half for float16.
STORED_WEIGHT_FEW_TOKENS_MAX_RATIO = {"int8_per_channel": 0.5, "int8_group32": 0.5, "int8_group128": 0.5, "fp16": 0.7}
MODEL_MAX_CACHE_BYTES = 1.05  # per byte of the model's int8 weights
# Every stored weight's bf16 backward of a bfloat16 gradient (a bfloat16 base's) against the
# bfloat16 GEMM with a bfloat16 copy of the weight: at most this ratio from 16 tokens, and the
# few-token one with 1 to 8 (a quarter of the bytes or less to read); its error against float64
# on the same bfloat16 gradient at most this many times that GEMM's (whose weight is rounded to
# bfloat16 as group-wise values are; the sums' order differs).
BF16_LOW_BIT_MAX_RATIO = 1.0
BF16_LOW_BIT_FEW_TOKENS_MAX_RATIO = 0.6
BF16_LOW_BIT_ERROR_OVER_DENSE = 1.25
# The bfloat16 GEMM's name in the bf16 low-bit table.
DENSE_BF16 = "bf16 GEMM"


def measure(shape: Shape, scheme: str, repeats: int) -> Row:
    """Time every operation on one workload, interleaved; then the errors and the cache footprint."""
    workload = Workload(shape, scheme)
    baseline = workloads.float_linear_input_gradient(workload)
    gradients = {precision: workloads.qlgrad_input_gradient(workload, precision) for precision in PRECISIONS}
    operations = [
        Timed(BASELINE, baseline),
        Timed(ONEDNN, workloads.onednn_linear_input_gradient(workload)),
        Timed(ONEDNN_OWN, workloads.onednn_linear_input_gradient(workload, dense_output=False)),
        Timed(NAIVE, workloads.naive_input_gradient(workload)),
        Timed(BF16_COPY, workloads.bf16_copy_input_gradient(workload)),
        Timed(INT8_GEMM, workloads.int8_gemm_input_gradient(workload)),
        Timed(FORWARD_STOCK, workloads.int8_forward(workload, "no_grad")),
        Timed(FORWARD_REQUIRES_GRAD, workloads.int8_forward(workload, "input_requires_grad")),
    ]
    for precision, gradient in gradients.items():
        operations.append(Timed(precision, gradient, before=partial(qlgrad.prepare, workload.layer)))
        operations.append(Timed(cold(precision), gradient, before=qlgrad.clear_cache, single_call=True))
    cpu_wait = CpuWaitMeter()
    samples = interleaved_samples(operations, repeats)
    row = Row(
        shape, scheme, medians(samples), max(relative_spread(values) for values in samples.values()), cpu_wait.share()
    )

    row.cache_bytes_per_element = workloads.cache_bytes_per_weight_element(workload)
    reference = baseline()
    for precision, gradient in gradients.items():
        row.errors[precision] = workloads.relative_error(gradient(), reference)

    return row


def measure_model(shape: workloads.ModelShape, repeats: int) -> ModelRow:
    """The int8 model's input-gradient backward (qlgrad's defaults) against the float model's."""
    workload = workloads.ModelWorkload(shape)
    int8_backward = workloads.model_input_gradient(workload.int8_model, workload)
    qlgrad.clear_cache()
    gc.collect()
    resident_before = resident_bytes()
    int8_backward()  # unpacks every layer into the cache
    gc.collect()
    resident_growth = resident_bytes() - resident_before
    cache_bytes = qlgrad.cache_info().bytes
    float_backward = workloads.model_input_gradient(workload.float_model(), workload)
    before = qlgrad.cache_info()
    samples = interleaved_samples([Timed("float", float_backward), Timed("int8", int8_backward)], repeats)
    after = qlgrad.cache_info()
    lookups = (after.hits - before.hits) + (after.misses - before.misses)
    return ModelRow(
        shape,
        medians(samples),
        cache_bytes,
        resident_growth,
        (after.hits - before.hits) / lookups if lookups else math.nan,
    )


def model_report(row: ModelRow) -> str:
    shape = row.shape
    cache = row.per_int8_byte(row.cache_bytes)
    growth = row.per_int8_byte(row.resident_growth)
    return "\n".join(
        [
            f"Whole model: {shape.blocks} blocks of width {shape.width} and MLP {shape.hidden} "
            f"({shape.weight_elements / 1e6:.0f}M int8 weights), {shape.tokens} tokens, default cache limit "
            f"{qlgrad.cache_info().limit_bytes / 2**30:.2f} GiB:",
            f"- backward: float model {milliseconds(row.seconds['float'])} ms, int8 model "
            f"{milliseconds(row.seconds['int8'])} ms ({times(row.ratio)}); cache hit rate "
            + ("– (fbgemm's packing read in place)" if math.isnan(row.hit_rate) else f"{row.hit_rate:.0%}"),
            f"- cache: {row.cache_bytes / 2**20:.0f} MiB, {cache:.3f} bytes per int8 weight byte; the process "
            f"grew by {row.resident_growth / 2**20:.0f} MiB ({growth:.3f} per int8 weight byte) when it was filled",
            verdict(
                f"int8 model backward ≤ {MODEL_MAX_RATIO}× the float model's",
                row.ratio <= MODEL_MAX_RATIO,
                times(row.ratio),
            ),
            verdict(
                f"memory the cache adds ≤ {MODEL_MAX_CACHE_BYTES}× the int8 weights' bytes",
                max(cache, growth) <= MODEL_MAX_CACHE_BYTES,
                f"{max(cache, growth):.3f}×",
            ),
        ]
    )


def table(rows: list[Row]) -> str:
    header = (
        [
            "shape (tokens×in×out)",
            "scheme",
            f"{BASELINE} ms",
            f"{ONEDNN} ms",
            f"{ONEDNN_OWN} ms",
            f"{NAIVE} ms (×)",
            f"{BF16_COPY} ms (×)",
            f"{INT8_GEMM} ms (×)",
        ]
        + [f"{precision} ms (×)" for precision in PRECISIONS]
        + [
            "fp32 × best fp32 GEMM",
            f"fp32 × {ONEDNN_OWN}",
            "rel. error " + " / ".join(PRECISIONS),
            "forward stock ms",
            "forward requires_grad ×",
            "forward +µs",
            "cold backward " + " / ".join(PRECISIONS) + " ms",
            "cache B/element",
            "spread",
            "CPU wait",
        ]
    )
    return markdown_table(header, [cells(row) for row in rows])


def cells(row: Row) -> list[str]:
    return [
        row.shape.label,
        row.scheme,
        milliseconds(row.seconds[BASELINE]),
        milliseconds(row.seconds[ONEDNN]),
        milliseconds(row.seconds[ONEDNN_OWN]),
        *(
            f"{milliseconds(row.seconds[name])} ({times(row.ratio(name))})"
            for name in (NAIVE, BF16_COPY, INT8_GEMM, *PRECISIONS)
        ),
        f"{times(row.ratio('fp32', row.best_gemm))} ({row.best_gemm})",
        times(row.ratio("fp32", ONEDNN_OWN)),
        " / ".join(f"{row.errors[precision]:.1e}" for precision in PRECISIONS),
        milliseconds(row.seconds[FORWARD_STOCK]),
        times(row.ratio(FORWARD_REQUIRES_GRAD, FORWARD_STOCK)),
        f"{row.forward_overhead_microseconds:.1f}",
        " / ".join(milliseconds(row.seconds[cold(precision)]) for precision in PRECISIONS),
        f"{row.cache_bytes_per_element:.2f}",
        percent(row.spread),
        percent(row.cpu_wait),
    ]


def on_tokens(
    description: str, first: int, check: Callable[[Row], tuple[bool, str]], last: int | None = None
) -> Target:
    """A target checked on every row with ``first`` to ``last`` tokens (no upper bound where None)."""
    tokens = f"≥ {first} tokens" if last is None else f"{first}-{last} tokens"

    def unmeasured(row: Row) -> str | None:
        within = row.shape.tokens >= first and (last is None or row.shape.tokens <= last)
        return None if within else f"not {tokens}"

    return Target(f"{description}, {tokens}", check, unmeasured)


def _at_most(limit: float, name: str, over: str = BASELINE) -> Callable[[Row], tuple[bool, str]]:
    """``name``'s time at most ``limit`` times ``over``'s."""
    return lambda row: (row.ratio(name, over) <= limit, times(row.ratio(name, over)))


def _faster_and_close(precision: str, speedup: float, max_error: float) -> Callable[[Row], tuple[bool, str]]:
    def check(row: Row) -> tuple[bool, str]:
        measured, error = 1 / row.ratio(precision), row.errors[precision]
        return measured >= speedup and error <= max_error, f"{measured:.2f}× faster, error {error:.1e}"

    return check


def _fp32_at_most_best_gemm(limit: float) -> Callable[[Row], tuple[bool, str]]:
    return lambda row: (
        row.ratio("fp32", row.best_gemm) <= limit,
        f"{times(row.ratio('fp32', row.best_gemm))} {row.best_gemm}",
    )


TARGETS = (
    *(
        on_tokens(f"fp32 backward ≤ {limit}× F.linear", first, _at_most(limit, "fp32"), last)
        for (first, last), limit in FP32_TARGETS
    ),
    *(
        on_tokens(f"fp32 backward ≤ {limit}× the best fp32 GEMM", first, _fp32_at_most_best_gemm(limit), last)
        for (first, last), limit in FP32_BEST_GEMM_TARGETS
    ),
    on_tokens(
        f"fp32 backward ≤ {FP32_BEST_GEMM_TARGETS[0][1]}× {ONEDNN_OWN}",
        FP32_BEST_GEMM_TARGETS[0][0][0],
        _at_most(FP32_BEST_GEMM_TARGETS[0][1], "fp32", ONEDNN_OWN),
    ),
    on_tokens(
        f"bf16 backward ≤ {BF16_COPY_MAX_RATIO}× the product with a bfloat16 copy",
        1,
        _at_most(BF16_COPY_MAX_RATIO, "bf16", BF16_COPY),
    ),
    *(
        on_tokens(
            f"{precision} backward ≤ {REDUCED_OVER_FP32_MAX_RATIO}× fp32's",
            1,
            _at_most(REDUCED_OVER_FP32_MAX_RATIO, precision, "fp32"),
        )
        for precision in ("bf16", "int8")
    ),
    on_tokens(
        f"int8 backward ≤ {INT8_GEMM_MAX_RATIO}× the integer GEMM alone (torch._int_mm)",
        SPEEDUP_MIN_TOKENS,
        _at_most(INT8_GEMM_MAX_RATIO, "int8", INT8_GEMM),
    ),
    *(
        on_tokens(
            f"{precision} backward ≥ {speedup:g}× faster than F.linear, rel. error ≤ {max_error:.0%}",
            SPEEDUP_MIN_TOKENS,
            _faster_and_close(precision, speedup, max_error),
        )
        for precision, (speedup, max_error) in SPEEDUP_TARGETS.items()
    ),
    on_tokens(
        f"forward with requires_grad ≤ {FORWARD_MAX_MICROSECONDS:g} µs over stock",
        1,
        lambda row: (
            row.forward_overhead_microseconds <= FORWARD_MAX_MICROSECONDS,
            f"+{row.forward_overhead_microseconds:.1f} µs",
        ),
    ),
)


def measure_low_bit(tokens: int, repeats: int) -> LowBitRow:
    """Every low-bit weight's fp32 backward and both fp32 GEMMs, interleaved, 4096x4096."""
    operations, errors = [], {}
    for kind in workloads.LOW_BIT_WEIGHTS:
        workload = workloads.LowBitWorkload(tokens, kind)
        run = workload.qlgrad_input_gradient()
        errors[kind] = workloads.relative_error(run(), workload.reference())
        operations.append(Timed(kind, run))
    operations += [Timed(BASELINE, workload.float_input_gradient()), Timed(ONEDNN, workload.onednn_input_gradient())]
    samples = interleaved_samples(operations, repeats)
    return LowBitRow(tokens, medians(samples), errors)


def low_bit_report(rows: list[LowBitRow]) -> str:
    kinds = workloads.LOW_BIT_WEIGHTS
    header = [
        "tokens",
        "F.linear ms",
        "oneDNN ms",
        *(f"{kind} ms (× best fp32)" for kind in kinds),
        "group32, group128 × per channel",
        "int4 × F.linear",
        f"rel. error ({', '.join(kinds)})",
    ]
    cells, verdicts = [], []
    for row in rows:
        best_name, best = row.best_float
        per_channel = row.medians["int8_per_channel"]
        int4_over_linear = row.medians["int4_group128"] / row.medians[BASELINE]
        cells.append(
            [
                str(row.tokens),
                milliseconds(row.medians[BASELINE]),
                milliseconds(row.medians[ONEDNN]),
                *(f"{milliseconds(row.medians[kind])} ({times(row.medians[kind] / best)})" for kind in kinds),
                ", ".join(times(row.medians[kind] / per_channel) for kind in ("int8_group32", "int8_group128")),
                times(int4_over_linear),
                " / ".join(f"{row.errors[kind]:.1e}" for kind in kinds),
            ]
        )
        tokens = f"{row.tokens} tokens"
        if row.tokens <= 4:
            limit = INT4_FEW_TOKENS_MAX_RATIO
            verdicts.append(
                verdict(f"int4, {tokens}, ≤ {limit}× F.linear", int4_over_linear <= limit, times(int4_over_linear))
            )
        if row.tokens >= 64:
            ratio, limit = row.medians["int4_group128"] / best, INT4_MANY_TOKENS_MAX_RATIO
            verdicts.append(
                verdict(f"int4, {tokens}, ≤ {limit}× the best fp32 GEMM ({best_name})", ratio <= limit, times(ratio))
            )
        for kind, few_tokens_ratio in STORED_WEIGHT_FEW_TOKENS_MAX_RATIO.items():
            limit = few_tokens_ratio if row.tokens <= 8 else FP32_BEST_GEMM_TARGETS[0][1]
            ratio = row.medians[kind] / best
            verdicts.append(
                verdict(f"{kind}, {tokens}, ≤ {limit}× the best fp32 GEMM ({best_name})", ratio <= limit, times(ratio))
            )
        for kind in ("int8_group32", "int8_group128"):
            ratio = row.medians[kind] / per_channel
            verdicts.append(
                verdict(
                    f"{kind}, {tokens}, ≤ {GROUPWISE_MAX_RATIO}× int8 per channel",
                    ratio <= GROUPWISE_MAX_RATIO,
                    times(ratio),
                )
            )
    return markdown_table(header, cells) + "\n\n" + "\n".join(verdicts)


def measure_low_bit_bfloat16(tokens: int, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Every low-bit weight's bf16 backward of a bfloat16 gradient and the bfloat16 GEMM,
    interleaved, 4096x4096: their median times and relative errors against float64."""
    operations, errors = [], {}
    for kind in workloads.LOW_BIT_WEIGHTS:
        workload = workloads.LowBitWorkload(tokens, kind)
        run = workload.qlgrad_input_gradient("bf16", torch.bfloat16)
        errors[kind] = workloads.relative_error(run(), workload.reference(torch.bfloat16))
        operations.append(Timed(kind, run))
    dense = workload.bfloat16_input_gradient()
    errors[DENSE_BF16] = workloads.relative_error(dense(), workload.reference(torch.bfloat16))
    operations.append(Timed(DENSE_BF16, dense))
    return medians(interleaved_samples(operations, repeats)), errors


def low_bit_bfloat16_report(measured: dict[int, tuple[dict[str, float], dict[str, float]]]) -> str:
    kinds = workloads.LOW_BIT_WEIGHTS
    header = [
        "tokens",
        f"{DENSE_BF16} ms",
        *(f"{kind} ms (× {DENSE_BF16})" for kind in kinds),
        f"rel. error ({', '.join((*kinds, DENSE_BF16))})",
    ]
    cells, verdicts = [], []
    for tokens, (seconds, errors) in measured.items():
        dense = seconds[DENSE_BF16]
        cells.append(
            [
                str(tokens),
                milliseconds(dense),
                *(f"{milliseconds(seconds[kind])} ({times(seconds[kind] / dense)})" for kind in kinds),
                " / ".join(f"{errors[name]:.1e}" for name in (*kinds, DENSE_BF16)),
            ]
        )
        limit = BF16_LOW_BIT_FEW_TOKENS_MAX_RATIO if tokens <= 8 else BF16_LOW_BIT_MAX_RATIO if tokens >= 16 else None
        for kind in kinds:
            if limit is not None:
                ratio = seconds[kind] / dense
                verdicts.append(
                    verdict(f"{kind}, {tokens} tokens, ≤ {limit}× the {DENSE_BF16}", ratio <= limit, times(ratio))
                )
            error_ratio = errors[kind] / errors[DENSE_BF16]
            verdicts.append(
                verdict(
                    f"{kind}, {tokens} tokens, error ≤ {BF16_LOW_BIT_ERROR_OVER_DENSE}× the {DENSE_BF16}'s",
                    error_ratio <= BF16_LOW_BIT_ERROR_OVER_DENSE,
                    times(error_ratio),
                )
            )
    return markdown_table(header, cells) + "\n\n" + "\n".join(verdicts)


def plot_ratios(rows: list[Row], path: str) -> None:
    """Backward time over F.linear per implementation, and the forward's requires_grad overhead."""
    backward = Panel(
        {name: [row.ratio(name) for row in rows] for name in (NAIVE, *PRECISIONS)},
        f"backward time / {BASELINE}",
        [ReferenceLine(1, style="-", color="black", width=0.8)]
        + [
            ReferenceLine(1 / speedup, f"{precision} target: {speedup:g}× faster", style)
            for (precision, (speedup, _)), style in zip(SPEEDUP_TARGETS.items(), ("--", ":"))
        ],
        ratios=True,
        height=3,
    )
    forward = Panel(
        {"forward": [row.forward_overhead_microseconds for row in rows]},
        "forward requires_grad\nµs over stock",
        [ReferenceLine(FORWARD_MAX_MICROSECONDS, f"target: ≤ {FORWARD_MAX_MICROSECONDS:g} µs")],
    )
    bar_panels([f"{row.shape.label}\n{row.scheme}" for row in rows], [backward, forward], path)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=list(SHAPES),
        default=list(SHAPES),
        metavar="SHAPE",
        help=f"tokens×in×out to measure (default: all of {', '.join(SHAPES)})",
    )
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds per shape and scheme (default 15)")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the ratios into this file (needs matplotlib)")
    parser.add_argument(
        "--low-bit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time group-wise int8 and int4 weights at 4096x4096 (default: yes)",
    )
    parser.add_argument(
        "--training-forward-tokens",
        type=int,
        nargs="*",
        default=list(training_forwards.TOKENS),
        metavar="N",
        help="also time the forwards of torchao's int4 and int8 layers whose input requires grad at these token "
        f"counts (default: {' '.join(map(str, training_forwards.TOKENS))}; none leaves them out)",
    )
    parser.add_argument(
        "--model-blocks",
        type=int,
        default=workloads.BERT_LARGE.blocks,
        metavar="N",
        help=f"blocks of the whole-model row (default {workloads.BERT_LARGE.blocks}, BERT-large's "
        "linear layers; 0 leaves the row out)",
    )
    parser.add_argument(
        "--capability",
        choices=("default", "avx2", "avx512"),
        help="time the kernels of this CPU capability (ATEN_CPU_CAPABILITY, for ATen's kernels and qlgrad's "
        "alike; one above the CPU's falls back); default: the CPU's",
    )
    arguments = parser.parse_args()
    if arguments.repeats < 1:
        parser.error("--repeats must be at least 1")
    if arguments.model_blocks < 0:
        parser.error("--model-blocks must be at least 0")
    return arguments


def main() -> None:
    arguments = parse_arguments()
    if arguments.capability and os.environ.get("ATEN_CPU_CAPABILITY") != arguments.capability:
        # ATen reads the variable once, when it first dispatches: the script starts again with it set.
        environment = dict(os.environ, ATEN_CPU_CAPABILITY=arguments.capability)
        os.execve(sys.executable, [sys.executable, *sys.argv], environment)
    workloads.configure_torch()
    print(
        f"qlgrad {qlgrad.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"quantized engine {torch.backends.quantized.engine}, CPU capability {torch.backends.cpu.get_cpu_capability()} "
        f"(qlgrad's kernels: {' + '.join([qlgrad.cpu_capability(), *qlgrad.cpu_extensions()])})"
    )
    print(cpu_description())
    print(
        f"{arguments.repeats} interleaved rounds per row; times are medians; × is time over {BASELINE}'s; "
        f"rel. error is against {BASELINE}'s float32 gradient; spread: the largest interquartile range over "
        "median among the row's operations (how far single samples scatter); CPU wait: the share of the row's "
        "timing during which some task waited for a CPU. A CPU wait of more than a few percent marks a row that "
        "other processes disturbed: their threads stretch every parallel region alike and push all ratios "
        "towards 1.\n",
        flush=True,
    )

    rows = [measure(SHAPES[label], scheme, arguments.repeats) for label in arguments.shapes for scheme in SCHEMES]
    print(table(rows))
    print("\nTargets on this run:")
    print(target_report(TARGETS, rows, lambda row: f"{row.shape.label} {row.scheme}"))
    if arguments.low_bit:
        print(f"\nLow-bit weights, 4096x4096, fp32 backward; best fp32 GEMM: the faster of {BASELINE} and {ONEDNN}:")
        low_bit_rows = [measure_low_bit(tokens, arguments.repeats) for tokens in workloads.LOW_BIT_TOKENS]
        print(low_bit_report(low_bit_rows), flush=True)
        print(
            f"\nLow-bit weights, 4096x4096, bf16 backward of a bfloat16 gradient (a bfloat16 base's), beside the "
            f"{DENSE_BF16} with a bfloat16 copy of the weight; rel. error against float64 on the same gradient:"
        )
        measured = {
            tokens: measure_low_bit_bfloat16(tokens, arguments.repeats) for tokens in workloads.LOW_BIT_BFLOAT16_TOKENS
        }
        print(low_bit_bfloat16_report(measured), flush=True)
    if arguments.training_forward_tokens:
        print(
            f"\nTraining forwards, {training_forwards.IN_FEATURES}x{training_forwards.OUT_FEATURES}: an input that "
            "requires grad, the same layer's stock forward without grad, and the dense forward of the same dtype "
            "(float32: the faster of F.linear and oneDNN):"
        )
        forward_rows = [
            measure_training_forward(layer, dtype, tokens, arguments.repeats)
            for layer in training_forwards.LAYERS
            for dtype in training_forwards.DTYPES
            for tokens in arguments.training_forward_tokens
        ]
        print(training_forward_report(forward_rows), flush=True)
    if arguments.model_blocks:
        shape = dataclasses.replace(workloads.BERT_LARGE, blocks=arguments.model_blocks)
        print()
        print(model_report(measure_model(shape, arguments.repeats)), flush=True)
    if arguments.plot:
        plot_ratios(rows, arguments.plot)
        print(f"\nPlot written to {arguments.plot}")


if __name__ == "__main__":
    main()
