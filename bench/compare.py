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
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

import qlgrad
from benchmarks import workloads
from benchmarks.workloads import PRECISIONS, SCHEMES, SHAPES, Shape, Workload

BASELINE = "F.linear"
ONEDNN = "oneDNN"  # the CPU's other fp32 GEMM: the best fp32 GEMM is the faster of the two
NAIVE = "naive"
FORWARD_STOCK = "forward stock"
FORWARD_REQUIRES_GRAD = "forward requires_grad"
# Calls shorter than this are batched into one sample, so clock resolution and the
# Python loop do not dominate.
MIN_SAMPLE_SECONDS = 0.005
CPU_FLAGS_OF_INTEREST = ("avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")

BF16_COPY = "bf16 copy"
INT8_GEMM = "int8 GEMM"  # torch._int_mm on an int8 gradient and the codes
# Targets. The exact backward, from the int8 codes, against F.linear's by token count: from
# (first, last) tokens at most this ratio; with a few tokens, reading a quarter of the bytes
# makes it faster.
FP32_TARGETS = (((64, None), 1.05), ((5, 63), 1.15), ((1, 4), 0.5))
# The same against the best fp32 GEMM of the CPU (F.linear's MKL or oneDNN, whichever is faster).
FP32_BEST_GEMM_TARGETS = (((9, None), 1.10), ((1, 8), 0.5))
# bf16 from the int8 codes, against the product with a bfloat16 copy of the weight.
BF16_COPY_MAX_RATIO = 1.05
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


def cold(precision: str) -> str:
    """Name of the first backward in ``precision`` after qlgrad's cache was emptied."""
    return f"cold {precision}"


@dataclass
class Timed:
    """One operation to time.

    ``before`` runs untimed before every sample and puts qlgrad's cache in the state the
    measurement is about, whatever the operation timed just before left behind. Then
    one untimed call brings the operation's data into the CPU caches, so every sample
    times back-to-back calls, as asv does. ``single_call`` operations use up the state
    ``before`` made (the first backward fills an empty cache): each of their samples is
    exactly one call, with no call before it.
    """

    name: str
    run: Callable[[], object]
    before: Callable[[], object] = lambda: None
    single_call: bool = False
    calls_per_sample: int = 1

    def sample(self) -> float:
        """Seconds per call, over one sample."""
        self.before()
        if not self.single_call:
            self.run()
        gc.disable()  # as timeit does: a collection would land on whichever call triggers it
        try:
            start = time.perf_counter()
            for _ in range(self.calls_per_sample):
                self.run()
            return (time.perf_counter() - start) / self.calls_per_sample
        finally:
            gc.enable()

    def calibrate(self) -> None:
        """Run once to warm up, then choose how many calls make one sample."""
        self.sample()
        if not self.single_call:
            self.calls_per_sample = max(1, math.ceil(MIN_SAMPLE_SECONDS / self.sample()))


