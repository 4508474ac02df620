"""The weight cache: one int8 entry per layer, reuse, release with its layer, byte limit, admission.

Weights that fbgemm packed (the x86 and fbgemm engines) are read in place and never cached
(test_fbgemm_in_place.py); the layers here are packed by QNNPACK, whose weights are unpacked and cached."""

import gc

import pytest
import torch

import qlgrad
from helpers import SCHEMES, dynamic_linear, packed_params, quantize_weight, reference_input_gradient

pytestmark = pytest.mark.usefixtures("fresh_cache", "qnnpack_engine")


@pytest.fixture
def qnnpack_engine():
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"
    yield
    torch.backends.quantized.engine = previous


def backward_through(layer, batch=4):
    x = torch.randn(batch, layer.in_features, requires_grad=True)
    layer(x).sum().backward()
    return x.grad


def entry_bytes(layer) -> int:
    """What the cache holds for a layer: its int8 codes, float32 scales and, where any is not
    zero, float32 zero points."""
    weight = layer.weight()
    if weight.qscheme() in (torch.per_tensor_symmetric, torch.per_tensor_affine):
        scales, offset = 1, weight.q_zero_point() != 0
    else:
        scales, offset = layer.out_features, bool(weight.q_per_channel_zero_points().any())
    return weight.numel() + scales * 4 * (2 if offset else 1)


def test_second_backward_hits():
    layer = dynamic_linear(16, 8)
    backward_through(layer)
    assert qlgrad.cache_info()[:4] == (1, 8 * 16 + 4, 0, 1)
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


def test_prepare_fills_one_entry_per_layer_that_every_precision_reads():
    """About one byte per weight element, unpacked once by prepare, then hit by every precision."""
    for scheme in SCHEMES:
        model = torch.nn.Sequential(dynamic_linear(768, 768, scheme), dynamic_linear(768, 64, scheme))
        assert qlgrad.prepare(model) == 2
        expected_bytes = sum(entry_bytes(layer) for layer in model)
        assert qlgrad.cache_info()[:4] == (2, expected_bytes, 0, 2), scheme
        for precision in qlgrad.PRECISIONS:
            x = torch.randn(3, 768, requires_grad=True)
            with qlgrad.backward_precision(precision):
                y = model(x)
            y.sum().backward()
        info = qlgrad.cache_info()
        assert info[:4] == (2, expected_bytes, 2 * len(qlgrad.PRECISIONS), 2), scheme
        assert info.bytes <= 1.02 * (768 * 768 + 768 * 64)
        qlgrad.clear_cache()


def test_default_limit_holds_a_one_billion_weight_model():
    # 1 byte per weight, and 8 bytes per output channel of 2048 (scale and zero point).
    assert qlgrad.cache_info().limit_bytes >= 10**9 * (1 + 8 / 2048)


def test_byte_limit_bounds_the_cache():
    layers = [dynamic_linear(32, 32) for _ in range(5)]
    one_weight = entry_bytes(layers[0])
    qlgrad.set_cache_limit(2 * one_weight)
    for layer in layers:
        backward_through(layer)
    info = qlgrad.cache_info()
    assert info.limit_bytes == 2 * one_weight
    assert (info.entries, info.bytes) == (2, 2 * one_weight)

    qlgrad.set_cache_limit(one_weight)
    assert qlgrad.cache_info()[:2] == (1, one_weight)


@pytest.mark.parametrize("layers_that_fit, layers", [(1, 4), (2, 6), (3, 5), (5, 8)])
def test_cyclic_order_keeps_the_share_that_fits(layers_that_fit, layers):
    """A model larger than the limit, used layer after layer as training does: the hit rate is the
    share of it that fits (least-recently-used eviction alone would give no hit at all)."""
    model = [dynamic_linear(32, 32) for _ in range(layers)]
    qlgrad.set_cache_limit(layers_that_fit * entry_bytes(model[0]))
    cycles = 12
    for _ in range(cycles):
        for layer in model:
            backward_through(layer)
    info = qlgrad.cache_info()
    assert info.entries == layers_that_fit
    assert info.hits + info.misses == cycles * layers
    # Every cycle after the first (which fills the cache) hits the entries that fit.
    assert info.hits == (cycles - 1) * layers_that_fit


def test_layer_asked_for_clearly_more_often_replaces_the_least_recently_used():
    cached, other, frequent = (dynamic_linear(32, 32, seed=seed) for seed in range(3))
    qlgrad.set_cache_limit(2 * entry_bytes(cached))
    for layer in (cached, other, other):
        backward_through(layer)  # cached: the least recently used entry, asked for once
    hits = qlgrad.cache_info().hits
    for _ in range(3):
        backward_through(frequent)  # admitted at the third miss: two more than cached
    assert qlgrad.cache_info().hits == hits
    backward_through(frequent)
    backward_through(other)
    assert qlgrad.cache_info().hits == hits + 2
    backward_through(cached)
    assert qlgrad.cache_info().hits == hits + 2


def test_new_working_set_takes_over_from_one_no_longer_used():
    """Counts age: layers that stay alive but are no longer used give way to the ones in use."""
    old = [dynamic_linear(32, 32, seed=seed) for seed in range(2)]
    new = [dynamic_linear(32, 32, seed=seed) for seed in range(2, 4)]
    qlgrad.set_cache_limit(2 * entry_bytes(old[0]))
    for _ in range(20):
        for layer in old:
            backward_through(layer)
    hits_before = qlgrad.cache_info().hits
    cycles = 60
    for _ in range(cycles):
        for layer in new:
            backward_through(layer)
    info = qlgrad.cache_info()
    assert info.entries == 2
    # Both new layers are cached well before the end, and stay.
    assert info.hits - hits_before >= 2 * (cycles // 2)
    for layer in new:
        backward_through(layer)
    assert qlgrad.cache_info().hits == info.hits + 2


def test_zero_limit_disables_caching_but_not_gradients():
    qlgrad.set_cache_limit(0)
    weight = quantize_weight(8, 16, "per_tensor_affine")
    packed = packed_params(weight)
    for _ in range(2):
        x = torch.randn(3, 16, requires_grad=True)
        torch.ops.quantized.linear_dynamic(x, packed, False).sum().backward()
        torch.testing.assert_close(
            x.grad.double(), reference_input_gradient(torch.ones(3, 8), weight), rtol=1e-5, atol=1e-6
        )
    assert qlgrad.cache_info()[:2] == (0, 0)


def test_clear_cache_resets_entries_and_counters():
    layer = dynamic_linear(16, 8)
    backward_through(layer)
    backward_through(layer)
    qlgrad.clear_cache()
    assert qlgrad.cache_info()[:4] == (0, 0, 0, 0)
