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

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import qlgrad
from qlgrad._deprecations import hide_upstream_deprecations

PRECISIONS = qlgrad.PRECISIONS
SCHEMES = ("per_tensor", "per_channel")
THREADS = 2  # the development and CI machines have 2 cores

# Weight values and biases within +-0.1, the range of an initialized float layer.
_VALUE_RANGE = 0.1


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
        Shape(4, 4096, 4096),  # a few sequences decoding side by side
        Shape(16, 4096, 4096),  # a small batch: between reading the weight and arithmetic
        Shape(32, 768, 768),  # a short sequence through a BERT-base attention projection
        Shape(256, 768, 3072),  # a BERT-base MLP up-projection
        Shape(2048, 768, 3072),  # the same for a long sequence
        Shape(256, 4096, 4096),  # a 7B-class projection over a batch of tokens
    )
}


# The shapes the asv suite takes as parameters: all of SHAPES, or those QLGRAD_ASV_SHAPES names
# (comma-separated labels). The test command's quick run, which checks that every benchmark runs,
# names one shape per kernel family (a stream, streams in passes, the panel GEMM's shared panels).
ASV_SHAPES = [label for label in os.environ.get("QLGRAD_ASV_SHAPES", ",".join(SHAPES)).split(",") if label]


def configure_torch() -> None:
    """Fix the thread count and silence the deprecation warnings quantized tensors emit."""
    torch.set_num_threads(THREADS)
    hide_upstream_deprecations()


