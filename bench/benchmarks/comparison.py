"""What ``bench/compare.py`` measures, as rows: one layer's operations, the low-bit weights'
backwards, a whole model's backward, and the ratios read from them. No asv benchmark is defined
here (asv imports every module of this folder)."""

import math
from dataclasses import dataclass, field

from .workloads import ModelShape, Shape

# The operations timed on each layer, beside qlgrad's backward in each precision.
BASELINE = "F.linear"
ONEDNN = "oneDNN"  # the CPU's other fp32 GEMM: the best fp32 GEMM is the faster of the two
# oneDNN's product on its own tensors, its output left in oneDNN's layout: the GEMM alone, which a
# caller given a dense tensor does not get (ONEDNN copies the output into one).
ONEDNN_OWN = "oneDNN own tensors"
NAIVE = "naive"
FORWARD_STOCK = "forward stock"
FORWARD_REQUIRES_GRAD = "forward requires_grad"
BF16_COPY = "bf16 copy"
INT8_GEMM = "int8 GEMM"  # torch._int_mm on an int8 gradient and the codes


def cold(precision: str) -> str:
    """Name of the first backward in ``precision`` after qlgrad's cache was emptied."""
    return f"cold {precision}"


@dataclass
class Row:
    """Everything measured for one shape and weight scheme."""

    shape: Shape
    scheme: str
    seconds: dict[str, float]  # median per operation name
    spread: float  # the largest relative spread of any operation's samples
    cpu_wait: float | None  # share of the timing during which some task waited for a CPU; None where unknown
    errors: dict[str, float] = field(default_factory=dict)  # per precision, against F.linear
    cache_bytes_per_element: float = math.nan  # one entry, whatever the precision

    def ratio(self, name: str, over: str = BASELINE) -> float:
        """Time of ``name`` over ``over``'s (the F.linear baseline's unless named)."""
        return self.seconds[name] / self.seconds[over]

    @property
    def best_gemm(self) -> str:
        """The faster fp32 GEMM of the CPU on this product: F.linear's (MKL) or oneDNN's."""
        return min((BASELINE, ONEDNN), key=lambda name: self.seconds[name])

    @property
    def forward_overhead_microseconds(self) -> float:
        """What recording the autograd node adds to the stock forward."""
        return (self.seconds[FORWARD_REQUIRES_GRAD] - self.seconds[FORWARD_STOCK]) * 1e6


@dataclass
class ModelRow:
    """The whole model: backward times interleaved, and what the int8 model's cache costs."""

    shape: ModelShape
    seconds: dict[str, float]  # "float", "int8": median backward
    cache_bytes: int  # qlgrad's cache after one backward, default limit
    resident_growth: int  # the process's resident memory grown by that backward
    hit_rate: float  # of the timed backwards; NaN where no weight went through the cache (read in place)

    @property
    def ratio(self) -> float:
        return self.seconds["int8"] / self.seconds["float"]

    def per_int8_byte(self, nbytes: int) -> float:
        return nbytes / self.shape.weight_elements


@dataclass
class LowBitRow:
    """Every low-bit weight's fp32 backward at 4096x4096 and one token count, beside both fp32 GEMMs."""

    tokens: int
    medians: dict[str, float]  # operation -> seconds
    errors: dict[str, float]  # low-bit weight -> relative error against float64

    @property
    def best_float(self) -> tuple[str, float]:
        """The faster fp32 GEMM of this CPU on the same product, and its time."""
        return min(((name, self.medians[name]) for name in (BASELINE, ONEDNN)), key=lambda item: item[1])
