"""The Autograd kernel of quantized::linear_dynamic: gradients, forward identity, nodes."""

import warnings
from pathlib import Path

import pytest
import torch

import qlgrad
from helpers import (
    LEADING_DIMS,
    SCHEMES,
    dynamic_linear,
    packed_params,
    quantize_weight,
    reference_input_gradient,
    run_python,
)


def pack_or_skip(weight, engine):
    try:
        return packed_params(weight, torch.randn(weight.values.shape[0]))
    except RuntimeError as error:
        pytest.skip(f"{engine} cannot pack this weight: {str(error).splitlines()[0]}")


@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("leading", LEADING_DIMS, ids=str)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_input_gradient_matches_float64_reference(engine, scheme, leading, reduce_range):
    weight = quantize_weight(6, 10, scheme)
    packed = pack_or_skip(weight, engine)
    x = (torch.randn(*leading, 10) * 3).requires_grad_()
    grad_output = torch.randn(*leading, 6)

    y = torch.ops.quantized.linear_dynamic(x, packed, reduce_range)
    if y.shape != grad_output.shape:
        pytest.xfail(f"the stock {engine} kernel maps input {tuple(x.shape)} to output {tuple(y.shape)}")
    (grad_x,) = torch.autograd.grad(y, x, grad_output)

    assert grad_x.shape == x.shape and grad_x.dtype == torch.float32
    torch.testing.assert_close(grad_x.double(), reference_input_gradient(grad_output, weight), rtol=1e-5, atol=1e-6)


def test_gradient_is_not_scaled_by_the_input_scale():
    """Large activations have a large quantization scale; the gradient must not shrink with it."""
    weight = quantize_weight(4, 8, "per_tensor_symmetric")
    packed = packed_params(weight)
    x = (torch.randn(3, 8) * 100).requires_grad_()
    torch.ops.quantized.linear_dynamic(x, packed, False).sum().backward()
    torch.testing.assert_close(x.grad.double(), reference_input_gradient(torch.ones(3, 4), weight))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_is_bit_identical_to_the_stock_kernel(scheme, tmp_path):
    """Outputs with qlgrad loaded (through the Autograd kernel) equal those of a process without it."""

    def inputs():
        torch.manual_seed(0)
        packed = packed_params(quantize_weight(16, 32, scheme), torch.randn(16))
        return packed, torch.randn(7, 32) * 2

    stock_path = tmp_path / "stock.pt"
    result = run_python(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from helpers import packed_params, quantize_weight
        torch.manual_seed(0)
        packed = packed_params(quantize_weight(16, 32, {scheme!r}), torch.randn(16))
        x = torch.randn(7, 32) * 2
        torch.save([torch.ops.quantized.linear_dynamic(x, packed, r) for r in (False, True)], {str(stock_path)!r})
    """)
    assert result.returncode == 0, result.stderr
    stock = torch.load(stock_path)

    packed, x = inputs()
    x.requires_grad_()
    for reduce_range, expected in zip((False, True), stock):
        assert torch.equal(torch.ops.quantized.linear_dynamic(x, packed, reduce_range).detach(), expected)
        with torch.no_grad():
            assert torch.equal(torch.ops.quantized.linear_dynamic(x, packed, reduce_range), expected)


def test_backward_does_not_warn():
    layer = dynamic_linear(8, 4)
    x = torch.randn(2, 8, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (layer(x).sum() + x.sum()).backward()


def test_no_node_without_grad():
    layer = dynamic_linear(8, 4)
    assert layer(torch.randn(2, 8)).grad_fn is None
    with torch.no_grad():
        assert layer(torch.randn(2, 8, requires_grad=True)).grad_fn is None
    with torch.inference_mode():
        assert layer(torch.randn(2, 8)).grad_fn is None


def test_node_saves_no_activation():
    layer = dynamic_linear(64, 32)
    x = torch.randn(16, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    assert y.grad_fn is not None
    assert saved == []


def test_weight_without_qint8_packing_is_refused_by_name():
    fp16_packed = torch.ops.quantized.linear_prepack_fp16(torch.randn(4, 8), None)
    with pytest.raises(Exception, match="qint8"):
        qlgrad.linear_dynamic_backward(torch.randn(2, 4), fp16_packed)
