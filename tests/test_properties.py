"""Property-based tests of the standalone backward functions.

Valid calls, drawn over shapes (leading dims included), gradient layouts (transposed, sliced,
expanded), scales, zero points, dtypes and precisions, match the float64 reference within
their precision's bound. Malformed calls, drawn from the catalogues in helpers, end in a
TypeError or ValueError: they run in a subprocess, so that a crash fails the test instead of
ending the run.

Runs are reproducible (helpers.load_hypothesis_profile derandomizes them); the number of
examples run goes into the reliability report.
"""

import json
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import qlgrad
from helpers import (
    BACKWARD_DOORS,
    ERROR_BOUNDS,
    GRAD_OUTPUT_LAYOUTS,
    OUTPUT_DTYPE_ERROR_BOUNDS,
    BackwardUnderTest,
    dequantize_plain,
    fp16_backward_under_test,
    int8_backwards_under_test,
    record_reliability,
    relative_error,
    run_python,
    spoil,
    spoilers_for,
    valid_call,
    with_grad_recorded,
)

TESTS_DIR = Path(__file__).parent
# Per property: examples run and, where the error bound applies to some of them only, how
# many had it checked.
PROPERTY_FIGURES = defaultdict(Counter)
VALID_CALLS = "valid calls against the reference"
ANY_PARAMETERS = "valid calls with any scale and zero point, fp32"
MALFORMED_CALLS = "malformed calls in a subprocess"

# Magnitudes of the gradient (log10 range) that each dtype carries without overflow or
# subnormal results, for weights of scale 1e-4 to 1e-1.
GRAD_MAGNITUDES = {
    torch.float64: (-20, 20),
    torch.float32: (-20, 20),
    torch.bfloat16: (-10, 10),
    torch.float16: (-1, 1),
}


@dataclass
class Case:
    under_test: BackwardUnderTest
    grad_output: torch.Tensor
    precision: str


def generator(draw):
    return torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))


@st.composite
def int8_weights(draw, max_features=48, channel_spread=2.0, max_zero_point=8, log10_scale=(-4, -1)):
    """(values, scale, zero_point or None) of an int8 weight; per tensor or per channel."""
    gen = generator(draw)
    out_features, in_features = draw(st.integers(1, max_features)), draw(st.integers(1, max_features))
    values = torch.randint(-128, 128, (out_features, in_features), dtype=torch.int8, generator=gen)
    channels = draw(st.sampled_from([1, out_features]))
    magnitude = 10 ** draw(st.floats(*log10_scale))
    scale = magnitude * channel_spread ** torch.rand(channels, generator=gen, dtype=torch.float64)
    if not draw(st.booleans()):
        return values, scale, None
    zero_point = torch.randint(-max_zero_point, max_zero_point + 1, (channels,), generator=gen).clamp(-128, 127)
    return values, scale, zero_point


@st.composite
def grad_outputs(draw, out_features, dtype):
    leading = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    layout = draw(st.sampled_from(sorted(GRAD_OUTPUT_LAYOUTS)))
    magnitude = 10.0 ** draw(st.integers(*GRAD_MAGNITUDES[dtype]))
    grad_output = GRAD_OUTPUT_LAYOUTS[layout](leading, out_features, torch.float64, generator(draw)) * magnitude
    return grad_output.to(dtype)


@st.composite
def valid_cases(draw, with_fp16=True, dtypes=tuple(GRAD_MAGNITUDES), precisions=tuple(ERROR_BOUNDS), **weight_options):
    """A call of one backward function. By default on a weight as quantize_dynamic makes it:
    scales within a factor 2 of each other, small zero points (the data the precision bounds
    are stated for)."""
    values, scale, zero_point = draw(int8_weights(**weight_options))
    candidates = list(int8_backwards_under_test(values, scale, zero_point))
    if with_fp16:
        candidates.append(fp16_backward_under_test(dequantize_plain(values, scale, zero_point).float()))
    under_test = draw(st.sampled_from(candidates))
    dtype = draw(st.sampled_from(dtypes))
    grad_output = draw(grad_outputs(values.shape[0], dtype))
    return Case(under_test, grad_output, draw(st.sampled_from(precisions)))


# The error bounds are norms over the result: over fewer values than this, a few dot products,
# rounding errors do not average out.
MIN_RESULT_VALUES = 16


def non_degenerate(grad_output, expected, dequantized):
    """The result holds enough values for a norm to average over, and is at least half as large
    as a product of uncorrelated data of the same norms: not the near-cancellation in which any
    rounding is a large relative error."""
    typical = grad_output.double().norm() * dequantized.norm() / math.sqrt(dequantized.shape[0])
    return expected.numel() >= MIN_RESULT_VALUES and expected.norm() > 0 and expected.norm() >= 0.5 * typical


