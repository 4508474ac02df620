"""Backward precision modes: accuracy bounds, recording at forward time, the default that follows
the gradient's dtype, controls (their refusals: test_bad_arguments.py)."""

import math
import threading

import pytest
import torch

import qlgrad
from helpers import (
    ERROR_BOUNDS,
    SCHEMES,
    choosing,
    packed_params,
    quantize_weight,
    reference_input_gradient,
    relative_error,
    run_python,
    streamed_rows_end,
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
# once for up to 8 gradient rows; in up to four passes on AVX-512 CPUs, two on Intel's) to the
# GEMMs: partial and whole blocks of the 12 rows the AVX-512 kernel takes at once, more rows than
# it runs at once (144), both sides of the panel GEMM's division by columns (up to 255 rows) and
# by rows and columns, and the tiled GEMM from 256 rows on Intel CPUs. 1100 columns leave a
# partial last tile and panel; 300 rows of weight make two blocks of depth. fbgemm's packing
# (streamed up to 16 rows) and codes in rows (up to 24 on a Zen 5; float16 values up to 8 there).
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9, 13, 16, 17, 24, 25, 32, 33, 64, 150, 255, 256, 512])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_kernel_is_exact_to_float32_rounding(rows, scheme):
    weight = quantize_weight(300, 1100, scheme)
    packed = packed_params(weight)
    zero_point = weight.zero_point if scheme.endswith("affine") else None
    grad_output = torch.randn(rows, 300)
    expected = reference_input_gradient(grad_output, weight)
    for precision in ERROR_BOUNDS:
        got = qlgrad.linear_dynamic_backward(grad_output, packed, precision)
        assert relative_error(got, expected) <= ERROR_BOUNDS[precision], precision
        got = qlgrad.linear_int8_backward(grad_output, weight.values, weight.scale, zero_point, precision)
        assert relative_error(got, expected) <= ERROR_BOUNDS[precision], precision
    fp16_weight = weight.dequantize_float64().half()
    fp16_packed = torch.ops.quantized.linear_prepack_fp16(fp16_weight.float(), None)
    got = qlgrad.linear_dynamic_fp16_backward(grad_output, fp16_packed, "fp32")
    assert relative_error(got, grad_output.double() @ fp16_weight.double()) <= ERROR_BOUNDS["fp32"]


# Where the sums of every row and column lie past the threads' L2 (1100 x 1000 float32 sums, 4.4
# MB), the shared panels take deeper blocks on AMD's Zen 5 and later: 4300 rows of weight make
# two blocks of fp32 panels and one of bf16 and of int8 panels (five, three and two where the
# sums fit). fbgemm's packing read in place and codes in rows. fp32's bound grows with the
# square root of the depth from the 300 rows of weight it is set for, as a float32 sum's rounding
# error does (1.2e-6 measured; the dense float32 GEMMs 2.6e-7 and 5.6e-7).
@pytest.mark.parametrize("scheme", ["per_tensor_affine", "per_channel_symmetric"])
def test_deep_blocks_of_shared_panels_are_exact(scheme):
    depth = 4300
    weight = quantize_weight(depth, 1000, scheme)
    packed = packed_params(weight)
    grad_output = torch.randn(1100, depth)
    expected = reference_input_gradient(grad_output, weight)
    bounds = {**ERROR_BOUNDS, "fp32": ERROR_BOUNDS["fp32"] * math.sqrt(depth / 300)}
    for precision, bound in bounds.items():
        got = qlgrad.linear_dynamic_backward(grad_output, packed, precision)
        assert relative_error(got, expected) <= bound, precision
        got = qlgrad.linear_int8_backward(grad_output, weight.values, weight.scale, weight.zero_point, precision)
        assert relative_error(got, expected) <= bound, precision


