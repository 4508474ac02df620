"""Sample inputs and independent references shared by the tests."""

import contextlib
import fcntl
import importlib.util
import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

SCHEMES = ("per_tensor_symmetric", "per_tensor_affine", "per_channel_symmetric", "per_channel_affine")
# Batch shapes in front of the feature dimension; quantized::linear_dynamic needs at least one.
LEADING_DIMS = ((1,), (5,), (2, 3), (0,), (3, 0))


@dataclass
class QuantizedWeight:
    """A qint8 weight as a quantized tensor and as the plain tensors it is made of."""

    qweight: torch.Tensor
    values: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # float64, [1] or [N]
    zero_point: torch.Tensor  # int64, shaped like scale

    def dequantize_float64(self) -> torch.Tensor:
        """W_deq from the integer values, in float64: the reference weight."""
        return dequantize_plain(self.values, self.scale, self.zero_point)


def quantize_weight(out_features: int, in_features: int, scheme: str, seed: int = 0) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=gen) * 0.2
    if scheme.startswith("per_tensor"):
        scale = torch.tensor([weight.abs().max().item() / 127])
        zero_point = torch.tensor([3 if scheme.endswith("affine") else 0])
        qweight = torch.quantize_per_tensor(weight, scale.item(), int(zero_point), torch.qint8)
    else:
        scale = weight.abs().amax(dim=1).double() / 127
        zero_point = (torch.arange(out_features) % 5 - 2) if scheme.endswith("affine") else torch.zeros(out_features)
        zero_point = zero_point.long()
        qweight = torch.quantize_per_channel(weight, scale, zero_point, 0, torch.qint8)
    return QuantizedWeight(qweight, qweight.int_repr(), scale.double(), zero_point.long())


def packed_params(weight: QuantizedWeight, bias: torch.Tensor | None = None):
    """The LinearPackedParamsBase object for the current quantized engine."""
    return torch.ops.quantized.linear_prepack(weight.qweight, bias)


def dynamic_linear(in_features: int, out_features: int, scheme: str = "per_tensor_symmetric", seed: int = 0):
    """A torch.ao.nn.quantized.dynamic.Linear with a defined weight (its constructor's is uninitialized)."""
    layer = torch.ao.nn.quantized.dynamic.Linear(in_features, out_features)
    layer.set_weight_bias(quantize_weight(out_features, in_features, scheme, seed).qweight, torch.zeros(out_features))
    return layer


def reference_input_gradient(grad_output: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:
    """grad_output @ W_deq in float64: the straight-through input gradient."""
    return grad_output.double() @ weight.dequantize_float64()


# Standalone calls take any number of leading dims, a bare feature vector included.
GRAD_SHAPES = ((), (5,), (2, 3), (0,), (3, 0))


def int8_args(weight: QuantizedWeight, scheme: str, dtype=torch.float32):
    """(weight, scale, zero_point) as plain tensors; symmetric schemes pass no zero point."""
    zero_point = weight.zero_point if scheme.endswith("affine") else None
    return weight.values, weight.scale.to(dtype), zero_point


def int8_sample_inputs(dtype=torch.float32, requires_grad=False):
    """(args, weight) for linear_int8_backward over every scheme and grad_output shape."""
    for scheme, shape in itertools.product(SCHEMES, GRAD_SHAPES):
        weight = quantize_weight(6, 10, scheme)
        grad_output = torch.randn(*shape, 6, dtype=dtype, requires_grad=requires_grad)
        yield (grad_output, *int8_args(weight, scheme, dtype)), weight


# Relative error (in norm) each mode may have against the float64 reference.
ERROR_BOUNDS = {"fp32": 1e-6, "bf16": 1e-2, "int8": 2e-2}


def streamed_rows_end(precision: str = "fp32", fbgemm_packing: bool = False, float16_values: bool = False) -> int:
    """Rows up to which `precision` streams the weight in float32: 32 where qlgrad's AVX-512
    streams are (16 on Intel's CPUs), 8 elsewhere; for bf16, 7 where its panel GEMM runs on AMX
    tiles, 3 where it runs with AVX512-BF16 (but on Intel's CPUs without AMX; 8 for fbgemm's packing
    and float16 values there; on AMD's family 1Ah and later 5 for codes in rows, 6 for fbgemm's
    packing); for int8, 7 on AMX tiles and 3 with AVX512-VNNI (but on Intel's CPUs). Tests of the
    reduced precisions' own kernels use more."""
    extensions = _qlgrad().cpu_extensions()
    cpuinfo = Path("/proc/cpuinfo").read_text()
    intel = "GenuineIntel" in cpuinfo
    family = re.search(r"^cpu family\s*:\s*(\d+)", cpuinfo, re.MULTILINE)
    zen5_or_later = "AuthenticAMD" in cpuinfo and family is not None and int(family.group(1)) >= 0x1A
    if precision == "bf16" and "amx" in extensions:
        return 7
    if precision == "bf16" and "avx512_bf16" in extensions and not intel:
        if zen5_or_later:
            return 6 if fbgemm_packing else 3 if float16_values else 5
        return 8 if fbgemm_packing or float16_values else 3
    if precision == "int8" and "amx" in extensions:
        return 7
    if precision == "int8" and "avx512_vnni" in extensions and not intel:
        return 3
    if _qlgrad().cpu_capability() != "avx512":
        return 8
    return 16 if intel else 32


def relative_error(got, expected):
    return ((got.double() - expected).norm() / expected.norm()).item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def outputs_and_calls(layers, x, op: str) -> tuple[list[torch.Tensor], int]:
    """Each layer's output for x, and how many times the operator `op` ran for them."""
    with torch.autograd.profiler.profile() as profile:
        outputs = [layer(x) for layer in layers]
    return outputs, sum(event.count for event in profile.key_averages() if event.key == op)


def mismatches_in_threads(step: Callable[[int, int], bool], steps: int, threads: int = 6, timeout: float = 120) -> list:
    """Runs step(thread, n) for n < steps in each of `threads` threads at once and returns the
    (thread, n) whose step returned False. A step that raises, or a thread still running after
    `timeout` seconds, fails the test."""
    mismatches, errors = [], []

    def work(index):
        try:
            mismatches.extend((index, n) for n in range(steps) if not step(index, n))
        except Exception as error:  # noqa: BLE001 - reported to the test
            errors.append(error)

    running = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in running)
    assert errors == []
    return mismatches


