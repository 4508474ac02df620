"""The backward-weight cache: reuse, release with its layer, byte limit."""

import gc

import pytest
import torch

import qlgrad
from helpers import dynamic_linear, packed_params, quantize_weight, reference_input_gradient

pytestmark = pytest.mark.usefixtures("fresh_cache")


def backward_through(layer, batch=4):
    x = torch.randn(batch, layer.in_features, requires_grad=True)
    layer(x).sum().backward()
    return x.grad


def test_second_backward_hits():
    layer = dynamic_linear(16, 8)
    backward_through(layer)
    assert qlgrad.cache_info()[:4] == (1, 8 * 16 * 4, 0, 1)
    backward_through(layer)
    info = qlgrad.cache_info()
    assert (info.entries, info.hits, info.misses) == (1, 1, 1)


def test_entry_released_with_its_layer():
    layers = [dynamic_linear(16, 8) for _ in range(3)]
    for layer in layers:
        backward_through(layer)
    assert qlgrad.cache_info().entries == 3
    del layers, layer
    gc.collect()
    assert qlgrad.cache_info()[:2] == (0, 0)


def test_graph_keeps_packed_params_alive():
    """A pending backward still works after the module is gone: its node holds the packed params."""
    weight = quantize_weight(8, 16, "per_channel_affine")
    packed = packed_params(weight)
    x = torch.randn(3, 16, requires_grad=True)
    y = torch.ops.quantized.linear_dynamic(x, packed, True)
    del packed
    gc.collect()
    grad_output = torch.randn(3, 8)
    y.backward(grad_output)
    torch.testing.assert_close(x.grad.double(), reference_input_gradient(grad_output, weight), rtol=1e-5, atol=1e-6)


def test_byte_limit_bounds_the_cache():
    one_weight = 32 * 32 * 4
    qlgrad.set_cache_limit(2 * one_weight)
    layers = [dynamic_linear(32, 32) for _ in range(5)]
    for layer in layers:
        backward_through(layer)
    info = qlgrad.cache_info()
    assert info.limit_bytes == 2 * one_weight
    assert (info.entries, info.bytes) == (2, 2 * one_weight)
    backward_through(layers[-1])  # most recently used: still cached
    assert qlgrad.cache_info().hits == 1

    qlgrad.set_cache_limit(one_weight)
    assert qlgrad.cache_info()[:2] == (1, one_weight)


def test_zero_limit_disables_caching_but_not_gradients():
    qlgrad.set_cache_limit(0)
    weight = quantize_weight(8, 16, "per_tensor_affine")
    packed = packed_params(weight)
    for _ in range(2):
        x = torch.randn(3, 16, requires_grad=True)
        torch.ops.quantized.linear_dynamic(x, packed, False).sum().backward()
        torch.testing.assert_close(x.grad.double(), reference_input_gradient(torch.ones(3, 8), weight), rtol=1e-5, atol=1e-6)
    assert qlgrad.cache_info()[:2] == (0, 0)


def test_clear_cache_resets_entries_and_counters():
    layer = dynamic_linear(16, 8)
    backward_through(layer)
    backward_through(layer)
    qlgrad.clear_cache()
    assert qlgrad.cache_info()[:4] == (0, 0, 0, 0)


def test_negative_limit_is_refused():
    with pytest.raises(ValueError, match="nbytes"):
        qlgrad.set_cache_limit(-1)
