"""torchao's low-bit CPU layers: Int8DynamicActivationIntxWeightConfig (IntxUnpackedToInt8Tensor:
int1-int8 weights per group or per row, int8 per-token activations) and PrototypeInt4WeightOnlyConfig
(Int4OpaqueTensor, aten::_weight_int4pack_mm_for_cpu). Their layers, and models held out from the
kernels' tests (an MLP, two transformer blocks with residuals, a trainable adapter in front, PEFT's
LoRA), against a straight-through oracle: the forward that training runs, detached, and the
backward grad_output @ W_deq in float64 from the layer's dequantized weight."""

import contextlib
import copy
import itertools

import peft
import pytest
import torch
import torch.nn.functional as F
from torchao.prototype._nf4tensor_api import NF4WeightOnlyConfig
from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
from torchao.prototype.quantization.int4.int4_opaque_tensor import Int4OpaqueTensor
from torchao.quantization import (
    Float8WeightOnlyConfig,
    Int8DynamicActivationIntxWeightConfig,
    Int8StaticActivationInt8WeightConfig,
    Int8Tensor,
    Int8WeightOnlyConfig,
    IntxUnpackedToInt8Tensor,
    IntxWeightOnlyConfig,
    MappingType,
    PerAxis,
    PerGroup,
    PerTensor,
    quantize_,
)

import qlgrad
from helpers import cosine, mismatches_in_threads, outputs_and_calls, relative_error

WEIGHT_DTYPES = [getattr(torch, f"int{bits}") for bits in range(1, 9)]
GRANULARITIES = {"per_group_32": PerGroup(32), "per_row": PerAxis(0)}
MAPPINGS = {"symmetric": MappingType.SYMMETRIC, "asymmetric": MappingType.ASYMMETRIC}
DTYPES = (torch.float32, torch.bfloat16)
# The bounds on the input gradient: cosine and relative norm difference per dtype.
BOUNDS = {torch.float32: (0.9999, 1e-3), torch.bfloat16: (0.998, 1e-2)}
# PEFT's torchao layers warn that merging would need a re-quantization function; not merging here.
NO_MERGE_WARNING = "ignore:TorchaoLoraLinear was instantiated without:UserWarning"


def intx_config(weight_dtype=torch.int4, granularity="per_group_32", mapping="symmetric"):
    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=weight_dtype,
        weight_granularity=GRANULARITIES[granularity],
        weight_mapping_type=MAPPINGS[mapping],
    )


def int4_config(group_size=32):
    return PrototypeInt4WeightOnlyConfig(group_size=group_size, set_inductor_config=False)


def quantized(model, config, dtype):
    model = model.to(dtype)
    quantize_(model, config)
    return model


def dequantized_float64(weight) -> torch.Tensor:
    """W_deq [N, K] in float64 from the values and parameters the layer holds."""
    if isinstance(weight, Int8Tensor):
        return weight.qdata.double() * weight.scale.double().reshape(-1, 1)
    if isinstance(weight, IntxUnpackedToInt8Tensor):
        n, k = weight.qdata.shape
        groups = weight.scale.shape[1]
        values = weight.qdata.double().view(n, groups, -1) - weight.zero_point.double().view(n, groups, 1)
        return (values * weight.scale.double().view(n, groups, 1)).view(n, k)
    assert isinstance(weight, Int4OpaqueTensor)
    group_size, in_features = weight.block_size[1], weight.shape[1]
    eye = torch.eye(in_features, dtype=weight.scale_and_zero.dtype)
    transposed = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, weight.qdata, group_size, weight.scale_and_zero)
    return transposed[:, : weight.shape[0]].t().double()


class _OracleLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, layer):
        ctx.weight = layer.weight
        # The forward that training runs: qlgrad's training forward where the input requires grad
        # (equal to torchao's up to rounding: test_layer_input_gradient_is_straight_through), so
        # that the gradients compared differ in their backward alone; bfloat16 roundings on either
        # side of an activation's int8 quantization step would otherwise move the next layers' codes.
        with torch.enable_grad():
            return F.linear(input.detach().requires_grad_(input.requires_grad), layer.weight, layer.bias).detach()

    @staticmethod
    def backward(ctx, grad_output):
        return (grad_output.double() @ dequantized_float64(ctx.weight)).to(grad_output.dtype), None


def quantized_linears(model):
    weights = (Int8Tensor, IntxUnpackedToInt8Tensor, Int4OpaqueTensor)
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and isinstance(m.weight, weights)]


