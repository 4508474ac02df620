"""The Autograd kernel of quantized::linear_dynamic: gradients and nodes (forward identity and the
nodes not made without grad: test_family.py, for the whole family)."""

import gc
import warnings

import pytest
import torch

from helpers import (
    LEADING_DIMS,
    SCHEMES,
    dynamic_linear,
    packed_params,
    quantize_weight,
    reference_input_gradient,
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
        # The stock onednn kernel maps an empty (3, 0, 10) input to a (0, 6) output: the gradient
        # of that output is still x's (empty) gradient.
        assert engine == "onednn" and x.numel() == 0, (tuple(x.shape), tuple(y.shape))
        grad_output = torch.randn(y.shape)
    (grad_x,) = torch.autograd.grad(y, x, grad_output)

    assert grad_x.shape == x.shape and grad_x.dtype == torch.float32
    expected = reference_input_gradient(grad_output, weight).reshape(x.shape)
    torch.testing.assert_close(grad_x.double(), expected, rtol=1e-5, atol=1e-6)


def test_pending_backward_outlives_the_packed_params(engine):
    """A backward after the layer is gone: its node holds the packed params, so the weight read in
    place (fbgemm's packing) or from the cache is still there."""
    weight = quantize_weight(64, 48, "per_channel_symmetric")
    packed = pack_or_skip(weight, engine)
    x = torch.randn(5, 48, requires_grad=True)
    y = torch.ops.quantized.linear_dynamic(x, packed, False)
    del packed
    gc.collect()
    grad_output = torch.randn(5, 64)
    y.backward(grad_output)
    torch.testing.assert_close(x.grad.double(), reference_input_gradient(grad_output, weight), rtol=1e-5, atol=1e-6)


def test_gradient_is_not_scaled_by_the_input_scale():
    """Large activations have a large quantization scale; the gradient must not shrink with it."""
    weight = quantize_weight(4, 8, "per_tensor_symmetric")
    packed = packed_params(weight)
    x = (torch.randn(3, 8) * 100).requires_grad_()
    torch.ops.quantized.linear_dynamic(x, packed, False).sum().backward()
    torch.testing.assert_close(x.grad.double(), reference_input_gradient(torch.ones(3, 4), weight))


def test_backward_does_not_warn():
    layer = dynamic_linear(8, 4)
    x = torch.randn(2, 8, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (layer(x).sum() + x.sum()).backward()


def test_node_saves_no_activation():
    layer = dynamic_linear(64, 32)
    x = torch.randn(16, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    assert y.grad_fn is not None
    assert saved == []
