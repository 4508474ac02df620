"""Input gradients through torchao's int8 dynamic-activation linear layers (quantize_ with
Int8DynamicActivationInt8WeightConfig), against a float64 straight-through reference."""

import contextlib
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
import torchao
from torchao.quantization import (
    Int8DynamicActivationInt8WeightConfig,
    Int8Tensor,
    Int8WeightOnlyConfig,
    MappingType,
    PerRow,
    PerTensor,
    quantize_,
)
from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs

import qlgrad
from helpers import ERROR_BOUNDS, choosing, cosine, mismatches_in_threads, outputs_and_calls, relative_error
from qlgrad import _torchao

GRANULARITIES = {"per_row": PerRow(), "per_tensor": PerTensor()}
ACTIVATION_MAPPINGS = {"symmetric": MappingType.SYMMETRIC, "asymmetric": MappingType.ASYMMETRIC}
# torchao's forward refuses empty batches and float64 inputs, so neither is tried here.
LEADING_DIMS = ((1,), (5,), (2, 3), (2, 1, 3))
# quantize_ would otherwise change torch._inductor.config for the rest of the test session.
KEEP_INDUCTOR_CONFIG = {"set_inductor_config": False}
# Relative error (in norm) of an input gradient in each dtype against the float64 reference.
DTYPE_ERROR_BOUNDS = {torch.float32: ERROR_BOUNDS["fp32"], torch.bfloat16: 1e-2}


def stock_linear_handler():
    """torchao's own F.linear handler for Int8Tensor, which qlgrad's wraps."""
    return _torchao.stock_linear_handler(Int8Tensor)


def torchaos_output(layer, x):
    """The layer's output as torchao's own handler gives it."""
    return stock_linear_handler()(F.linear, (), (x, layer.weight, layer.bias), {})


def quantized_linear(
    in_features, out_features, granularity="per_row", activation="symmetric", bias=True, dtype=torch.float32
):
    """An nn.Linear after quantize_ with Int8DynamicActivationInt8WeightConfig."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
    config = Int8DynamicActivationInt8WeightConfig(
        granularity=GRANULARITIES[granularity], act_mapping_type=ACTIVATION_MAPPINGS[activation], **KEEP_INDUCTOR_CONFIG
    )
    quantize_(layer, config)
    return layer


def dequantized_weight_float64(weight: Int8Tensor) -> torch.Tensor:
    """scale * W_int8 in float64, from the int8 values and scales: the reference weight."""
    return weight.qdata.double() * weight.scale.double().reshape(-1, 1)


def reference_input_gradient(grad_output: torch.Tensor, weight: Int8Tensor) -> torch.Tensor:
    """grad_output @ W_deq in float64, times the activation pre-scale where the weight has one."""
    grad_input = grad_output.double() @ dequantized_weight_float64(weight)
    if weight.act_pre_scale is not None:
        grad_input = grad_input * weight.act_pre_scale.double()
    return grad_input


class _ReferenceLinear(torch.autograd.Function):
    """torchao's forward; the straight-through input gradient computed in float64 in Python."""

    @staticmethod
    def forward(ctx, input, layer):
        ctx.weight = layer.weight
        return stock_linear_handler()(F.linear, (), (input, layer.weight, layer.bias), {})

    @staticmethod
    def backward(ctx, grad_output):
        return reference_input_gradient(grad_output, ctx.weight).to(grad_output.dtype), None