@contextlib.contextmanager
def oracle_layers(model):
    """Every quantized layer of ``model`` has the float64 oracle's backward inside the with block."""
    layers = quantized_linears(model)
    assert layers
    for layer in layers:
        layer.forward = lambda input, layer=layer: _OracleLinear.apply(input, layer)
    try:
        yield layers
    finally:
        for layer in layers:
            del layer.forward


def oracle_gradients(model, x, grad_output, parameters=()):
    """(x.grad, parameter grads) with every quantized layer's backward the float64 oracle's."""
    with oracle_layers(model):
        return gradients(model, x, grad_output, parameters)


def gradients(model, x, grad_output, parameters=()):
    x = x.detach().clone().requires_grad_()
    output = model(x)
    grads = torch.autograd.grad(output, [x, *parameters], grad_output)
    return grads[0], grads[1:]


def assert_straight_through(got, expected, dtype):
    if expected.norm() == 0:  # int1 symmetric weights: every value dequantizes to zero
        assert torch.count_nonzero(got) == 0
        return
    min_cosine, max_norm_difference = BOUNDS[dtype]
    assert cosine(got, expected) >= min_cosine
    assert abs(got.double().norm().item() / expected.double().norm().item() - 1) <= max_norm_difference


# ---- single layers ----------------------------------------------------------------------


def intx_cases():
    for weight_dtype, granularity, mapping in itertools.product(WEIGHT_DTYPES, GRANULARITIES, MAPPINGS):
        yield pytest.param(
            intx_config(weight_dtype, granularity, mapping), id=f"{weight_dtype}-{granularity}-{mapping}"
        )
    for group_size in (32, 64, 128):
        yield pytest.param(int4_config(group_size), id=f"int4_opaque-group_{group_size}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", list(intx_cases()))
