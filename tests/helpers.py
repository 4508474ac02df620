"""Sample inputs and independent references shared by the tests."""

import fcntl
import itertools
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

SCHEMES = ("per_tensor_symmetric", "per_tensor_affine", "per_channel_symmetric", "per_channel_affine")
ENGINES = tuple(e for e in torch.backends.quantized.supported_engines if e != "none")
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
        return (self.values.double() - self.zero_point.double()[:, None]) * self.scale[:, None]


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


def sample_inputs(out_features: int = 6, in_features: int = 10):
    """(scheme, leading dims, weight, grad_output) for every weight scheme and batch shape."""
    for scheme, leading in itertools.product(SCHEMES, LEADING_DIMS):
        weight = quantize_weight(out_features, in_features, scheme)
        grad_output = torch.randn(*leading, out_features)
        yield scheme, leading, weight, grad_output


class STEReferenceLinear(torch.nn.Module):
    """A dynamic quantized Linear (int8 or fp16, with or without fused ReLU) whose backward is
    a pure-Python straight-through estimator in float64, differentiable to any order."""

    class _Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, layer):
            weight = layer.weight()
            ctx.weight = (weight.dequantize() if weight.is_quantized else weight).double()
            output = layer(x)
            ctx.save_for_backward(output > 0 if isinstance(layer, torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU) else None)
            return output

        @staticmethod
        def backward(ctx, grad_output):
            (mask,) = ctx.saved_tensors
            if mask is not None:
                grad_output = grad_output * mask
            return (grad_output.double() @ ctx.weight).to(grad_output.dtype), None

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self._Function.apply(x, self.layer)


def with_ste_reference_layers(model: torch.nn.Module) -> torch.nn.Module:
    """model with every dynamic quantized Linear wrapped by STEReferenceLinear (in place)."""
    for name, child in model.named_children():
        if isinstance(child, torch.ao.nn.quantized.dynamic.Linear):  # LinearReLU included
            setattr(model, name, STEReferenceLinear(child))
        else:
            with_ste_reference_layers(child)
    return model


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


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


# ---- Reliability report -------------------------------------------------------------

REPORT_PATH = Path(
    os.environ.get("QLGRAD_RELIABILITY_REPORT", Path(__file__).parent.parent / "build" / "reliability.json")
)


def record_reliability(section: str, name: str, figures: dict) -> None:
    """Merge one test's figures into the reliability report as report[section][name].

    Each test writes only its own entry, so a run of a subset updates those entries and
    keeps the others from earlier runs. scripts/update_reliability_table.py copies the
    report into README.md.
    """
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(REPORT_PATH.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other processes may record at the same time
        report = json.loads(REPORT_PATH.read_text()) if REPORT_PATH.exists() else {}
        report.setdefault(section, {})[name] = figures
        temporary = REPORT_PATH.with_suffix(".tmp")
        temporary.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, REPORT_PATH)


# ---- Valid calls of the standalone backward functions, and their references ----------


def _qlgrad():
    # Imported on use: subprocesses import this module to run stock PyTorch without qlgrad.
    import qlgrad

    return qlgrad


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
        qweight = torch._make_per_channel_quantized_tensor(values, scale.double().reshape(-1), zero_points.reshape(-1), 0)
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
