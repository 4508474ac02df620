"""qlgrad's Python API: the backward functions, the precision and cache controls, ``prepare``.

The backward precision (``PRECISIONS``) is the one chosen, for gradients of every dtype: by a
backward function's ``precision=``, else the thread's ``with backward_precision(name):``, else
``set_backward_precision(name)``, else the environment variable ``QLGRAD_BACKWARD_PRECISION``.
Where none was chosen, it follows the gradient's dtype: ``"bf16"`` for bfloat16 gradients,
``"fp32"`` for every other dtype. Layers record the choice when their forward runs and resolve it
against the gradient's dtype when their backward runs (``effective_backward_precision``).

The backward functions check their arguments here, naming the wrong one, and call the
native code: ``linear_int8_backward`` the nanobind module (or, under ``torch.compile``, its
operator, whose fake kernel is below), the packed ones their ``torch.ops.qlgrad`` operators.
Keyword arguments are those of the operators' schemas, so a call reads the same through
``qlgrad.*`` and ``torch.ops.qlgrad.*``.
"""

from typing import NamedTuple

import torch

from . import _C
from ._C import (
    PRECISIONS,
    backward_precision,
    chosen_backward_precision,
    clear_cache,
    cpu_capability,
    cpu_extensions,
    effective_backward_precision,
    get_backward_precision,
    set_backward_precision,
    set_cache_limit,
)

__all__ = [
    "PRECISIONS",
    "CacheInfo",
    "backward_precision",
    "cache_info",
    "chosen_backward_precision",
    "clear_cache",
    "cpu_capability",
    "cpu_extensions",
    "effective_backward_precision",
    "get_backward_precision",
    "linear_dynamic_backward",
    "linear_dynamic_fp16_backward",
    "linear_int4pack_backward",
    "linear_int8_backward",
    "prepare",
    "set_backward_precision",
    "set_cache_limit",
]


class CacheInfo(NamedTuple):
    """Backward-weight cache statistics."""

    entries: int
    bytes: int
    hits: int
    misses: int
    limit_bytes: int


def cache_info() -> CacheInfo:
    """Statistics of the weight cache (entries, bytes, hits, misses, limit_bytes)."""
    return CacheInfo(*_C.cache_info())


# What torch calls the packed params of quantized::linear_dynamic and its family.
_PACKED_PARAMS_CLASS = "__torch__.torch.classes.quantized.LinearPackedParamsBase"


def _type_name(value) -> str:
    if isinstance(value, torch.ScriptObject):
        return value._type().qualified_name()
    return "None" if value is None else type(value).__qualname__


def _check_tensor(function: str, name: str, value, optional: bool = False) -> None:
    # The native functions would refuse anything else too, but without naming the argument.
    if not (isinstance(value, torch.Tensor) or (optional and value is None)):
        expected = "a torch.Tensor or None" if optional else "a torch.Tensor"
        raise TypeError(f"qlgrad.{function}: {name} must be {expected}, got {_type_name(value)}")


def _check_packed(function: str, value) -> None:
    if not (isinstance(value, torch.ScriptObject) and value._type().qualified_name() == _PACKED_PARAMS_CLASS):
        raise TypeError(
            f"qlgrad.{function}: packed must be a LinearPackedParamsBase object (a dynamic Linear's "
            f"layer._packed_params._packed_params), got {_type_name(value)}"
        )


def _check_precision(function: str, precision) -> None:
    # The name itself is parsed by the native code; torch.ops would refuse another type
    # with a RuntimeError.
    if not (precision is None or isinstance(precision, str)):
        *first, last = (repr(name) for name in PRECISIONS)
        names = f"{', '.join(first)} or {last}"
        raise TypeError(f"qlgrad.{function}: precision must be a str ({names}) or None, got {_type_name(precision)}")


# The fake kernels check shapes and devices only, for torch.compile and other tracers; the real
# kernels check everything. Calls mixing the meta device with another one land there as well.
def _check_fake_devices(weight: torch.Tensor, **tensors) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != weight.device:
            raise ValueError(f"qlgrad: {name} must be on the weight's device ({weight.device}), got {tensor.device}")


@torch.library.register_fake("qlgrad::linear_int8_backward")
def _linear_int8_backward_fake(grad_output, weight, scale, zero_point=None, precision=None):
    _check_fake_devices(weight, grad_output=grad_output, scale=scale, zero_point=zero_point)
    torch._check(
        grad_output.shape[-1] == weight.shape[0], lambda: "grad_output's last dimension must equal out_features"
    )
    return grad_output.new_empty((*grad_output.shape[:-1], weight.shape[1]))