def test_layer_input_gradient_is_straight_through(config, dtype, bias):
    torch.manual_seed(0)
    layer = quantized(torch.nn.Linear(256, 288, bias=bias), config, dtype)
    # 1-6 rows: the float32 streams of every precision; 40 and 300: the panel GEMM (bfloat16
    # products on a bfloat16 base) by columns and by rows and columns. 288 outputs: on AMX tiles
    # the bfloat16 forward takes the weight's rows as the tiles' first operand up to 64 rows (1-40)
    # and the panels of W.T past them (300).
    for leading in ((1,), (5,), (2, 3), (40,), (300,)):
        x = torch.randn(*leading, 256, dtype=dtype)
        grad_output = torch.randn(*leading, 288, dtype=dtype)
        with torch.no_grad():
            stock = layer(x)
        leaf = x.clone().requires_grad_()
        output = layer(leaf)
        # The training forward: torchao's, but the product from the codes (docs/integrations.md, "torchao's
        # quantized layers"), equal up to the order of float32 sums and, in bfloat16, a rounding.
        assert output.dtype == stock.dtype and output.shape == stock.shape
        if stock.norm() == 0:  # int1 symmetric weights: every value dequantizes to zero
            assert torch.equal(output, stock)
        else:
            assert relative_error(output, stock) <= (1e-6 if dtype == torch.float32 else 2**-7)
        output.backward(grad_output)
        expected = grad_output.double() @ dequantized_float64(layer.weight)
        assert leaf.grad.dtype == dtype and leaf.grad.shape == x.shape
        if dtype == torch.float32 and expected.norm() > 0:
            assert relative_error(leaf.grad, expected) <= 1e-6
        elif expected.norm() > 0:
            # bfloat16: no worse than the dense bfloat16 product of the same gradient (1.5 times
            # its error, as in test_bfloat16_products.py).
            dense = grad_output @ dequantized_float64(layer.weight).to(torch.bfloat16)
            assert relative_error(leaf.grad, expected) <= 1.5 * relative_error(dense, expected) + 1e-4
        assert_straight_through(leaf.grad, expected, dtype)
        if bias:
            # The gradient torchao's own forward gives the bias, with or without qlgrad's node.
            layer.bias.grad = None
            layer(x).backward(grad_output)
            stock_bias_grad = layer.bias.grad.clone()
            layer.bias.grad = None
            layer(x.clone().requires_grad_()).backward(grad_output)
            assert torch.equal(layer.bias.grad, stock_bias_grad)
            layer.bias.grad = None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_groupwise_product_is_the_float64_product(dtype):
    """torch.ops.qlgrad._int8_groupwise_linear, the product of the group-wise layers' training
    forward, against float64 on row counts that reach each way the panel GEMM divides its work,
    groups of 16 and 32 columns and one per row, a partial last panel, several blocks of depth
    (past 2048 with few rows on AMX tiles). In bfloat16 with the weight's rows as the first
    operand (src/matmul.cpp, weight_rows_first) on both sides of where it starts and stops: on AMX
    tiles by 256 and 2048 weight rows, panels of up to 16 rows of x and of 17, several blocks of 128
    weight rows and a partial last one, several parts of 512 of the depth, a depth short of a
    tile row's 32; with the AVX512-BF16 panel kernel from 128 to 767 rows of x by 512 weight rows
    (and from 16 rows by 2^24 codes), several blocks of 120 weight rows and a partial last one,
    zero points of zero."""
    generator = torch.Generator().manual_seed(0)
    for rows, in_features, out_features, groups in (
        (1, 64, 40, 4),
        (13, 96, 80, 3),
        (300, 1088, 48, 34),
        (7, 50, 20, 1),
        (20, 2112, 48, 66),
        (16, 1088, 300, 34),
        (64, 544, 290, 17),
        (65, 544, 290, 17),
        (49, 100, 2048, 1),
        (3, 96, 260, 6),
        (255, 608, 2050, 19),
        (256, 608, 2050, 19),
        (127, 1040, 530, 65),
        (128, 1040, 530, 65),
        (200, 608, 511, 19),
        (767, 96, 512, 3),
        (768, 96, 512, 3),
        (160, 544, 600, 0),
        (15, 1024, 16384, 32),
        (16, 1024, 16384, 32),
    ):
        zero_points = groups > 0
        groups = max(groups, 1)
        weight = torch.randint(-8, 8, (out_features, in_features), dtype=torch.int8, generator=generator)
        scale = torch.rand(out_features, groups, generator=generator) * 0.1 + 0.01
        zero_point = torch.randint(-3, 4, (out_features, groups), generator=generator).float() * zero_points
        values = weight.double().view(out_features, groups, -1) - zero_point.double().unsqueeze(2)
        dequantized = (values * scale.double().unsqueeze(2)).view(out_features, in_features)
        x = torch.randn(rows, in_features, generator=generator).to(dtype)
        got = torch.ops.qlgrad._int8_groupwise_linear(x, weight, scale, zero_point)
        expected = x.double() @ dequantized.t()
        dense = F.linear(x, dequantized.to(dtype))  # what the same product in dtype gives
        bound = 1e-6 if dtype == torch.float32 else max(1.25 * relative_error(dense, expected), 2**-8)
        assert got.dtype == dtype and relative_error(got, expected) <= bound, (rows, groups)


@pytest.mark.skipif(
    "avx512_bf16" not in qlgrad.cpu_extensions() or "amx" in qlgrad.cpu_extensions(),
    reason="the weight's rows first on the AVX512-BF16 panel kernel: CPUs with AVX512-BF16 and without AMX",
)
def test_groupwise_bfloat16_forward_with_the_weights_rows_first_is_the_panels_product():
    """From 128 to 767 rows of x (from 16 for weights of 2^24 codes), layers of at least 512
    outputs take the weight's rows as the AVX512-BF16 panel kernel's first operand (src/matmul.cpp,
    weight_rows_first): the same products summed in the same order as over the panels of W.T, so
    the same bits as the product of x's rows in pieces below the switch (the panels). Groups of 16
    and 32 and one per row, zero points of zero, parts of the depth and a depth short of 32."""
    generator = torch.Generator().manual_seed(0)
    for rows, in_features, out_features, groups, zero_points, piece in (
        (128, 1040, 530, 65, True, 64),
        (300, 608, 2050, 19, True, 64),
        (767, 96, 512, 1, True, 64),
        (160, 544, 600, 17, False, 64),
        (16, 1024, 16384, 32, True, 8),
    ):
        weight = torch.randint(-128, 128, (out_features, in_features), dtype=torch.int8, generator=generator)
        scale = torch.rand(out_features, groups, generator=generator) * 0.1 + 0.01
        zero_point = torch.randint(-3, 4, (out_features, groups), generator=generator).float() * zero_points
        x = torch.randn(rows, in_features, generator=generator).bfloat16()
        got = torch.ops.qlgrad._int8_groupwise_linear(x, weight, scale, zero_point)
        pieces = [torch.ops.qlgrad._int8_groupwise_linear(part, weight, scale, zero_point) for part in x.split(piece)]
        assert torch.equal(got, torch.cat(pieces)), (rows, in_features, out_features)


