"""torch.library.opcheck of every operator registered in the qlgrad namespace.

The operators are listed from the dispatcher, not by hand: an operator without sample inputs
in OPCHECK_CASES fails test_opcheck, which names it.
"""

import itertools

import pytest
import torch

import qlgrad  # noqa: F401  (registers the operators)
from helpers import int8_sample_inputs, packed_params, quantize_weight

# Every check but test_schema for operators that take packed params: torch's SchemaCheckMode
# cannot take a TorchBind argument (is_iterable_of_tensors in torch/_subclasses/schema_check_mode.py
# calls len() on each argument and catches only TypeError, where a ScriptObject raises
# NotImplementedError).
PACKED_OPCHECK_UTILS = (
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_static",
    "test_aot_dispatch_dynamic",
)
# cache_weight, besides, has no fake kernel: it unpacks a real weight, and its catch-all kernel
# (the operator has no tensor to dispatch on) cannot take a fake implementation beside it.
CACHE_WEIGHT_OPCHECK_UTILS = ("test_autograd_registration", "test_aot_dispatch_static", "test_aot_dispatch_dynamic")


def linear_int8_backward_cases():
    """Every weight scheme and grad_output shape, recording autograd or not; every check."""
    for requires_grad in (False, True):
        for args, _ in int8_sample_inputs(torch.float32, requires_grad=requires_grad):
            yield args, None


def linear_int4pack_backward_cases():
    from test_int4pack import int4_weight

    for dtype in (torch.float32, torch.bfloat16):
        packed, scale_and_zeros = int4_weight(32, 64, 32, dtype=dtype)
        for requires_grad in (False, True):
            for shape in ((3,), (2, 3), ()):
                grad_output = torch.randn(*shape, 32, dtype=dtype, requires_grad=requires_grad)
                yield (grad_output, packed, 32, scale_and_zeros), None


def int4pack_linear_cases():
    """The training forward of torch's int4 linear: both dtypes it reads, on both sides of where it
    leaves torch's kernel (16 rows of bfloat16), and a dtype it hands to torch's (float16)."""
    from test_int4pack import int4_weight

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        packed, scale_and_zeros = int4_weight(32, 64, 32, dtype=dtype)
        for rows in (3, 20):
            yield (torch.randn(rows, 64, dtype=dtype), packed, 32, scale_and_zeros), None


def int8_linear_cases():
    for rows, depth, columns in ((3, 64, 32), (20, 100, 48)):
        yield (
            (
                torch.randint(-128, 128, (rows, depth), dtype=torch.int8),
                torch.randint(-128, 128, (columns, depth), dtype=torch.int8),
            ),
            None,
        )


def int8_linear_rescaled_cases():
    """Both dtypes, with and without a bias, the scales as vectors, as torchao keeps them per row
    ([M, 1], [N, 1]) and one for a tensor ([1, 1])."""
    scale_shapes = (((5,), (20,)), ((5, 1), (20, 1)), ((1, 1), (1, 1)))
    for dtype, bias, (row_shape, column_shape) in itertools.product(
        (torch.float32, torch.bfloat16), (True, False), scale_shapes
    ):
        yield (
            (
                torch.randint(-128, 128, (5, 64), dtype=torch.int8),
                torch.randint(-128, 128, (20, 64), dtype=torch.int8),
                torch.rand(row_shape).to(dtype),
                torch.rand(column_shape).to(dtype),
                torch.randn(20).to(dtype) if bias else None,
                dtype,
            ),
            None,
        )


def int8_quantize_rows_cases():
    """An activation of each dtype (the quantizations of both _int8_quantize_rows and _int8_quant_dequant_rows)."""
    for dtype in (torch.float32, torch.bfloat16):
        yield (torch.randn(5, 64).to(dtype),), None


def int8_groupwise_linear_cases():
    """The training forward's product of torchao's group-wise int8 layers: groups of 16 columns and
    one per row, both dtypes."""
    for dtype in (torch.float32, torch.bfloat16):
        for groups in (1, 4):
            weight = torch.randint(-8, 8, (20, 64), dtype=torch.int8)
            scale, zero_point = torch.rand(20, groups) * 0.1 + 0.01, torch.randint(-2, 3, (20, groups)).float()
            yield (torch.randn(5, 64, dtype=dtype), weight, scale, zero_point), None


def int8_groupwise_dequantize_cases():
    """The group-wise layers' weight dequantized into each dtype: groups, one per row, no zero point."""
    for dtype in (torch.float32, torch.bfloat16):
        weight = torch.randint(-8, 8, (20, 64), dtype=torch.int8)
        yield (weight, torch.rand(20, 4).bfloat16(), torch.randint(-2, 3, (20, 4), dtype=torch.int8), dtype), None
        yield (weight, torch.rand(20, 1), None, dtype), None