def linear_int8_backward(
    grad_output: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    precision: str | None = None,
) -> torch.Tensor:
    """Input gradient of an int8 linear layer on plain tensors: ``grad_output @ (scale * (weight - zero_point))``.

    ``weight`` int8 ``[N, K]``; ``scale`` floating, one element (per tensor), ``[N]``
    (per output channel) or ``[N, G]`` (group-wise: ``W[n, k] = scale[n, k // (K // G)] *
    (weight[n, k] - zero_point[n, k // (K // G)])``, K a multiple of G); ``zero_point``
    integer, shaped like ``scale``, ``None`` for a symmetric weight. ``grad_output``
    floating ``[..., N]``; the result has its dtype and shape ``[..., K]``. No quantized
    dtype is involved. Differentiable with respect to ``grad_output`` (any order); ``scale``
    and ``zero_point`` are constants. ``precision``: one of ``PRECISIONS`` (see
    ``set_backward_precision``); ``None`` for the one chosen on this thread, else
    ``grad_output``'s dtype's (``"bf16"`` for bfloat16, ``"fp32"`` otherwise). ``"int8"``
    runs as ``"fp32"`` for group-wise scales, which no integer GEMM can take out of its sums.

    Eager calls go through the nanobind module; under ``torch.compile`` the call is the
    operator ``torch.ops.qlgrad.linear_int8_backward``, which reaches the same kernel.
    """
    for name, value in (("grad_output", grad_output), ("weight", weight), ("scale", scale)):
        _check_tensor("linear_int8_backward", name, value)
    _check_tensor("linear_int8_backward", "zero_point", zero_point, optional=True)
    if torch.compiler.is_compiling():
        return torch.ops.qlgrad.linear_int8_backward(grad_output, weight, scale, zero_point, precision)
    return _C.linear_int8_backward(grad_output, weight, scale, zero_point, precision)


@torch.library.register_fake("qlgrad::linear_int4pack_backward")
def _linear_int4pack_backward_fake(grad_output, weight_int4pack, group_size, scale_and_zeros, precision=None):
    _check_fake_devices(weight_int4pack, grad_output=grad_output, scale_and_zeros=scale_and_zeros)
    torch._check(
        grad_output.shape[-1] == scale_and_zeros.shape[1],
        lambda: "grad_output's last dimension must equal out_features",
    )
    return grad_output.new_empty((*grad_output.shape[:-1], scale_and_zeros.shape[0] * group_size))


@torch.library.register_fake("qlgrad::_int4pack_linear")
def _int4pack_linear_fake(input, weight_int4pack, group_size, scale_and_zeros):
    # The training forward of aten::_weight_int4pack_mm_for_cpu (libqlgrad's Autograd kernel
    # calls it): that op's output, shapes and checks.
    return torch.ops.aten._weight_int4pack_mm_for_cpu(input, weight_int4pack, group_size, scale_and_zeros)


@torch.library.register_fake("qlgrad::_int8_linear")
def _int8_linear_fake(input, weight):
    # torch._int_mm(input, weight.t())'s output.
    torch._check(input.shape[-1] == weight.shape[-1], lambda: "input [M, K] and weight [N, K] must share K")
    return input.new_empty((input.shape[0], weight.shape[0]), dtype=torch.int32)


@torch.library.register_fake("qlgrad::_int8_linear_rescaled")
def _int8_linear_rescaled_fake(input, weight, row_scale, weight_scale, bias, dtype):
    torch._check(input.shape[-1] == weight.shape[-1], lambda: "input [M, K] and weight [N, K] must share K")
    return input.new_empty((input.shape[0], weight.shape[0]), dtype=dtype)


@torch.library.register_fake("qlgrad::_int8_quantize_rows")
def _int8_quantize_rows_fake(input):
    return input.new_empty(input.shape, dtype=torch.int8), input.new_empty((input.shape[0], 1), dtype=torch.float)


@torch.library.register_fake("qlgrad::_int8_quant_dequant_rows")
def _int8_quant_dequant_rows_fake(input):
    return torch.empty_like(input)


@torch.library.register_fake("qlgrad::_int8_groupwise_linear")
@torch.library.register_fake("qlgrad::_int8_dynamic_groupwise_linear")
def _int8_groupwise_linear_fake(input, weight, scale, zero_point):
    torch._check(input.shape[-1] == weight.shape[-1], lambda: "input [M, K] and weight [N, K] must share K")
    return input.new_empty((input.shape[0], weight.shape[0]))


@torch.library.register_fake("qlgrad::_int8_groupwise_dequantize")
def _int8_groupwise_dequantize_fake(weight, scale, zero_point, dtype):
    return weight.new_empty(weight.shape, dtype=dtype)