def torchaos_quantized_activation_float64(input):
    """torchao's asymmetric per-token quantization of an activation (its codes, zero points and
    scales, as _apply_int8_act_asym_per_token_quant_dequant computes them), dequantized in float64
    without rounding."""
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine

    block_size = (1, input.shape[-1])
    scale, zero_point = choose_qparams_affine(
        input, MappingType.ASYMMETRIC, block_size, torch.int8, -128, 127, zero_point_dtype=torch.int8
    )
    codes = quantize_affine(input, block_size, scale, zero_point, torch.int8, -128, 127)
    return (codes.double() - zero_point.double().view(-1, 1)) * scale.double().view(-1, 1)


def integer_groupwise_forward(dtype) -> bool:
    """Whether _int8_dynamic_groupwise_linear multiplies in integers for this activation dtype: with
    AVX512-VNNI, bfloat16 activations but on AMX tiles."""
    extensions = qlgrad.cpu_extensions()
    return "avx512_vnni" in extensions and (dtype == torch.float32 or "amx" not in extensions)


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dynamic_groupwise_forward_is_the_float64_product(dtype, scale_dtype):
    """torch.ops.qlgrad._int8_dynamic_groupwise_linear, the training forward of torchao's
    group-wise layers with int8 activations, against float64 from torchao's own codes of the
    activation: in integer products (src/matmul_grouped_int8.cpp) only the float32 sums and the
    result's rounding differ from it. Rows of one and of several kernel blocks (12, and the 6 a
    kernel holds) and a partial last one, groups of 16, 32 and 128 and one per row (runs of 224
    and 256 values), several blocks of depth, partial last panels and halves of panels, zero
    points, columns divided among threads. Elsewhere, the dequantized activation's product.
    bfloat16 scales (torchao's bfloat16 layers, read where they lie) give what their float32
    copy gives, bit for bit."""
    generator = torch.Generator().manual_seed(0)
    for rows, in_features, out_features, groups, zero_points in (
        (1, 64, 40, 4, True),
        (5, 96, 80, 6, False),
        (6, 96, 80, 3, True),
        (7, 512, 300, 16, True),
        (12, 2048, 33, 64, True),
        (13, 2048, 1100, 16, False),
        (40, 896, 48, 1, True),
        (300, 4864, 96, 1, False),
        (37, 4096, 520, 32, True),
    ):
        weight = torch.randint(-8, 8, (out_features, in_features), dtype=torch.int8, generator=generator)
        scale = (torch.rand(out_features, groups, generator=generator) * 0.1 + 0.01).to(scale_dtype)
        zero_point = torch.randint(-8, 8, (out_features, groups), dtype=torch.int8, generator=generator)
        zero_point *= zero_points
        values = weight.double().view(out_features, groups, -1) - zero_point.double().unsqueeze(2)
        dequantized = (values * scale.double().unsqueeze(2)).view(out_features, in_features)
        x = (torch.randn(rows, in_features, generator=generator) * 2 + 0.5).to(dtype)
        got = torch.ops.qlgrad._int8_dynamic_groupwise_linear(x, weight, scale, zero_point)
        if scale_dtype != torch.float32:
            copied = torch.ops.qlgrad._int8_dynamic_groupwise_linear(x, weight, scale.float(), zero_point)
            assert torch.equal(got, copied), (rows, in_features, groups)
        expected = torchaos_quantized_activation_float64(x) @ dequantized.t()
        if not integer_groupwise_forward(dtype):
            dense = F.linear(torch.ops.qlgrad._int8_quant_dequant_rows(x), dequantized.to(dtype))
            bound = 2e-6 if dtype == torch.float32 else 1.25 * relative_error(dense, expected)
        elif dtype == torch.float32:
            bound = 2e-7
        else:  # the result's rounding to bfloat16, and little else
            bound = 1.01 * relative_error(expected.to(dtype), expected) + 1e-6
            # Each output is the float64 product rounded to bfloat16, but where the float32 sums
            # lie within their rounding of a tie (0.2% of a row's at most in these cases): one of
            # the activation's codes off by one step would move 4-14% of its row's.
            differs = (got != expected.to(dtype)).sum(1)
            assert differs.max() <= max(1, out_features // 100), (rows, in_features, groups)
        assert got.dtype == dtype and relative_error(got, expected) <= bound, (rows, in_features, groups)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dynamic_groupwise_forward_takes_floats_where_integers_cannot_hold_it(dtype):
    """Where a row of the activation holds a NaN or an infinity, or a code less its zero point lies
    outside int8 (int8 codes with zero points; zero points outside int8), the training forward is
    the dequantized activation's product, bit for bit."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randint(-128, 128, (48, 64), dtype=torch.int8, generator=generator)
    scale = torch.rand(48, 4, generator=generator) * 0.1 + 0.01
    x = torch.randn(9, 64, generator=generator).to(dtype)
    with_nan, with_infinity = x.clone(), x.clone()
    with_nan[3, 5], with_infinity[8, 0] = float("nan"), float("inf")
    for input, zero_point in (
        (with_nan, torch.zeros(48, 4, dtype=torch.int8)),
        (with_infinity, torch.zeros(48, 4, dtype=torch.int8)),
        (x, torch.full((48, 4), 100, dtype=torch.int8)),
        (x, torch.full((48, 4), 300, dtype=torch.int32)),
    ):
        got = torch.ops.qlgrad._int8_dynamic_groupwise_linear(input, weight, scale, zero_point)
        floats = torch.ops.qlgrad._int8_quant_dequant_rows(input)
        expected = torch.ops.qlgrad._int8_groupwise_linear(floats, weight, scale, zero_point)
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_threads_sharing_groupwise_layers_get_the_single_threaded_results(dtype):
    """Six threads run the training forward and the backward of the same group-wise layers at once
    (integer products where the CPU has them, asymmetric weights: zero points in the panels): each
    gets, bit for bit, what one thread alone gets."""
    layers = [
        intx_layer(torch.int4, "per_group_32", mapping, dtype, bias=False, in_features=512, out_features=300)
        for mapping in MAPPINGS
    ]
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(rows, 512, generator=generator).to(dtype) for rows in (1, 13, 40)]

    def run(layer, x):
        leaf = x.clone().requires_grad_()
        output = layer(leaf)
        output.backward(torch.ones_like(output))
        return output.detach(), leaf.grad

    expected = {(i, j): run(layer, x) for i, layer in enumerate(layers) for j, x in enumerate(inputs)}

    def same(index, step):
        i, j = (index + step) % len(layers), step % len(inputs)
        return all(torch.equal(a, b) for a, b in zip(run(layers[i], inputs[j]), expected[i, j]))

    assert mismatches_in_threads(same, steps=12) == []


def test_dynamic_groupwise_forward_names_every_bad_argument():
    weight, scale = torch.zeros(4, 32, dtype=torch.int8), torch.ones(4, 2)
    forward = torch.ops.qlgrad._int8_dynamic_groupwise_linear
    with pytest.raises(TypeError, match="input must be a float32 or bfloat16 tensor"):
        forward(torch.zeros(3, 32, dtype=torch.half), weight, scale, scale)
    with pytest.raises(TypeError, match="weight must be an int8 tensor"):
        forward(torch.zeros(3, 32), weight.float(), scale, scale)
    with pytest.raises(ValueError, match="must share K"):
        forward(torch.zeros(3, 16), weight, scale, scale)
    with pytest.raises(ValueError, match="scale and zero_point must be"):
        forward(torch.zeros(3, 32), weight, torch.ones(4, 3), torch.ones(4, 3))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("magnitude", [1e-30, 1e-6, 1.0, 1e30, 1e38])
@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_activation_quantization_is_torchaos(dtype, magnitude, offset):
    """torch.ops.qlgrad._int8_quant_dequant_rows, the activation the group-wise layers multiply, is
    torchao's asymmetric per-token quantization and dequantization, bit for bit: each step
    rounded to the activation's dtype, an all-zero row (the scale clamped at its smallest
    normal), rows all of one sign, values whose range overflows, and rows with a NaN or an
    infinity, as torch's steps carry them on x86 CPUs."""
    from torchao.quantization.quantize_.workflows.intx import intx_unpacked_to_int8_tensor as intx

    generator = torch.Generator().manual_seed(0)
    input = ((torch.randn(37, 301, generator=generator) + offset) * magnitude).to(dtype)
    input[1] = 0
    input[2, 7], input[3, 0], input[4, 9], input[4, 10] = float("nan"), float("inf"), float("-inf"), float("nan")
    expected = intx._apply_int8_act_asym_per_token_quant_dequant(input)
    got = torch.ops.qlgrad._int8_quant_dequant_rows(input)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


