"""Every entry point refuses malformed arguments with an error that names the argument, what
was expected and what came, and nothing crashes.

The standalone backward functions run a catalogue of malformed arguments (helpers.*_SPOILERS)
through each of their doors (the Python function, torch.ops.qlgrad.*), with and without
autograd recording; the other entry points have catalogues of their own. Every test counts
the bad inputs it tried in the reliability report.
"""

import itertools
import random
import re

import numpy as np
import pytest
import torch

import qlgrad
from helpers import (
    BACKWARD_DOORS,
    dynamic_linear,
    packed_params,
    quantize_weight,
    record_reliability,
    spoil,
    spoilers_for,
    valid_call,
    with_grad_recorded,
)

FUNCTIONS = ("linear_int8_backward", "linear_dynamic_backward", "linear_dynamic_fp16_backward")


def valid_calls(door_name):
    """Per tensor and per channel, affine and symmetric, with one and two leading dims."""
    for scheme, leading in (
        ("per_tensor_affine", (3,)),
        ("per_channel_affine", (2, 3)),
        ("per_channel_symmetric", (4,)),
    ):
        weight = quantize_weight(6, 10, scheme)
        yield valid_call(door_name, torch.randn(*leading, 6), weight.values, weight.scale, weight.zero_point)


def refusal_failures(function, also_accepted=()):
    """Calls each door of function with each of its spoilers applied in turn to each valid call,
    with and without autograd recording.

    Returns (bad inputs tried, what went wrong). A refusal raises the spoiler's error with its
    message, or one of also_accepted.
    """
    rng = random.Random(0)
    tried, failures = 0, []
    for door_name in (f"qlgrad.{function}", f"torch.ops.qlgrad.{function}"):
        for call, spoiler, recorded in itertools.product(
            valid_calls(door_name), spoilers_for(door_name), (False, True)
        ):
            arguments = spoil(call, [spoiler], rng)
            if recorded:
                arguments = with_grad_recorded(arguments)
            # The kind of packed params is checked when its weight is derived, not when the weight
            # comes from the cache (test_edge_inputs.py::test_kind_check_does_not_depend_on_the_cache).
            qlgrad.clear_cache()
            label = f"{door_name} / {spoiler.argument} {spoiler.name} (recorded: {recorded})"
            tried += 1
            try:
                BACKWARD_DOORS[door_name](arguments)
                failures.append(f"{label}: returned a result")
            except spoiler.error as error:
                if not re.search(spoiler.match, str(error)):
                    failures.append(f"{label}: {type(error).__name__} without {spoiler.match!r}: {str(error)[:200]}")
            except also_accepted:
                pass
            except Exception as error:  # noqa: BLE001 - any other exception is what this test reports
                failures.append(f"{label}: {type(error).__name__}: {str(error)[:200]}")
    return tried, failures


@pytest.mark.usefixtures("fresh_cache")
@pytest.mark.parametrize("function", FUNCTIONS)
def test_standalone_backward_names_every_bad_argument(function):
    tried, failures = refusal_failures(function)
    record_reliability("bad_inputs", function, {"tried": tried})
    assert not failures, "\n".join(failures)


@pytest.mark.usefixtures("fresh_cache")
@pytest.mark.parametrize("function", FUNCTIONS)
def test_bad_arguments_under_inference_mode_still_raise(function):
    """Inference mode skips the Autograd kernels, whose checks route tensors the dispatcher
    cannot send to qlgrad's CPU kernel (quantized, sparse, or no tensor at all); the dispatcher
    then refuses them itself with a NotImplementedError naming the backend. Everything else is
    still named by qlgrad."""
    with torch.inference_mode():
        tried, failures = refusal_failures(function, also_accepted=NotImplementedError)
    record_reliability("bad_inputs", f"{function} under inference mode", {"tried": tried})
    assert not failures, "\n".join(failures)


def test_bad_group_wise_parameters_are_named_by_their_extremes():
    """A group-wise scale or zero point holds a value per group, thousands of them: the error
    names the smallest and the largest, not every value."""
    codes = torch.randint(-8, 8, (512, 1024), dtype=torch.int8)
    scale, zero_point = torch.rand(512, 32) + 0.5, torch.zeros(512, 32, dtype=torch.int8)
    grad = torch.randn(3, 512)
    bad_scale = scale.clone()
    bad_scale[7, 3] = -2.0
    with pytest.raises(ValueError, match=r"scale must be finite and positive, got values from -2 to ") as error:
        qlgrad.linear_int8_backward(grad, codes, bad_scale, zero_point)
    assert len(str(error.value)) < 200
    bad_zero_point = zero_point.to(torch.int16)
    bad_zero_point[5, 1] = 300
    with pytest.raises(ValueError, match=r"int8 range \[-128, 127\], got values from 0 to 300") as error:
        qlgrad.linear_int8_backward(grad, codes, scale, bad_zero_point)
    assert len(str(error.value)) < 200


