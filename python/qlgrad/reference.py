"""The straight-through input gradient in plain Python and float64: the reference qlgrad is checked against.

``with_reference_layers(model)`` puts ``ReferenceLinear`` in place of every dynamic quantized
``Linear`` of ``model`` (int8 or fp16, fused ``LinearReLU`` included): the same forward, and a
backward of ``grad_output @ W_deq`` (masked by ``output > 0`` for the fused ReLU) computed in
float64 from the unpacked weight, differentiable to any order. The demo compares qlgrad's
gradients with it, and so do the tests.

This module imports torch only, never qlgrad's native library, so that a process without
qlgrad can load it from its file.
"""

import torch
from torch import nn

__all__ = ["ReferenceLinear", "float64_weight", "with_reference_layers"]


def float64_weight(packed) -> torch.Tensor:
    """The weight inside a dynamic Linear's packed params, in float64: int8 dequantized, fp16 widened."""
    weight = packed.unpack()[0]
    return (weight.dequantize() if weight.is_quantized else weight).double()


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layer):
        ctx.weight = float64_weight(layer._packed_params._packed_params)
        output = layer(x)
        relu = isinstance(layer, torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU)
        ctx.save_for_backward(output > 0 if relu else None)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        (passed,) = ctx.saved_tensors
        if passed is not None:
            grad_output = grad_output * passed
        return (grad_output.double() @ ctx.weight).to(grad_output.dtype), None


class ReferenceLinear(nn.Module):
    """A dynamic quantized Linear whose backward is the straight-through estimator in float64."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(x, self.layer)


def with_reference_layers(model: nn.Module) -> nn.Module:
    """``model``, changed in place: every dynamic quantized Linear wrapped by ``ReferenceLinear``."""
    for name, child in model.named_children():
        if isinstance(child, torch.ao.nn.quantized.dynamic.Linear):  # LinearReLU included
            setattr(model, name, ReferenceLinear(child))
        else:
            with_reference_layers(child)
    return model
