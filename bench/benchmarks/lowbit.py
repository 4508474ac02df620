"""Input-gradient time for low-bit weights read in place: int8 codes with group-wise scales
(torchao's IntxUnpackedToInt8Tensor) and torch's CPU int4 packing (torchao's Int4OpaqueTensor),
4096x4096, beside int8 per channel and the float baseline; and the same of a bfloat16 gradient
(a bfloat16 base's) in bf16, beside the bfloat16 GEMM."""

import functools

import torch

from . import workloads
from .workloads import LOW_BIT_TOKENS, LOW_BIT_WEIGHTS

workloads.configure_torch()


@functools.cache
def _warm(tokens: int, kind: str, operation: str):
    workload = workloads.LowBitWorkload(tokens, kind)
    run = {
        "float": workload.float_input_gradient,
        "qlgrad": workload.qlgrad_input_gradient,
        "bfloat16": workload.bfloat16_input_gradient,
        "qlgrad bfloat16": lambda: workload.qlgrad_input_gradient("bf16", torch.bfloat16),
    }[operation]()
    run()
    return run


class LowBitBackward:
    params = (list(LOW_BIT_TOKENS), list(LOW_BIT_WEIGHTS))
    param_names = ("tokens", "weight")
    operation = "qlgrad"

    def setup(self, tokens, weight):
        self.input_gradient = _warm(tokens, weight, self.operation)

    def time_input_gradient(self, tokens, weight):
        self.input_gradient()


class LowBitFloatBaseline:
    params = (list(LOW_BIT_TOKENS),)
    param_names = ("tokens",)
    operation = "float"

    def setup(self, tokens):
        self.input_gradient = _warm(tokens, "int8_per_channel", self.operation)

    def time_input_gradient(self, tokens):
        self.input_gradient()


class LowBitBfloat16Backward(LowBitBackward):
    operation = "qlgrad bfloat16"


class LowBitBfloat16Baseline(LowBitFloatBaseline):
    operation = "bfloat16"
