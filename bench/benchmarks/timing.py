"""Timing shared by ``bench/compare.py`` and ``bench/llm.py``: operations sampled interleaved,
the medians and spread of their samples, and how times and ratios are printed.

No asv benchmark is defined here (asv imports every module of this folder)."""

import gc
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

# Calls shorter than this are batched into one sample, so clock resolution and the
# Python loop do not dominate.
MIN_SAMPLE_SECONDS = 0.005


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


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    """The median of each operation's samples."""
    return {name: statistics.median(values) for name, values in samples.items()}


def relative_spread(values: list[float]) -> float:
    """Interquartile range over median; NaN for a single value."""
    if len(values) < 2:
        return math.nan
    lower, _, upper = statistics.quantiles(values, n=4)
    return (upper - lower) / statistics.median(values)


def milliseconds(seconds: float) -> str:
    """Milliseconds to about three significant digits, never in exponent notation."""
    ms = seconds * 1e3
    decimals = 0 if ms >= 100 else 1 if ms >= 10 else 2 if ms >= 1 else 3
    return f"{ms:.{decimals}f}"


def times(ratio: float) -> str:
    """A ratio, as ``0.93×``."""
    return f"{ratio:.0f}×" if ratio >= 100 else f"{ratio:.2f}×"


def percent(share: float | None) -> str:
    """A share in whole percent; a dash where it is unknown (None or NaN)."""
    return "–" if share is None or math.isnan(share) else f"{share:.0%}"