def run_python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run code as a script in a fresh interpreter; the test decides what its exit status means.

    A file rather than ``-c``, so that torch.jit.script can read the source.
    """
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "script.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(code))
        return subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=timeout, env=env)


# ---- Reliability report and hypothesis profiles ------------------------------------

# The repository's root: the tests run the scripts and examples beside them.
REPOSITORY = Path(__file__).parent.parent
REPORT_PATH = Path(os.environ.get("QLGRAD_RELIABILITY_REPORT", REPOSITORY / "build" / "reliability.json"))


def load_example(name: str):
    """examples/<name>.py as a module, run as it is written."""
    spec = importlib.util.spec_from_file_location(name, REPOSITORY / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_table_rows(output: str) -> list[dict[str, str]]:
    """The data rows of the markdown table in a script's output, each as {column header: cell}."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]  # not the |---| rule
    header, *rows = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)
    return [dict(zip(header, row)) for row in rows]


def record_reliability(section: str, name: str, figures: dict) -> None:
    """Merge one test's figures into the reliability report as report[section][name].

    Each test writes only its own entry, so a run of a subset updates those entries and
    keeps the others from earlier runs. scripts/update_reliability_table.py copies the
    report into docs/reliability.md.
    """
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(REPORT_PATH.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other processes may record at the same time
        report = json.loads(REPORT_PATH.read_text()) if REPORT_PATH.exists() else {}
        report.setdefault(section, {})[name] = figures
        temporary = REPORT_PATH.with_suffix(".tmp")
        temporary.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, REPORT_PATH)


def load_hypothesis_profile() -> None:
    """Reproducible runs by default: the "ci" profile derandomizes every property and runs a fixed
    number of examples. QLGRAD_HYPOTHESIS_PROFILE=explore draws new random examples, more of them."""
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=500, print_blob=True)
    settings.register_profile("explore", deadline=None, max_examples=2500)
    settings.load_profile(os.environ.get("QLGRAD_HYPOTHESIS_PROFILE", "ci"))


# ---- Valid calls of the standalone backward functions, and their references ----------


def _qlgrad():
    # Imported on use: subprocesses import this module to run stock PyTorch without qlgrad.
    import qlgrad

    return qlgrad


def choosing(precision: str | None):
    """``with qlgrad.backward_precision(precision)``, or with nothing chosen on this thread for None."""
    return contextlib.nullcontext() if precision is None else _qlgrad().backward_precision(precision)