@contextlib.contextmanager
def reference_linears(model: torch.nn.Module):
    """Every torchao int8 Linear of model runs _ReferenceLinear inside the with block."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and isinstance(m.weight, Int8Tensor)]
    for layer in layers:
        layer.forward = lambda input, layer=layer: _ReferenceLinear.apply(input, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward


def input_gradient(model, x, grad_output):
    x = x.detach().clone().requires_grad_()
    model(x).backward(grad_output)
    return x.grad


def test_handler_is_in_int8_tensors_torch_function_table():
    handler = Int8Tensor._TORCH_FN_TABLE[Int8Tensor][F.linear]
    assert getattr(handler, "qlgrad_input_gradient", False)
    assert not getattr(stock_linear_handler(), "qlgrad_input_gradient", False)
    # torchao's registration wrapper around qlgrad's handler, which wraps torchao's.
    assert handler.__wrapped__.__wrapped__ is stock_linear_handler()
    assert torchao.__version__.split("+")[0] in _torchao.SUPPORTED_TORCHAO_VERSIONS


@pytest.mark.parametrize("leading", LEADING_DIMS, ids=str)
@pytest.mark.parametrize("activation", ACTIVATION_MAPPINGS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("dtype", DTYPE_ERROR_BOUNDS, ids=str)
def test_input_gradient_is_straight_through(dtype, granularity, activation, leading):
    layer = quantized_linear(24, 16, granularity, activation, dtype=dtype)
    x = torch.randn(*leading, 24, dtype=dtype)
    grad_output = torch.randn(*leading, 16, dtype=dtype)
    stock_output = torchaos_output(layer, x)
    values, scale = layer.weight.qdata.clone(), layer.weight.scale.clone()

    x.requires_grad_()
    output = layer(x)
    output.backward(grad_output)

    assert torch.equal(output, stock_output) and output.dtype == stock_output.dtype
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    expected = reference_input_gradient(grad_output, layer.weight)
    assert relative_error(x.grad, expected) <= DTYPE_ERROR_BOUNDS[dtype]
    # The weight, its int8 values and scales get no gradient and are left as they were.
    assert not layer.weight.requires_grad and layer.weight.grad is None
    assert layer.weight.qdata.grad is None and layer.weight.scale.grad is None
    assert torch.equal(layer.weight.qdata, values) and torch.equal(layer.weight.scale, scale)


@pytest.mark.parametrize("dtype", DTYPE_ERROR_BOUNDS, ids=str)
def test_bias_gradient_is_torchaos_own(dtype):
    # torchao's forward adds the float bias under autograd: its gradient stays the one torchao gives.
    layer = quantized_linear(24, 16, dtype=dtype)
    x = torch.randn(2, 3, 24, dtype=dtype)
    grad_output = torch.randn(2, 3, 16, dtype=dtype)
    layer(x).backward(grad_output)
    stock_bias_gradient = layer.bias.grad
    layer.bias.grad = None

    layer(x.requires_grad_()).backward(grad_output)

    assert torch.equal(layer.bias.grad, stock_bias_gradient) and layer.bias.grad.dtype == layer.bias.dtype


def test_frozen_bias_and_no_bias():
    for layer in (quantized_linear(24, 16, bias=False), quantized_linear(24, 16).requires_grad_(False)):
        x = torch.randn(4, 24, requires_grad=True)
        grad_output = torch.randn(4, 16)
        layer(x).backward(grad_output)
        assert relative_error(x.grad, reference_input_gradient(grad_output, layer.weight)) <= ERROR_BOUNDS["fp32"]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("activation", ACTIVATION_MAPPINGS)
@pytest.mark.parametrize("dtype", DTYPE_ERROR_BOUNDS, ids=str)
def test_training_forward_is_torchaos_bit_for_bit(dtype, activation, granularity, bias):
    """Where the input requires grad the integer product is qlgrad's, and with symmetric
    activations its rescaling (one pass rounding as torchao's steps do): torchao's output
    exactly, at row counts that reach each way the int8 panel GEMM divides its work (by columns
    below 256 rows, shared panels from 256), a depth of several blocks and a partial last panel."""
    layer = quantized_linear(1100, 80, granularity, activation, bias=bias, dtype=dtype)
    for rows in (1, 13, 255, 256, 300):
        x = torch.randn(rows, 1100, dtype=dtype)
        stock_output = torchaos_output(layer, x)
        with torch.no_grad():  # the same forward serves inputs without grad
            assert torch.equal(layer(x), stock_output), rows
        assert torch.equal(layer(x.requires_grad_()), stock_output), rows


def test_inputs_without_grad_take_the_training_forward():
    layer = quantized_linear(64, 48).requires_grad_(False)
    x = torch.randn(300, 64)
    with torch.autograd.profiler.profile() as profile:
        output = layer(x)
    assert torch.equal(output, torchaos_output(layer, x)) and output.grad_fn is None
    assert "qlgrad::_int8_linear_rescaled" in {event.key for event in profile.key_averages()}
    # A bias that requires grad gets it from torchao's own forward.
    layer.bias.requires_grad_()
    assert layer(x).grad_fn is not None


def test_projections_of_one_input_quantize_it_once():
    """A decoder's query, key and value projections take one activation: it is quantized once for
    the three (each output still torchao's), again once it has been written to, and what is kept
    of it goes with it."""
    layers = [quantized_linear(64, width, bias=False, dtype=torch.bfloat16) for width in (48, 16, 16)]

    def quantizing(layers, x):
        return outputs_and_calls(layers, x, "qlgrad::_int8_quantize_rows")

    def check():
        x = torch.randn(20, 64, dtype=torch.bfloat16, requires_grad=True)
        outputs, quantizations = quantizing(layers, x)
        assert quantizations == 1
        for layer, output in zip(layers, outputs):
            assert torch.equal(output, torchaos_output(layer, x))
        kept_for_x = _torchao._last_activation.entry
        with torch.no_grad():
            y = x.detach().clone()
            assert quantizing(layers[:1], y)[1] == 1
            assert kept_for_x.result is None  # y's took its place
            y.mul_(3)
            (output,), quantizations = quantizing(layers[1:2], y)
        assert quantizations == 1 and torch.equal(output, torchaos_output(layers[1], y))

    check()
    assert _torchao._last_activation.entry.result is None


def test_integer_product_is_torchs():
    """torch.ops.qlgrad._int8_linear is torch._int_mm(input, weight.t()), exactly, with codes at
    both ends of the int8 range, in one block of depth and in several (past 4096 on AMX tiles;
    with AVX512-VNNI past 512, and from 256 rows, whose panels the threads share, past 4096)."""
    generator = torch.Generator().manual_seed(0)
    for rows, depth, columns in (
        (1, 64, 32),
        (17, 1100, 80),
        (300, 2048, 48),
        (300, 4200, 48),
        (5, 3, 7),
        (40, 67, 33),
        (13, 130, 40),
        (9, 4200, 40),
    ):
        input = torch.randint(-128, 128, (rows, depth), dtype=torch.int8, generator=generator)
        weight = torch.randint(-128, 128, (columns, depth), dtype=torch.int8, generator=generator)
        input[0], weight[0] = -128, 127
        expected = input.int() @ weight.int().t()
        assert torch.equal(torch.ops.qlgrad._int8_linear(input, weight), expected)


@pytest.mark.parametrize(
    "row_dtype, scale_dtype, bias_dtype, dtype", list(itertools.product([torch.float32, torch.bfloat16], repeat=4))
)
# 37 rows run the panel GEMM; 16 and 30 the weight's rows as the broadcast operand, by 16 and 32
# columns of x's panel.
@pytest.mark.parametrize("rows", [37, 16, 30])
def test_rescaled_integer_product_rounds_as_each_step_does(row_dtype, scale_dtype, bias_dtype, dtype, rows):
    """torch.ops.qlgrad._int8_linear_rescaled is torchao's rescaling, one operation at a time, bit
    for bit, whatever the dtypes of its parameters (torchao's scales are float32 on a bfloat16
    base): rows and columns that leave partial vectors, sums large enough that their conversion
    rounds, a NaN scale, and float32 NaNs whose low bits a rounding by carry would turn into a
    number (left as they were in the caller's tensors)."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randint(-128, 128, (rows, 600), dtype=torch.int8, generator=generator)
    weight = torch.randint(-128, 128, (45, 600), dtype=torch.int8, generator=generator)
    row_scale = (torch.rand(rows, generator=generator) * 0.02).to(row_dtype)
    row_scale[3] = float("nan")
    weight_scale = (torch.rand(45, generator=generator) * 0.02).to(scale_dtype)
    bias = torch.randn(45, generator=generator).to(bias_dtype)
    payload_nan = torch.tensor(0x7FFFFFFF, dtype=torch.int32).view(torch.float32)
    for parameter, index in ((row_scale, 5), (weight_scale, 6), (bias, 7)):
        if parameter.dtype == torch.float32:
            parameter[index] = payload_nan
    given = [parameter.clone() for parameter in (row_scale, weight_scale, bias)]
    sums = input.int() @ weight.int().t()
    for with_bias in (bias, None):
        expected = (sums.to(row_dtype) * row_scale[:, None]).to(dtype) * weight_scale
        if with_bias is not None:
            expected += with_bias
        expected = expected.to(dtype)
        got = torch.ops.qlgrad._int8_linear_rescaled(input, weight, row_scale, weight_scale, with_bias, dtype)
        assert got.dtype == dtype and torch.equal(got.isnan(), expected.isnan())
        assert torch.equal(got.nan_to_num(), expected.nan_to_num())
    for parameter, before in zip((row_scale, weight_scale, bias), given, strict=True):
        assert torch.equal(
            parameter.view(torch.int16 if parameter.dtype == torch.bfloat16 else torch.int32),
            before.view(torch.int16 if before.dtype == torch.bfloat16 else torch.int32),
        )


@pytest.mark.parametrize("rows", [12, 28, 32])
def test_rescaled_integer_product_over_many_weight_rows(rows):
    """The weight's rows in blocks, several a thread, by the few rows that take them as the
    kernel's broadcast operand: the same as torchao's steps, bit for bit."""
    generator = torch.Generator().manual_seed(1)
    input = torch.randint(-128, 128, (rows, 132), dtype=torch.int8, generator=generator)
    weight = torch.randint(-128, 128, (1003, 132), dtype=torch.int8, generator=generator)
    row_scale, weight_scale = torch.rand(rows, generator=generator) * 0.02, torch.rand(1003, generator=generator)
    bias = torch.randn(1003, generator=generator)
    expected = ((input.int() @ weight.int().t()).float() * row_scale[:, None]).bfloat16() * weight_scale + bias
    got = torch.ops.qlgrad._int8_linear_rescaled(input, weight, row_scale, weight_scale, bias, torch.bfloat16)
    assert torch.equal(got, expected.bfloat16())


def test_rescaled_integer_product_takes_the_scales_as_torchao_keeps_them():
    """Scales [M, 1] and [N, 1] (torchao's per-row activations and weights), or one value [1, 1] (a
    tensor's), give what the same values as vectors [M] and [N] give."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randint(-128, 128, (7, 48), dtype=torch.int8, generator=generator)
    weight = torch.randint(-128, 128, (20, 48), dtype=torch.int8, generator=generator)
    row_scale, weight_scale = torch.rand(7, generator=generator), torch.rand(20, generator=generator).bfloat16()
    for rows, columns in ((row_scale, weight_scale), (row_scale[:1], weight_scale[:1])):
        expected = torch.ops.qlgrad._int8_linear_rescaled(
            input, weight, rows.expand(7), columns.expand(20), None, torch.bfloat16
        )
        for row_shape, column_shape in (((-1, 1), (-1, 1)), ((1, -1), (-1,)), ((-1,), (1, -1))):
            got = torch.ops.qlgrad._int8_linear_rescaled(
                input, weight, rows.reshape(row_shape), columns.reshape(column_shape), None, torch.bfloat16
            )
            assert torch.equal(got, expected)


def test_rescaled_integer_product_names_every_bad_argument():
    input, weight = torch.zeros(3, 8, dtype=torch.int8), torch.zeros(4, 8, dtype=torch.int8)
    scales = torch.ones(3), torch.ones(4)
    cases = [
        ((input.float(), weight, *scales, None, torch.float), TypeError, "input must be an int8 tensor"),
        ((input, weight[:, :5], *scales, None, torch.float), ValueError, "must share K"),
        ((input, weight, *scales, None, torch.half), TypeError, "dtype must be float32 or bfloat16"),
        ((input, weight, scales[0].half(), scales[1], None, torch.float), TypeError, "row_scale must be a float32"),
        (
            (input, weight, scales[0], scales[1].double(), None, torch.float),
            TypeError,
            "weight_scale must be a float32",
        ),
        (
            (input, weight, scales[0][:2], scales[1], None, torch.float),
            ValueError,
            r"row_scale must hold 3 values or one \(at most 2-D\), got shape \[2\]",
        ),
        (
            (input, weight, scales[0], scales[1].reshape(1, 4, 1), None, torch.float),
            ValueError,
            r"weight_scale must hold 4 values or one \(at most 2-D\), got shape \[1, 4, 1\]",
        ),
        ((input, weight, *scales, torch.ones(5), torch.float), ValueError, r"bias must be \[4\]"),
    ]
    for arguments, error, message in cases:
        with pytest.raises(error, match=message):
            torch.ops.qlgrad._int8_linear_rescaled(*arguments)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("magnitude", [1e-30, 1e-6, 1.0, 1e30])
def test_activation_quantization_is_torchaos(dtype, magnitude):
    """torch.ops.qlgrad._int8_quantize_rows is torchao's symmetric per-row int8 quantization, bit for
    bit: its scales (rounded to the activation's dtype, then clamped at float32's epsilon, which
    all-zero rows and tiny ones reach) and its codes (rounded half to even), on rows that leave
    partial vectors; rows with a NaN or an infinity as torch's steps make them on x86 CPUs."""
    from torchao.quantization.granularity import PerRow
    from torchao.quantization.quantize_.workflows import Int8Tensor

    generator = torch.Generator().manual_seed(0)
    input = (torch.randn(37, 301, generator=generator) * magnitude).to(dtype)
    input[1] = 0
    input[2, :5] = torch.tensor([2.5, -2.5, 0.5, -0.5, 1.5]) * input[2].abs().max() / 127.5
    expected = Int8Tensor.from_hp(input, PerRow())
    codes, scale = torch.ops.qlgrad._int8_quantize_rows(input)
    assert torch.equal(codes, expected.qdata) and torch.equal(scale, expected.scale)
    input[3, 7], input[4, 0], input[5, 9], input[5, 10] = float("nan"), float("-inf"), float("inf"), float("nan")
    expected = Int8Tensor.from_hp(input, PerRow())
    codes, scale = torch.ops.qlgrad._int8_quantize_rows(input)
    assert torch.equal(codes, expected.qdata)
    torch.testing.assert_close(scale, expected.scale, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_forward_of_non_finite_activations_is_torchaos(dtype):
    # Rows that hold a NaN or an infinity, of a 3-D input (a row per token).
    layer = quantized_linear(48, 16, dtype=dtype)
    input = torch.randn(4, 6, 48, dtype=dtype)
    input[1, 2, 3], input[2, 0, 0] = float("nan"), float("inf")
    expected = torchaos_output(layer, input)
    got = layer(input.requires_grad_())
    assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.nan_to_num(), expected.nan_to_num())


def test_activation_quantization_names_every_bad_argument():
    with pytest.raises(TypeError, match="input must be a float32 or bfloat16 tensor"):
        torch.ops.qlgrad._int8_quantize_rows(torch.zeros(3, 8, dtype=torch.half))
    with pytest.raises(ValueError, match="input must be 2-D"):
        torch.ops.qlgrad._int8_quantize_rows(torch.zeros(2, 3, 8))


def test_activation_pre_scale_is_differentiated():
    # SmoothQuant and AWQ put a per-feature scale on the weight that the forward multiplies the input by.
    torch.manual_seed(0)
    pre_scale = torch.rand(24) + 0.5
    weight = Int8Tensor.from_hp(
        torch.randn(16, 24),
        PerRow(),
        act_quant_kwargs=QuantizeTensorToInt8Kwargs(granularity=PerRow()),
        act_pre_scale=pre_scale,
    )
    x = torch.randn(5, 24)
    grad_output = torch.randn(5, 16)
    stock_output = F.linear(x, weight)

    output = F.linear(x.requires_grad_(), weight)
    output.backward(grad_output)

    assert torch.equal(output, stock_output)
    expected = reference_input_gradient(grad_output, weight)
    assert relative_error(x.grad, expected) <= ERROR_BOUNDS["fp32"]
    assert relative_error(x.grad, grad_output.double() @ dequantized_weight_float64(weight)) > 0.01


@pytest.mark.parametrize("precision", ERROR_BOUNDS)
def test_precision_in_effect_at_forward_is_used(precision):
    layer = quantized_linear(64, 48)
    x = torch.randn(8, 64, requires_grad=True)
    grad_output = torch.randn(8, 48)
    with qlgrad.backward_precision(precision):
        output = layer(x)
    other = "fp32" if precision != "fp32" else "int8"
    with qlgrad.backward_precision(other):
        output.backward(grad_output)
    weight = layer.weight
    expected_exactly = qlgrad.linear_int8_backward(grad_output, weight.qdata, weight.scale.reshape(-1), None, precision)
    assert torch.equal(x.grad, expected_exactly)
    assert relative_error(x.grad, reference_input_gradient(grad_output, layer.weight)) <= ERROR_BOUNDS[precision]


@pytest.mark.parametrize("chosen", [None, *ERROR_BOUNDS])
def test_bfloat16_layers_follow_the_gradients_dtype_unless_a_precision_is_chosen(chosen):
    """Nothing chosen at forward: a bfloat16 gradient runs bf16; a choice holds for it too, fp32's
    exact product included. The choice at forward decides, not the one when backward runs."""
    layer = quantized_linear(64, 48, dtype=torch.bfloat16)
    # More rows than the streams (float32 in every precision) take.
    x = torch.randn(64, 64, dtype=torch.bfloat16, requires_grad=True)
    grad_output = torch.randn(64, 48, dtype=torch.bfloat16)
    with choosing(chosen):
        output = layer(x)
    with qlgrad.backward_precision("int8" if chosen != "int8" else "fp32"):
        output.backward(grad_output)
    weight = layer.weight

    def gradient(precision):
        return qlgrad.linear_int8_backward(grad_output, weight.qdata, weight.scale.reshape(-1), None, precision)

    assert x.grad.dtype == torch.bfloat16
    assert torch.equal(x.grad, gradient(chosen or "bf16"))
    if chosen is None:
        assert not torch.equal(x.grad, gradient("fp32"))
    expected = reference_input_gradient(grad_output, weight)
    assert relative_error(x.grad, expected) <= max(ERROR_BOUNDS[chosen or "bf16"], DTYPE_ERROR_BOUNDS[torch.bfloat16])


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_gradcheck_of_the_backward_on_torchaos_weight(granularity):
    # The forward is piecewise constant in the input (and torchao refuses float64 inputs), so
    # gradcheck applies to the backward: grad_output -> grad_input on torchao's int8 values and scales.
    weight = quantized_linear(12, 8, granularity).weight
    grad_output = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)

    def backward(grad_output):
        return qlgrad.linear_int8_backward(grad_output, weight.qdata, weight.scale.reshape(-1))

    assert torch.autograd.gradcheck(backward, (grad_output,))
    assert torch.autograd.gradgradcheck(backward, (grad_output,))


def test_double_backward_through_the_layer():
    layer = quantized_linear(24, 16)
    x = torch.randn(4, 24, requires_grad=True)
    grad_output = torch.randn(4, 16, requires_grad=True)
    (grad_input,) = torch.autograd.grad(layer(x), x, grad_output, create_graph=True)
    vector = torch.randn(4, 24)
    (grad_grad_output,) = torch.autograd.grad(grad_input, grad_output, vector)
    expected = vector.double() @ dequantized_weight_float64(layer.weight).T  # the exact adjoint
    assert relative_error(grad_grad_output, expected) <= ERROR_BOUNDS["fp32"]


@pytest.mark.parametrize("dtype", DTYPE_ERROR_BOUNDS, ids=str)
def test_torch_compile_gives_the_eager_gradient(dtype):
    # aot_eager traces torchao's handler and qlgrad's autograd Function as inductor does,
    # without compiling C++. More rows than the streams (float32 in every precision) take:
    # bfloat16 gradients run bf16's own kernel.
    layer = quantized_linear(24, 16, dtype=dtype)
    x = torch.randn(64, 24, dtype=dtype)
    grad_output = torch.randn(64, 16, dtype=dtype)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    assert torch.equal(input_gradient(compiled, x, grad_output), input_gradient(layer, x, grad_output))


def test_nothing_recorded_without_input_gradient():
    layer = quantized_linear(24, 16).requires_grad_(False)
    x = torch.randn(4, 24, requires_grad=True)
    with torch.no_grad():
        assert layer(x).grad_fn is None
    assert layer(x.detach()).grad_fn is None


def test_weight_only_config_left_to_torchao():
    # Without activation quantization torchao's forward is a float matmul autograd differentiates.
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 16)
    quantize_(layer, Int8WeightOnlyConfig(**KEEP_INDUCTOR_CONFIG))
    x = torch.randn(4, 24, requires_grad=True)
    output = layer(x)
    assert not isinstance(output.grad_fn, _torchao._StraightThroughLinear._backward_cls)
    output.backward(torch.ones_like(output))
    assert x.grad is not None


class MLP(torch.nn.Module):
    def __init__(self, features=32, hidden=96, out_features=10):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(features, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, out_features),
        )

    def forward(self, x):
        return self.layers(x)