def interleaved_samples(operations: list[Timed], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each operation, sampled round-robin ``repeats`` times."""
    for operation in operations:
        operation.calibrate()
    samples = {operation.name: [] for operation in operations}
    # A new order every round: what one operation leaves in the caches (or takes out of
    # them: the naive and cold backwards write whole new weights) must not always fall
    # on the same successor.
    order = random.Random(0)
    for _ in range(repeats):
        for operation in order.sample(operations, len(operations)):
            samples[operation.name].append(operation.sample())
    return samples


def relative_spread(values: list[float]) -> float:
    """Interquartile range over median; NaN for a single value."""
    if len(values) < 2:
        return math.nan
    lower, _, upper = statistics.quantiles(values, n=4)
    return (upper - lower) / statistics.median(values)


def cpu_wait_microseconds() -> int | None:
    """Time, summed since boot, during which some runnable task waited for a CPU (Linux
    pressure stall information); None where the kernel does not provide it."""
    try:
        with open("/proc/pressure/cpu") as pressure:
            return int(pressure.readline().split()[-1].removeprefix("total="))
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Row:
    """Everything measured for one shape and weight scheme."""

    shape: Shape
    scheme: str
    seconds: dict[str, float]  # median per operation name
    spread: float  # the largest relative spread of any operation's samples
    cpu_wait: float  # share of the timing during which some task waited for a CPU
    errors: dict[str, float] = field(default_factory=dict)  # per precision, against F.linear
    cache_bytes_per_element: float = math.nan  # one entry, whatever the precision

    def ratio(self, name: str) -> float:
        """Time of ``name`` over the F.linear baseline's."""
        return self.seconds[name] / self.seconds[BASELINE]

    @property
    def best_gemm(self) -> str:
        """The faster fp32 GEMM of the CPU on this product: F.linear's (MKL) or oneDNN's."""
        return min((BASELINE, ONEDNN), key=lambda name: self.seconds[name])

    def ratio_to_best_gemm(self, name: str) -> float:
        return self.seconds[name] / self.seconds[self.best_gemm]

    @property
    def forward_ratio(self) -> float:
        """Forward with an input that requires grad, over the stock forward (no_grad)."""
        return self.seconds[FORWARD_REQUIRES_GRAD] / self.seconds[FORWARD_STOCK]

    @property
    def forward_overhead_microseconds(self) -> float:
        """What recording the autograd node adds to the stock forward."""
        return (self.seconds[FORWARD_REQUIRES_GRAD] - self.seconds[FORWARD_STOCK]) * 1e6


def measure(shape: Shape, scheme: str, repeats: int) -> Row:
    """Time every operation on one workload, interleaved; then the errors and the cache footprint."""
    workload = Workload(shape, scheme)
    baseline = workloads.float_linear_input_gradient(workload)
    gradients = {precision: workloads.qlgrad_input_gradient(workload, precision) for precision in PRECISIONS}
    operations = [
        Timed(BASELINE, baseline),
        Timed(ONEDNN, workloads.onednn_linear_input_gradient(workload)),
        Timed(NAIVE, workloads.naive_input_gradient(workload)),
        Timed(BF16_COPY, workloads.bf16_copy_input_gradient(workload)),
        Timed(INT8_GEMM, workloads.int8_gemm_input_gradient(workload)),
        Timed(FORWARD_STOCK, workloads.int8_forward(workload, "no_grad")),
        Timed(FORWARD_REQUIRES_GRAD, workloads.int8_forward(workload, "input_requires_grad")),
    ]
    for precision, gradient in gradients.items():
        operations.append(Timed(precision, gradient, before=partial(qlgrad.prepare, workload.layer)))
        operations.append(Timed(cold(precision), gradient, before=qlgrad.clear_cache, single_call=True))
    wait_before, start = cpu_wait_microseconds(), time.perf_counter()
    samples = interleaved_samples(operations, repeats)
    wait_after, elapsed = cpu_wait_microseconds(), time.perf_counter() - start
    row = Row(
        shape,
        scheme,
        {name: statistics.median(values) for name, values in samples.items()},
        max(relative_spread(values) for values in samples.values()),
        math.nan if wait_before is None else (wait_after - wait_before) / 1e6 / elapsed,
    )

    row.cache_bytes_per_element = workloads.cache_bytes_per_weight_element(workload)
    reference = baseline()
    for precision, gradient in gradients.items():
        row.errors[precision] = workloads.relative_error(gradient(), reference)

    return row


def resident_bytes() -> int:
    """The process's resident memory now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class ModelRow:
    """The whole model: backward times interleaved, and what the int8 model's cache costs."""

    shape: workloads.ModelShape
    seconds: dict[str, float]  # "float", "int8": median backward
    cache_bytes: int  # qlgrad's cache after one backward, default limit
    resident_growth: int  # the process's resident memory grown by that backward
    hit_rate: float  # of the timed backwards; NaN where no weight went through the cache (read in place)

    @property
    def ratio(self) -> float:
        return self.seconds["int8"] / self.seconds["float"]

    def per_int8_byte(self, nbytes: int) -> float:
        return nbytes / self.shape.weight_elements


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
        {name: statistics.median(values) for name, values in samples.items()},
        cache_bytes,
        resident_growth,
        (after.hits - before.hits) / lookups if lookups else math.nan,
    )


def model_report(row: ModelRow) -> str:
    shape = row.shape
    held = lambda holds: "HOLDS" if holds else "MISSED"  # noqa: E731
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
            f"- int8 model backward ≤ {MODEL_MAX_RATIO}× the float model's: {held(row.ratio <= MODEL_MAX_RATIO)} "
            f"({times(row.ratio)})",
            f"- memory the cache adds ≤ {MODEL_MAX_CACHE_BYTES}× the int8 weights' bytes: "
            f"{held(max(cache, growth) <= MODEL_MAX_CACHE_BYTES)} ({max(cache, growth):.3f}×)",
        ]
    )


