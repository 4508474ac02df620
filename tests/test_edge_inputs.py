"""Valid but unusual arguments of the standalone backward functions: every layout, dtype and
size a gradient may come in, non-finite gradients, and arguments left untouched."""

import itertools

import pytest
import torch

import qlgrad
from helpers import (
    ERROR_BOUNDS,
    GRAD_OUTPUT_LAYOUTS,
    OUTPUT_DTYPE_ERROR_BOUNDS,
    SCHEMES,
    dequantize_plain,
    fp16_backward_under_test,
    int8_backwards_under_test,
    packed_params,
    quantize_weight,
    relative_error,
)

PRECISIONS = tuple(ERROR_BOUNDS)
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
LEADING_DIMS = ((), (5,), (2, 3), (0,), (3, 0))


def backwards_under_test(out_features=24, in_features=40, scheme="per_channel_affine"):
    """Every backward function, for a weight as quantize_dynamic would make it."""
    weight = quantize_weight(out_features, in_features, scheme)
    zero_point = weight.zero_point if scheme.endswith("affine") else None
    yield from int8_backwards_under_test(weight.values, weight.scale, zero_point)
    yield fp16_backward_under_test(weight.qweight.dequantize())


def allowed_error(under_test, precision, dtype):
    return max(ERROR_BOUNDS[under_test.effective_precision(precision)], OUTPUT_DTYPE_ERROR_BOUNDS[dtype])


def test_every_layout_dtype_and_precision_matches_the_reference():
    """Transposed, sliced and expanded (stride 0) gradients, zero-size batches, four dtypes."""
    generator = torch.Generator().manual_seed(0)
    failures = []
    for under_test in backwards_under_test():
        for layout, leading, dtype, precision in itertools.product(
            GRAD_OUTPUT_LAYOUTS, LEADING_DIMS, DTYPES, PRECISIONS
        ):
            grad_output = GRAD_OUTPUT_LAYOUTS[layout](leading, 24, dtype, generator)
            got = under_test.backward(grad_output, precision)
            label = f"{under_test.name} {layout} {leading} {dtype} {precision}"
            if got.dtype != dtype or got.shape != (*leading, 40):
                failures.append(f"{label}: got {got.dtype} {tuple(got.shape)}")
            elif got.numel() and relative_error(got, under_test.reference(grad_output)) > allowed_error(
                under_test, precision, dtype
            ):
                failures.append(f"{label}: relative error {relative_error(got, under_test.reference(grad_output)):.2e}")
    assert not failures, "\n".join(failures)


# A gradient row of 65536 elements is one dot product of that length per output: float32
# rounding grows like sqrt(length) (to about 4e-6 here), and the row's largest element, which
# sets int8's step, like sqrt(2 log(length)) times its typical one.
LONG_ROW_ERROR_BOUNDS = {"fp32": 1e-5, "bf16": 1e-2, "int8": 3e-2}


@pytest.mark.parametrize(
    "out_features, in_features, bounds",
    [(4, 65536, ERROR_BOUNDS), (65536, 4, LONG_ROW_ERROR_BOUNDS)],
    ids=["65536 in_features", "65536 out_features"],
)
def test_large_dimensions(out_features, in_features, bounds):
    grad_output = torch.randn(3, out_features)
    for under_test, precision in itertools.product(
        backwards_under_test(out_features, in_features, "per_channel_affine"), PRECISIONS
    ):
        got = under_test.backward(grad_output, precision)
        assert got.shape == (3, in_features)
        error = relative_error(got, under_test.reference(grad_output))
        assert error <= bounds[under_test.effective_precision(precision)], (under_test.name, precision, error)