class TransformerBlock(torch.nn.Module):
    """Pre-norm self-attention and MLP, each with a residual path."""

    def __init__(self, width=32, heads=4, hidden=64):
        super().__init__()
        self.heads = heads
        self.attention_norm = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.projection = torch.nn.Linear(width, width)
        self.mlp_norm = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, width))

    def forward(self, x):
        batch, tokens, width = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.projection(attended.transpose(1, 2).reshape(batch, tokens, width))
        return x + self.mlp(self.mlp_norm(x))


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize(
    "model_class, input_shape, quantized_layers",
    [(MLP, (2, 6, 32), 3), (TransformerBlock, (2, 7, 32), 4)],
    ids=["mlp", "transformer_block"],
)
def test_models_match_straight_through_reference(model_class, input_shape, quantized_layers, granularity):
    torch.manual_seed(0)
    model = model_class().eval()
    config = Int8DynamicActivationInt8WeightConfig(granularity=GRANULARITIES[granularity], **KEEP_INDUCTOR_CONFIG)
    quantize_(model, config)
    x = torch.randn(*input_shape)
    with torch.no_grad(), reference_linears(model):
        stock_output = model(x)
    grad_output = torch.randn_like(stock_output)

    got = input_gradient(model, x, grad_output)
    with reference_linears(model) as replaced:
        assert replaced == quantized_layers
        expected = input_gradient(model, x, grad_output)

    assert torch.equal(model(x.requires_grad_()), stock_output)
    assert cosine(got, expected) >= 0.9999
    assert abs(got.norm() / expected.norm() - 1) <= 1e-3