def random_qint8_weight(
    out_features: int, in_features: int, scheme: str, generator: torch.Generator, value_range: float = _VALUE_RANGE
) -> torch.Tensor:
    """A symmetric qint8 weight ``[out, in]`` within ``value_range``, one scale per tensor or per output channel."""
    codes = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8, generator=generator)
    if scheme == "per_tensor":
        return torch._make_per_tensor_quantized_tensor(codes, value_range / 127, 0)
    if scheme == "per_channel":
        # Output channels of trained layers differ in spread; that is what per-channel scales are for.
        scales = value_range / 127 * (0.5 + torch.rand(out_features, generator=generator, dtype=torch.float64))
        zero_points = torch.zeros(out_features, dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(codes, scales, zero_points, 0)
    raise ValueError(f"unknown weight scheme {scheme!r}; expected one of {SCHEMES}")


class Workload:
    """One dynamic int8 Linear of ``shape`` and ``scheme``, an input and an output gradient."""

    def __init__(self, shape: Shape, scheme: str, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.shape = shape
        self.scheme = scheme
        self.layer = int8_linear(shape.in_features, shape.out_features, scheme, generator)
        self.qweight, self.bias = self.layer._weight_bias()
        self.input = torch.randn(shape.tokens, shape.in_features, generator=generator)
        self.grad_output = torch.randn(shape.tokens, shape.out_features, generator=generator)

    @property
    def weight_elements(self) -> int:
        return self.shape.out_features * self.shape.in_features

    def input_requiring_grad(self) -> torch.Tensor:
        return self.input.clone().requires_grad_()


def int8_linear(
    in_features: int, out_features: int, scheme: str, generator: torch.Generator, value_range: float = _VALUE_RANGE
):
    """A dynamic int8 ``Linear`` with random codes and a bias within ``value_range``; no float weight is made."""
    layer = torch.ao.nn.quantized.dynamic.Linear(in_features, out_features)
    weight = random_qint8_weight(out_features, in_features, scheme, generator, value_range)
    layer.set_weight_bias(weight, torch.empty(out_features).uniform_(-value_range, value_range, generator=generator))
    return layer


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


def onednn_product(lhs: torch.Tensor, weight: torch.Tensor, dense_output: bool = True):
    """``lhs @ weight`` through oneDNN's fp32 GEMM (torch's mkldnn linear, which takes the weight
    transposed and, like its inputs, in oneDNN's own tensors): the faster fp32 GEMM on CPUs where
    MKL takes its AVX2 path (AMD's). Its output a dense tensor, as a caller gets it, or (without
    ``dense_output``) left in oneDNN's tensor: the GEMM alone."""
    transposed = weight.t().contiguous().to_mkldnn()
    lhs = lhs.to_mkldnn()
    if dense_output:
        return lambda: torch._C._nn.mkldnn_linear(lhs, transposed, None).to_dense()
    return lambda: torch._C._nn.mkldnn_linear(lhs, transposed, None)


def onednn_linear_input_gradient(workload: Workload, dense_output: bool = True):
    """The baseline's product, ``grad_output @ W_deq``, through oneDNN."""
    return onednn_product(workload.grad_output, workload.qweight.dequantize(), dense_output)


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

    The first call in a process also unpacks the layer's weight into qlgrad's cache.
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


def bf16_copy_input_gradient(workload: Workload):
    """The bf16 backward as a bfloat16 copy of ``W_deq`` computes it (2 bytes per weight kept):
    what qlgrad's bf16 mode reads from int8 codes instead."""
    weight = workload.qweight.dequantize().bfloat16()
    return lambda: (workload.grad_output.bfloat16() @ weight).float()


def int8_gemm_input_gradient(workload: Workload):
    """The integer GEMM alone, ``torch._int_mm`` of an int8 gradient and the weight's codes: the limit
    of qlgrad's int8 mode, which adds quantizing the gradient's rows and rescaling the sums."""
    quantized = torch.randint(-127, 128, tuple(workload.grad_output.shape), dtype=torch.int8)
    codes = workload.qweight.int_repr().contiguous()
    return lambda: torch._int_mm(quantized, codes)


# ---- A whole model ------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """A stack of transformer-style blocks: four width x width attention projections and a
    width -> hidden -> width MLP each, with ``tokens`` rows of input."""

    blocks: int
    width: int
    hidden: int
    tokens: int

    @property
    def weight_elements(self) -> int:
        return self.blocks * (4 * self.width * self.width + 2 * self.width * self.hidden)


# BERT-large's linear layers (302M weights), 64 tokens.
BERT_LARGE = ModelShape(blocks=24, width=1024, hidden=4096, tokens=64)


class Block(nn.Module):
    """Single-head attention and an MLP, each on a residual path, from a factory of linear layers."""

    def __init__(self, shape: ModelShape, linear):
        super().__init__()
        self.query, self.key, self.value, self.output = (linear(shape.width, shape.width) for _ in range(4))
        self.up, self.down = linear(shape.width, shape.hidden), linear(shape.hidden, shape.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.query(x) @ self.key(x).transpose(-1, -2) / math.sqrt(x.shape[-1])
        x = x + self.output(torch.softmax(scores, dim=-1) @ self.value(x))
        return x + self.down(F.gelu(self.up(x)))


class ModelWorkload:
    """The int8 model (dynamic int8 layers made from random codes: no float copy exists), an
    input and an output gradient; ``float_model()`` builds the same model with float weights."""

    def __init__(self, shape: ModelShape, scheme: str = "per_channel", seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.shape = shape

        def linear(in_features, out_features):
            # Weights within +-1/sqrt(in), as nn.Linear initializes them, keep activations bounded.
            return int8_linear(in_features, out_features, scheme, generator, 1 / math.sqrt(in_features))

        self.int8_model = nn.Sequential(*(Block(shape, linear) for _ in range(shape.blocks))).eval()
        self.input = torch.randn(shape.tokens, shape.width, generator=generator)
        self.grad_output = torch.randn(shape.tokens, shape.width, generator=generator)

    @property
    def int8_weight_bytes(self) -> int:
        return self.shape.weight_elements

    def float_model(self) -> nn.Module:
        """The model with each layer's ``W_deq`` as a frozen float weight (4 bytes per element)."""

        def float_linear(layer):
            weight, bias = layer._weight_bias()
            linear = nn.Linear(layer.in_features, layer.out_features)
            linear.weight.data, linear.bias.data = weight.dequantize(), bias.detach().clone()
            return linear

        model = nn.Sequential()
        for int8_block in self.int8_model:
            block = Block(self.shape, lambda *_: None)
            for name in ("query", "key", "value", "output", "up", "down"):
                setattr(block, name, float_linear(getattr(int8_block, name)))
            model.append(block)
        return model.eval().requires_grad_(False)


def model_input_gradient(model: nn.Module, workload: ModelWorkload):
    """The input gradient through ``model``: forward once here, each call runs the backward."""
    x = workload.input.clone().requires_grad_()
    y = model(x)
    return lambda: torch.autograd.grad(y, x, workload.grad_output, retain_graph=True)[0]


# ---- Low-bit weights: group-wise int8 codes, torch's CPU int4 packing --------------------

# 4096x4096 projections at these token counts, for each low-bit weight.
LOW_BIT_TOKENS = (1, 16, 256)
# The bfloat16 gradients' rows: the ends of the few-token bound (1 and 8 tokens) and past it.
LOW_BIT_BFLOAT16_TOKENS = (1, 8, 16, 256)
LOW_BIT_WEIGHTS = ("int8_group32", "int8_group128", "int4_group128", "int8_per_channel", "fp16")


class LowBitWorkload:
    """A 4096x4096 weight as ``kind`` stores it, the same weight in float32, and an output gradient.

    ``int8_groupG``: int8 codes with a scale and zero point per group of G input features
    (torchao's ``IntxUnpackedToInt8Tensor``); ``int4_group128``: torch's CPU int4 packing with
    its scales and zeros (torchao's ``Int4OpaqueTensor``); ``int8_per_channel``: int8 codes with a
    scale per output channel, what the group-wise weights are compared with; ``fp16``: a float16
    weight packed as ``quantize_dynamic(..., dtype=torch.float16)`` packs it.
    """

    def __init__(self, tokens: int, kind: str, features: int = 4096, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.kind = kind
        self.grad_output = torch.randn(tokens, features, generator=generator)
        if kind.startswith("int4"):
            group_size = int(kind.removeprefix("int4_group"))
            codes = torch.randint(0, 16, (features, features), dtype=torch.int32, generator=generator)
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
            scales = _VALUE_RANGE / 8 * (0.5 + torch.rand(features // group_size, features, generator=generator))
            zeros = _VALUE_RANGE / 8 * torch.randn(features // group_size, features, generator=generator)
            self.group_size, self.scale_and_zeros = group_size, torch.stack([scales, zeros], -1).contiguous()
            # W[n, k] = (code - 8) * scale[k // group, n] + zero[k // group, n], from the codes themselves,
            # its rows contiguous as an nn.Linear's weight lies (the baselines' GEMMs on a transposed
            # weight take another, faster path at a few rows: 1.7 against 3.0 ms for 8 x 4096x4096
            # in bfloat16 on a Zen 4 EPYC).
            per_column = torch.arange(features) // group_size
            weight = torch.addcmul(zeros[per_column].t(), codes.float() - 8, scales[per_column].t())
            self.weight = weight.contiguous()
            return
        if kind == "fp16":
            self.weight = (_VALUE_RANGE * torch.randn(features, features, generator=generator)).half().float()
            self.packed = torch.ops.quantized.linear_prepack_fp16(self.weight, None)
            return
        groups = 1 if kind == "int8_per_channel" else features // int(kind.removeprefix("int8_group"))
        self.values = torch.randint(-127, 128, (features, features), dtype=torch.int8, generator=generator)
        self.scale = _VALUE_RANGE / 127 * (0.5 + torch.rand(features, groups, generator=generator))
        self.zero_point = torch.randint(-8, 8, (features, groups), generator=generator)
        if groups == 1:
            self.scale, self.zero_point = self.scale.reshape(-1), self.zero_point.reshape(-1)
        deviation = self.values.float().view(features, groups, -1) - self.zero_point.view(features, groups, 1)
        self.weight = (deviation * self.scale.view(features, groups, 1)).view(features, features)

    def qlgrad_input_gradient(self, precision: str = "fp32", dtype: torch.dtype = torch.float32):
        """qlgrad's backward from the stored weight, as the layers' autograd nodes call it, of an
        output gradient in ``dtype`` (bfloat16: a bfloat16 base's)."""
        grad_output = self.grad_output.to(dtype)
        if self.kind == "fp16":
            return lambda: qlgrad.linear_dynamic_fp16_backward(grad_output, self.packed, precision)
        if self.kind.startswith("int4"):
            return lambda: qlgrad.linear_int4pack_backward(
                grad_output, self.packed, self.group_size, self.scale_and_zeros, precision
            )
        return lambda: qlgrad.linear_int8_backward(grad_output, self.values, self.scale, self.zero_point, precision)

    def float_input_gradient(self):
        """The baseline, F.linear's input gradient with the float weight: grad_output @ W."""
        return lambda: self.grad_output @ self.weight

    def bfloat16_input_gradient(self):
        """The bfloat16 baseline, a bfloat16 base's input gradient: a bfloat16 output gradient times a
        bfloat16 copy of the weight (oneDNN's bfloat16 GEMM)."""
        grad_output, weight = self.grad_output.bfloat16(), self.weight.bfloat16()
        return lambda: grad_output @ weight

    def onednn_input_gradient(self):
        """The same product through oneDNN (torch's mkldnn linear), the faster fp32 GEMM on some CPUs."""
        return onednn_product(self.grad_output, self.weight)

    def reference(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The input gradient in float64 of the output gradient in ``dtype``."""
        return self.grad_output.to(dtype).double() @ self.weight.double()