# Gradients from near float32's smallest normal results to near its largest, one row a thousand
# times smaller than the others: a kernel that splits or scales the gradient (on AMX tiles, fp32
# multiplies three bfloat16 parts of each row scaled by a power of two, 512 rows at a time) keeps
# float32's accuracy at every magnitude, and non-finite values give what the float64 product
# gives where they are.
@pytest.mark.parametrize("rows", [9, 600])
@pytest.mark.parametrize("magnitude", [1e-33, 1.0, 1e30])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_fp32_keeps_its_accuracy_at_every_magnitude(rows, magnitude, scheme):
    weight = quantize_weight(300, 1100, scheme)
    packed = packed_params(weight)
    grad_output = torch.randn(rows, 300) * magnitude
    grad_output[rows // 2] *= 1e-3  # a row far smaller than the others
    expected = reference_input_gradient(grad_output, weight)
    got = qlgrad.linear_dynamic_backward(grad_output, packed, "fp32")
    assert relative_error(got, expected) <= ERROR_BOUNDS["fp32"]
    assert relative_error(got[rows // 2], expected[rows // 2]) <= ERROR_BOUNDS["fp32"]
    if magnitude == 1.0:
        grad_output[1, 5], grad_output[2, 7] = float("inf"), float("nan")
        expected = reference_input_gradient(grad_output, weight)
        got = qlgrad.linear_dynamic_backward(grad_output, packed, "fp32")
        finite = expected.isfinite()
        assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.isinf(), expected.isinf())
        assert torch.equal(got[~finite & ~expected.isnan()], expected[~finite & ~expected.isnan()].float())
        assert relative_error(got[finite], expected[finite]) <= ERROR_BOUNDS["fp32"]


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 6, 7, 8, 9, 15, 16, 32, 33])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_few_rows_run_the_float32_stream_in_every_precision(rows, scheme):
    # Up to streamed_rows_end() rows (8, or 32 on AVX-512 CPUs, 16 on Intel's; fewer for bf16 and
    # int8 where their own kernels are faster) the product is bound by reading the weight: the
    # precision streams it in float32, exact; past it they part. fbgemm's packing, codes in rows
    # and float16 values.
    weight = quantize_weight(300, 200, scheme)
    packed = packed_params(weight)
    zero_point = weight.zero_point if scheme.endswith("affine") else None
    grad_output = torch.randn(rows, 300)
    fp32 = qlgrad.linear_dynamic_backward(grad_output, packed, "fp32")
    fp32_in_rows = qlgrad.linear_int8_backward(grad_output, weight.values, weight.scale, zero_point, "fp32")
    float16 = torch.ops.quantized.linear_prepack_fp16(weight.dequantize_float64().float(), None)
    fp32_float16 = qlgrad.linear_dynamic_fp16_backward(grad_output, float16, "fp32")
    for precision in ("bf16", "int8"):
        got = qlgrad.linear_dynamic_backward(grad_output, packed, precision)
        assert torch.equal(got, fp32) == (rows <= streamed_rows_end(precision, fbgemm_packing=True)), precision
        got = qlgrad.linear_int8_backward(grad_output, weight.values, weight.scale, zero_point, precision)
        assert torch.equal(got, fp32_in_rows) == (rows <= streamed_rows_end(precision)), precision
    got = qlgrad.linear_dynamic_fp16_backward(grad_output, float16, "bf16")
    assert torch.equal(got, fp32_float16) == (rows <= streamed_rows_end("bf16", float16_values=True))


def test_precision_is_recorded_when_the_forward_runs():
    weight = quantize_weight(64, 96, "per_channel_affine")
    packed = packed_params(weight)
    # Past the streams, where every precision runs fp32's.
    x = torch.randn(40, 96, requires_grad=True)
    grad_output = torch.randn(40, 64)
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
    grad_output = torch.randn(40, 8)  # past the streams, which run fp32's
    grad_output[1, 3] = float("nan")
    grad_output[2, 0] = float("inf")
    got = qlgrad.linear_int8_backward(grad_output, weight.values, weight.scale, precision="int8")
    assert got[1].isnan().all() and got[2].isnan().all()
    assert got[[0, *range(3, 40)]].isfinite().all()


def test_zero_rows_give_zero_gradients_in_int8_mode():
    weight = quantize_weight(8, 12, "per_tensor_symmetric")
    got = qlgrad.linear_int8_backward(torch.zeros(3, 8), weight.values, weight.scale, precision="int8")
    assert torch.equal(got, torch.zeros(3, 12))


def test_every_precision_has_an_error_bound():
    assert tuple(ERROR_BOUNDS) == qlgrad.PRECISIONS


def test_context_manager_restores_and_nests():
    assert qlgrad.get_backward_precision() == "fp32" and qlgrad.chosen_backward_precision() is None
    with qlgrad.backward_precision("bf16"):
        with qlgrad.backward_precision("int8"):
            assert qlgrad.get_backward_precision() == "int8"
            assert qlgrad.chosen_backward_precision() == "int8"
        assert qlgrad.get_backward_precision() == "bf16"
    assert qlgrad.get_backward_precision() == "fp32" and qlgrad.chosen_backward_precision() is None


def test_context_manager_is_per_thread():
    seen = []

    def look():
        seen.append((qlgrad.get_backward_precision(), qlgrad.chosen_backward_precision()))

    with qlgrad.backward_precision("int8"):
        thread = threading.Thread(target=look)
        thread.start()
        thread.join()
    assert seen == [("fp32", None)]


def test_process_default_is_settable():
    try:
        qlgrad.set_backward_precision("bf16")
        assert qlgrad.get_backward_precision() == "bf16"
        with qlgrad.backward_precision("int8"):
            assert qlgrad.get_backward_precision() == "int8"
        assert qlgrad.get_backward_precision() == "bf16"
        assert qlgrad.chosen_backward_precision() == "bf16"
    finally:
        qlgrad.set_backward_precision(None)
    assert qlgrad.get_backward_precision() == "fp32" and qlgrad.chosen_backward_precision() is None


