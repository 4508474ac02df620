"""Backward precision modes: accuracy bounds, recording at forward time, controls (their refusals:
test_bad_arguments.py)."""

import threading

import pytest
import torch

import qlgrad
from helpers import (
    ERROR_BOUNDS,
    SCHEMES,
    packed_params,
    quantize_weight,
    reference_input_gradient,
    relative_error,
    run_python,
)


@pytest.mark.parametrize("precision", ERROR_BOUNDS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_mode_within_its_error_bound(precision, scheme):
    weight = quantize_weight(384, 256, scheme)
    packed = packed_params(weight)
    grad_output = torch.randn(64, 384)
    expected = reference_input_gradient(grad_output, weight)
    zero_point = weight.zero_point if scheme.endswith("affine") else None

    from_packed = qlgrad.linear_dynamic_backward(grad_output, packed, precision)
    from_int8 = qlgrad.linear_int8_backward(grad_output, weight.values, weight.scale, zero_point, precision)
    for got in (from_packed, from_int8):
        assert got.dtype == torch.float32
        assert relative_error(got, expected) <= ERROR_BOUNDS[precision]


# Row counts on both sides of the switches from the streaming kernel (reading each weight row
# once for up to 8 gradient rows; in up to four passes on AVX-512 CPUs) to the GEMMs: partial
# and whole blocks of the 12 rows the AVX-512 kernel takes at once, more rows than it runs at
# once (144), both sides of the panel GEMM's division by columns (up to 255 rows) and by rows
# and columns, and the tiled GEMM from 512 rows on Intel CPUs. 1100 columns leave a partial last
# tile and panel; 300 rows of weight make two blocks of depth.
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9, 13, 17, 32, 33, 64, 150, 255, 256, 512])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_kernel_is_exact_to_float32_rounding(rows, scheme):
    weight = quantize_weight(300, 1100, scheme)
    packed = packed_params(weight)
    grad_output = torch.randn(rows, 300)
    expected = reference_input_gradient(grad_output, weight)
    for precision in ERROR_BOUNDS:
        got = qlgrad.linear_dynamic_backward(grad_output, packed, precision)
        assert relative_error(got, expected) <= ERROR_BOUNDS[precision], precision
    fp16_weight = weight.dequantize_float64().half()
    fp16_packed = torch.ops.quantized.linear_prepack_fp16(fp16_weight.float(), None)
    got = qlgrad.linear_dynamic_fp16_backward(grad_output, fp16_packed, "fp32")
    assert relative_error(got, grad_output.double() @ fp16_weight.double()) <= ERROR_BOUNDS["fp32"]


@pytest.mark.parametrize("rows", [1, 8, 9])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_few_rows_run_the_float32_stream_in_every_precision(rows, scheme):
    # Up to 8 rows the product is bound by reading the weight: every precision streams it in
    # float32, as fast as any narrower arithmetic and exact; from 9 rows they part.
    weight = quantize_weight(300, 200, scheme)
    packed = packed_params(weight)
    grad_output = torch.randn(rows, 300)
    fp32 = qlgrad.linear_dynamic_backward(grad_output, packed, "fp32")
    for precision in ("bf16", "int8"):
        got = qlgrad.linear_dynamic_backward(grad_output, packed, precision)
        assert torch.equal(got, fp32) == (rows <= 8), precision


def test_precision_is_recorded_when_the_forward_runs():
    weight = quantize_weight(64, 96, "per_channel_affine")
    packed = packed_params(weight)
    # More than 8 rows: up to 8, every precision runs fp32's stream.
    x = torch.randn(16, 96, requires_grad=True)
    grad_output = torch.randn(16, 64)
    with qlgrad.backward_precision("int8"):
        y = torch.ops.quantized.linear_dynamic(x, packed, False)
    assert qlgrad.get_backward_precision() == "fp32"
    y.backward(grad_output)
    assert torch.equal(x.grad, qlgrad.linear_dynamic_backward(grad_output, packed, "int8"))
    assert not torch.equal(x.grad, qlgrad.linear_dynamic_backward(grad_output, packed, "fp32"))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_double_backward_uses_the_exact_adjoint(precision):
    weight = quantize_weight(16, 24, "per_tensor_affine")
    packed = packed_params(weight)
    grad_output = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    v = torch.randn(5, 24, dtype=torch.float64)
    (gg,) = torch.autograd.grad(qlgrad.linear_dynamic_backward(grad_output, packed, precision), grad_output, v)
    torch.testing.assert_close(gg, v @ weight.dequantize_float64().T, rtol=1e-6, atol=1e-6)


def test_int8_mode_turns_rows_with_nan_or_inf_into_nan():
    weight = quantize_weight(8, 12, "per_channel_symmetric")
    grad_output = torch.randn(12, 8)  # more than 8 rows, which run fp32's stream
    grad_output[1, 3] = float("nan")
    grad_output[2, 0] = float("inf")
    got = qlgrad.linear_int8_backward(grad_output, weight.values, weight.scale, precision="int8")
    assert got[1].isnan().all() and got[2].isnan().all()
    assert got[[0, *range(3, 12)]].isfinite().all()


def test_zero_rows_give_zero_gradients_in_int8_mode():
    weight = quantize_weight(8, 12, "per_tensor_symmetric")
    got = qlgrad.linear_int8_backward(torch.zeros(3, 8), weight.values, weight.scale, precision="int8")
    assert torch.equal(got, torch.zeros(3, 12))


def test_every_precision_has_an_error_bound():
    assert tuple(ERROR_BOUNDS) == qlgrad.PRECISIONS


def test_context_manager_restores_and_nests():
    assert qlgrad.get_backward_precision() == "fp32"
    with qlgrad.backward_precision("bf16"):
        with qlgrad.backward_precision("int8"):
            assert qlgrad.get_backward_precision() == "int8"
        assert qlgrad.get_backward_precision() == "bf16"
    assert qlgrad.get_backward_precision() == "fp32"


def test_context_manager_is_per_thread():
    seen = []
    with qlgrad.backward_precision("int8"):
        thread = threading.Thread(target=lambda: seen.append(qlgrad.get_backward_precision()))
        thread.start()
        thread.join()
    assert seen == ["fp32"]


def test_process_default_is_settable():
    try:
        qlgrad.set_backward_precision("bf16")
        assert qlgrad.get_backward_precision() == "bf16"
        with qlgrad.backward_precision("int8"):
            assert qlgrad.get_backward_precision() == "int8"
        assert qlgrad.get_backward_precision() == "bf16"
    finally:
        qlgrad.set_backward_precision("fp32")


def test_environment_variable_sets_the_default():
    result = run_python(
        "import os; os.environ['QLGRAD_BACKWARD_PRECISION'] = 'int8'\n"
        "import qlgrad; print(qlgrad.get_backward_precision())\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "int8"


def test_bad_environment_variable_is_a_clear_error_not_a_crash():
    result = run_python(
        "import os; os.environ['QLGRAD_BACKWARD_PRECISION'] = 'fp64'\n"
        "import qlgrad\n"
        "try:\n"
        "    qlgrad.get_backward_precision()\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "QLGRAD_BACKWARD_PRECISION" in result.stdout and "'fp64'" in result.stdout
