"""The straight-through input gradient in plain Python and float64: the reference qlgrad is checked against.

``with_reference_layers(model)`` puts ``ReferenceLinear`` in place of every dynamic quantized
``Linear`` of ``model`` (int8 or fp16, fused ``LinearReLU`` included): the same forward, and a
backward of ``grad_output @ W_deq`` (masked by ``output > 0`` for the fused ReLU) computed in
float64 from the unpacked weight, differentiable to any order. The demo compares qlgrad's
gradients with it, and so do the tests.

``straight_through(x, forward, weight_float64)`` gives any forward that backward, and
``float64_weight`` gives ``W_deq`` in float64 from a dynamic ``Linear``'s packed params or from a
weight torchao 0.18 quantized (``Int8Tensor``, ``IntxUnpackedToInt8Tensor``, ``Int4OpaqueTensor``):
``bench/llm.py``'s ``-ste64`` modes train on them.

This module imports torch only, never qlgrad's native library (nor torchao: its weights are
recognised by their class), so that a process without qlgrad can load it from its file.
"""

import torch
from torch import nn

__all__ = ["ReferenceLinear", "float64_weight", "straight_through", "with_reference_layers"]


def float64_weight(weight) -> torch.Tensor:
    """``W_deq`` [out_features, in_features] in float64: the weight a quantized layer's forward
    multiplies its input by, from either of

    - a dynamic ``Linear``'s packed params (``layer._packed_params._packed_params``): int8
      dequantized, fp16 widened;
    - the weight of an ``nn.Linear`` that torchao 0.18's ``quantize_`` quantized: ``Int8Tensor``,
      ``IntxUnpackedToInt8Tensor`` or ``Int4OpaqueTensor`` (float activations), each as its
      forward computes with it (see ``_TORCHAO_WEIGHTS``). Where that forward multiplies its
      input by the weight's ``act_pre_scale`` first (SmoothQuant, AWQ), the columns are
      multiplied by it: the weight the input meets.
    """
    if hasattr(weight, "unpack"):  # packed params
        unpacked = weight.unpack()[0]
        return (unpacked.dequantize() if unpacked.is_quantized else unpacked).double()
    for kind in type(weight).__mro__:
        decode = _TORCHAO_WEIGHTS.get(kind.__name__)
        if decode is not None and kind.__module__.startswith("torchao."):
            with torch.no_grad():
                dequantized = decode(weight)
                pre_scale = getattr(weight, "act_pre_scale", None)
                return dequantized if pre_scale is None else dequantized * pre_scale.double().reshape(-1)
    raise TypeError(
        "qlgrad.reference.float64_weight: expected a dynamic Linear's packed params or a weight torchao "
        f"quantized ({', '.join(_TORCHAO_WEIGHTS)}), got {type(weight).__name__}"
    )


def _int8_tensor(weight) -> torch.Tensor:
    """``Int8Tensor``: the int8 codes times their scale (per row or per tensor), in float64.

    With activation quantization its forward rescales the int8 product by the float32 scale, in
    float32 whatever the base: W is the exact ``qdata * scale``, which ``dequantize()`` rounds to
    the base's dtype (to bfloat16 on a bfloat16 base). Weight-only, it multiplies by the scale in the input's dtype (the
    weight's), or, per group, by ``dequantize()``. The forward ignores the weight's zero point
    (torchao quantizes these weights symmetrically: it is zero), and so does this.
    """
    if weight.act_quant_kwargs is None:
        if weight.block_size[-1] < weight.qdata.shape[-1]:
            return weight.dequantize().double()
        return _blockwise(weight.qdata, weight.scale.to(weight.dtype), weight.block_size)
    return _blockwise(weight.qdata, weight.scale, weight.block_size)


def _intx_unpacked_to_int8_tensor(weight) -> torch.Tensor:
    """``IntxUnpackedToInt8Tensor``: its own ``dequantize()``, which its forward multiplies by.

    That is ``(qdata - zero_point) * scale`` per group or per row, rounded once to the weight's
    dtype (the scale's): on a bfloat16 base, the exact product rounded to bfloat16.
    """
    return weight.dequantize().double()


def _int4_opaque_tensor(weight) -> torch.Tensor:
    """``Int4OpaqueTensor`` (float activations): torch's CPU int4 packing, as
    ``aten::_weight_int4pack_mm_for_cpu`` dequantizes it: ``(code - 8) * scale + zero`` in float32.

    Read through the op itself, whatever packing the CPU capability chose: the codes from the op
    with scale 1 and zero 8 (exact integers, in bfloat16 for its fast kernel), then each group's
    16 values from the op in float32 with the group's scale and zero. On a bfloat16 base these are
    the values of the op's bfloat16 kernel too ((code - 8) * scale is exact in float32), but for
    the AVX2 one, which adds -8 * scale to the zero first: within a float32 rounding of them.
    """
    if weight.act_mapping_type is not None:
        raise NotImplementedError(
            "qlgrad.reference.float64_weight: Int4OpaqueTensor with int8 activations (DA8W4) is not supported"
        )
    group_size = weight.block_size[-1]
    rows, columns = weight.shape
    packed_rows, groups = weight.qdata.shape[0], columns // group_size
    codes = _int4pack_codes(weight.qdata, group_size, columns).view(packed_rows, groups, group_size)
    values = _int4pack_values(weight.scale_and_zero)  # [packed rows, groups, 16]
    return torch.gather(values, 2, codes.long()).view(packed_rows, columns)[:rows].double()


