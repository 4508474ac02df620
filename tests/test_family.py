"""The rest of the dynamic linear family (fused ReLU, fp16 weights) and double backward."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import qlgrad
from helpers import FAMILY, SCHEMES, call, cosine, family_forward_calls, packed_params, quantize_weight, run_python
from qlgrad.reference import float64_weight, with_reference_layers


@pytest.mark.parametrize("op_name", FAMILY)
def test_input_gradient_matches_float64_reference(op_name):
    make_packed, relu = FAMILY[op_name]
    packed = make_packed(torch.randn(12, 20) * 0.2)
    x = torch.randn(2, 5, 20, requires_grad=True)
    grad_output = torch.randn(2, 5, 12)
    y = call(op_name, x, packed)
    y.backward(grad_output)
    masked = grad_output * (y > 0) if relu else grad_output
    expected = masked.double() @ float64_weight(packed)
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-5, atol=1e-6)
    if relu:
        assert (y == 0).any() and (y > 0).any()


@pytest.mark.parametrize("op_name", FAMILY)
def test_no_node_without_grad(op_name):
    packed = FAMILY[op_name][0](torch.randn(4, 8))
    assert call(op_name, torch.randn(3, 8), packed).grad_fn is None
    with torch.no_grad():
        assert call(op_name, torch.randn(3, 8, requires_grad=True), packed).grad_fn is None
    with torch.inference_mode():
        assert call(op_name, torch.randn(3, 8), packed).grad_fn is None


@pytest.mark.parametrize("op_name", FAMILY)
def test_forward_is_bit_identical_to_the_stock_kernel(op_name, tmp_path):
    """Outputs with qlgrad loaded (through the Autograd kernel, and under no_grad) equal those of a
    process without it, for every weight scheme and reduce_range of the int8 ops."""
    result = run_python(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from helpers import family_forward_calls
        x, calls = family_forward_calls({op_name!r})
        torch.save([f(x) for f in calls], {str(tmp_path / "stock.pt")!r})
    """)
    assert result.returncode == 0, result.stderr
    stock = torch.load(tmp_path / "stock.pt")
    x, calls = family_forward_calls(op_name)
    assert len(calls) == len(stock) == (1 if op_name.endswith("fp16") else 2 * len(SCHEMES))
    x.requires_grad_()
    for f, expected in zip(calls, stock, strict=True):
        assert torch.equal(f(x).detach(), expected)
        with torch.no_grad():
            assert torch.equal(f(x), expected)


def test_fp16_backward_refuses_int8_packed_params_and_vice_versa():
    int8_packed = packed_params(quantize_weight(4, 8, "per_tensor_symmetric"))
    fp16_packed = torch.ops.quantized.linear_prepack_fp16(torch.randn(4, 8), None)
    with pytest.raises(TypeError, match="linear_dynamic_fp16 expects fp16 packed weights, got qint8"):
        qlgrad.linear_dynamic_fp16_backward(torch.randn(2, 4), int8_packed)
    with pytest.raises(TypeError, match="linear_dynamic expects qint8 packed weights, got fp16"):
        qlgrad.linear_dynamic_backward(torch.randn(2, 4), fp16_packed)


class Upstream(nn.Module):
    """Float layers (trainable) in front of a quantizable part with fused Linear+ReLU."""

    def __init__(self):
        super().__init__()
        self.float_in = nn.Linear(16, 32)
        self.body = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 8))

    def forward(self, x):
        h = torch.tanh(self.float_in(x))
        return h + 0.1 * self.body(h).sum(-1, keepdim=True)


def quantized_upstream(dtype):
    torch.manual_seed(0)
    model = Upstream().eval()
    model.body = torch.ao.quantization.fuse_modules(model.body, [["0", "1"]])
    spec = {nn.Linear, torch.ao.nn.intrinsic.LinearReLU}
    model.body = torch.ao.quantization.quantize_dynamic(model.body, spec, dtype=dtype)
    return model


@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16], ids=["int8", "fp16"])
def test_whole_model_with_fused_relu_matches_reference(dtype):
    model = quantized_upstream(dtype)
    layer_types = {type(m).__name__ for m in model.body.modules()}
    assert {"LinearReLU", "Linear"} <= layer_types
    reference = with_reference_layers(copy.deepcopy(model))
    x = torch.randn(10, 16)

    def input_gradient(m):
        inp = x.clone().requires_grad_()
        m(inp).pow(2).sum().backward()
        return inp.grad

    got, expected = input_gradient(model), input_gradient(reference)
    assert cosine(got, expected) >= 0.9999
    assert abs(got.norm() / expected.norm() - 1) <= 1e-3


@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16], ids=["int8", "fp16"])
def test_gradient_penalty_backpropagates_into_upstream_float_parameters(dtype):
    """Double backward: ||d loss / d x||^2 differentiated with respect to the float layer in front."""
    model = quantized_upstream(dtype)
    reference = with_reference_layers(copy.deepcopy(model))
    x = torch.randn(10, 16)

    def penalty_gradient(m):
        m.zero_grad()
        inp = x.clone().requires_grad_()
        (grad_x,) = torch.autograd.grad(m(inp).pow(2).sum(), inp, create_graph=True)
        grad_x.pow(2).sum().backward()
        return torch.cat([m.float_in.weight.grad.flatten(), m.float_in.bias.grad])

    got, expected = penalty_gradient(model), penalty_gradient(reference)
    assert cosine(got, expected) >= 0.9999
    assert abs(got.norm() / expected.norm() - 1) <= 1e-3