def test_activation_quantization_names_every_bad_argument():
    with pytest.raises(TypeError, match="input must be a float32 or bfloat16 tensor"):
        torch.ops.qlgrad._int8_quant_dequant_rows(torch.zeros(3, 8, dtype=torch.half))
    with pytest.raises(ValueError, match="input must be 2-D"):
        torch.ops.qlgrad._int8_quant_dequant_rows(torch.zeros(8))


def intx_layer(weight_dtype, granularity, mapping, dtype, bias, in_features=96, out_features=40):
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_features, in_features, generator=generator) * 0.1)
    return quantized(layer, intx_config(weight_dtype, granularity, mapping), dtype)


def as_bits(tensor):
    return tensor.view(torch.int16 if tensor.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("weight_dtype", [torch.int2, torch.int4, torch.int8], ids=str)
def test_groupwise_dequantization_is_torchaos(weight_dtype, granularity, mapping, dtype):
    """torch.ops.qlgrad._int8_groupwise_dequantize is the group-wise layers' weight as torchao
    dequantizes it, bit for bit: scales of every magnitude, those whose products overflow
    bfloat16's range and those that reach its subnormals included."""
    weight = intx_layer(weight_dtype, granularity, mapping, dtype, bias=False).weight
    generator = torch.Generator().manual_seed(1)
    magnitudes = torch.tensor([1e-40, 1e-30, 1e-3, 1.0, 3e36, 1e38]).to(weight.scale.dtype)
    choice = torch.randint(len(magnitudes), weight.scale.shape, generator=generator)
    weight.scale.copy_(magnitudes[choice] * torch.rand(weight.scale.shape, generator=generator).to(weight.scale.dtype))
    got = torch.ops.qlgrad._int8_groupwise_dequantize(weight.qdata, weight.scale, weight.zero_point, dtype)
    expected = weight.dequantize()
    assert got.dtype == expected.dtype == dtype
    assert torch.equal(as_bits(got), as_bits(expected))


def test_groupwise_dequantization_names_every_bad_argument():
    codes, scale = torch.zeros(4, 64, dtype=torch.int8), torch.ones(4, 2)
    with pytest.raises(TypeError, match="weight must be an int8 tensor"):
        torch.ops.qlgrad._int8_groupwise_dequantize(codes.float(), scale, None, torch.float32)
    with pytest.raises(TypeError, match="dtype must be float32 or bfloat16"):
        torch.ops.qlgrad._int8_groupwise_dequantize(codes, scale, None, torch.half)
    with pytest.raises(TypeError, match="scale must be a floating tensor"):
        torch.ops.qlgrad._int8_groupwise_dequantize(codes, scale.int(), None, torch.float32)
    with pytest.raises(ValueError, match="scale and zero_point must be"):
        torch.ops.qlgrad._int8_groupwise_dequantize(codes, torch.ones(4, 3), None, torch.float32)
    with pytest.raises(ValueError, match="scale and zero_point must be"):
        torch.ops.qlgrad._int8_groupwise_dequantize(codes, scale, torch.zeros(4, 1), torch.float32)


def stock_intx_forward(layer, x):
    from qlgrad import _torchao

    handler = _torchao.stock_linear_handler(IntxUnpackedToInt8Tensor)
    return handler(F.linear, (), (x, layer.weight, layer.bias), {})


@pytest.mark.parametrize("bias", ["none", "frozen", "trainable"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_forward_without_grad_is_torchaos(granularity, mapping, dtype, bias):
    """Where the input requires no grad, the group-wise layers' forward is torchao's bit for bit
    (with the weight dequantized in one pass), a trainable bias's gradient too; scales that are
    not finite leave it to torchao's own forward."""
    layer = intx_layer(torch.int4, granularity, mapping, dtype, bias=bias != "none")
    if bias == "frozen":
        layer.bias.requires_grad_(False)
    generator = torch.Generator().manual_seed(2)
    for shape in ((1, 96), (7, 96), (2, 129, 96)):
        x = torch.randn(shape, generator=generator).to(dtype)
        with torch.autograd.profiler.profile() as profile:
            got = layer(x)
        calls = {event.key: event.count for event in profile.key_averages()}
        assert calls.get("qlgrad::_int8_groupwise_dequantize") == 1 and "torchao::dequantize_affine" not in calls
        expected = stock_intx_forward(layer, x)
        assert torch.equal(got, expected), shape
        with torch.no_grad():
            assert torch.equal(layer(x), expected), shape
        if bias == "trainable":
            grad_output = torch.randn(got.shape, generator=generator).to(dtype)
            (bias_grad,) = torch.autograd.grad(got, layer.bias, grad_output)
            (expected_bias_grad,) = torch.autograd.grad(expected, layer.bias, grad_output)
            assert torch.equal(bias_grad, expected_bias_grad)
    x = torch.randn(3, 96, generator=generator).to(dtype)
    for value in (float("nan"), float("inf"), float("-inf")):
        layer.weight.scale[-1, -1] = value
        with torch.no_grad(), torch.autograd.profiler.profile() as profile:
            got = layer(x)
        assert "qlgrad::_int8_groupwise_dequantize" not in {event.key for event in profile.key_averages()}, value
        torch.testing.assert_close(got, stock_intx_forward(layer, x), rtol=0, atol=0, equal_nan=True)


def test_projections_of_one_input_quantize_it_once():
    """A decoder's gate and up projections take one activation: it is quantized and dequantized
    once for both (each output still torchao's), again once it has been written to."""
    layers = [intx_layer(torch.int4, "per_group_32", "symmetric", torch.bfloat16, bias=False) for _ in range(2)]

    def quantizing(layers, x):
        return outputs_and_calls(layers, x, "qlgrad::_int8_quant_dequant_rows")

    x = torch.randn(9, 96).bfloat16()
    outputs, quantizations = quantizing(layers, x)
    assert quantizations == 1
    for layer, output in zip(layers, outputs):
        assert torch.equal(output, stock_intx_forward(layer, x))
    x.mul_(3)
    (output,), quantizations = quantizing(layers[1:], x)
    assert quantizations == 1 and torch.equal(output, stock_intx_forward(layers[1], x))


def test_compiled_forward_without_grad_is_torchaos():
    """Compiled, the forward without grad is torchao's as traced (no data-dependent branch on the
    scales): with aot_eager, bit for bit."""
    layer = intx_layer(torch.int4, "per_group_32", "asymmetric", torch.bfloat16, bias=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(5, 96).bfloat16()
    with torch.no_grad():
        assert torch.equal(compiled(x), stock_intx_forward(layer, x))


WEIGHT_ONLY_CONFIGS = {
    "int8": lambda: Int8WeightOnlyConfig(),
    "intx_int4": lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4),
    "float8": lambda: Float8WeightOnlyConfig(),
    "nf4": lambda: NF4WeightOnlyConfig(),
}


@pytest.mark.parametrize("config", WEIGHT_ONLY_CONFIGS)
def test_weight_only_layers_keep_torchaos_gradient(config):
    """Their forward is a float matmul that autograd differentiates: qlgrad leaves it alone."""
    torch.manual_seed(0)
    # NF4 quantizes blocks of 64 values, their scales in blocks of 256: 256 x 64 weights.
    layer = quantized(torch.nn.Linear(256, 64), WEIGHT_ONLY_CONFIGS[config](), torch.float32)
    x = torch.randn(3, 256, requires_grad=True)
    output = layer(x)
    assert "StraightThrough" not in type(output.grad_fn).__name__
    output.sum().backward()
    with torch.no_grad():  # the forward is linear in x: its rows at the identity are W.T, plus the bias
        weight_t = layer(torch.eye(256)) - layer(torch.zeros(1, 256))
    torch.testing.assert_close(x.grad, torch.ones(3, 64) @ weight_t.t(), rtol=1e-4, atol=1e-4)


def test_static_int8_activation_layers_are_straight_through():
    torch.manual_seed(0)
    config = Int8StaticActivationInt8WeightConfig(act_quant_scale=torch.tensor([[0.05]]), granularity=PerTensor())
    model = quantized(mlp(bias=True).eval(), config, torch.float32)
    x, grad_output = torch.randn(4, 64), torch.randn(4, 32)
    got, _ = gradients(model, x, grad_output)
    expected, _ = oracle_gradients(model, x, grad_output)
    assert_straight_through(got, expected, torch.float32)


def test_precision_at_forward_time_applies():
    torch.manual_seed(0)
    layer = quantized(torch.nn.Linear(128, 64), intx_config(), torch.float32)
    x = torch.randn(16, 128, requires_grad=True)
    with qlgrad.backward_precision("bf16"):
        output = layer(x)
    grad_output = torch.randn_like(output)
    output.backward(grad_output)
    weight = layer.weight
    expected = qlgrad.linear_int8_backward(grad_output, weight.qdata, weight.scale, weight.zero_point, "bf16")
    assert torch.equal(x.grad, expected)


# ---- held-out models --------------------------------------------------------------------


class Block(torch.nn.Module):
    """A pre-norm transformer block: causal attention and an MLP, each on a residual path."""

    def __init__(self, width=64, heads=4, bias=True):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width, bias=bias)
        self.out = torch.nn.Linear(width, width, bias=bias)
        self.up = torch.nn.Linear(width, 4 * width, bias=bias)
        self.down = torch.nn.Linear(4 * width, width, bias=bias)

    def forward(self, x):
        batch, tokens, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, tokens, width))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