_INT4PACK_ROWS = 1024  # input rows per call of the op while reading the codes


def _int4pack_codes(packed: torch.Tensor, group_size: int, columns: int) -> torch.Tensor:
    """The codes [N, K] in [0, 16) of torch's CPU int4 packing, as uint8.

    With scale 1 and zero 8 the op's weight is the codes themselves; input row r picks column r
    and 16 times column r + K / 2, so that each output holds two codes, exact in bfloat16 (< 256).
    """
    half = columns // 2  # K is a multiple of the group size, 32 at least
    unit = torch.tensor([1.0, 8.0], dtype=torch.bfloat16).expand(columns // group_size, packed.shape[0], 2)
    unit = unit.contiguous()
    codes = torch.empty(packed.shape[0], columns, dtype=torch.uint8)
    for start in range(0, half, _INT4PACK_ROWS):
        stop = min(start + _INT4PACK_ROWS, half)
        picks = torch.eye(stop - start, dtype=torch.bfloat16)
        rows = torch.zeros(stop - start, columns, dtype=torch.bfloat16)
        rows[:, start:stop] = picks
        rows[:, half + start : half + stop] = 16 * picks
        pairs = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, group_size, unit).t().to(torch.uint8)
        codes[:, start:stop] = pairs % 16
        codes[:, half + start : half + stop] = pairs // 16
    return codes


def _int4pack_values(scale_and_zero: torch.Tensor) -> torch.Tensor:
    """[N, groups, 16] float32: the op's value of each code in each group of each row, from the
    op in float32 on a weight of one group of 32 columns, column j holding code j % 16."""
    groups, rows, _ = scale_and_zero.shape
    codes = (torch.arange(32, dtype=torch.int32) % 16).expand(rows, 32).contiguous()
    every_code = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    pick = torch.eye(16, 32)
    parameters = scale_and_zero.float()
    values = [
        torch.ops.aten._weight_int4pack_mm_for_cpu(pick, every_code, 32, parameters[group : group + 1])
        for group in range(groups)
    ]  # each [16, N]
    return torch.stack(values).permute(2, 0, 1).contiguous()


def _blockwise(codes: torch.Tensor, scale: torch.Tensor, block_size) -> torch.Tensor:
    """``codes * scale`` in float64, one scale per block of ``block_size``."""
    blocks = [size // block for size, block in zip(codes.shape, block_size)]
    split = [length for count, block in zip(blocks, block_size) for length in (count, block)]
    per_block = [length for count in blocks for length in (count, 1)]
    return (codes.double().view(split) * scale.double().reshape(per_block)).view(codes.shape)


# The torchao 0.18 weight classes float64_weight reads, by name (torchao is not imported here).
_TORCHAO_WEIGHTS = {
    "Int8Tensor": _int8_tensor,
    "IntxUnpackedToInt8Tensor": _intx_unpacked_to_int8_tensor,
    "Int4OpaqueTensor": _int4_opaque_tensor,
}


class _StraightThrough(torch.autograd.Function):
    """``forward(x)`` below autograd; the input gradient ``grad_output @ weight`` in float64, with
    ``grad_output`` masked by ``output > 0`` where ``relu``. The weight is a constant and the
    backward is made of differentiable operations, so it can be differentiated again."""

    @staticmethod
    def forward(ctx, x, forward, weight, relu):
        output = forward(x)
        ctx.weight = weight
        ctx.save_for_backward(output > 0 if relu else None)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        (passed,) = ctx.saved_tensors
        if passed is not None:
            grad_output = grad_output * passed
        return (grad_output.double() @ ctx.weight).to(grad_output.dtype), None, None, None


def straight_through(x: torch.Tensor, forward, weight_float64: torch.Tensor) -> torch.Tensor:
    """``forward(x)``, whose gradient to ``x`` is ``grad_output @ weight_float64`` in float64.

    ``forward`` (a quantized linear layer, say, with ``weight_float64`` its ``float64_weight``)
    runs with autograd off: nothing it uses gets a gradient, and ``x`` gets this one only. The
    gradient is cast back to ``grad_output``'s dtype, and can be differentiated again.
    """
    return _StraightThrough.apply(x, forward, weight_float64, False)


class ReferenceLinear(nn.Module):
    """A dynamic quantized Linear whose backward is the straight-through estimator in float64."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = float64_weight(self.layer._packed_params._packed_params)
        relu = isinstance(self.layer, torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU)
        return _StraightThrough.apply(x, self.layer, weight, relu)


def with_reference_layers(model: nn.Module) -> nn.Module:
    """``model``, changed in place: every dynamic quantized Linear wrapped by ``ReferenceLinear``."""
    for name, child in model.named_children():
        if isinstance(child, torch.ao.nn.quantized.dynamic.Linear):  # LinearReLU included
            setattr(model, name, ReferenceLinear(child))
        else:
            with_reference_layers(child)
    return model