def _randn(*shape, dtype, generator):
    return torch.randn(*shape, generator=generator).to(dtype)


# Layouts a valid grad_output may come in: name -> (leading dims, features, dtype,
# generator) -> tensor. Only the strides differ; every one is a valid argument.
GRAD_OUTPUT_LAYOUTS = {
    "contiguous": lambda leading, n, dtype, gen: _randn(*leading, n, dtype=dtype, generator=gen),
    # The feature dimension outermost in memory, as after a transpose.
    "transposed": lambda leading, n, dtype, gen: _randn(n, *leading, dtype=dtype, generator=gen).movedim(0, -1),
    "sliced": lambda leading, n, dtype, gen: _randn(*leading, 2 * n + 1, dtype=dtype, generator=gen)[..., 1::2],
    # Stride 0 along every leading dimension: one row seen many times.
    "expanded_rows": lambda leading, n, dtype, gen: _randn(n, dtype=dtype, generator=gen).expand(*leading, n),
    # Stride 0 along the features: one value per row.
    "expanded_features": lambda leading, n, dtype, gen: _randn(*leading, 1, dtype=dtype, generator=gen).expand(
        *leading, n
    ),
}


def dequantize_plain(values, scale, zero_point=None) -> torch.Tensor:
    """scale * (values - zero_point) in float64, from plain tensors."""
    weight = values.double()
    if zero_point is not None:
        weight = weight - zero_point.double().reshape(-1, 1)
    return weight * scale.double().reshape(-1, 1)


def pack_plain(values, scale, zero_point=None):
    """The LinearPackedParamsBase of an int8 weight given as plain tensors, per tensor when scale
    holds one element."""
    zero_points = torch.zeros(scale.shape, dtype=torch.long) if zero_point is None else zero_point.long()
    if scale.numel() == 1:
        qweight = torch._make_per_tensor_quantized_tensor(values, float(scale), int(zero_points))
    else:
        qweight = torch._make_per_channel_quantized_tensor(
            values, scale.double().reshape(-1), zero_points.reshape(-1), 0
        )
    return torch.ops.quantized.linear_prepack(qweight, None)