def test_threads_get_their_own_precision_and_the_same_results():
    layer = quantized_linear(64, 48)
    x = torch.randn(8, 64)
    grad_output = torch.randn(8, 48)
    precisions = list(ERROR_BOUNDS)

    def gradient(precision):
        with qlgrad.backward_precision(precision):
            return input_gradient(layer, x, grad_output)

    expected = {precision: gradient(precision) for precision in precisions}

    def same(index, step):
        precision = precisions[(index + step) % len(precisions)]
        return torch.equal(gradient(precision), expected[precision])

    assert mismatches_in_threads(same, steps=25) == []


def test_not_installed_is_silent():
    meta_path = list(sys.meta_path)
    _torchao.install(None)
    assert sys.meta_path == meta_path


def test_unsupported_version_warns_and_leaves_torchao_alone():
    handler = Int8Tensor._TORCH_FN_TABLE[Int8Tensor][F.linear]
    with pytest.warns(UserWarning, match=r"torchao 0\.17\.0 is installed, but qlgrad supports torchao 0\.18\.0 only"):
        _torchao.install("0.17.0")
    assert Int8Tensor._TORCH_FN_TABLE[Int8Tensor][F.linear] is handler


def test_registering_twice_keeps_one_handler():
    handler = Int8Tensor._TORCH_FN_TABLE[Int8Tensor][F.linear]
    _torchao.install(torchao.__version__)
    assert Int8Tensor._TORCH_FN_TABLE[Int8Tensor][F.linear] is handler


