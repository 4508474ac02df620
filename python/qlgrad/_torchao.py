"""Input gradients through torchao's activation-quantizing linear layers.

``torchao.quantization.quantize_`` puts a tensor subclass in place of each ``nn.Linear``
weight, and ``F.linear`` on that weight may quantize its input first: the output then has no
autograd connection to the input, so ``x.grad`` stays ``None``. Here qlgrad puts its own
``F.linear`` handler into the subclass's torch-function table, torchao's extension point for
tensor subclass operations. The handler gives torchao's forward (where no input requires grad
bit for bit: torchao's own handler, or qlgrad's faster forward where its output is torchao's
exactly) and the input the straight-through gradient ``grad_output @ W_deq`` through
:func:`qlgrad.linear_int8_backward`:

- ``Int8Tensor`` (``Int8DynamicActivationInt8WeightConfig``, ``Int8StaticActivationInt8WeightConfig``):
  int8 weights with a scale per row or per tensor;
- ``IntxUnpackedToInt8Tensor`` (``Int8DynamicActivationIntxWeightConfig`` with
  ``IntxPackingFormat.UNPACKED_TO_INT8``): int1-int8 weights held as int8, with scales and zero
  points per group or per row.

``Int4OpaqueTensor`` (``PrototypeInt4WeightOnlyConfig``) needs no handler: its forward calls
``aten::_weight_int4pack_mm_for_cpu`` above autograd, which libqlgrad gives an Autograd kernel.
Its int8-activation variant (DA8W4), which qlgrad cannot differentiate, is refused with an error
when the input requires grad.

torchao is optional and heavy to import, so nothing here imports it: when qlgrad is imported
first, each handler is registered as soon as torchao's module defining its class has been
executed.
"""

import functools
import math
import platform
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import _import_hooks
from .ops import chosen_backward_precision, effective_backward_precision, linear_int8_backward

# The torchao releases whose tensor subclasses this module has been tested against: the
# handlers rely on where torchao keeps the int values, scales and activation settings.
SUPPORTED_TORCHAO_VERSIONS = ("0.18.0",)

# torch.ops.qlgrad._int8_quantize_rows and _int8_quant_dequant_rows give a NaN the int8 code x86
# CPUs convert it to.
_IS_X86 = platform.machine() in ("x86_64", "AMD64")

_NOT_COVERED = (
    "input gradients through torchao's activation-quantizing linear layers (quantize_ with "
    "Int8DynamicActivationInt8WeightConfig, Int8StaticActivationInt8WeightConfig or "
    "Int8DynamicActivationIntxWeightConfig) stay None"
)


