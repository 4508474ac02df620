"""The standalone backward API: linear_int8_backward and linear_dynamic_backward (their opchecks are in
test_opcheck.py, their refusals in test_bad_arguments.py)."""

import pytest
import torch

import qlgrad
from helpers import (
    SCHEMES,
    int8_args,
    int8_sample_inputs,
    packed_params,
    quantize_weight,
    reference_input_gradient,
    relative_error,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_int8_backward_matches_float64_reference(dtype):
    for args, weight in int8_sample_inputs(dtype):
        got = qlgrad.linear_int8_backward(*args)
        assert got.dtype == dtype and got.shape == (*args[0].shape[:-1], 10)
        torch.testing.assert_close(got.double(), reference_input_gradient(args[0], weight), rtol=1e-5, atol=1e-6)


# Each precision's error bound (README): float32 sums, bfloat16 products, an int8 gradient.
PRECISION_ERRORS = {"fp32": 1e-5, "bf16": 1e-2, "int8": 2e-2}


@pytest.mark.parametrize("precision", qlgrad.PRECISIONS)
@pytest.mark.parametrize("out_features", [20, 37, 48, 148])
def test_one_thread_and_two_give_the_same_bits(precision, out_features):
    """With more than one thread, from 128 rows, the gradient's rows packed for the panel kernels,
    which every thread reads, go past the caches (on Zen 4 CPUs, and wherever
    QLGRAD_STREAMED_PACKED_ROWS=1, as test_cpu_capability.py runs this test); with one, or fewer
    rows, through them: the same bits either way. The depths (the output features) end in part of
    a step of 16 four-byte lanes, or leave later blocks of 12 packed rows off the cache lines'
    starts (float32, bfloat16 pairs, int8 quads); the rows are past the streams', in blocks of 12
    and a partial one, divided by columns (37, 150) or shared (256, 300)."""
    weight = quantize_weight(out_features, 72, "per_channel_affine")
    args = int8_args(weight, "per_channel_affine")
    previous = torch.get_num_threads()
    try:
        for rows in (37, 150, 256, 300):
            grad_output = torch.randn(rows, out_features)
            results = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                results.append(qlgrad.linear_int8_backward(grad_output, *args, precision=precision))
            assert torch.equal(results[0], results[1]), rows
            expected = reference_input_gradient(grad_output, weight)
            assert relative_error(results[1], expected) <= PRECISION_ERRORS[precision], rows
    finally:
        torch.set_num_threads(previous)


def test_int8_backward_gradcheck_and_gradgradcheck():
    for args, _ in int8_sample_inputs(torch.float64, requires_grad=True):
        if args[0].numel() == 0:
            continue
        assert torch.autograd.gradcheck(lambda g: qlgrad.linear_int8_backward(g, *args[1:]), args[:1])
        assert torch.autograd.gradgradcheck(lambda g: qlgrad.linear_int8_backward(g, *args[1:]), args[:1])


def test_int8_backward_compiles():
    args, weight = next(int8_sample_inputs())
    compiled = torch.compile(qlgrad.linear_int8_backward, backend="eager", fullgraph=True)
    torch.testing.assert_close(
        compiled(*args).double(), reference_input_gradient(args[0], weight), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("scheme", SCHEMES)
def test_three_doors_agree(scheme):
    """The plain-int8 path, the packed path and the Autograd kernel give one result."""
    weight = quantize_weight(12, 20, scheme)
    packed = packed_params(weight)
    grad_output = torch.randn(4, 12)
    x = torch.randn(4, 20, requires_grad=True)
    torch.ops.quantized.linear_dynamic(x, packed, False).backward(grad_output)

    from_int8 = qlgrad.linear_int8_backward(grad_output, *int8_args(weight, scheme))
    from_packed = qlgrad.linear_dynamic_backward(grad_output, packed)
    torch.testing.assert_close(from_packed, x.grad, rtol=0, atol=0)
    torch.testing.assert_close(from_int8, from_packed, rtol=1e-6, atol=1e-6)


def test_dynamic_backward_gradcheck_and_gradgradcheck():
    packed = packed_params(quantize_weight(6, 10, "per_channel_affine"))
    grad_output = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g: qlgrad.linear_dynamic_backward(g, packed), (grad_output,))
    assert torch.autograd.gradgradcheck(lambda g: qlgrad.linear_dynamic_backward(g, packed), (grad_output,))


def test_autograd_identity_crosses_the_binding():
    weight = quantize_weight(6, 10, "per_tensor_affine")
    grad_output = torch.randn(3, 6, requires_grad=True)
    result = qlgrad.linear_int8_backward(grad_output, weight.values, weight.scale, weight.zero_point)
    assert result.requires_grad and result.grad_fn is not None
    result.sum().backward()
    assert grad_output.grad is not None  # flowed back into the caller's own tensor object
    plain = torch.randn(3, 6)
    assert qlgrad.linear_int8_backward(plain, weight.values, weight.scale).grad_fn is None