def milliseconds(seconds: float) -> str:
    """Milliseconds to about three significant digits, never in exponent notation."""
    ms = seconds * 1e3
    decimals = 0 if ms >= 100 else 1 if ms >= 10 else 2 if ms >= 1 else 3
    return f"{ms:.{decimals}f}"


def times(ratio: float) -> str:
    return f"{ratio:.0f}×" if ratio >= 100 else f"{ratio:.2f}×"


def percent(share: float) -> str:
    return "–" if math.isnan(share) else f"{share:.0%}"


def markdown_table(rows: list[Row]) -> str:
    header = (
        [
            "shape (tokens×in×out)",
            "scheme",
            f"{BASELINE} ms",
            f"{ONEDNN} ms",
            f"{NAIVE} ms (×)",
            f"{BF16_COPY} ms (×)",
            f"{INT8_GEMM} ms (×)",
        ]
        + [f"{precision} ms (×)" for precision in PRECISIONS]
        + [
            "fp32 × best fp32 GEMM",
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
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row.shape.label,
            row.scheme,
            milliseconds(row.seconds[BASELINE]),
            milliseconds(row.seconds[ONEDNN]),
            *(
                f"{milliseconds(row.seconds[name])} ({times(row.ratio(name))})"
                for name in (NAIVE, BF16_COPY, INT8_GEMM, *PRECISIONS)
            ),
            f"{times(row.ratio_to_best_gemm('fp32'))} ({row.best_gemm})",
            " / ".join(f"{row.errors[precision]:.1e}" for precision in PRECISIONS),
            milliseconds(row.seconds[FORWARD_STOCK]),
            times(row.forward_ratio),
            f"{row.forward_overhead_microseconds:.1f}",
            " / ".join(milliseconds(row.seconds[cold(precision)]) for precision in PRECISIONS),
            f"{row.cache_bytes_per_element:.2f}",
            percent(row.spread),
            percent(row.cpu_wait),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """A goal checked on every row with ``min_tokens`` to ``max_tokens`` tokens."""

    description: str
    min_tokens: int
    check: Callable[[Row], tuple[bool, str]]  # whether it holds, and the values that decide it
    max_tokens: int | None = None

    def applies_to(self, row: Row) -> bool:
        return row.shape.tokens >= self.min_tokens and (self.max_tokens is None or row.shape.tokens <= self.max_tokens)

    @property
    def tokens(self) -> str:
        if self.max_tokens is None:
            return f"≥ {self.min_tokens} tokens"
        return f"{self.min_tokens}-{self.max_tokens} tokens"


def _at_most_times_baseline(name: str, limit: float) -> Callable[[Row], tuple[bool, str]]:
    return lambda row: (row.ratio(name) <= limit, times(row.ratio(name)))


def _faster_and_close(precision: str, speedup: float, max_error: float) -> Callable[[Row], tuple[bool, str]]:
    def check(row: Row) -> tuple[bool, str]:
        measured = 1 / row.ratio(precision)
        error = row.errors[precision]
        return measured >= speedup and error <= max_error, f"{measured:.2f}× faster, error {error:.1e}"

    return check


TARGETS = (
    *(
        Target(f"fp32 backward ≤ {limit}× F.linear", first, _at_most_times_baseline("fp32", limit), last)
        for (first, last), limit in FP32_TARGETS
    ),
    *(
        Target(
            f"fp32 backward ≤ {limit}× the best fp32 GEMM",
            first,
            lambda row, limit=limit: (
                row.ratio_to_best_gemm("fp32") <= limit,
                f"{times(row.ratio_to_best_gemm('fp32'))} {row.best_gemm}",
            ),
            last,
        )
        for (first, last), limit in FP32_BEST_GEMM_TARGETS
    ),
    Target(
        f"bf16 backward ≤ {BF16_COPY_MAX_RATIO}× the product with a bfloat16 copy",
        1,
        lambda row: (
            row.seconds["bf16"] <= BF16_COPY_MAX_RATIO * row.seconds[BF16_COPY],
            times(row.seconds["bf16"] / row.seconds[BF16_COPY]),
        ),
    ),
    Target(
        f"int8 backward ≤ {INT8_GEMM_MAX_RATIO}× the integer GEMM alone (torch._int_mm)",
        SPEEDUP_MIN_TOKENS,
        lambda row: (
            row.seconds["int8"] <= INT8_GEMM_MAX_RATIO * row.seconds[INT8_GEMM],
            times(row.seconds["int8"] / row.seconds[INT8_GEMM]),
        ),
    ),
    *(
        Target(
            f"{precision} backward ≥ {speedup:g}× faster than F.linear, rel. error ≤ {max_error:.0%}",
            SPEEDUP_MIN_TOKENS,
            _faster_and_close(precision, speedup, max_error),
        )
        for precision, (speedup, max_error) in SPEEDUP_TARGETS.items()
    ),
    Target(
        f"forward with requires_grad ≤ {FORWARD_MAX_MICROSECONDS:g} µs over stock",
        1,
        lambda row: (
            row.forward_overhead_microseconds <= FORWARD_MAX_MICROSECONDS,
            f"+{row.forward_overhead_microseconds:.1f} µs",
        ),
    ),
)


def target_report(rows: list[Row]) -> str:
    lines = []
    for target in TARGETS:
        checked = [row for row in rows if target.applies_to(row)]
        if not checked:
            lines.append(f"- {target.description}, {target.tokens}: no row measured")
            continue
        outcomes = [(row, *target.check(row)) for row in checked]
        missed = [f"{row.shape.label} {row.scheme} ({values})" for row, holds, values in outcomes if not holds]
        held = [f"{row.shape.label} {row.scheme} ({values})" for row, holds, values in outcomes if holds]
        if not missed:
            lines.append(
                f"- {target.description}, {target.tokens}: HOLDS on all {len(checked)} rows: " + "; ".join(held)
            )
        else:
            lines.append(
                f"- {target.description}, {target.tokens}: MISSED on {len(missed)} of {len(checked)} rows: "
                + "; ".join(missed)
            )
    return "\n".join(lines)


@dataclass
class LowBitRow:
    tokens: int
    medians: dict[str, float]  # operation -> seconds
    errors: dict[str, float]  # low-bit weight -> relative error against float64

    @property
    def best_float(self) -> tuple[str, float]:
        """The faster fp32 GEMM of this CPU on the same product, and its time."""
        return min(((name, self.medians[name]) for name in (BASELINE, ONEDNN)), key=lambda item: item[1])


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
    return LowBitRow(tokens, {name: statistics.median(values) for name, values in samples.items()}, errors)


def low_bit_report(rows: list[LowBitRow]) -> str:
    lines = [
        "| tokens | F.linear ms | oneDNN ms | "
        + " | ".join(f"{kind} ms (× best fp32)" for kind in workloads.LOW_BIT_WEIGHTS)
        + " | group32, group128 × per channel | int4 × F.linear | rel. error ("
        + ", ".join(workloads.LOW_BIT_WEIGHTS)
        + ") |",
        "|---" * (6 + len(workloads.LOW_BIT_WEIGHTS)) + "|",
    ]
    verdicts = []
    for row in rows:
        best_name, best = row.best_float
        kinds = " | ".join(
            f"{milliseconds(row.medians[kind])} ({times(row.medians[kind] / best)})"
            for kind in workloads.LOW_BIT_WEIGHTS
        )
        per_channel = row.medians["int8_per_channel"]
        groupwise = ", ".join(times(row.medians[kind] / per_channel) for kind in ("int8_group32", "int8_group128"))
        int4_over_linear = row.medians["int4_group128"] / row.medians[BASELINE]
        errors = " / ".join(f"{row.errors[kind]:.1e}" for kind in workloads.LOW_BIT_WEIGHTS)
        lines.append(
            f"| {row.tokens} | {milliseconds(row.medians[BASELINE])} | {milliseconds(row.medians[ONEDNN])} | {kinds} "
            f"| {groupwise} | {times(int4_over_linear)} | {errors} |"
        )
        if row.tokens <= 4:
            held = int4_over_linear <= INT4_FEW_TOKENS_MAX_RATIO
            verdicts.append(
                f"- int4, {row.tokens} tokens, ≤ {INT4_FEW_TOKENS_MAX_RATIO}× F.linear: "
                f"{'HOLDS' if held else 'MISSED'} ({times(int4_over_linear)})"
            )
        if row.tokens >= 64:
            ratio = row.medians["int4_group128"] / best
            held = ratio <= INT4_MANY_TOKENS_MAX_RATIO
            verdicts.append(
                f"- int4, {row.tokens} tokens, ≤ {INT4_MANY_TOKENS_MAX_RATIO}× the best fp32 GEMM "
                f"({best_name}): {'HOLDS' if held else 'MISSED'} ({times(ratio)})"
            )
        for kind, few_tokens_ratio in STORED_WEIGHT_FEW_TOKENS_MAX_RATIO.items():
            limit = few_tokens_ratio if row.tokens <= 8 else FP32_BEST_GEMM_TARGETS[0][1]
            ratio = row.medians[kind] / best
            verdicts.append(
                f"- {kind}, {row.tokens} tokens, ≤ {limit}× the best fp32 GEMM ({best_name}): "
                f"{'HOLDS' if ratio <= limit else 'MISSED'} ({times(ratio)})"
            )
        for kind in ("int8_group32", "int8_group128"):
            ratio = row.medians[kind] / per_channel
            held = ratio <= GROUPWISE_MAX_RATIO
            verdicts.append(
                f"- {kind}, {row.tokens} tokens, ≤ {GROUPWISE_MAX_RATIO}× int8 per channel: "
                f"{'HOLDS' if held else 'MISSED'} ({times(ratio)})"
            )
    return "\n".join(lines) + "\n\n" + "\n".join(verdicts)


def cpu_description() -> str:
    """CPU model and the instruction-set extensions that decide bf16 and int8 GEMM speed."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    present = " ".join(flag for flag in CPU_FLAGS_OF_INTEREST if flag in flags) or "none"
    absent = " ".join(flag for flag in CPU_FLAGS_OF_INTEREST if flag not in flags) or "none"
    return f"{model}, {os.cpu_count()} CPUs; has {present}; lacks {absent}"


def plot_ratios(rows: list[Row], path: str) -> None:
    """Backward time over F.linear per implementation, and the forward's requires_grad overhead."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    implementations = (NAIVE, *PRECISIONS)
    positions = range(len(rows))
    width = 0.8 / len(implementations)
    figure, (backward_axes, forward_axes) = plt.subplots(
        2, 1, figsize=(max(8.0, 1.3 * len(rows)), 8), sharex=True, height_ratios=(3, 1)
    )
    for index, name in enumerate(implementations):
        offset = (index - (len(implementations) - 1) / 2) * width
        backward_axes.bar([x + offset for x in positions], [row.ratio(name) for row in rows], width, label=name)
    backward_axes.set_yscale("log")
    plain_numbers = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    backward_axes.yaxis.set_major_formatter(plain_numbers)
    backward_axes.yaxis.set_minor_formatter(plain_numbers)
    backward_axes.axhline(1, color="black", linewidth=0.8)
    for (precision, (speedup, _)), style in zip(SPEEDUP_TARGETS.items(), ("--", ":")):
        label = f"{precision} target: {speedup:g}× faster"
        backward_axes.axhline(1 / speedup, linestyle=style, linewidth=1, color="gray", label=label)
    backward_axes.set_ylabel(f"backward time / {BASELINE}")
    backward_axes.legend(ncols=3, fontsize=8)

    forward_axes.bar(positions, [row.forward_overhead_microseconds for row in rows], 0.5, color="tab:gray")
    forward_axes.axhline(
        FORWARD_MAX_MICROSECONDS,
        linestyle="--",
        linewidth=1,
        color="gray",
        label=f"target: ≤ {FORWARD_MAX_MICROSECONDS:g} µs",
    )
    forward_axes.legend(fontsize=8, loc="upper right")
    forward_axes.set_ylabel("forward requires_grad\nµs over stock")
    forward_axes.set_xticks(list(positions), [f"{row.shape.label}\n{row.scheme}" for row in rows], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


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
        f"(qlgrad's kernels: {qlgrad.cpu_capability()})"
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
    print(markdown_table(rows))
    print("\nTargets on this run:")
    print(target_report(rows))
    if arguments.low_bit:
        print(f"\nLow-bit weights, 4096x4096, fp32 backward; best fp32 GEMM: the faster of {BASELINE} and {ONEDNN}:")
        low_bit_rows = [measure_low_bit(tokens, arguments.repeats) for tokens in workloads.LOW_BIT_TOKENS]
        print(low_bit_report(low_bit_rows), flush=True)
    if arguments.model_blocks:
        shape = dataclasses.replace(workloads.BERT_LARGE, blocks=arguments.model_blocks)
        print()
        print(model_report(measure_model(shape, arguments.repeats)), flush=True)
    if arguments.plot:
        plot_ratios(rows, arguments.plot)
        print(f"\nPlot written to {arguments.plot}")


if __name__ == "__main__":
    main()