def linear_int4pack_backward(
    grad_output: torch.Tensor,
    weight_int4pack: torch.Tensor,
    group_size: int,
    scale_and_zeros: torch.Tensor,
    precision: str | None = None,
) -> torch.Tensor:
    """Input gradient of ``aten::_weight_int4pack_mm_for_cpu``: ``grad_output @ W``.

    ``W[n, k] = (code[n, k] - 8) * scale_and_zeros[k // group_size, n, 0] +
    scale_and_zeros[k // group_size, n, 1]``, read from the packing in place: no int8 or
    float copy of the weight is made or kept. ``weight_int4pack``: uint8 ``[N, K // 2]``
    from ``aten::_convert_weight_to_int4pack_for_cpu`` in this process (the packing follows
    the CPU capability, ``ATEN_CPU_CAPABILITY``); ``group_size`` 32, 64, 128 or 256;
    ``scale_and_zeros`` floating ``[K // group_size, N, 2]`` (torchao's ``Int4OpaqueTensor``
    holds all three). ``grad_output`` floating ``[..., N]``; the result has its dtype and shape
    ``[..., K]``. Differentiable with respect to ``grad_output`` (any order). ``precision``: one
    of ``PRECISIONS`` or ``None``, as for ``linear_int8_backward``: ``"bf16"`` multiplies in
    bfloat16 (the packing's values rounded to bfloat16, float32 sums) on CPUs with AVX512-BF16,
    past 4 rows (past one where there are no AMX tiles, but on Intel's CPUs); ``"int8"``, for
    which the weight has no form, and ``"bf16"`` elsewhere run as ``"fp32"``.
    Goes through ``torch.ops.qlgrad.linear_int4pack_backward``.
    """
    for name, value in (
        ("grad_output", grad_output),
        ("weight_int4pack", weight_int4pack),
        ("scale_and_zeros", scale_and_zeros),
    ):
        _check_tensor("linear_int4pack_backward", name, value)
    if not isinstance(group_size, int) or isinstance(group_size, bool):
        raise TypeError(f"qlgrad.linear_int4pack_backward: group_size must be an int, got {_type_name(group_size)}")
    _check_precision("linear_int4pack_backward", precision)
    return torch.ops.qlgrad.linear_int4pack_backward(
        grad_output, weight_int4pack, group_size, scale_and_zeros, precision
    )


def _check_packed_arguments(function: str, grad_output, packed, precision) -> None:
    _check_tensor(function, "grad_output", grad_output)
    _check_packed(function, packed)
    _check_precision(function, precision)


def linear_dynamic_backward(grad_output: torch.Tensor, packed, precision: str | None = None) -> torch.Tensor:
    """Input gradient of ``quantized::linear_dynamic`` for the given packed params.

    ``grad_output @ W_deq``, with ``W_deq`` the dequantized weight inside ``packed`` (the
    ``LinearPackedParamsBase`` object a dynamic ``Linear`` holds as
    ``layer._packed_params._packed_params``), taken from the weight cache. Differentiable
    with respect to ``grad_output``. ``precision`` as for ``linear_int8_backward``.

    The packed params are a TorchBind object, so this goes through
    ``torch.ops.qlgrad.linear_dynamic_backward``, which TorchScript can call too.
    """
    _check_packed_arguments("linear_dynamic_backward", grad_output, packed, precision)
    return torch.ops.qlgrad.linear_dynamic_backward(grad_output, packed, precision)


def linear_dynamic_fp16_backward(grad_output: torch.Tensor, packed, precision: str | None = None) -> torch.Tensor:
    """Input gradient of ``quantized::linear_dynamic_fp16``: ``grad_output @ W``.

    ``W`` is the float16 weight inside ``packed``, widened to float32. ``"int8"`` precision
    runs as ``"fp32"`` here (the weight has no int8 form). Differentiable with respect to
    ``grad_output``. Goes through ``torch.ops.qlgrad.linear_dynamic_fp16_backward``.
    """
    _check_packed_arguments("linear_dynamic_fp16_backward", grad_output, packed, precision)
    return torch.ops.qlgrad.linear_dynamic_fp16_backward(grad_output, packed, precision)


def prepare(module: torch.nn.Module) -> int:
    """Unpack the weight of every dynamic Linear (int8 or fp16) in ``module`` into the cache now.

    The first backward through a layer otherwise pays for unpacking its weight (tens of
    milliseconds for 4096x4096). Every precision reads the same entry: the int8 codes with
    their scales and zero points (float16 for fp16 layers). int8 weights that fbgemm packed
    (the x86 and fbgemm engines, torch's default on x86 CPUs) are read where they lie and never
    cached: they need no preparing. Returns the number of layers prepared.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"qlgrad.prepare: module must be a torch.nn.Module, got {_type_name(module)}")
    # The dynamic LinearReLU is a subclass of the dynamic Linear.
    layers = [m for m in module.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    for layer in layers:
        torch.ops.qlgrad.cache_weight(layer._packed_params._packed_params)
    return len(layers)