def test_environment_variable_sets_the_default():
    result = run_python(
        "import os; os.environ['QLGRAD_BACKWARD_PRECISION'] = 'int8'\n"
        "import qlgrad; print(qlgrad.get_backward_precision(), qlgrad.chosen_backward_precision())\n"
        "qlgrad.set_backward_precision(None); print(qlgrad.chosen_backward_precision())\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["int8", "int8", "None"]


@pytest.mark.parametrize("value", [None, ""])
def test_nothing_chosen_without_the_environment_variable(value):
    set_variable = "os.environ.pop(name, None)" if value is None else "os.environ[name] = ''"
    result = run_python(
        f"import os; name = 'QLGRAD_BACKWARD_PRECISION'; {set_variable}\n"
        "import qlgrad; print(qlgrad.get_backward_precision(), qlgrad.chosen_backward_precision())\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["fp32", "None"]


# ---- The default follows the gradient's dtype ------------------------------------------------

# More gradient rows than the streams take (up to 32 on AVX-512 CPUs, which run every precision
# in float32; 16 on Intel's), so that bf16 can be told from fp32.
DEFAULT_ROWS = 64


def bf16_weight_and_grad(scheme="per_channel_affine"):
    weight = quantize_weight(96, 160, scheme)
    grad_output = torch.randn(DEFAULT_ROWS, 96, generator=torch.Generator().manual_seed(3)).bfloat16()
    return weight, grad_output


def standalone_backwards(weight, scheme="per_channel_affine"):
    """name -> (grad_output, precision) -> input gradient, for the int8 doors and the fp16 one."""
    zero_point = weight.zero_point if scheme.endswith("affine") else None
    packed = packed_params(weight)
    fp16_packed = torch.ops.quantized.linear_prepack_fp16(weight.qweight.dequantize(), None)
    return {
        "linear_int8_backward": lambda g, p=None: qlgrad.linear_int8_backward(
            g, weight.values, weight.scale, zero_point, p
        ),
        "linear_dynamic_backward": lambda g, p=None: qlgrad.linear_dynamic_backward(g, packed, p),
        "linear_dynamic_fp16_backward": lambda g, p=None: qlgrad.linear_dynamic_fp16_backward(g, fp16_packed, p),
    }


def assert_float32_rounded_once(got, grad_output, weight):
    """got is a float32 product rounded once to bfloat16. A float32 product lies within
    1e-5 * (|grad_output| @ |W_deq|) of the float64 one (the dot products here are 96 long), so
    got is, bit for bit, the float64 product rounded to bfloat16 wherever that interval holds no
    bfloat16 rounding boundary, and lies between the roundings of its ends everywhere."""
    dequantized = weight.dequantize_float64()
    exact = grad_output.double() @ dequantized
    tolerance = 1e-5 * (grad_output.double().abs() @ dequantized.abs())
    low, high = (exact - tolerance).bfloat16(), (exact + tolerance).bfloat16()
    assert got.dtype == torch.bfloat16
    assert ((low <= got) & (got <= high)).all()
    unambiguous = low == high
    assert unambiguous.float().mean() > 0.8  # about 90% here
    assert torch.equal(got[unambiguous], exact.bfloat16()[unambiguous])


def test_nothing_chosen_runs_bf16_for_bfloat16_gradients():
    assert qlgrad.chosen_backward_precision() is None
    weight, grad_output = bf16_weight_and_grad()
    for name, backward in standalone_backwards(weight).items():
        got = backward(grad_output)
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, backward(grad_output, "bf16")), name
        assert not torch.equal(got, backward(grad_output, "fp32")), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_nothing_chosen_runs_fp32_for_every_other_dtype(dtype):
    weight, grad_output = bf16_weight_and_grad()
    grad_output = grad_output.to(dtype)
    for name, backward in standalone_backwards(weight).items():
        got = backward(grad_output)
        assert got.dtype == dtype
        assert torch.equal(got, backward(grad_output, "fp32")), name
        assert not torch.equal(got, backward(grad_output, "bf16")), name
    if dtype == torch.float64:  # as exact as before
        got = standalone_backwards(weight)["linear_int8_backward"](grad_output)
        torch.testing.assert_close(got, reference_input_gradient(grad_output, weight), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fp32_chosen_is_exact_for_bfloat16_gradients(scheme):
    """However fp32 is chosen (argument, thread, process, environment), a bfloat16 gradient gets the
    float32 product rounded once to bfloat16."""
    weight, grad_output = bf16_weight_and_grad(scheme)
    for name, backward in standalone_backwards(weight, scheme).items():
        if name == "linear_dynamic_fp16_backward":
            continue  # its weight is the float16 one, not W_deq
        expected = backward(grad_output, "fp32")
        assert_float32_rounded_once(expected, grad_output, weight)
        with qlgrad.backward_precision("fp32"):
            assert torch.equal(backward(grad_output), expected), name
        try:
            qlgrad.set_backward_precision("fp32")
            assert torch.equal(backward(grad_output), expected), name
        finally:
            qlgrad.set_backward_precision(None)
        assert torch.equal(backward(grad_output), backward(grad_output, "bf16")), name


def test_fp32_from_the_environment_applies_to_bfloat16_gradients():
    result = run_python(
        """
        import os
        os.environ["QLGRAD_BACKWARD_PRECISION"] = "fp32"
        import torch, qlgrad
        weight = torch.randint(-128, 128, (96, 160), dtype=torch.int8)
        scale = torch.rand(96) / 100
        grad_output = torch.randn(64, 96).bfloat16()
        default = qlgrad.linear_int8_backward(grad_output, weight, scale)
        print(torch.equal(default, qlgrad.linear_int8_backward(grad_output, weight, scale, precision="fp32")))
        qlgrad.set_backward_precision(None)
        default = qlgrad.linear_int8_backward(grad_output, weight, scale)
        print(torch.equal(default, qlgrad.linear_int8_backward(grad_output, weight, scale, precision="bf16")))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_set_backward_precision_none_restores_following_the_dtype():
    weight, grad_output = bf16_weight_and_grad()
    backward = standalone_backwards(weight)["linear_int8_backward"]
    try:
        qlgrad.set_backward_precision("int8")
        assert torch.equal(backward(grad_output), backward(grad_output, "int8"))
        assert torch.equal(backward(grad_output.float()), backward(grad_output.float(), "int8"))
    finally:
        qlgrad.set_backward_precision(None)
    assert qlgrad.chosen_backward_precision() is None and qlgrad.get_backward_precision() == "fp32"
    assert torch.equal(backward(grad_output), backward(grad_output, "bf16"))
    assert torch.equal(backward(grad_output.float()), backward(grad_output.float(), "fp32"))


def test_thread_choice_overrides_the_process_one_and_restores_it():
    weight, grad_output = bf16_weight_and_grad()
    backward = standalone_backwards(weight)["linear_int8_backward"]
    try:
        qlgrad.set_backward_precision("int8")
        with qlgrad.backward_precision("fp32"):
            assert qlgrad.chosen_backward_precision() == "fp32"
            assert torch.equal(backward(grad_output), backward(grad_output, "fp32"))
        assert qlgrad.chosen_backward_precision() == "int8"
    finally:
        qlgrad.set_backward_precision(None)
    with qlgrad.backward_precision("fp32"):
        assert torch.equal(backward(grad_output), backward(grad_output, "fp32"))
    assert qlgrad.chosen_backward_precision() is None
    assert torch.equal(backward(grad_output), backward(grad_output, "bf16"))


def test_layers_record_the_choice_not_the_resolved_precision():
    """A forward with nothing chosen resolves against the gradient's dtype when backward runs,
    whatever is chosen by then; a forward under a choice keeps it."""
    weight = quantize_weight(64, 96, "per_channel_affine")
    packed = packed_params(weight)
    x = torch.randn(DEFAULT_ROWS, 96)
    grad_output = torch.randn(DEFAULT_ROWS, 64)
    for chosen_at_forward, chosen_at_backward, expected in (
        (None, "int8", "fp32"),
        ("int8", None, "int8"),
        ("bf16", "fp32", "bf16"),
    ):
        leaf = x.clone().requires_grad_()
        with choosing(chosen_at_forward):
            y = torch.ops.quantized.linear_dynamic(leaf, packed, False)
        with choosing(chosen_at_backward):
            y.backward(grad_output)
        assert torch.equal(leaf.grad, qlgrad.linear_dynamic_backward(grad_output, packed, expected)), chosen_at_forward


def test_effective_backward_precision():
    for dtype in (torch.float32, torch.float16, torch.float64):
        assert qlgrad.effective_backward_precision(None, dtype) == "fp32"
    assert qlgrad.effective_backward_precision(None, torch.bfloat16) == "bf16"
    for precision in qlgrad.PRECISIONS:
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            assert qlgrad.effective_backward_precision(precision, dtype) == precision
    with pytest.raises(TypeError, match="dtype must be a torch.dtype, got str"):
        qlgrad.effective_backward_precision(None, "bfloat16")
    with pytest.raises(TypeError, match="chosen must be a str"):
        qlgrad.effective_backward_precision(torch.bfloat16, torch.bfloat16)
    with pytest.raises(ValueError, match="unknown backward precision 'fp64'"):
        qlgrad.effective_backward_precision("fp64", torch.float32)


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