# Relative error (in norm) that rounding to grad_output's dtype may add on its own: the
# result has that dtype, whatever the precision of the GEMM.
OUTPUT_DTYPE_ERROR_BOUNDS = {torch.float64: 0.0, torch.float32: 0.0, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@dataclass
class BackwardUnderTest:
    """One weight as one backward function takes it, and the float64 weight it stands for."""

    name: str
    backward: Callable  # (grad_output, precision) -> input gradient
    dequantized: torch.Tensor  # float64 [N, K]
    # fp16 weights have no int8 form: int8 precision runs as fp32 for them.
    has_int8_mode: bool = True

    def reference(self, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output.double() @ self.dequantized

    def effective_precision(self, precision: str) -> str:
        return precision if self.has_int8_mode or precision != "int8" else "fp32"


def int8_backwards_under_test(values, scale, zero_point=None):
    """The plain-int8 and the packed door for one int8 weight given as plain tensors."""
    dequantized = dequantize_plain(values, scale, zero_point)
    yield BackwardUnderTest(
        "linear_int8_backward",
        lambda g, precision: _qlgrad().linear_int8_backward(g, values, scale, zero_point, precision),
        dequantized,
    )
    packed = pack_plain(values, scale, zero_point)
    yield BackwardUnderTest(
        "linear_dynamic_backward",
        lambda g, precision: _qlgrad().linear_dynamic_backward(g, packed, precision),
        dequantized,
    )


def fp16_backward_under_test(weight: torch.Tensor) -> BackwardUnderTest:
    packed = torch.ops.quantized.linear_prepack_fp16(weight, None)
    return BackwardUnderTest(
        "linear_dynamic_fp16_backward",
        lambda g, precision: _qlgrad().linear_dynamic_fp16_backward(g, packed, precision),
        weight.half().double(),
        has_int8_mode=False,
    )


# ---- Malformed calls of the standalone backward functions ---------------------------


@dataclass
class ValidCall:
    """Valid keyword arguments of one backward function, and its weight's out_features."""

    arguments: dict
    out_features: int


# Every door of the standalone backward functions: name -> (keyword arguments -> result). Both
# doors of a function take the same keywords.
BACKWARD_DOORS = {
    "qlgrad.linear_int8_backward": lambda a: _qlgrad().linear_int8_backward(**a),
    "torch.ops.qlgrad.linear_int8_backward": lambda a: torch.ops.qlgrad.linear_int8_backward(**a),
    "qlgrad.linear_dynamic_backward": lambda a: _qlgrad().linear_dynamic_backward(**a),
    "torch.ops.qlgrad.linear_dynamic_backward": lambda a: torch.ops.qlgrad.linear_dynamic_backward(**a),
    "qlgrad.linear_dynamic_fp16_backward": lambda a: _qlgrad().linear_dynamic_fp16_backward(**a),
    "torch.ops.qlgrad.linear_dynamic_fp16_backward": lambda a: torch.ops.qlgrad.linear_dynamic_fp16_backward(**a),
}


def valid_call(door_name: str, grad_output: torch.Tensor, values, scale, zero_point=None) -> ValidCall:
    """A valid call of a door for an int8 weight given as plain tensors; the fp16 function gets
    the weight's float values packed in float16."""
    if door_name.endswith("linear_int8_backward"):
        arguments = dict(grad_output=grad_output, weight=values, scale=scale, zero_point=zero_point)
        return ValidCall(arguments, values.shape[0])
    if door_name.endswith("linear_dynamic_fp16_backward"):
        packed = torch.ops.quantized.linear_prepack_fp16(dequantize_plain(values, scale, zero_point).float(), None)
    else:
        packed = pack_plain(values, scale, zero_point)
    return ValidCall(dict(grad_output=grad_output, packed=packed), values.shape[0])


def with_grad_recorded(arguments: dict) -> dict:
    """The arguments with grad_output requiring grad when it can, so that the Autograd kernel
    records a node."""
    grad_output = arguments.get("grad_output")
    if isinstance(grad_output, torch.Tensor) and grad_output.is_floating_point():
        return {**arguments, "grad_output": grad_output.detach().requires_grad_()}
    return arguments


@dataclass(frozen=True)
class Spoiler:
    """Turns one argument of a valid call into a malformed one, whatever the valid call's shapes.

    make(call, rng) returns the malformed value; rng picks among equivalent variants (dtypes,
    positions, sizes) so that property tests can vary them. Calls with several spoiled
    arguments are malformed too: each spoiler is wrong whatever the other arguments are.
    """

    argument: str
    name: str
    error: type
    match: str
    make: Callable[[ValidCall, random.Random], object]
    # Neither a tensor nor None: torch.ops refuses it itself while matching the schema, with
    # a RuntimeError of its own; only the Python functions name it.
    python_only: bool = False


def _grad_shape(call: ValidCall, extra_features: int = 0) -> tuple:
    return (*call.arguments["grad_output"].shape[:-1], call.out_features + extra_features)


def _scale(call: ValidCall) -> torch.Tensor:
    return call.arguments["scale"]


def _with_nonfinite(values: torch.Tensor, rng: random.Random) -> torch.Tensor:
    spoiled = values.clone()
    spoiled.view(-1)[rng.randrange(spoiled.numel())] = rng.choice([math.nan, math.inf, -math.inf])
    return spoiled


INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)

GRAD_OUTPUT_SPOILERS = (
    Spoiler(
        "grad_output",
        "integer dtype",
        TypeError,
        "grad_output must be a floating-point tensor",
        lambda c, r: torch.ones(_grad_shape(c), dtype=r.choice(INTEGER_DTYPES)),
    ),
    Spoiler(
        "grad_output",
        "complex dtype",
        TypeError,
        "grad_output must be a floating-point tensor",
        lambda c, r: torch.ones(_grad_shape(c), dtype=r.choice(COMPLEX_DTYPES)),
    ),
    Spoiler(
        "grad_output",
        "wrong last dimension",
        ValueError,
        "last dimension must equal",
        lambda c, r: torch.randn(_grad_shape(c, extra_features=r.randint(1, 3))),
    ),
    Spoiler("grad_output", "0-dim", ValueError, "at least 1 dimension", lambda c, r: torch.tensor(1.0)),
    Spoiler(
        "grad_output",
        "on the meta device",
        ValueError,
        "grad_output must be on",
        lambda c, r: torch.empty(_grad_shape(c), device="meta"),
    ),
    Spoiler(
        "grad_output",
        "quantized",
        TypeError,
        "grad_output must be a plain tensor",
        lambda c, r: torch.quantize_per_tensor(torch.randn(_grad_shape(c)), 0.1, 0, torch.qint8),
    ),
    Spoiler(
        "grad_output",
        "sparse",
        TypeError,
        "grad_output must be a strided",
        lambda c, r: torch.randn(_grad_shape(c)).to_sparse(),
    ),
    Spoiler("grad_output", "None", TypeError, "grad_output must be a", lambda c, r: None),
    Spoiler(
        "grad_output",
        "a list",
        TypeError,
        "grad_output must be a torch.Tensor",
        lambda c, r: [0.0] * c.out_features,
        python_only=True,
    ),
)

PRECISION_SPOILERS = (
    Spoiler(
        "precision",
        "unknown name",
        ValueError,
        "unknown backward precision",
        lambda c, r: r.choice(["fp8", "FP32", "", "int4", " fp32", "float32"]),
    ),
    Spoiler(
        "precision",
        "not a str",
        TypeError,
        "precision must be a str",
        lambda c, r: r.choice([0, 32, b"fp32", 1.5]),
        python_only=True,
    ),
)

INT8_SPOILERS = (
    GRAD_OUTPUT_SPOILERS
    + PRECISION_SPOILERS
    + (
        Spoiler(
            "weight",
            "not int8",
            TypeError,
            "weight must be an int8 tensor",
            lambda c, r: c.arguments["weight"].to(
                r.choice([torch.uint8, torch.int16, torch.int32, torch.float32, torch.float16, torch.bool])
            ),
        ),
        Spoiler("weight", "1-D", ValueError, "weight must be a non-empty 2-D", lambda c, r: c.arguments["weight"][0]),
        Spoiler(
            "weight", "3-D", ValueError, "weight must be a non-empty 2-D", lambda c, r: c.arguments["weight"][None]
        ),
        Spoiler(
            "weight", "empty", ValueError, "weight must be a non-empty 2-D", lambda c, r: c.arguments["weight"][:, :0]
        ),
        Spoiler(
            "weight",
            "quantized",
            TypeError,
            "weight must be a plain tensor",
            lambda c, r: torch.quantize_per_tensor(c.arguments["weight"].float(), 1.0, 0, torch.qint8),
        ),
        # Every other tensor is then on another device than the weight: the first is named.
        Spoiler(
            "weight",
            "on the meta device",
            ValueError,
            "must be on the weight's device",
            lambda c, r: c.arguments["weight"].to("meta"),
        ),
        Spoiler("weight", "None", TypeError, "weight must be a", lambda c, r: None),
        Spoiler(
            "scale",
            "not floating",
            TypeError,
            "scale must be a floating-point tensor",
            lambda c, r: torch.ones(_scale(c).shape, dtype=r.choice([torch.int32, torch.int64, torch.complex64])),
        ),
        Spoiler(
            "scale",
            "length neither 1 nor out_features",
            ValueError,
            "scale must hold 1 element",
            lambda c, r: torch.ones(c.out_features + r.randint(1, 3)),
        ),
        # [out_features, groups] is group-wise; a 2-D scale of any other first dimension is not.
        Spoiler(
            "scale",
            "2-D, not [out_features, groups]",
            ValueError,
            "scale must hold 1 element",
            lambda c, r: torch.ones(c.out_features + r.randint(1, 3), r.randint(1, 3)),
        ),
        Spoiler(
            "scale",
            "group-wise, groups not dividing in_features",
            ValueError,
            "needs in_features",
            lambda c, r: torch.ones(c.out_features, c.arguments["weight"].shape[1] + r.randint(1, 3)),
        ),
        Spoiler("scale", "empty", ValueError, "scale must hold 1 element", lambda c, r: torch.ones(0)),
        Spoiler(
            "scale",
            "not positive",
            ValueError,
            "scale must be finite and positive",
            lambda c, r: _scale(c) * r.choice([0.0, -1.0]),
        ),
        Spoiler(
            "scale",
            "NaN or Inf",
            ValueError,
            "scale must be finite and positive",
            lambda c, r: _with_nonfinite(_scale(c), r),
        ),
        Spoiler(
            "scale",
            "on the meta device",
            ValueError,
            "scale must be on the weight's device",
            lambda c, r: _scale(c).to("meta"),
        ),
        Spoiler("scale", "None", TypeError, "scale must be a", lambda c, r: None),
        Spoiler(
            "zero_point",
            "not an integer",
            TypeError,
            "zero_point must be an integer tensor",
            lambda c, r: torch.zeros(_scale(c).shape, dtype=r.choice([torch.float32, torch.float64, torch.bool])),
        ),
        Spoiler(
            "zero_point",
            "not shaped like scale",
            ValueError,
            "zero_point must have scale's shape",
            lambda c, r: torch.zeros(_scale(c).numel() + r.randint(1, 3), dtype=torch.long),
        ),
        Spoiler(
            "zero_point",
            "outside [-128, 127]",
            ValueError,
            "zero_point must lie in the int8 range",
            lambda c, r: torch.full(_scale(c).shape, r.choice([128, 255, -129, -1000]), dtype=torch.long),
        ),
        Spoiler(
            "zero_point",
            "on the meta device",
            ValueError,
            "zero_point must be on the weight's device",
            lambda c, r: torch.zeros(_scale(c).shape, dtype=torch.long, device="meta"),
        ),
        Spoiler(
            "zero_point",
            "a list",
            TypeError,
            "zero_point must be a torch.Tensor or None",
            lambda c, r: [0] * _scale(c).numel(),
            python_only=True,
        ),
    )
)


def _other_kind_of_packed_params(call: ValidCall, rng: random.Random):
    """Packed params of the other kind (fp16 for int8 ones and vice versa), same shape."""
    weight = call.arguments["packed"].unpack()[0]
    if weight.is_quantized:
        return torch.ops.quantized.linear_prepack_fp16(weight.dequantize(), None)
    return torch.ops.quantized.linear_prepack(torch.quantize_per_tensor(weight, 0.01, 0, torch.qint8), None)


PACKED_SPOILERS = (
    GRAD_OUTPUT_SPOILERS
    + PRECISION_SPOILERS
    + (
        Spoiler(
            "packed",
            "of the other kind",
            TypeError,
            "expects (qint8|fp16) packed weights",
            _other_kind_of_packed_params,
        ),
        Spoiler(
            "packed", "None", TypeError, "packed must be a LinearPackedParamsBase", lambda c, r: None, python_only=True
        ),
        Spoiler(
            "packed",
            "a tensor",
            TypeError,
            "packed must be a LinearPackedParamsBase",
            lambda c, r: torch.randn(c.out_features, 4),
            python_only=True,
        ),
    )
)


def spoilers_for(door_name: str) -> list:
    catalogue = INT8_SPOILERS if door_name.endswith("linear_int8_backward") else PACKED_SPOILERS
    return [s for s in catalogue if not (s.python_only and door_name.startswith("torch.ops"))]


def spoil(call: ValidCall, spoilers, rng: random.Random) -> dict:
    """The call's arguments with each spoiler's argument replaced by its malformed value."""
    return {**call.arguments, **{s.argument: s.make(call, rng) for s in spoilers}}


# ---- The dynamic linear family of quantized:: ops ---------------------------------------

FAMILY = {
    # op: (packed weights from a float weight [N, K], fused ReLU)
    "linear_dynamic": (lambda w: packed_params(quantize_weight(*w.shape, "per_channel_affine")), False),
    "linear_relu_dynamic": (lambda w: packed_params(quantize_weight(*w.shape, "per_tensor_affine")), True),
    "linear_dynamic_fp16": (lambda w: torch.ops.quantized.linear_prepack_fp16(w, None), False),
    "linear_relu_dynamic_fp16": (lambda w: torch.ops.quantized.linear_prepack_fp16(w, None), True),
}


def call(op_name, x, packed):
    """The quantized:: op `op_name` on input x (int8 ops with reduce_range)."""
    op = getattr(torch.ops.quantized, op_name)
    return op(x, packed) if op_name.endswith("fp16") else op(x, packed, True)


def family_forward_calls(op_name):
    """(x, [x -> output]) for the quantized:: op `op_name`, the same in every process: for the int8
    ops one call per weight scheme and reduce_range, for the fp16 ones a single call."""
    torch.manual_seed(0)
    x = torch.randn(7, 32) * 2
    op = getattr(torch.ops.quantized, op_name)
    if op_name.endswith("fp16"):
        packed = torch.ops.quantized.linear_prepack_fp16(torch.randn(16, 32) * 0.2, torch.randn(16))
        return x, [lambda x: op(x, packed)]
    calls = []
    for scheme in SCHEMES:
        packed = packed_params(quantize_weight(16, 32, scheme), torch.randn(16))
        calls += [
            lambda x, packed=packed, reduce_range=reduce_range: op(x, packed, reduce_range)
            for reduce_range in (False, True)
        ]
    return x, calls