def int8_groupwise_cases():
    from test_groupwise import groupwise_weight

    for requires_grad in (False, True):
        values, scale, zero_point = groupwise_weight(16, 64, 4)
        yield (torch.randn(3, 16, requires_grad=requires_grad), values, scale, zero_point), None
        yield (torch.randn(2, 3, 16, requires_grad=requires_grad), values, scale, None), None


def int8_packed():
    return packed_params(quantize_weight(6, 10, "per_channel_affine"))


def fp16_packed():
    return torch.ops.quantized.linear_prepack_fp16(torch.randn(6, 10) * 0.3, None)


def packed_backward_cases(make_packed):
    def cases():
        packed = make_packed()
        # grad_output without requires_grad: a compiled backward is not differentiated again.
        for grad_output in (torch.randn(3, 6), torch.randn(2, 3, 6)):
            yield (grad_output, packed, None), PACKED_OPCHECK_UTILS
        # Recording autograd, the operator's Autograd kernel is what is checked.
        yield (torch.randn(3, 6, requires_grad=True), packed), ("test_autograd_registration",)

    return cases


def cache_weight_cases():
    for make_packed in (int8_packed, fp16_packed):
        yield (make_packed(),), CACHE_WEIGHT_OPCHECK_UTILS


def linear_dynamic_with_weight_cases():
    """The traced forward of every kind of packed weight, read in place (fbgemm's packing) and from
    the cache (QNNPACK's, and fp16 weights); with and without the fused ReLU."""
    for engine, make_packed in (("x86", int8_packed), ("qnnpack", int8_packed), ("x86", fp16_packed)):
        previous, torch.backends.quantized.engine = torch.backends.quantized.engine, engine
        try:
            packed = make_packed()
        finally:
            torch.backends.quantized.engine = previous
        for relu in (False, True):
            yield (torch.randn(3, 10), packed, relu, True), PACKED_OPCHECK_UTILS


def stored_weight_backward_cases():
    """The backward from the tensors the traced forward returns for each kind of packed weight."""
    for (x, packed, relu, reduce_range), _ in linear_dynamic_with_weight_cases():
        if relu:
            continue
        _, *stored = torch.ops.qlgrad._linear_dynamic_with_weight(x, packed, relu, reduce_range)
        for grad_output in (torch.randn(3, 6), torch.randn(2, 3, 6)):
            yield (grad_output, *stored, 10), None


# operator -> () -> (args, test_utils or None for every check) for each call to check
OPCHECK_CASES = {
    "linear_int8_backward": lambda: (*linear_int8_backward_cases(), *int8_groupwise_cases()),
    "linear_int4pack_backward": linear_int4pack_backward_cases,
    "_int4pack_linear": int4pack_linear_cases,
    "_int8_linear": int8_linear_cases,
    "_int8_linear_rescaled": int8_linear_rescaled_cases,
    "_int8_quantize_rows": int8_quantize_rows_cases,
    "_int8_quant_dequant_rows": int8_quantize_rows_cases,
    "_int8_groupwise_linear": int8_groupwise_linear_cases,
    "_int8_dynamic_groupwise_linear": int8_groupwise_linear_cases,
    "_int8_groupwise_dequantize": int8_groupwise_dequantize_cases,
    "linear_dynamic_backward": packed_backward_cases(int8_packed),
    "linear_dynamic_fp16_backward": packed_backward_cases(fp16_packed),
    "cache_weight": cache_weight_cases,
    "_linear_dynamic_with_weight": linear_dynamic_with_weight_cases,
    "_stored_weight_backward": stored_weight_backward_cases,
}


def registered_qlgrad_operators() -> list[str]:
    return sorted(
        name.removeprefix("qlgrad::") for name in torch._C._dispatch_get_all_op_names() if name.startswith("qlgrad::")
    )


def test_the_operators_are_found():
    assert set(registered_qlgrad_operators()) >= {"linear_int8_backward", "linear_dynamic_backward"}


# torch 2.14's fake-tensor conversion inside opcheck reads .grad of its own non-leaf copies.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
@pytest.mark.parametrize("op_name", registered_qlgrad_operators())
def test_opcheck(op_name):
    assert op_name in OPCHECK_CASES, (
        f"qlgrad::{op_name} has no opcheck coverage: add its sample inputs to OPCHECK_CASES"
    )
    op = getattr(torch.ops.qlgrad, op_name).default
    for args, test_utils in OPCHECK_CASES[op_name]():
        if test_utils is None:
            torch.library.opcheck(op, args)
            continue
        # opcheck passes the real packed params to fake-tensor runs, whose dispatch cache then
        # compares keys holding them: _DispatchCacheKey.__eq__ (torch/_subclasses/fake_tensor.py)
        # meets a ScriptObject's __eq__, which raises NotImplementedError. (torch.compile passes
        # fake objects, so it is not concerned.)
        with torch._dynamo.config.patch(fake_tensor_cache_enabled=False):
            results = torch.library.opcheck(op, args, test_utils=test_utils)
        assert results == dict.fromkeys(test_utils, "SUCCESS")