@given(valid_cases())
def test_valid_calls_match_the_reference_within_their_precision(case):
    PROPERTY_FIGURES[VALID_CALLS]["examples"] += 1
    got = case.under_test.backward(case.grad_output, case.precision)
    assert got.dtype == case.grad_output.dtype
    assert got.shape == (*case.grad_output.shape[:-1], case.under_test.dequantized.shape[1])
    if got.numel() == 0:
        return
    expected = case.under_test.reference(case.grad_output)
    assume(non_degenerate(case.grad_output, expected, case.under_test.dequantized))
    PROPERTY_FIGURES[VALID_CALLS]["error_checked"] += 1
    bound = max(
        ERROR_BOUNDS[case.under_test.effective_precision(case.precision)],
        OUTPUT_DTYPE_ERROR_BOUNDS[case.grad_output.dtype],
    )
    assert relative_error(got, expected) <= bound


# fp16 weights are left out: such scales take them beyond float16's range.
@given(
    valid_cases(
        with_fp16=False,
        dtypes=(torch.float32, torch.float64),
        precisions=("fp32",),
        channel_spread=1e3,
        max_zero_point=128,
        log10_scale=(-8, 2),
    )
)
def test_any_valid_scale_and_zero_point_is_exact_in_fp32(case):
    """Scales over ten decades and spread a thousandfold over channels, zero points over the whole
    int8 range: fp32 precision meets the error bound of W_deq rounded to float32 and N-term
    float32 sums, ||error|| <= 4 eps sqrt(N + 1) || |grad_output| @ |W_deq| ||, whatever the
    cancellation."""
    PROPERTY_FIGURES[ANY_PARAMETERS]["examples"] += 1
    got = case.under_test.backward(case.grad_output, case.precision).double()
    expected = case.under_test.reference(case.grad_output)
    magnitude = (case.grad_output.double().abs() @ case.under_test.dequantized.abs()).norm()
    out_features = case.under_test.dequantized.shape[0]
    assert (got - expected).norm() <= 4 * torch.finfo(torch.float32).eps * math.sqrt(out_features + 1) * magnitude


@pytest.fixture(scope="module", autouse=True)
def report_examples_run():
    yield
    for name, figures in PROPERTY_FIGURES.items():
        record_reliability("property_examples", name, dict(figures))


# ---- Malformed calls, in a subprocess ---------------------------------------------------


@st.composite
def malformed_calls(draw):
    """(door name, arguments) with one to three arguments spoiled, each differently."""
    door_name = draw(st.sampled_from(sorted(BACKWARD_DOORS)))
    values, scale, zero_point = draw(int8_weights(max_features=16))
    call = valid_call(door_name, draw(grad_outputs(values.shape[0], torch.float32)), values, scale, zero_point)
    spoilers = draw(
        st.lists(st.sampled_from(spoilers_for(door_name)), min_size=1, max_size=3, unique_by=lambda s: s.argument)
    )
    arguments = spoil(call, spoilers, random.Random(draw(st.integers(0, 2**32 - 1))))
    if draw(st.booleans()):
        arguments = with_grad_recorded(arguments)
    return door_name, arguments, [f"{s.argument} {s.name}" for s in spoilers]


@given(malformed_calls())
def malformed_calls_raise(malformed):
    door_name, arguments, spoiled = malformed
    PROPERTY_FIGURES[MALFORMED_CALLS]["examples"] += 1
    # The kind of packed params is checked only when its weight is derived
    # (test_edge_inputs.py::test_kind_check_does_not_depend_on_the_cache).
    qlgrad.clear_cache()
    try:
        BACKWARD_DOORS[door_name](arguments)
    except (TypeError, ValueError) as error:
        assert str(error).startswith("qlgrad"), f"{door_name} {spoiled}: {error}"
    else:
        raise AssertionError(f"{door_name} accepted {spoiled}")


def test_malformed_calls_raise_and_never_crash():
    result = run_python(
        f"""
        import json, sys
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from helpers import load_hypothesis_profile
        load_hypothesis_profile()
        import test_properties
        test_properties.malformed_calls_raise()
        print(json.dumps(test_properties.PROPERTY_FIGURES[test_properties.MALFORMED_CALLS]))
        """,
        timeout=300,
    )
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    figures = json.loads(result.stdout.splitlines()[-1])
    record_reliability("property_examples", MALFORMED_CALLS, figures)
    assert figures["examples"] > 0
