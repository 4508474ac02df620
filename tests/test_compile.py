"""torch.compile(fullgraph=True) of models holding dynamic linear layers (the opchecks of qlgrad's
operators are in test_opcheck.py)."""

import contextlib

import pytest
import torch
from torch import nn

from helpers import dynamic_linear, quantize_weight

BACKENDS = ("aot_eager", "inductor")


def mixed_model():
    """int8 (per channel, fused ReLU) and fp16 dynamic layers around a float one."""
    torch.manual_seed(0)
    relu_layer = torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU(12, 16)
    relu_layer.set_weight_bias(quantize_weight(16, 12, "per_tensor_affine", seed=1).qweight, torch.randn(16))
    fp16_layer = torch.ao.nn.quantized.dynamic.Linear(16, 4, dtype=torch.float16)
    fp16_layer.set_weight_bias(torch.randn(4, 16) * 0.3, torch.randn(4))
    return nn.Sequential(dynamic_linear(10, 12, "per_channel_affine"), nn.Tanh(), relu_layer, fp16_layer)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", BACKENDS)
# Inductor's FX graph cache cannot hash the packed params: FxGraphCachePickler._reduce_tensor
# (torch/_inductor/codecache.py) calls tolist() on their quantized weight, which fails.
@torch._inductor.config.patch(fx_graph_cache=False)
def test_fullgraph_compile_matches_eager(backend):
    model = mixed_model()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(6, 10)
    for batch in (x, x[:3]):  # the second shape recompiles (or runs a dynamic graph)
        # The quantized ops run their stock kernels; inductor may fuse the float ops around them.
        tolerance = {"rtol": 0, "atol": 0} if backend == "aot_eager" else {"rtol": 1e-6, "atol": 1e-6}
        torch.testing.assert_close(compiled(batch), model(batch), **tolerance)


def test_compiled_graph_holds_the_quantized_ops():
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch.compile(mixed_model(), backend=backend, fullgraph=True)(torch.randn(2, 10))
    (graph,) = graphs
    targets = {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}
    assert {"quantized.linear_dynamic", "quantized.linear_relu_dynamic", "quantized.linear_dynamic_fp16"} <= {
        t.removeprefix("torch.ops.").removesuffix(".default") for t in targets
    }, targets


def test_compile_with_graph_breaks_differentiates_through_the_eager_layers():
    # Through a compiled graph the input gradient is blocked by torch (see _compile.py): each
    # layer whose input requires grad breaks the graph and runs eagerly.
    model = mixed_model()
    compiled = torch.compile(model, backend="aot_eager")
    x, grad_output = torch.randn(6, 10), torch.randn(6, 4)
    grads = []
    for f in (model, compiled):
        leaf = x.clone().requires_grad_()
        f(leaf).backward(grad_output)
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
    torch._dynamo.reset()  # else the frames compiled with graph breaks are reused
    with pytest.raises(torch._dynamo.exc.Unsupported, match="quantized.linear_dynamic"):
        torch.compile(model, backend="aot_eager", fullgraph=True)(x.clone().requires_grad_())


def test_python_dispatcher_records_the_straight_through_backward():
    layer = torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU(10, 6)
    layer.set_weight_bias(quantize_weight(6, 10, "per_channel_affine").qweight, torch.randn(6))
    x, grad_output = torch.randn(4, 10), torch.randn(4, 6)
    grads = []
    for dispatcher in (contextlib.nullcontext, torch._dispatch.python.enable_python_dispatcher):
        leaf = x.clone().requires_grad_()
        with dispatcher():
            y = layer(leaf)
            y.backward(grad_output)
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
    expected = torch.where(y > 0, grad_output, 0.0).double() @ layer.weight().dequantize().double()
    torch.testing.assert_close(grads[1].double(), expected, rtol=1e-5, atol=1e-6)


def test_fake_object_refuses_a_weight_of_the_other_kind():
    packed = torch.ops.quantized.linear_prepack_fp16(torch.randn(4, 8), None)
    f = torch.compile(
        lambda x: torch.ops.quantized.linear_dynamic(x, packed, True), backend="aot_eager", fullgraph=True
    )
    with pytest.raises(Exception, match="expects qint8 packed weights, got fp16 ones"):
        f(torch.randn(2, 8))
