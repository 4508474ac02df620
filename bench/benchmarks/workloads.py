"""Layers, inputs and measured operations shared by the asv suite and ``bench/compare.py``.

A workload is one dynamic int8 ``Linear`` of a given shape and weight scheme, with an
input and an output gradient. The operations built from it return zero-argument
callables, so the asv suite and the interleaved comparison time exactly the same code.

The int8 weight is drawn directly as integer codes, uniformly: no float copy of the
whole weight exists unless an operation makes one (the two baselines), so the
peak-memory benchmarks measure the training step rather than the layer's
construction, and a 4096x4096 layer is built in a fraction of a second. How the codes
are distributed changes neither the time of any operation nor the relative errors
measured: bf16 rounds each weight value relative to itself, and int8 quantizes the
gradient, not the weight.
"""

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import qlgrad

PRECISIONS = ("fp32", "bf16", "int8")
SCHEMES = ("per_tensor", "per_channel")
THREADS = 2  # the development and CI machines have 2 cores

# Weight values and biases within +-0.1, the range of an initialized float layer.
_VALUE_RANGE = 0.1
_WEIGHT_SCALE = _VALUE_RANGE / 127


@dataclass(frozen=True)
class Shape:
    """``tokens`` rows of ``in_features`` through a layer with ``out_features`` outputs."""

    tokens: int
    in_features: int
    out_features: int

    @property
    def label(self) -> str:
        """``tokens x in x out``, the name used on command lines and in asv parameters."""
        return f"{self.tokens}x{self.in_features}x{self.out_features}"


SHAPES = {
    shape.label: shape
    for shape in (
        Shape(1, 4096, 4096),  # one decoding step of a 7B-class projection
        Shape(32, 768, 768),  # a short sequence through a BERT-base attention projection
        Shape(256, 768, 3072),  # a BERT-base MLP up-projection
        Shape(2048, 768, 3072),  # the same for a long sequence
        Shape(256, 4096, 4096),  # a 7B-class projection over a batch of tokens
    )
}


def configure_torch() -> None:
    """Fix the thread count and silence the deprecation warnings quantized tensors emit."""
    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
    warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")


def random_qint8_weight(out_features: int, in_features: int, scheme: str, generator: torch.Generator) -> torch.Tensor:
    """A symmetric qint8 weight ``[out, in]``, one scale for the tensor or one per output channel."""
    codes = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8, generator=generator)
    if scheme == "per_tensor":
        return torch._make_per_tensor_quantized_tensor(codes, _WEIGHT_SCALE, 0)
    if scheme == "per_channel":
        # Output channels of trained layers differ in spread; that is what per-channel scales are for.
        scales = _WEIGHT_SCALE * (0.5 + torch.rand(out_features, generator=generator, dtype=torch.float64))
        zero_points = torch.zeros(out_features, dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(codes, scales, zero_points, 0)
    raise ValueError(f"unknown weight scheme {scheme!r}; expected one of {SCHEMES}")


class Workload:
    """One dynamic int8 Linear of ``shape`` and ``scheme``, an input and an output gradient."""

    def __init__(self, shape: Shape, scheme: str, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.shape = shape
        self.scheme = scheme
        self.qweight = random_qint8_weight(shape.out_features, shape.in_features, scheme, generator)
        self.bias = torch.empty(shape.out_features).uniform_(-_VALUE_RANGE, _VALUE_RANGE, generator=generator)
        self.input = torch.randn(shape.tokens, shape.in_features, generator=generator)
        self.grad_output = torch.randn(shape.tokens, shape.out_features, generator=generator)
        self.layer = torch.ao.nn.quantized.dynamic.Linear(shape.in_features, shape.out_features)
        self.layer.set_weight_bias(self.qweight, self.bias)

    @property
    def weight_elements(self) -> int:
        return self.shape.out_features * self.shape.in_features

    def input_requiring_grad(self) -> torch.Tensor:
        return self.input.clone().requires_grad_()


def qlgrad_input_gradient(workload: Workload, precision: str):
    """Backward of the int8 layer in ``precision``: ``grad_output @ W_deq`` from qlgrad's kernel.

    The forward runs once, here, under ``precision`` (the node records it); each call of
    the returned function runs only the backward, through the autograd engine.
    """
    x = workload.input_requiring_grad()
    with qlgrad.backward_precision(precision):
        y = workload.layer(x)
    return lambda: torch.autograd.grad(y, x, workload.grad_output, retain_graph=True)[0]


def float_linear_input_gradient(workload: Workload):
    """The baseline: backward of ``F.linear`` with the float weight ``W_deq``, which needs no grad."""
    weight = workload.qweight.dequantize()
    x = workload.input_requiring_grad()
    y = F.linear(x, weight, workload.bias)
    return lambda: torch.autograd.grad(y, x, workload.grad_output, retain_graph=True)[0]


class _UnpackOnEveryBackward(torch.autograd.Function):
    """The straight-through estimator as written without qlgrad: each backward unpacks and dequantizes."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return layer(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output @ ctx.layer.weight().dequantize(), None


def naive_input_gradient(workload: Workload):
    """The naive baseline: per-call ``unpack()``, dequantize and matmul in a Python autograd Function."""
    x = workload.input_requiring_grad()
    y = _UnpackOnEveryBackward.apply(x, workload.layer)
    return lambda: torch.autograd.grad(y, x, workload.grad_output, retain_graph=True)[0]


FORWARD_MODES = ("input_requires_grad", "constant_input", "no_grad")


def int8_forward(workload: Workload, mode: str):
    """The int8 layer's forward. ``mode``: the input requires grad (qlgrad records a node),
    it does not (grad mode on, nothing recorded), or ``no_grad`` (the stock path)."""
    layer = workload.layer
    if mode == "input_requires_grad":
        x = workload.input_requiring_grad()
        return lambda: layer(x)
    if mode == "constant_input":
        return lambda: layer(workload.input)
    if mode == "no_grad":

        def forward_without_grad():
            with torch.no_grad():
                return layer(workload.input)

        return forward_without_grad
    raise ValueError(f"unknown forward mode {mode!r}; expected one of {FORWARD_MODES}")


def training_step(workload: Workload, precision: str):
    """Forward and backward through the int8 layer in ``precision``, from a fresh input each call.

    The first call in a process also derives the layer's backward weight into qlgrad's cache.
    """

    def step():
        x = workload.input_requiring_grad()
        with qlgrad.backward_precision(precision):
            workload.layer(x).backward(workload.grad_output)
        return x.grad

    return step


def cache_bytes_per_weight_element(workload: Workload) -> float:
    """Bytes qlgrad's cache holds for the layer (one entry, read by every precision), per weight
    element. Empties the cache."""
    qlgrad.clear_cache()
    qlgrad.prepare(workload.layer)
    cached = qlgrad.cache_info().bytes
    qlgrad.clear_cache()
    return cached / workload.weight_elements


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """``||result - reference|| / ||reference||``, in float64."""
    reference = reference.double()
    return ((result.double() - reference).norm() / reference.norm()).item()