def test_unusual_but_valid_parameter_forms():
    """Scales of every floating dtype, 0-dim or [1] per tensor; zero points of any integer dtype;
    a non-contiguous weight."""
    weight = quantize_weight(6, 10, "per_channel_affine")
    transposed_values = weight.values.t().contiguous().t()
    grad_output = torch.randn(4, 6)
    forms = [
        (weight.values, weight.scale[0], weight.zero_point[0]),  # 0-dim, per tensor
        (weight.values, weight.scale[:1], None),
        (transposed_values, weight.scale, weight.zero_point),
        *[(weight.values, weight.scale.to(dtype), weight.zero_point) for dtype in DTYPES],
        *[
            (weight.values, weight.scale, weight.zero_point.to(dtype))
            for dtype in (torch.int8, torch.int16, torch.int32)
        ],
        (weight.values, weight.scale, weight.zero_point.abs().to(torch.uint8)),
    ]
    for values, scale, zero_point in forms:
        expected = grad_output.double() @ dequantize_plain(values, scale, zero_point)
        got = qlgrad.linear_int8_backward(grad_output, values, scale, zero_point)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


# The rows of nonfinite_grad_output holding a NaN or an Inf, and the finite ones.
NONFINITE_ROWS = slice(1, 4)
FINITE_ROWS = [0, *range(4, 40)]


def nonfinite_grad_output(out_features, dtype=torch.float32):
    """Rows: finite, one NaN, one +Inf, one -Inf, then finite: 40 in all, so that the reduced
    precisions run their own kernels (up to 8 rows, 32 on AVX-512 CPUs, 16 on Intel's, every
    precision runs fp32's)."""
    grad_output = torch.randn(40, out_features)
    grad_output[1, 2], grad_output[2, 0], grad_output[3, out_features - 1] = float("nan"), float("inf"), float("-inf")
    return grad_output.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_nonfinite_gradients_propagate_as_documented(precision, dtype):
    """fp32 and bf16 follow IEEE arithmetic: the NaN and Inf of the result are those of the float64
    reference. int8 has no code for NaN or Inf: a row holding one becomes all NaN."""
    grad_output = nonfinite_grad_output(24, dtype)
    for under_test in backwards_under_test():
        got = under_test.backward(grad_output, precision).double()
        expected = under_test.reference(grad_output)
        tolerance = allowed_error(under_test, precision, dtype) * expected[FINITE_ROWS].abs().max().item()
        if under_test.effective_precision(precision) == "int8":
            assert got[NONFINITE_ROWS].isnan().all(), under_test.name
            got, expected = got[FINITE_ROWS], expected[FINITE_ROWS]
        torch.testing.assert_close(got, expected, rtol=0, atol=tolerance, equal_nan=True, msg=under_test.name)


def test_nonfinite_gradients_through_the_autograd_kernel():
    weight = quantize_weight(24, 40, "per_channel_affine")
    packed = packed_params(weight)
    x = torch.randn(40, 40, requires_grad=True)
    grad_output = nonfinite_grad_output(24)
    torch.ops.quantized.linear_dynamic(x, packed, False).backward(grad_output)
    torch.testing.assert_close(
        x.grad, qlgrad.linear_dynamic_backward(grad_output, packed), rtol=0, atol=0, equal_nan=True
    )
    assert (~x.grad[NONFINITE_ROWS].isfinite()).any(dim=1).all() and x.grad[FINITE_ROWS].isfinite().all()


def snapshot(tensors):
    return [(tensor, tensor.detach().clone(), tensor._version) for tensor in tensors]


