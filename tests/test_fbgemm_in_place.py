"""int8 weights that fbgemm packed (the x86 and fbgemm engines) are read where they lie: the
backward of every kernel path matches the float64 reference, and the layer holds one byte per
weight, nothing cached beside its packed weight."""

import pytest
import torch

import qlgrad
from helpers import SCHEMES, packed_params, quantize_weight, reference_input_gradient, streamed_rows_end

pytestmark = pytest.mark.usefixtures("fresh_cache")

FBGEMM_ENGINES = [engine for engine in ("x86", "fbgemm") if engine in torch.backends.quantized.supported_engines]
# Shapes [N, K] on both sides of fbgemm's blocks (multiples of 16 n and of 4, 16 and 256+ k),
# and the row counts on both sides of every kernel switch (streams up to 8 rows, 16 in passes of 4
# on AVX-512 CPUs; there the panel GEMM by columns up to 255, then by rows and columns, but for
# tiles from 256 on Intel's).
SHAPES = [(1, 1), (3, 5), (16, 16), (17, 33), (48, 300), (130, 1030), (512, 768)]
ROWS = [1, 4, 8, 9, 16, 17, 32, 33, 255, 256, 511, 512, 700]
# The README's bounds (precision table): float32 rounding, 1% and 2% of the norm.
TOLERANCE = {"fp32": 2e-6, "bf16": 1e-2, "int8": 2e-2}


@pytest.fixture(params=FBGEMM_ENGINES)
def fbgemm_engine(request):
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = request.param
    yield request.param
    torch.backends.quantized.engine = previous


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("out_features, in_features", SHAPES, ids=str)
def test_every_kernel_path_matches_the_float64_reference(fbgemm_engine, scheme, out_features, in_features):
    weight = quantize_weight(out_features, in_features, scheme)
    packed = packed_params(weight)
    for precision, rows in ((p, r) for p in qlgrad.PRECISIONS for r in ROWS):
        grad_output = torch.randn(rows, out_features)
        grad_input = qlgrad.linear_dynamic_backward(grad_output, packed, precision)
        error = relative_error(grad_input, reference_input_gradient(grad_output, weight))
        assert error <= TOLERANCE[precision], (precision, rows, error)
    assert qlgrad.cache_info()[:2] == (0, 0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_training_through_a_model_caches_nothing(fbgemm_engine, scheme):
    model = torch.nn.Sequential(torch.nn.Linear(96, 160), torch.nn.ReLU(), torch.nn.Linear(160, 64))
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig if scheme.startswith("per_channel") else None
    int8_model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig} if qconfig else None)
    assert qlgrad.prepare(int8_model) == 2
    x = torch.randn(12, 96, requires_grad=True)
    int8_model(x).square().sum().backward()
    assert x.grad.abs().sum() > 0
    assert qlgrad.cache_info()[:4] == (0, 0, 0, 0)


def test_double_backward_and_float64_read_the_packing(fbgemm_engine):
    weight = quantize_weight(40, 70, "per_channel_affine")
    packed = packed_params(weight)
    grad_output = torch.randn(3, 40, dtype=torch.float64, requires_grad=True)
    # In float64 from the packing, against the weight dequantized apart from it: they differ by
    # the scales alone, which the packing holds in float32 (2^-24 relative) and the quantized weight in float64.
    expected = reference_input_gradient(grad_output.detach(), weight)
    assert relative_error(qlgrad.linear_dynamic_backward(grad_output, packed), expected) <= 1e-7
    torch.autograd.gradcheck(lambda g: qlgrad.linear_dynamic_backward(g, packed), (grad_output,))
    torch.autograd.gradgradcheck(lambda g: qlgrad.linear_dynamic_backward(g, packed), (grad_output,))


# Past the streams on AVX-512, fp32's panel GEMM reads fbgemm's packing square by square into its
# float32 panels; 200 and 1100 output features: its last square partly past the weight's rows; 70
# and 300 input features: its last panel's columns partly past the weight's.
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("out_features, in_features", [(200, 70), (1100, 300), (768, 768)], ids=str)
def test_float32_product_from_the_packing_is_the_rows_product(fbgemm_engine, scheme, out_features, in_features):
    """`fp32` from fbgemm's packing and from the same codes in rows: the same product, bit for bit
    (each value is its code less its zero point, exact in float32, and the sums run in one order)."""
    weight = quantize_weight(out_features, in_features, scheme)
    packed = packed_params(weight)
    scale, zero_point = weight.scale.float(), weight.zero_point
    # From the first row past the streams, which read the packing in another order than the rows.
    for rows in (streamed_rows_end() + 1, 33, 64, 256, 300):
        grad_output = torch.randn(rows, out_features)
        from_packing = qlgrad.linear_dynamic_backward(grad_output, packed, "fp32")
        from_rows = qlgrad.linear_int8_backward(grad_output, weight.values, scale, zero_point, "fp32")
        assert torch.equal(from_packing, from_rows), rows


# Past the streams: the int8 panel GEMM (AMX tiles, or AVX512-VNNI by columns and by rows and
# columns; on Intel's CPUs without AMX torch._int_mm from 512 rows). 1100 and 4200 output
# features: products deeper than one block of panels (of those divided by columns, and of those
# shared from 256 rows, 4096 deep with AVX512-VNNI), the last block not a whole tile row deep;
# 200, 1100 and 4200, not multiples of 16: the panels' last rows from a band of the packing past
# the weight's. 70 and 300 input features: the panels' last 16 columns partly past the weight's,
# one panel or several.
@pytest.mark.parametrize("rows", [16, 33, 40, 255, 256, 300, 511, 512, 600])
@pytest.mark.parametrize("out_features", [200, 1100, 4200])
@pytest.mark.parametrize("in_features", [70, 300])
def test_int8_product_is_exact(fbgemm_engine, rows, out_features, in_features):
    """`int8`'s integer product, over fbgemm's packing and over codes in rows: a gradient of
    integers up to 127 in magnitude, each row reaching 127, is quantized to itself (scale 1), and
    against a weight of scale 1 the result is the integer product, exactly (its sums, of random
    signs, stay far below 2^24)."""
    gen = torch.Generator().manual_seed(rows)
    codes = torch.randint(-128, 128, (out_features, in_features), dtype=torch.int8, generator=gen)
    grad_output = torch.randint(-127, 128, (rows, out_features), generator=gen).float()
    grad_output[:, 0] = 127
    expected = (grad_output.long() @ codes.long()).float()
    assert expected.abs().max() < 2**24
    qweight = torch._make_per_tensor_quantized_tensor(codes, 1.0, 0)
    packed = torch.ops.quantized.linear_prepack(qweight, None)
    assert torch.equal(qlgrad.linear_dynamic_backward(grad_output, packed, "int8"), expected)
    assert torch.equal(qlgrad.linear_int8_backward(grad_output, codes, torch.ones(1), precision="int8"), expected)