# ---- The Autograd kernels of the quantized:: ops ---------------------------------------

STOCK_OPS = {
    "linear_dynamic": lambda x, packed: torch.ops.quantized.linear_dynamic(x, packed, False),
    "linear_relu_dynamic": lambda x, packed: torch.ops.quantized.linear_relu_dynamic(x, packed, False),
    "linear_dynamic_fp16": torch.ops.quantized.linear_dynamic_fp16,
    "linear_relu_dynamic_fp16": torch.ops.quantized.linear_relu_dynamic_fp16,
}


def stock_op_packed_params(op_name):
    if op_name.endswith("fp16"):
        return torch.ops.quantized.linear_prepack_fp16(torch.randn(6, 10), None)
    return packed_params(quantize_weight(6, 10, "per_tensor_affine"))


# name -> (input [3, 10], packed params) -> what the op is given instead
BAD_STOCK_OP_ARGUMENTS = {
    "input float64": lambda x, p: (x.double(), p),
    "input bfloat16": lambda x, p: (x.bfloat16(), p),
    "input of the wrong in_features": lambda x, p: (x[:, :9], p),
    "input 0-dim": lambda x, p: (x[0, 0], p),
    "input on the meta device": lambda x, p: (x.to("meta"), p),
    "input None": lambda x, p: (None, p),
    "packed params None": lambda x, p: (x, None),
    "packed params a tensor": lambda x, p: (x, torch.randn(6, 10)),
}
# The int8 ops quantize their input, and no quantization parameters exist for NaN; the fp16
# ops take it.
BAD_INT8_OP_ARGUMENTS = {
    "input NaN": lambda x, p: (torch.full_like(x, float("nan")), p),
}
# name -> gradient for an output [3, 6]. Autograd casts real gradients to the output's
# dtype, so only complex ones are of a wrong dtype.
BAD_GRADIENTS = {
    "gradient of the wrong shape": lambda: torch.randn(3, 7),
    "gradient on the meta device": lambda: torch.randn(3, 6, device="meta"),
    "gradient complex": lambda: torch.ones(3, 6, dtype=torch.complex64),
}


@pytest.mark.usefixtures("fresh_cache")
def test_autograd_kernels_leave_bad_inputs_to_the_stock_ops_without_crashing():
    """The stock forward checks its own arguments, and autograd the gradient given to backward:
    through qlgrad's Autograd kernels every bad input must still end in an exception."""
    tried, failures = 0, []
    for op_name, op in STOCK_OPS.items():
        for requires_grad in (False, True):
            bad_arguments = BAD_STOCK_OP_ARGUMENTS | ({} if op_name.endswith("fp16") else BAD_INT8_OP_ARGUMENTS)
            for bad_name, make in bad_arguments.items():
                x, packed = make(torch.randn(3, 10, requires_grad=requires_grad), stock_op_packed_params(op_name))
                tried += 1
                if not _raises(lambda: op(x, packed)):
                    failures.append(f"{op_name} / {bad_name} (requires_grad={requires_grad}): no exception")
        for bad_name, make in BAD_GRADIENTS.items():
            y = op(torch.randn(3, 10, requires_grad=True), stock_op_packed_params(op_name))
            tried += 1
            if not _raises(lambda: y.backward(make())):
                failures.append(f"{op_name} / {bad_name}: no exception")
    record_reliability("bad_inputs", "quantized:: ops through the Autograd kernels", {"tried": tried})
    assert not failures, "\n".join(failures)


def _raises(call) -> bool:
    try:
        call()
    except Exception:  # noqa: BLE001 - any exception is a refusal here
        return True
    return False


# ---- Cache and precision controls, prepare --------------------------------------------

