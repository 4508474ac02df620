"""Dynamic linear layers inside a CPU autocast region: the activation is cast to float32,
and the gradient goes back in the incoming dtype."""

import pytest
import torch
from torch import nn

import qlgrad  # noqa: F401  (registers the kernels)
from helpers import FAMILY, call, dynamic_linear
from qlgrad.reference import float64_weight

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("op_name", FAMILY)
def test_op_runs_on_float32_and_returns_the_gradient_in_the_incoming_dtype(op_name, dtype):
    make_packed, relu = FAMILY[op_name]
    packed = make_packed(torch.randn(6, 10) * 0.3)
    x = torch.randn(4, 10).to(dtype).requires_grad_()
    grad_output = torch.randn(4, 6)
    with torch.autocast("cpu", dtype=dtype):
        y = call(op_name, x, packed)
    assert y.dtype == torch.float32
    # Bit-identical to the op on the activation cast by hand.
    torch.testing.assert_close(y, call(op_name, x.detach().float(), packed), rtol=0, atol=0)
    y.backward(grad_output)
    assert x.grad.dtype == dtype
    masked = torch.where(y > 0, grad_output, 0.0) if relu else grad_output
    assert_rounded_from(x.grad, masked.double() @ float64_weight(packed))


def assert_rounded_from(got, expected64, roundings=1):
    """got holds expected64 up to `roundings` roundings to got's dtype."""
    eps = torch.finfo(got.dtype).eps * roundings
    torch.testing.assert_close(got.double(), expected64, rtol=eps, atol=eps * expected64.abs().max().item())


def float_then_quantized_model():
    torch.manual_seed(0)
    fp16_layer = torch.ao.nn.quantized.dynamic.Linear(12, 4, dtype=torch.float16)
    fp16_layer.set_weight_bias(torch.randn(4, 12) * 0.3, torch.randn(4))
    return nn.Sequential(
        nn.Linear(10, 16), nn.ReLU(), dynamic_linear(16, 12, "per_channel_affine"), nn.ReLU(), fp16_layer
    )


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_float_layer_feeding_quantized_layers(dtype):
    model = float_then_quantized_model()
    x = torch.randn(5, 10)
    grad_output = torch.randn(5, 4).to(dtype)

    with torch.autocast("cpu", dtype=dtype):
        hidden = model[1](model[0](x))
        hidden.retain_grad()
        y = model[2:](hidden)
    y.backward(grad_output)
    # The dynamic Linear modules return their input's dtype.
    assert hidden.dtype == hidden.grad.dtype == y.dtype == dtype
    weight_grad = model[0].weight.grad.clone()

    # Bit-identical to the same computation with the casts written out.
    model.zero_grad()
    explicit_hidden = torch.relu(nn.functional.linear(x.to(dtype), model[0].weight.to(dtype), model[0].bias.to(dtype)))
    explicit_hidden.retain_grad()
    int8_out = torch.relu(model[2](explicit_hidden.float()).to(dtype))
    explicit_y = model[4](int8_out.float()).to(dtype)
    explicit_y.backward(grad_output)
    torch.testing.assert_close(y, explicit_y, rtol=0, atol=0)
    torch.testing.assert_close(hidden.grad, explicit_hidden.grad, rtol=0, atol=0)
    torch.testing.assert_close(weight_grad, model[0].weight.grad, rtol=0, atol=0)

    # And the straight-through chain in float64 from the unpacked weights, up to the
    # roundings to the incoming dtype on the way.
    grad_int8_out = torch.where(
        int8_out > 0, grad_output.double() @ float64_weight(model[4]._packed_params._packed_params), 0.0
    )
    assert_rounded_from(
        hidden.grad, grad_int8_out @ float64_weight(model[2]._packed_params._packed_params), roundings=4
    )


def test_float32_input_outside_autocast_is_unchanged():
    layer = dynamic_linear(10, 6)
    x = torch.randn(3, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = layer(x)
    torch.testing.assert_close(inside, layer(x), rtol=0, atol=0)