class _StraightThroughLinear(torch.autograd.Function):
    """torchao's forward (its own, or the subclass's training forward); the straight-through
    input gradient in backward."""

    @staticmethod
    def forward(ctx, input, bias, weight, stock_forward, chosen_precision, subclass):
        # The weight is a constant: backward reads its int values and parameters.
        ctx.weight = weight
        ctx.subclass = subclass
        ctx.chosen_precision = chosen_precision
        ctx.bias_sum_dtype = subclass.bias_sum_dtype(input, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.bias_shape = None if bias is None else bias.shape
        if subclass.training_forward is not None:
            return subclass.training_forward(input, weight, bias, stock_forward)
        return stock_forward(input, bias)

    @staticmethod
    def backward(ctx, grad_output):
        grad_input = grad_bias = None
        if ctx.needs_input_grad[0]:
            precision = effective_backward_precision(ctx.chosen_precision, grad_output.dtype)
            grad_input = ctx.subclass.input_gradient(grad_output, ctx.weight, precision)
        if ctx.needs_input_grad[1]:
            # The gradient torchao's own `+ bias` would give the bias, bit for bit.
            grad_bias = grad_output.to(ctx.bias_sum_dtype).sum_to_size(ctx.bias_shape).to(ctx.bias_dtype)
        return grad_input, grad_bias, None, None, None, None


def _int8_tensor_input_gradient(grad_output, weight, precision):
    # Per row or per tensor, torchao keeps the scale as [N, 1] or [1, 1]. Its forward multiplies
    # by the scales only, ignoring the weight's zero point (torchao quantizes these weights
    # symmetrically: it is zero), and so does this gradient.
    grad_input = linear_int8_backward(grad_output, weight.qdata, weight.scale.reshape(-1), None, precision)
    if weight.act_pre_scale is not None:
        # The forward multiplies the input by it before quantizing (SmoothQuant, AWQ).
        grad_input = grad_input * weight.act_pre_scale
    return grad_input


def _int8_tensor_training_forward(input, weight, bias, stock_forward):
    """torchao's forward with int8 activations, bit for bit, with qlgrad's integer product.

    torchao's own forward computes torch._int_mm(x_int8, W_int8.t()) in int32 and then rescales;
    on CPUs it also transposes, offsets and sums the weight at every call, which dominates the
    layer's time. torch.ops.qlgrad._int8_linear gives the same int32 product from the codes as
    they are stored, and the rescaling below is torchao's, step for step (torchao 0.18.0's
    Int8Tensor linear), so the output is torchao's exactly.
    """
    output_dtype = input.dtype
    if weight.act_pre_scale is not None:
        input = input * weight.act_pre_scale
    activation = _quantized_activation(input, weight)
    out_features = weight.qdata.shape[0]
    rescaled_in_one_pass = (torch.float, torch.bfloat16)
    if (
        (activation.zero_point is None or weight.act_quant_kwargs.mapping_type.name != "ASYMMETRIC")
        and output_dtype in rescaled_in_one_pass
        and activation.scale.dtype in rescaled_in_one_pass
        and weight.scale.dtype in rescaled_in_one_pass
        and weight.scale.numel() in (1, out_features)
        and (bias is None or (bias.dtype in rescaled_in_one_pass and bias.shape == (out_features,)))
    ):
        # The steps below in one pass, each rounded as it rounds there. The operator takes the
        # scales as torchao keeps them: a few microseconds a call, at a few rows, went to
        # reshaping them.
        output = torch.ops.qlgrad._int8_linear_rescaled(
            activation.qdata, weight.qdata, activation.scale, weight.scale, bias, output_dtype
        )
        return _with_leading_dimensions(output, input)
    # A float16 activation scale would overflow: torchao rescales in float32 then.
    sum_dtype = torch.float if activation.scale.dtype == torch.half else activation.scale.dtype
    row_scale = activation.scale.to(sum_dtype)
    output = (torch.ops.qlgrad._int8_linear(activation.qdata, weight.qdata).to(sum_dtype) * row_scale).to(output_dtype)
    if activation.zero_point is not None and weight.act_quant_kwargs.mapping_type.name == "ASYMMETRIC":
        # An asymmetric activation's zero point, times each row's scale and each column's codes' sum.
        column_sums = weight.qdata.sum(dim=-1).to(sum_dtype)
        output = output - (activation.zero_point.to(sum_dtype) * row_scale * column_sums).to(output_dtype)
    output = (output * weight.scale.flatten()).reshape(*input.shape[:-1], out_features)
    if bias is not None:
        output += bias
    return output.to(output_dtype)


def _int8_tensor_forward_as_torchaos(input, weight, bias, stock_forward):
    # torchao's forward gives every gradient there is: a bias's, which the training forward's one
    # pass does not record.
    if torch.is_grad_enabled() and isinstance(bias, torch.Tensor) and bias.requires_grad:
        return stock_forward(input, bias)
    return _int8_tensor_training_forward(input, weight, bias, stock_forward)


class _QuantizedInput:
    """An activation (by weak reference), its version counter when it was quantized, by which
    quantization, and the result: freed with the activation, or when another takes its place."""

    __slots__ = ("input", "version", "quantization", "result")

    def __init__(self, input, quantization, result):
        self.input = weakref.ref(input, lambda _reference, entry=self: entry.forget())
        self.version = input._version
        self.quantization = quantization
        self.result = result

    def holds(self, quantization, input) -> bool:
        return self.quantization is quantization and self.input() is input and self.version == input._version

    def forget(self) -> None:
        # The entry and its weak reference's callback refer to each other: the result goes now,
        # not when the garbage collector meets them.
        self.quantization = self.result = None


# Each thread's last quantized activation (the attribute `entry`). A decoder's query, key and value
# projections take the same tensor, as do its MLP's gate and up projections: each layer's forward
# would quantize it again.
_last_activation = threading.local()


def _reused_quantization(quantization, input):
    """quantization(input), or its result for this same input, unchanged, on this thread just before.

    Only plain tensors outside torch.compile, torch.func's transforms and inference mode (whose
    tensors keep no version counter) are remembered.
    """
    if (
        type(input) is not torch.Tensor
        or torch.compiler.is_compiling()
        or input.is_inference()
        or torch._C._functorch.is_functorch_wrapped_tensor(input)
    ):
        return quantization(input)
    last = getattr(_last_activation, "entry", None)
    if last is not None:
        if last.holds(quantization, input):
            return last.result
        last.forget()
    result = quantization(input)
    _last_activation.entry = _QuantizedInput(input, quantization, result)
    return result


class _QuantizedActivation(NamedTuple):
    """An activation's int8 codes [rows, K] (its leading dimensions flattened), scale [rows, 1] and
    zero point (None, or [rows, 1])."""

    qdata: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None


@functools.cache
def _int8_activation_settings():
    """The torchao classes and values _quantized_activation compares with, imported once."""
    from torchao.quantization.granularity import PerRow
    from torchao.quantization.quant_primitives import MappingType
    from torchao.quantization.quantize_.workflows import QuantizeTensorToInt8Kwargs

    return QuantizeTensorToInt8Kwargs, PerRow, MappingType.SYMMETRIC


def _quantized_activation(input, weight):
    """torchao's quantization of an Int8Tensor layer's activation (its Int8Tensor's data, scale and
    zero point), bit for bit: the common case, symmetric per row (dynamic, full int8 range, a
    float32 or bfloat16 activation on an x86 CPU), in one pass by
    torch.ops.qlgrad._int8_quantize_rows; the others by torchao."""
    kwargs_type, per_row, symmetric = _int8_activation_settings()
    kwargs = weight.act_quant_kwargs
    if (
        isinstance(kwargs, kwargs_type)
        and isinstance(kwargs.granularity, per_row)
        and kwargs.mapping_type == symmetric
        and not kwargs.reduce_range
        and weight.act_quant_scale is None
        and input.dtype in (torch.float32, torch.bfloat16)
        and _IS_X86
    ):
        return _QuantizedActivation(*_reused_quantization(_quantize_rows_symmetric, input), None)
    from torchao.quantization.quantize_.common import _choose_quant_func_and_quantize_tensor

    quantized = _choose_quant_func_and_quantize_tensor(
        input, kwargs, scale=weight.act_quant_scale, zero_point=weight.act_quant_zero_point
    )
    zero_point = None if quantized.zero_point is None else quantized.zero_point.reshape(-1, 1)
    return _QuantizedActivation(
        quantized.qdata.reshape(-1, input.shape[-1]), quantized.scale.reshape(-1, 1), zero_point
    )


def _rows(input):
    """input [..., K] as a matrix [rows, K]."""
    return input if input.dim() == 2 else input.reshape(-1, input.shape[-1])


def _with_leading_dimensions(output, input):
    """output [rows, N] as [..., N], the leading dimensions input's."""
    return output if input.dim() == 2 else output.view(*input.shape[:-1], output.shape[-1])


def _quantize_rows_symmetric(input):
    return torch.ops.qlgrad._int8_quantize_rows(_rows(input))


def _quant_dequant_rows(input):
    return torch.ops.qlgrad._int8_quant_dequant_rows(_rows(input)).view(input.shape)


def _quant_dequant_per_token(input):
    """torchao's asymmetric int8 quantization of an activation per token, dequantized, bit for bit (in
    one pass by torch.ops.qlgrad._int8_quant_dequant_rows on x86 CPUs)."""
    if _IS_X86:
        return _reused_quantization(_quant_dequant_rows, input)
    from torchao.quantization.quantize_.workflows.intx import intx_unpacked_to_int8_tensor as intx

    return intx._apply_int8_act_asym_per_token_quant_dequant(input)


@functools.cache
def _per_token_activation_quantization():
    """torchao's name for an IntxUnpackedToInt8Tensor layer's activation quantization per token, imported once."""
    from torchao.quantization.quantize_.workflows.intx import intx_unpacked_to_int8_tensor as intx

    return intx.IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN


def _quantizes_per_token(weight) -> bool:
    return weight.activation_quantization == _per_token_activation_quantization()


def _intx_training_forward(input, weight, bias, stock_forward):
    """torchao's forward with int8 activations and group-wise int1-int8 weights, from the codes.

    torchao's own forward dequantizes the whole weight at every call, then multiplies; here
    torch.ops.qlgrad._int8_dynamic_groupwise_linear quantizes the activation step for step as
    torchao does and multiplies by the codes where they lie: in integer products where the CPU has
    them (AVX512-VNNI), the same sums but for the roundings of the dequantized values and of the
    sums; else by the dequantized activation in floating point (each weight value rounded to
    bfloat16 for bfloat16 inputs, as torchao's bfloat16 weight holds it).
    """
    in_features = weight.qdata.shape[1]
    groups = weight.scale.shape[-1]
    if (
        not _quantizes_per_token(weight)
        or input.dtype not in (torch.float32, torch.bfloat16)
        or (groups > 1 and in_features // groups % 16)  # the product reads whole 16-column groups
    ):
        return stock_forward(input, bias)
    zero_point = torch.zeros_like(weight.scale) if weight.zero_point is None else weight.zero_point
    output = torch.ops.qlgrad._int8_dynamic_groupwise_linear(_rows(input), weight.qdata, weight.scale, zero_point)
    output = _with_leading_dimensions(output, input)
    return output if bias is None else output + bias


def _intx_forward_as_torchaos(input, weight, bias, stock_forward):
    """torchao's forward with int8 activations and group-wise int1-int8 weights, bit for bit, its
    weight dequantized in one pass.

    torchao quantizes and dequantizes the activation, dequantizes the weight and calls F.linear;
    here the same F.linear runs on the same two tensors: the activation from
    _quant_dequant_per_token, the weight from torch.ops.qlgrad._int8_groupwise_dequantize, which
    is torchao's dequantization where the zero points are integers and the scales finite (each
    value (code - zero_point) * scale, rounded once to the weight's dtype). torchao's own makes
    three copies of the weight on the way, which is most of its forward's time. Compiled, torchao's
    forward is traced as it is (its dequantization fused by the compiler; the scales' test here
    would be a data-dependent branch).
    """
    in_features = weight.qdata.shape[1]
    scale, zero_point = weight.scale, weight.zero_point
    if (
        torch.compiler.is_compiling()
        or not _quantizes_per_token(weight)
        or input.dtype not in (torch.float32, torch.bfloat16)
        or weight.dtype not in (torch.float32, torch.bfloat16)
        or scale.dim() != 2
        or tuple(weight.block_size) != (1, in_features // scale.shape[1])
        or (zero_point is not None and zero_point.dtype.is_floating_point)
        or not _all_finite(scale)
    ):
        return stock_forward(input, bias)
    dequantized = torch.ops.qlgrad._int8_groupwise_dequantize(weight.qdata, scale, zero_point, weight.dtype)
    return F.linear(_quant_dequant_per_token(input), dequantized, bias)


def _all_finite(values) -> bool:
    # A NaN makes both extremes NaN, an infinity one of them: one reduction, where torch.isfinite
    # writes a mask and reduces it (on a Zen 4 EPYC, a bfloat16 scale of 4864 x 28: 12 against 225 µs).
    if values.numel() == 0:
        return True  # aminmax has no extremes to give
    smallest, largest = torch.aminmax(values)
    return math.isfinite(smallest.item()) and math.isfinite(largest.item())


def _intx_input_gradient(grad_output, weight, precision):
    # qdata holds the int1-int8 values as int8; scale and zero_point are [N, K / group] (one
    # group for PerAxis(0)): linear_int8_backward's group-wise form, read as stored.
    return linear_int8_backward(grad_output, weight.qdata, weight.scale, weight.zero_point, precision)


def _refuse_int8_activation_int4(weight):
    raise NotImplementedError(
        "qlgrad: torchao's Int4OpaqueTensor with int8 activations (DA8W4) gives no input gradient and "
        "qlgrad does not differentiate it; use PrototypeInt4WeightOnlyConfig's float activations, or "
        "Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4), whose layers qlgrad differentiates"
    )


class _Subclass(NamedTuple):
    """A torchao weight subclass whose F.linear qlgrad takes over, and how."""

    module: str  # where torchao defines it
    name: str
    # Whether the forward on this weight cuts the input's gradient (it quantizes the input).
    cuts_gradient: Callable
    input_gradient: Callable | None  # (grad_output, weight, precision) -> grad_input; None: refuse
    # The dtype torchao's forward adds the bias in: the bias gradient is summed in it.
    bias_sum_dtype: Callable = lambda input, weight: input.dtype
    # (input, weight, bias, stock_forward) -> output where the input requires grad, torchao's
    # output computed faster; None: torchao's forward.
    training_forward: Callable | None = None
    # The same signature: torchao's output bit for bit, computed faster, for inputs that require
    # no grad; None: torchao's forward.
    forward_as_torchaos: Callable | None = None


_SUBCLASSES = (
    _Subclass(
        "torchao.quantization.quantize_.workflows.int8.int8_tensor",
        "Int8Tensor",
        # Without activation quantization (weight-only configs) torchao's forward is a float
        # matmul that autograd already differentiates.
        cuts_gradient=lambda weight: weight.act_quant_kwargs is not None and weight.qdata.dim() == 2,
        input_gradient=_int8_tensor_input_gradient,
        # torchao adds the bias to the int8 product rescaled by the float32 weight scale (so in
        # float32 for bfloat16 inputs), then casts to the input's dtype.
        bias_sum_dtype=lambda input, weight: torch.promote_types(input.dtype, weight.scale.dtype),
        training_forward=_int8_tensor_training_forward,
        # Its integer product is exact and its rescaling torchao's, step for step: on x86 CPUs
        # 3.5x faster than torchao's (256 x 896 -> 896 in bfloat16 on a Sapphire Rapids Xeon,
        # 2 threads: 0.33 ms against 0.94 ms).
        forward_as_torchaos=_int8_tensor_forward_as_torchaos,
    ),
    _Subclass(
        "torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor",
        "IntxUnpackedToInt8Tensor",
        # IntxWeightOnlyConfig's layers have none: a float matmul on the dequantized weight.
        cuts_gradient=lambda weight: weight.activation_quantization is not None and weight.qdata.dim() == 2,
        input_gradient=_intx_input_gradient,
        training_forward=_intx_training_forward,
        forward_as_torchaos=_intx_forward_as_torchaos,
    ),
    _Subclass(
        "torchao.prototype.quantization.int4.int4_opaque_tensor",
        "Int4OpaqueTensor",
        cuts_gradient=lambda weight: weight.act_mapping_type is not None,
        input_gradient=None,
    ),
)


def _make_linear_handler(stock_handler, subclass_type, subclass: _Subclass):
    """An F.linear handler for subclass_type weights that adds the input gradient to ``stock_handler``."""

    @functools.wraps(stock_handler)
    def linear_with_input_gradient(func, types, args, kwargs):
        # torchao's handlers read input, weight and bias from args only (nn.Linear passes them
        # so); any other call goes to it unchanged.
        if len(args) < 2:
            return stock_handler(func, types, args, kwargs)
        input, weight = args[0], args[1]
        bias = args[2] if len(args) > 2 else None
        if not (
            isinstance(input, torch.Tensor) and isinstance(weight, subclass_type) and subclass.cuts_gradient(weight)
        ):
            return stock_handler(func, types, args, kwargs)

        def stock_forward(input, bias):
            return stock_handler(func, types, (input, weight, bias)[: len(args)], kwargs)

        grad_enabled = torch.is_grad_enabled()
        if not (grad_enabled and input.requires_grad):
            if subclass.forward_as_torchaos is not None:
                return subclass.forward_as_torchaos(input, weight, bias, stock_forward)
            return stock_forward(input, bias)
        if subclass.input_gradient is None:
            _refuse_int8_activation_int4(weight)

        # The precision chosen at forward time is the one backward uses (none: the gradient's
        # dtype decides), as for quantized::linear_dynamic.
        chosen = chosen_backward_precision()
        return _StraightThroughLinear.apply(input, bias, weight, stock_forward, chosen, subclass)

    linear_with_input_gradient.qlgrad_input_gradient = True
    return linear_with_input_gradient


# torchao's own F.linear handler of each subclass, which qlgrad's wraps.
_STOCK_LINEAR_HANDLERS: dict[type, Callable] = {}


def stock_linear_handler(subclass_type: type) -> Callable:
    """torchao's own F.linear handler for ``subclass_type`` weights, past qlgrad's: what
    benchmarks and tests time or compare torchao's forward with."""
    return _STOCK_LINEAR_HANDLERS[subclass_type]


def _register(module, subclass: _Subclass) -> None:
    """Put the gradient-giving F.linear handler into the subclass's torch-function table."""
    subclass_type = getattr(module, subclass.name, None)
    table = getattr(subclass_type, "_TORCH_FN_TABLE", {}).get(subclass_type, {})
    stock_handler = table.get(F.linear)
    if stock_handler is None:
        warnings.warn(
            f"qlgrad: torchao's {subclass.name} has no F.linear handler where qlgrad expects one; "
            f"input gradients through its layers stay None",
            stacklevel=2,
        )
        return
    if getattr(stock_handler, "qlgrad_input_gradient", False):
        return  # registered already
    _STOCK_LINEAR_HANDLERS[subclass_type] = stock_handler
    # Only the torch-function table: torchao's aten.linear entry runs below autograd, where no
    # gradient can be attached. The subclass's own registration decorator keeps the table's format.
    subclass_type.implements_torch_function(F.linear)(_make_linear_handler(stock_handler, subclass_type, subclass))


def install(torchao_version: str | None) -> None:
    """Give torchao ``torchao_version`` (None: not installed) qlgrad's gradients, or say why not.

    Warns once, at the import of qlgrad, for a torchao release qlgrad was not tested with.
    """
    if torchao_version is None:
        return
    remedy = "Install qlgrad[torchao] for a supported torchao."
    if not _import_hooks.check_supported("torchao", torchao_version, SUPPORTED_TORCHAO_VERSIONS, _NOT_COVERED, remedy):
        return
    # The modules executed already register now, the others when they are, whichever import comes
    # first (torchao's prototypes are imported apart, maybe much later).
    for subclass in _SUBCLASSES:
        _import_hooks.when_imported(subclass.module, functools.partial(_register, subclass=subclass))