BAD_CACHE_LIMITS = {
    "negative": (-1, ValueError),
    "most negative int64": (-(2**63), ValueError),
    "above 2**62": (2**62 + 1, ValueError),
    "2**63": (2**63, ValueError),
    "unsigned -1": (2**64 - 1, ValueError),
    "huge": (10**30, ValueError),
    "float": (1.5, TypeError),
    "integral float": (1e9, TypeError),
    "bool": (True, TypeError),
    "None": (None, TypeError),
    "str": ("1024", TypeError),
    "list": ([1024], TypeError),
    "float tensor": (torch.tensor(1.5), TypeError),
    "numpy float": (np.float64(1024), TypeError),
}
VALID_CACHE_LIMITS = (0, 1, 2**62, np.int64(4096), torch.tensor(4096))


@pytest.mark.usefixtures("fresh_cache")
def test_set_cache_limit_refuses_negative_absurd_and_non_int_limits():
    """An absurd limit is one above 2**62 bytes (4 EiB): more than any machine holds, so an
    overflow or a unit mistake. A refused limit leaves the cache as it was."""
    qlgrad.set_cache_limit(12345)
    for name, (nbytes, error) in BAD_CACHE_LIMITS.items():
        with pytest.raises(error, match="qlgrad.set_cache_limit: nbytes must"):
            qlgrad.set_cache_limit(nbytes)
        assert qlgrad.cache_info().limit_bytes == 12345, name
    for nbytes in VALID_CACHE_LIMITS:
        qlgrad.set_cache_limit(nbytes)
        assert qlgrad.cache_info().limit_bytes == int(nbytes)
    record_reliability("bad_inputs", "set_cache_limit", {"tried": len(BAD_CACHE_LIMITS)})


BAD_PRECISION_NAMES = {
    "unknown": ("fp8", ValueError, "unknown backward precision 'fp8'; valid: fp32, bf16, int8"),
    "wrong case": ("FP32", ValueError, "unknown backward precision 'FP32'"),
    "empty": ("", ValueError, "unknown backward precision ''"),
    "int": (32, TypeError, "name must be a str"),
    "bytes": (b"fp32", TypeError, "name must be a str"),
    # Where none is chosen the precision follows the gradient's dtype, but a dtype names none.
    "dtype": (torch.bfloat16, TypeError, "name must be a str"),
}
# set_backward_precision(None) chooses no precision; a with block takes a name.
BAD_CONTEXT_PRECISION_NAMES = {**BAD_PRECISION_NAMES, "None": (None, TypeError, "name must be a str")}


def test_precision_controls_refuse_bad_names_and_change_nothing():
    tried = 0
    for control, bad_names in (
        (qlgrad.set_backward_precision, BAD_PRECISION_NAMES),
        (qlgrad.backward_precision, BAD_CONTEXT_PRECISION_NAMES),
    ):
        for name, (value, error, match) in bad_names.items():
            tried += 1
            with pytest.raises(error, match=re.escape(match)):
                control(value)
            assert qlgrad.get_backward_precision() == "fp32", (name, control)
            assert qlgrad.chosen_backward_precision() is None, (name, control)
    record_reliability("bad_inputs", "set_backward_precision, backward_precision", {"tried": tried})


@pytest.mark.usefixtures("fresh_cache")
def test_prepare_refuses_what_is_not_a_module():
    with_layers = torch.nn.Sequential(dynamic_linear(8, 4))
    packed = with_layers[0]._packed_params._packed_params
    refusals = [
        (lambda: qlgrad.prepare(None), TypeError, "module must be a torch.nn.Module, got None"),
        (lambda: qlgrad.prepare(packed), TypeError, "module must be a torch.nn.Module, got __torch__"),
        (lambda: qlgrad.prepare(torch.randn(3)), TypeError, "module must be a torch.nn.Module, got Tensor"),
        # One entry serves every precision: there is none to choose.
        (lambda: qlgrad.prepare(with_layers, "fp32"), TypeError, "takes 1 positional argument but 2 were given"),
        (lambda: torch.ops.qlgrad.cache_weight(packed, "fp32"), RuntimeError, "expected at most 1 argument(s)"),
        # torch matches the schema itself, naming the argument and both types.
        (
            lambda: torch.ops.qlgrad.cache_weight(None),
            RuntimeError,
            "for argument 'packed' but instead found type 'NoneType'",
        ),
    ]
    for call, error, match in refusals:
        with pytest.raises(error, match=re.escape(match)):
            call()
    assert qlgrad.cache_info().entries == 0
    record_reliability("bad_inputs", "prepare", {"tried": len(refusals)})