def mlp(bias):
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128, bias=bias),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 64, bias=bias),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 32, bias=bias),
    )


def transformer(bias):
    return torch.nn.Sequential(Block(bias=bias), Block(bias=bias))


MODELS = {"mlp": (mlp, (4, 64)), "transformer": (transformer, (2, 8, 64))}
MODEL_CONFIGS = {
    "intx_int4_group32": lambda: intx_config(torch.int4, "per_group_32", "symmetric"),
    "intx_int8_row_asymmetric": lambda: intx_config(torch.int8, "per_row", "asymmetric"),
    "intx_int2_group32_asymmetric": lambda: intx_config(torch.int2, "per_group_32", "asymmetric"),
    "int4_opaque_group32": lambda: int4_config(32),
}


@pytest.mark.parametrize("adapter", [False, True], ids=["input", "adapter"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", MODEL_CONFIGS)
@pytest.mark.parametrize("model_name", MODELS)
def test_model_gradient_is_straight_through(model_name, config, dtype, bias, adapter):
    make_model, input_shape = MODELS[model_name]
    torch.manual_seed(0)
    model = quantized(make_model(bias).eval(), MODEL_CONFIGS[config](), dtype)
    front = torch.nn.Linear(64, 64, dtype=dtype)  # a trainable float layer before the quantized ones
    if adapter:
        model = torch.nn.Sequential(front, model)
    x = torch.randn(*input_shape, dtype=dtype)
    with torch.no_grad():
        grad_output = torch.randn_like(model(x))
    parameters = [front.weight] if adapter else []
    got, got_parameters = gradients(model, x, grad_output, parameters)
    expected, expected_parameters = oracle_gradients(model, x, grad_output, parameters)
    assert_straight_through(got, expected, dtype)
    for got_grad, expected_grad in zip(got_parameters, expected_parameters):
        assert_straight_through(got_grad, expected_grad, dtype)


# ---- PEFT ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings(NO_MERGE_WARNING)
@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_peft_lora_trains_saves_and_loads(config, tmp_path):
    """PEFT's own torchao layers take both subclasses; qlgrad supplies the base layers' input gradient."""
    torch.manual_seed(0)
    float_model = transformer(bias=True).eval()
    model = quantized(copy.deepcopy(float_model), MODEL_CONFIGS[config](), torch.float32)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "out", "up", "down"], init_lora_weights=False)
    model = peft.get_peft_model(model, lora)
    x = torch.randn(2, 8, 64)
    with torch.no_grad():
        grad_output = torch.randn_like(model(x))
    adapters = [p for p in model.parameters() if p.requires_grad]
    assert adapters
    got, got_adapters = gradients(model, x, grad_output, adapters)
    expected, expected_adapters = oracle_gradients(model, x, grad_output, adapters)
    assert_straight_through(got, expected, torch.float32)
    for got_grad, expected_grad in zip(got_adapters, expected_adapters):
        assert_straight_through(got_grad, expected_grad, torch.float32)

    optimizer = torch.optim.AdamW(adapters, lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        F.mse_loss(model(x), torch.zeros_like(grad_output)).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        trained = model(x)
    model.save_pretrained(tmp_path)
    fresh = quantized(copy.deepcopy(float_model), MODEL_CONFIGS[config](), torch.float32)
    loaded = peft.PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), trained)


def test_int8_activation_int4_weight_is_refused_not_dropped():
    """The DA8W4 path of Int4OpaqueTensor (torchao's CPU kernel library only) has no gradient to give."""
    torch.manual_seed(0)
    layer = quantized(torch.nn.Linear(64, 32), int4_config(32), torch.float32)
    layer.weight.act_mapping_type = MappingType.ASYMMETRIC
    with pytest.raises(NotImplementedError, match="DA8W4"):
        layer(torch.randn(2, 64, requires_grad=True))
