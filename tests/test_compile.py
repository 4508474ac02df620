"""torch.compile(fullgraph=True) of models holding dynamic linear layers (the opchecks of qlgrad's
operators are in test_opcheck.py)."""

import contextlib
import copy

import pytest
import torch
from functorch.compile import make_boxed_func
from torch import nn
from torch._dynamo.backends.common import aot_autograd

import qlgrad
from helpers import choosing, dynamic_linear, quantize_weight

BACKENDS = ("aot_eager", "inductor")


def mixed_model(fp16=True):
    """int8 (per channel, fused ReLU) and fp16 dynamic layers around a float one; int8 only for
    engines that pack no fp16 weights (QNNPACK)."""
    torch.manual_seed(0)
    relu_layer = torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU(12, 16)
    relu_layer.set_weight_bias(quantize_weight(16, 12, "per_tensor_affine", seed=1).qweight, torch.randn(16))
    if fp16:
        last_layer = torch.ao.nn.quantized.dynamic.Linear(16, 4, dtype=torch.float16)
        last_layer.set_weight_bias(torch.randn(4, 16) * 0.3, torch.randn(4))
    else:
        last_layer = dynamic_linear(16, 4, "per_channel_symmetric", seed=2)
    return nn.Sequential(dynamic_linear(10, 12, "per_channel_affine"), nn.Tanh(), relu_layer, last_layer)


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


def input_gradients(model, compiled, precision="fp32", batch=6):
    """The input gradients of the eager and of the compiled model, for the same input and grad_output."""
    torch.manual_seed(1)
    x, grad_output = torch.randn(batch, 10), torch.randn(batch, 4)
    grads = []
    with qlgrad.backward_precision(precision):
        for f in (model, compiled):
            leaf = x.clone().requires_grad_()
            f(leaf).backward(grad_output)
            grads.append(leaf.grad)
    return grads


@pytest.mark.parametrize("engine_name", ["x86", "qnnpack"])
@pytest.mark.parametrize("backend", BACKENDS)
@torch._inductor.config.patch(fx_graph_cache=False)
def test_fullgraph_compile_differentiates_through_every_layer(backend, engine_name):
    """One graph whose backward takes the stored weight as plain tensors, read in place (fbgemm's
    packing, the x86 engine) or from the cache (QNNPACK): the eager input gradient, exactly."""
    previous, torch.backends.quantized.engine = torch.backends.quantized.engine, engine_name
    try:
        model = mixed_model(fp16=engine_name != "qnnpack")
        compiled = torch.compile(model, backend=backend, fullgraph=True)
        # Inductor may fuse the float ops around the layers (the tanh's backward) differently.
        tolerance = {"rtol": 0, "atol": 0} if backend == "aot_eager" else {"rtol": 1e-5, "atol": 1e-6}
        # 6 rows run fp32's stream in every precision; 40 and 300 reach each precision's own
        # kernels (past the streams, on both sides of the panel GEMM's division by rows).
        for precision, batch in ((p, b) for p in qlgrad.PRECISIONS for b in (6, 40, 300)):
            eager, traced = input_gradients(model, compiled, precision, batch)
            torch.testing.assert_close(traced, eager, **tolerance)
    finally:
        torch.backends.quantized.engine = previous


def test_compiled_backward_saves_tensors_not_the_packed_params():
    graphs = []

    def backend(graph_module, example_inputs):
        def compiler(graph, inputs):
            graphs.append(graph)
            return make_boxed_func(graph.forward)

        return aot_autograd(fw_compiler=compiler, bw_compiler=compiler)(graph_module, example_inputs)

    model = mixed_model()
    input_gradients(model, torch.compile(model, backend=backend, fullgraph=True))
    forward, backward = graphs
    targets = {str(node.target) for node in backward.graph.nodes if node.op == "call_function"}
    assert "qlgrad._stored_weight_backward.default" in targets, targets
    placeholders = [node for node in backward.graph.nodes if node.op == "placeholder"]
    assert all(isinstance(node.meta.get("val"), torch.Tensor) for node in placeholders), placeholders