@pytest.mark.usefixtures("fresh_cache")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_no_argument_is_modified(precision):
    """Values and versions (an in-place write bumps _version) of every tensor argument of every
    entry point, a non-contiguous gradient among them, and the weights inside packed params."""
    for scheme in SCHEMES:
        weight = quantize_weight(6, 10, scheme)
        zero_point = weight.zero_point if scheme.endswith("affine") else None
        packed = packed_params(weight, torch.randn(6))
        fp16_packed = torch.ops.quantized.linear_prepack_fp16(weight.qweight.dequantize(), torch.randn(6))
        packed_before = [packed.unpack(), fp16_packed.unpack()]
        grad_output = torch.randn(6, 3).t().requires_grad_()
        x, gradient = torch.randn(3, 10, requires_grad=True), torch.randn(3, 6)
        tensors = [grad_output, x, gradient, weight.values, weight.scale] + (
            [zero_point] if zero_point is not None else []
        )
        before = snapshot(tensors)

        qlgrad.linear_int8_backward(grad_output, weight.values, weight.scale, zero_point, precision).sum().backward()
        qlgrad.linear_dynamic_backward(grad_output, packed, precision).sum().backward()
        qlgrad.linear_dynamic_fp16_backward(grad_output, fp16_packed, precision).sum().backward()
        torch.ops.qlgrad.cache_weight(packed)
        with qlgrad.backward_precision(precision):
            y = torch.ops.quantized.linear_dynamic(x, packed, False) + torch.ops.quantized.linear_dynamic_fp16(
                x, fp16_packed
            )
        y.backward(gradient)

        for tensor, values, version in before:
            assert tensor._version == version and torch.equal(tensor.detach(), values), scheme
        for (weight_before, bias_before), (weight_after, bias_after) in zip(
            packed_before, [packed.unpack(), fp16_packed.unpack()]
        ):
            assert torch.equal(
                weight_after.int_repr() if weight_after.is_quantized else weight_after,
                weight_before.int_repr() if weight_before.is_quantized else weight_before,
            )
            assert torch.equal(bias_after, bias_before)


# ---- Regressions: bugs these tests found ---------------------------------------------------


@pytest.mark.usefixtures("fresh_cache")
@pytest.mark.parametrize("warm_up", ["backward", "cache_weight"])
def test_kind_check_does_not_depend_on_the_cache(warm_up):
    int8_packed = packed_params(quantize_weight(6, 10, "per_tensor_symmetric"))
    fp16_packed = torch.ops.quantized.linear_prepack_fp16(torch.randn(6, 10), None)
    grad_output = torch.randn(2, 6)
    if warm_up == "backward":
        qlgrad.linear_dynamic_backward(grad_output, int8_packed)
        qlgrad.linear_dynamic_fp16_backward(grad_output, fp16_packed)
    else:
        torch.ops.qlgrad.cache_weight(int8_packed)
        torch.ops.qlgrad.cache_weight(fp16_packed)
    with pytest.raises(TypeError, match="linear_dynamic_fp16 expects fp16 packed weights"):
        qlgrad.linear_dynamic_fp16_backward(grad_output, int8_packed)
    with pytest.raises(TypeError, match="linear_dynamic expects qint8 packed weights"):
        qlgrad.linear_dynamic_backward(grad_output, fp16_packed)


def test_int8_mode_keeps_tiny_gradient_rows():
    weight = quantize_weight(24, 40, "per_channel_affine")
    grad_output = torch.randn(4, 24) * 1e-36  # times channel scales of about 4e-3
    for under_test in int8_backwards_under_test(weight.values, weight.scale, weight.zero_point):
        got = under_test.backward(grad_output, "int8")
        assert relative_error(got, under_test.reference(grad_output)) <= ERROR_BOUNDS["int8"], under_test.name


@pytest.mark.parametrize("nonfinite", [float("inf"), float("nan")])
def test_fused_relu_masks_nonfinite_gradients_like_relu(nonfinite):
    packed = packed_params(quantize_weight(6, 10, "per_tensor_affine"))
    x = torch.randn(8, 10)
    fused_x, unfused_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    fused = torch.ops.quantized.linear_relu_dynamic(fused_x, packed, False)
    unfused = torch.relu(torch.ops.quantized.linear_dynamic(unfused_x, packed, False))
    gradient = torch.randn(8, 6)
    gradient[fused == 0] = nonfinite  # only where the ReLU cut
    assert (fused == 0).any()
    fused.backward(gradient)
    unfused.backward(gradient)
    torch.testing.assert_close(fused_x.grad, unfused_x.grad)
