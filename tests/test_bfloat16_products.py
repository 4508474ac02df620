"""bfloat16 products from the stored weight: the `bf16` precision of every stored weight (int8 codes
in rows or in fbgemm's packing, per tensor, per channel or group-wise, float16 weights, torch's int4
packing) against float64, no worse than the dense bfloat16 product of the same inputs, at row
counts on both sides of every switch: the float32 streams (up to 8 rows, 32 on AVX-512 CPUs, 15
with AMX tiles), the
panel GEMM in bfloat16 products (on AMX tiles where the CPU has them; else AVX512-BF16, on
Intel's CPUs up to 255 rows but for the int4 packing, divided by rows and columns from 256), MKL
on bfloat16 tiles elsewhere. An odd depth ends the bfloat16 pairs in a zero row; a depth that is
not a whole tile row's is padded with zeros."""

import pytest
import torch

import qlgrad
from helpers import quantize_weight, relative_error

ROWS = [9, 16, 32, 33, 100, 255, 256, 300]
# The output is rounded to bfloat16 (relative 2^-9 per element), as the dense product's is; the
# products' roundings add less. 1.5 times the dense product's error, and a floor for the rows
# where qlgrad's float32 streams beat it.
DENSE_ERROR_FACTOR = 1.5


def assert_as_accurate_as_dense(got, grad_output, weight_float64):
    expected = grad_output.double() @ weight_float64
    dense = grad_output @ weight_float64.to(torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert relative_error(got, expected) <= DENSE_ERROR_FACTOR * relative_error(dense, expected) + 1e-4


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("scheme", ["per_tensor_affine", "per_channel_affine", "per_channel_symmetric"])
def test_int8_codes(rows, scheme, engine):
    # 301 output features: an odd depth of the product. The x86 and fbgemm engines' packing is
    # read in place, the other engines' codes are held in rows.
    if engine == "onednn" and scheme.endswith("affine"):
        pytest.skip("oneDNN packs symmetric weights only")
    weight = quantize_weight(301, 520, scheme)
    packed = torch.ops.quantized.linear_prepack(weight.qweight, None)
    grad_output = torch.randn(rows, 301).to(torch.bfloat16)
    got = qlgrad.linear_dynamic_backward(grad_output, packed, "bf16")
    assert_as_accurate_as_dense(got, grad_output, weight.dequantize_float64())


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("group_size", [16, 32, 40])
def test_groupwise_codes(rows, group_size):
    gen = torch.Generator().manual_seed(rows)
    codes = torch.randint(-128, 128, (257, 480), dtype=torch.int8, generator=gen)
    scale = torch.rand(257, 480 // group_size, generator=gen) * 0.02 + 0.01
    zero_point = torch.randint(-8, 8, scale.shape, generator=gen)
    weight = (codes.double().view(257, -1, group_size) - zero_point.double()[..., None]) * scale.double()[..., None]
    grad_output = torch.randn(rows, 257, generator=gen).to(torch.bfloat16)
    got = qlgrad.linear_int8_backward(grad_output, codes, scale, zero_point, "bf16")
    assert_as_accurate_as_dense(got, grad_output, weight.view(257, 480))


@pytest.mark.parametrize("rows", ROWS)
def test_float16_weights(rows):
    gen = torch.Generator().manual_seed(rows)
    weight = (torch.randn(301, 200, generator=gen) * 0.1).half()
    packed = torch.ops.quantized.linear_prepack_fp16(weight.float(), None)
    grad_output = torch.randn(rows, 301, generator=gen).to(torch.bfloat16)
    got = qlgrad.linear_dynamic_fp16_backward(grad_output, packed, "bf16")
    assert_as_accurate_as_dense(got, grad_output, weight.double())


@pytest.mark.parametrize("rows", [1, 4, 5, *ROWS])
def test_int4_packing(rows):
    gen = torch.Generator().manual_seed(rows)
    out_features, in_features, group_size = 320, 256, 64
    codes = torch.randint(0, 16, (out_features, in_features), dtype=torch.int32, generator=gen)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scale_and_zeros = torch.rand(in_features // group_size, out_features, 2, generator=gen) * 0.02
    groups = torch.arange(in_features) // group_size
    weight = (codes.double() - 8) * scale_and_zeros[groups, :, 0].double().t() + scale_and_zeros[
        groups, :, 1
    ].double().t()
    grad_output = torch.randn(rows, out_features, generator=gen).to(torch.bfloat16)
    got = qlgrad.linear_int4pack_backward(grad_output, packed, group_size, scale_and_zeros, "bf16")
    assert_as_accurate_as_dense(got, grad_output, weight)


@pytest.mark.skipif("amx" not in qlgrad.cpu_extensions(), reason="the AMX tiles read rows in place")
@pytest.mark.parametrize("depth", [320, 896, 4864])
def test_rows_read_in_place_multiply_as_packed_rows(depth):
    """The AMX tiles read the gradient's rows where they lie (whole blocks of 16 rows, whole tile
    rows of depth, row strides of 640, 1792 and 9728 bytes here), else packed: the same products,
    bit for bit. 32 rows (in place) against the first 32 of 33 (packed), through group-wise codes
    and torch's int4 packing; and the int8 tiles' exact integer products of 32 activation rows."""
    gen = torch.Generator().manual_seed(depth)
    grad_output = torch.randn(33, depth, generator=gen).to(torch.bfloat16)
    codes = torch.randint(-8, 8, (depth, 192), dtype=torch.int8, generator=gen)
    scale, zero_point = torch.rand(depth, 6, generator=gen) * 0.02 + 0.01, torch.randint(-4, 4, (depth, 6))
    in_place = qlgrad.linear_int8_backward(grad_output[:32], codes, scale, zero_point, "bf16")
    packed = qlgrad.linear_int8_backward(grad_output, codes, scale, zero_point, "bf16")[:32]
    assert torch.equal(in_place, packed)
    int4_codes = torch.randint(0, 16, (depth, 256), dtype=torch.int32, generator=gen)
    weight_int4pack = torch.ops.aten._convert_weight_to_int4pack_for_cpu(int4_codes, 1)
    scale_and_zeros = torch.rand(4, depth, 2, generator=gen) * 0.02
    in_place = qlgrad.linear_int4pack_backward(grad_output[:32], weight_int4pack, 64, scale_and_zeros, "bf16")
    packed = qlgrad.linear_int4pack_backward(grad_output, weight_int4pack, 64, scale_and_zeros, "bf16")[:32]
    assert torch.equal(in_place, packed)
    activation = torch.randint(-128, 128, (32, depth), dtype=torch.int8, generator=gen)
    weight = torch.randint(-128, 128, (100, depth), dtype=torch.int8, generator=gen)
    assert torch.equal(torch.ops.qlgrad._int8_linear(activation, weight), torch._int_mm(activation, weight.t()))


@pytest.mark.parametrize("rows", [40, 260])
def test_bfloat16_rows_in_place_and_packed_give_the_same_bits(rows):
    """The AVX512-BF16 kernel reads a bfloat16 gradient's rows where they lie (rows 1056 bytes
    apart here) unless lhs carries a scale, which packing applies: per channel, scales of 1 (packed)
    against group-wise ones (in place) multiply the same values, past the streams, divided by
    columns (40 rows) and in shared panels (260): the same products, bit for bit."""
    gen = torch.Generator().manual_seed(rows)
    depth = 528
    grad_output = torch.randn(rows, depth, generator=gen).to(torch.bfloat16)
    codes = torch.randint(-128, 128, (depth, 200), dtype=torch.int8, generator=gen)
    packed = qlgrad.linear_int8_backward(grad_output, codes, torch.ones(depth), None, "bf16")
    in_place = qlgrad.linear_int8_backward(grad_output, codes, torch.ones(depth, 2), None, "bf16")
    assert torch.equal(in_place, packed)


@pytest.mark.parametrize("width", [896, 1024, 3072])
def test_int8_gradient_rows_read_in_place_multiply_as_packed_rows(width):
    """The `int8` precision's quantized gradient is laid out for the int8 panel GEMM to read where it
    lies (AMX tiles; AVX512-VNNI on AMD's CPUs): rows 1 KiB apart (1024 and 3072 wide here) spaced a
    cache line further. 32 rows (in place) against the first 32 of 33 (packed for the AMX tiles,
    which read whole blocks of 16 rows only): the same exact integer products and rescale, bit for
    bit, from int8 codes in rows and from fbgemm's packing; and against the integer product itself,
    a gradient of integers up to 127 (each row reaching 127, so quantized to itself) by codes of
    scale 1."""
    gen = torch.Generator().manual_seed(width)
    grad_output = torch.randn(33, width, generator=gen)
    codes = torch.randint(-128, 128, (width, 160), dtype=torch.int8, generator=gen)
    scale = torch.rand(width, generator=gen) * 0.02 + 0.01
    in_place = qlgrad.linear_int8_backward(grad_output[:32], codes, scale, None, "int8")
    packed = qlgrad.linear_int8_backward(grad_output, codes, scale, None, "int8")[:32]
    assert torch.equal(in_place, packed)
    weight = quantize_weight(width, 160, "per_channel_affine")
    params = torch.ops.quantized.linear_prepack(weight.qweight, None)
    in_place = qlgrad.linear_dynamic_backward(grad_output[:32], params, "int8")
    packed = qlgrad.linear_dynamic_backward(grad_output, params, "int8")[:32]
    assert torch.equal(in_place, packed)
    integers = torch.randint(-127, 128, (300, width), generator=gen).float()
    integers[:, 0] = 127
    expected = (integers.long() @ codes.long()).float()
    assert torch.equal(qlgrad.linear_int8_backward(integers, codes, torch.ones(1), None, "int8"), expected)


def test_bf16_multiplies_in_bfloat16_past_the_streams():
    # Past the streams, `bf16` multiplies in bfloat16: it parts from `fp32` (one rounding of the
    # float32 result) by the products' roundings.
    weight = quantize_weight(256, 384, "per_channel_affine")
    packed = torch.ops.quantized.linear_prepack(weight.qweight, None)
    grad_output = torch.randn(64, 256).to(torch.bfloat16)
    bf16 = qlgrad.linear_dynamic_backward(grad_output, packed, "bf16")
    fp32 = qlgrad.linear_dynamic_backward(grad_output, packed, "fp32")
    assert not torch.equal(bf16, fp32)


@pytest.mark.parametrize("out_features", [1, 2, 15, 31, 33, 63, 65])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize(
    ("dtype", "precision"), [(torch.bfloat16, None), (torch.float32, "bf16"), (torch.float32, None)]
)
def test_gradient_rows_packed_at_every_depth(out_features, per_channel, dtype, precision):
    # 40 gradient rows, past the streams: three whole blocks of the panel kernel's 12 rows and one
    # of 4. The product's depth (the gradient's width) on both sides of the 16 and 32 values that
    # the rows are packed by at once, odd ones too; the scale is applied as they are packed, and a
    # float32 gradient in bfloat16 products is rounded to bfloat16 there.
    gen = torch.Generator().manual_seed(out_features)
    codes = torch.randint(-128, 128, (out_features, 48), dtype=torch.int8, generator=gen)
    scale = torch.rand(out_features if per_channel else 1, generator=gen) * 0.02 + 0.01
    weight = codes.double() * scale.double()[:, None]
    grad_output = torch.randn(40, out_features, generator=gen).to(dtype)
    got = qlgrad.linear_int8_backward(grad_output, codes, scale, precision=precision)
    expected = grad_output.double() @ weight
    assert got.dtype == dtype
    if dtype == torch.bfloat16:
        assert_as_accurate_as_dense(got, grad_output, weight)
    elif precision == "bf16":
        dense = grad_output.to(torch.bfloat16).double() @ weight.to(torch.bfloat16).double()
        assert relative_error(got, expected) <= DENSE_ERROR_FACTOR * relative_error(dense, expected)
    else:
        assert relative_error(got, expected) <= 1e-6


def bf16_backward(grad_output, weight, blocked):
    """The bf16 backward from fbgemm's packing of `weight` (blocked) or from its codes in rows."""
    if blocked:
        packed = torch.ops.quantized.linear_prepack(weight.qweight, None)
        return qlgrad.linear_dynamic_backward(grad_output, packed, "bf16")
    return qlgrad.linear_int8_backward(grad_output, weight.values, weight.scale.float(), weight.zero_point, "bf16")


@pytest.mark.parametrize("rows", [40, 200, 300])
@pytest.mark.parametrize("out_features", [700, 1100, 2100])
@pytest.mark.parametrize("in_features", [200, 4200])
@pytest.mark.parametrize("blocked", [False, True])
def test_deep_products_in_depth_blocks(rows, out_features, in_features, blocked):
    # Deeper than a block of panels (1024 rows of the weight): the blocks' sums are added up, the
    # last block not a whole tile row deep; 40 rows are one whole task of 32 and one of 8. On AMX
    # tiles a block deeper than 512 rows is taken in parts whose sums are added up too; up to 128
    # rows the bfloat16 blocks are 256 deep and 2048 wide (700: one block in two parts at 300
    # rows, three blocks at 40; 4200 columns: two blocks of columns a thread), and up to 256 rows
    # 512 deep and 1024 wide for weights at least 2048 deep (2100 at 200 rows: five blocks).
    weight = quantize_weight(out_features, in_features, "per_channel_affine")
    grad_output = torch.randn(rows, out_features).to(torch.bfloat16)
    got = bf16_backward(grad_output, weight, blocked)
    assert_as_accurate_as_dense(got, grad_output, weight.dequantize_float64())


@pytest.mark.parametrize("blocked", [False, True])
def test_deep_blocks_where_the_sums_lie_past_l2(blocked):
    # 1100 x 1000 float32 sums (4.4 MB) lie past the threads' L2: on AMD's Zen 5 and later, the
    # 4300 rows of weight are one block of shared panels (three where the sums fit), whose sums
    # are rounded to bfloat16 as they are stored, with no float32 output.
    weight = quantize_weight(4300, 1000, "per_channel_affine")
    grad_output = torch.randn(1100, 4300).to(torch.bfloat16)
    got = bf16_backward(grad_output, weight, blocked)
    assert_as_accurate_as_dense(got, grad_output, weight.dequantize_float64())