GRADIENT_OF_QUANTIZED_LAYER = """
    import torch
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    layer = torch.nn.Linear(8, 4)
    quantize_(layer, Int8DynamicActivationInt8WeightConfig())
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()
    print("gradient:", x.grad is not None)
"""


def run_script(code: str, extra_path: str | None = None) -> subprocess.CompletedProcess:
    """code in a fresh interpreter, every warning shown once: torchao and qlgrad imported there."""
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH")) if p)
    script = textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", script], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.parametrize("order", ["qlgrad_first", "torchao_first"])
def test_either_import_order(order):
    imports = "import qlgrad\nimport torchao\n" if order == "qlgrad_first" else "import torchao\nimport qlgrad\n"
    result = run_script(imports + textwrap.dedent(GRADIENT_OF_QUANTIZED_LAYER))
    assert result.returncode == 0, result.stderr
    assert "gradient: True" in result.stdout
    assert "qlgrad: " not in result.stderr  # no warning of qlgrad's


def test_unsupported_torchao_import_warns_once(tmp_path):
    # A torchao distribution record claiming 0.17.0, found before the installed one.
    dist_info = tmp_path / "torchao-0.17.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchao\nVersion: 0.17.0\n")
    result = run_script("import qlgrad\nimport torchao\n" + textwrap.dedent(GRADIENT_OF_QUANTIZED_LAYER), str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "gradient: False" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "qlgrad: torchao 0.17.0 is installed" in line]
    assert len(warnings) == 1, result.stderr
    assert "stay None" in warnings[0] and "Int8DynamicActivationInt8WeightConfig" in warnings[0]