@pytest.mark.parametrize("backend", BACKENDS)
@torch._inductor.config.patch(fx_graph_cache=False)
def test_compiled_training_copies_no_packed_weight(backend, monkeypatch):
    """torch deep-copies each TorchBind object it fakes while tracing (FakeScriptObject), and the
    compiled graph then runs on the copies: a repacked weight per layer, several times per
    compilation. A packed weight's fake keeps the layer's own object instead; the gradients stay
    eager's."""
    copied = []
    deepcopy = copy.deepcopy

    def recording_deepcopy(value, memo=None):
        if isinstance(value, torch.ScriptObject) and "LinearPackedParamsBase" in value._type().qualified_name():
            copied.append(value)
        return deepcopy(value, memo)

    monkeypatch.setattr(copy, "deepcopy", recording_deepcopy)
    model = mixed_model()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    tolerance = {"rtol": 0, "atol": 0} if backend == "aot_eager" else {"rtol": 1e-5, "atol": 1e-6}
    eager, traced = input_gradients(model, compiled)
    torch.testing.assert_close(traced, eager, **tolerance)
    assert not copied


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
    with pytest.raises(Exception, match="expects qint8 packed weights, got fp16 ones"):
        f(torch.randn(2, 8, requires_grad=True))  # the traced forward of training refuses it too


@pytest.mark.parametrize("engine_name", ["x86", "qnnpack"])
def test_traced_forward_records_the_choice_not_the_resolved_precision(engine_name):
    """description[0] holds the precision chosen when the forward runs, -1 for none; the backward
    resolves it against grad_output's dtype, as the eager node does."""
    previous, torch.backends.quantized.engine = torch.backends.quantized.engine, engine_name
    try:
        weight = quantize_weight(16, 24, "per_channel_affine")
        packed = torch.ops.quantized.linear_prepack(weight.qweight, None)
    finally:
        torch.backends.quantized.engine = previous
    x = torch.randn(3, 24)
    grad_output = torch.randn(64, 16)  # more rows than the streams (float32 in every precision) take
    for chosen, code in ((None, -1), *((name, qlgrad.PRECISIONS.index(name)) for name in qlgrad.PRECISIONS)):
        with choosing(chosen):
            _, values, description, scale, zero_point = torch.ops.qlgrad._linear_dynamic_with_weight(
                x, packed, False, False
            )
        assert description[0].item() == code
        # Run under another choice: the recorded one decides.
        with qlgrad.backward_precision("int8" if chosen != "int8" else "fp32"):
            for dtype in (torch.float32, torch.bfloat16):
                g = grad_output.to(dtype)
                got = torch.ops.qlgrad._stored_weight_backward(g, values, description, scale, zero_point, 24)
                expected = qlgrad.linear_dynamic_backward(
                    g, packed, chosen or ("bf16" if dtype == torch.bfloat16 else "fp32")
                )
                assert torch.equal(got, expected), (chosen, dtype)
    for bad in (-2, len(qlgrad.PRECISIONS)):
        description[0] = bad
        with pytest.raises(ValueError, match=r"description\[0\] must be a Precision value or -1 \(none chosen\)"):
            torch.ops.qlgrad._stored_weight_backward(grad_output, values, description, scale, zero_point, 24)


@pytest.mark.parametrize("backend", BACKENDS)
@torch._inductor.config.patch(fx_graph_cache=False)
def test_compiled_training_records_the_choice_at_forward(backend):
    """Nothing chosen at forward: the float32 gradients run fp32, whatever is chosen when backward
    runs; a choice at forward holds in backward."""
    model = mixed_model()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    tolerance = {"rtol": 0, "atol": 0} if backend == "aot_eager" else {"rtol": 1e-5, "atol": 1e-6}
    torch.manual_seed(1)
    # More rows than the streams (float32 in every precision) take: each precision its own kernel.
    x, grad_output = torch.randn(64, 10), torch.randn(64, 4)
    for at_forward, at_backward in ((None, "int8"), ("int8", None), ("bf16", "fp32")):
        grads = []
        for f in (model, compiled):
            leaf = x.clone().requires_grad_()
            with choosing(at_forward):
                y = f(leaf)
            with choosing(at_backward):
                y.backward(grad_output)
            grads.append(leaf.grad)
        eager, traced = grads
        torch.testing.assert_close(traced, eager, **tolerance)
        leaf = x.clone().requires_grad_()
        with qlgrad.backward_precision(at_forward or "fp32"):
            model(leaf).backward(grad_output)
        torch.testing.assert_close(traced, leaf.grad, **tolerance)
