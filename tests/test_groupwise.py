"""linear_int8_backward with group-wise scales and zero points ([N, G]): every kernel path
against the float64 reference, gradcheck and gradgradcheck, the three doors (its opcheck is in
test_opcheck.py, its refusals in test_bad_arguments.py)."""

import pytest
import torch

import qlgrad
from helpers import ERROR_BOUNDS, relative_error

# (out_features, in_features, groups): group sizes that fill whole 16-lane vectors and ones that
# do not, one group and many, a row count beyond a panel's 32 columns.
SHAPES = ((64, 128, 4), (40, 96, 3), (130, 520, 13), (48, 64, 64), (96, 4096, 32))
# Both sides of every kernel switch: the stream (1-8 rows, up to 32 in passes on AVX-512 CPUs, 16
# on Intel's, 8 for groups of up to 32 and 16 for larger ones on a Zen 5), the panel GEMM by
# columns (up to 255) and by rows and columns (256 on), the tiles (from 256 on Intel CPUs).
ROW_COUNTS = (1, 3, 8, 9, 13, 16, 17, 24, 25, 32, 33, 64, 150, 255, 256, 512)


def groupwise_weight(out_features, in_features, groups, asymmetric=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(-128, 128, (out_features, in_features), dtype=torch.int8, generator=generator)
    scale = torch.rand(out_features, groups, generator=generator) * 0.05 + 1e-3
    zero_point = torch.randint(-20, 20, (out_features, groups), generator=generator) if asymmetric else None
    return values, scale, zero_point


def reference(grad_output, values, scale, zero_point=None):
    """grad_output @ W_deq in float64, W_deq[n, k] = scale[n, g] * (values[n, k] - zero_point[n, g])."""
    n, k = values.shape
    groups = scale.shape[1]
    weight = values.double().view(n, groups, k // groups)
    if zero_point is not None:
        weight = weight - zero_point.double().view(n, groups, 1)
    weight = (weight * scale.double().view(n, groups, 1)).view(n, k)
    return grad_output.double() @ weight


@pytest.mark.parametrize("asymmetric", [False, True], ids=["symmetric", "asymmetric"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("precision", qlgrad.PRECISIONS)
def test_matches_float64_reference(precision, shape, asymmetric):
    values, scale, zero_point = groupwise_weight(*shape, asymmetric=asymmetric)
    for rows in ROW_COUNTS:
        grad_output = torch.randn(rows, shape[0])
        got = qlgrad.linear_int8_backward(grad_output, values, scale, zero_point, precision)
        assert got.dtype == torch.float32 and got.shape == (rows, shape[1])
        # int8 has no integer GEMM for group-wise scales: it runs as fp32, exactly.
        bound = ERROR_BOUNDS["fp32" if precision == "int8" else precision]
        assert relative_error(got, reference(grad_output, values, scale, zero_point)) <= bound, rows


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_grad_output_dtypes_and_leading_dims(dtype):
    values, scale, zero_point = groupwise_weight(32, 96, 3)
    grad_output = torch.randn(2, 3, 32, dtype=dtype)
    got = qlgrad.linear_int8_backward(grad_output, values, scale.to(dtype), zero_point)
    assert got.dtype == dtype and got.shape == (2, 3, 96)
    bound = 0.0 if dtype == torch.float64 else 1e-2
    expected = reference(grad_output, values, scale.to(dtype), zero_point)
    assert relative_error(got, expected) <= max(bound, 1e-12)


def test_one_group_is_per_channel():
    values, scale, zero_point = groupwise_weight(24, 40, 1)
    grad_output = torch.randn(5, 24)
    grouped = qlgrad.linear_int8_backward(grad_output, values, scale, zero_point)
    per_channel = qlgrad.linear_int8_backward(grad_output, values, scale.reshape(-1), zero_point.reshape(-1))
    assert torch.equal(grouped, per_channel)


def test_gradcheck_and_gradgradcheck():
    values, scale, zero_point = groupwise_weight(8, 12, 3)
    grad_output = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)

    def backward(g):
        return qlgrad.linear_int8_backward(g, values, scale, zero_point)

    assert torch.autograd.gradcheck(backward, (grad_output,))
    assert torch.autograd.gradgradcheck(backward, (grad_output,))


def test_three_doors_agree():
    values, scale, zero_point = groupwise_weight(16, 64, 4)
    grad_output = torch.randn(3, 16)
    python = qlgrad.linear_int8_backward(grad_output, values, scale, zero_point)
    dispatcher = torch.ops.qlgrad.linear_int8_backward(grad_output, values, scale, zero_point)
    assert torch.equal(python, dispatcher)


def test_arguments_are_not_modified():
    values, scale, zero_point = groupwise_weight(16, 64, 4)
    copies = [t.clone() for t in (values, scale, zero_point)]
    qlgrad.linear_int8_backward(torch.randn(9, 16), values, scale, zero_point, "bf16")
    assert all(torch.equal(a, b) for a, b in zip(copies, (values, scale, zero_point)))


@pytest.mark.parametrize("precision", qlgrad.PRECISIONS)
def test_zero_points_of_zero_are_no_zero_points(precision):
    # Zero points that are all zero (a symmetric quantization's) are not read at all.
    values, scale, _ = groupwise_weight(96, 4096, 32)
    zeros = torch.zeros(96, 32, dtype=torch.int8)
    for rows in (3, 64, 256):
        grad_output = torch.randn(rows, 96)
        with_zeros = qlgrad.linear_int8_backward(grad_output, values, scale, zeros, precision)
        assert torch.equal(with_zeros, qlgrad.linear_int8_backward(grad_output, values, scale, None, precision))


@pytest.mark.parametrize("rows", (3, 64, 256))
def test_one_nonzero_zero_point_after_many_zeros_counts(rows):
    # 12 KiB of zero points whose last one alone is not zero: the only nonzero weight values are
    # that group's, in the backward and in the forward of torchao's group-wise layers.
    out_features, in_features, groups = 96, 4096, 128
    values = torch.zeros(out_features, in_features, dtype=torch.int8)
    scale = torch.full((out_features, groups), 0.01)
    zero_point = torch.zeros(out_features, groups, dtype=torch.int8)
    zero_point[-1, -1] = -50
    grad_output = torch.randn(rows, out_features)
    backward = qlgrad.linear_int8_backward(grad_output, values, scale, zero_point)
    assert relative_error(backward, reference(grad_output, values, scale, zero_point)) <= ERROR_BOUNDS["fp32"]
    input = torch.randn(rows, in_features, dtype=torch.bfloat16)
    forward = torch.ops.qlgrad._int8_groupwise_linear(input, values, scale.bfloat16(), zero_point)
    weight = reference(torch.eye(out_features), values, scale.bfloat16(), zero_point)
    assert relative_error(forward, input.double() @ weight.t()) <= 1e-2
