"""torch.func transforms through the dynamic linear family equal eager autograd and the
float64 straight-through reference."""

import pytest
import torch
from torch.func import grad, jacfwd, jacrev, jvp, vjp, vmap

import qlgrad  # noqa: F401  (registers the kernels)
from helpers import FAMILY
from qlgrad.reference import float64_weight

OUT_FEATURES, IN_FEATURES = 6, 10


def layer_of(op_name):
    make_packed, _ = FAMILY[op_name]
    packed = make_packed(torch.randn(OUT_FEATURES, IN_FEATURES) * 0.3)
    op = getattr(torch.ops.quantized, op_name)
    if op_name.endswith("fp16"):
        return packed, lambda x: op(x, packed)
    return packed, lambda x: op(x, packed, True)


def eager_vjp(f, x, cotangent):
    x = x.detach().requires_grad_()
    f(x).backward(cotangent)
    return x.grad


def reference_vjp(op_name, packed, output, cotangent):
    """grad_output @ W_deq in float64, masked by output > 0 for the fused ReLU."""
    masked = torch.where(output > 0, cotangent, 0.0) if FAMILY[op_name][1] else cotangent
    return masked.double() @ float64_weight(packed)


@pytest.mark.parametrize("op_name", FAMILY)
def test_grad_and_vjp_equal_eager_autograd(op_name):
    packed, f = layer_of(op_name)
    x = torch.randn(4, IN_FEATURES)
    cotangent = torch.randn(4, OUT_FEATURES)
    output, pullback = vjp(f, x)
    (vjp_grad,) = pullback(cotangent)
    eager = eager_vjp(f, x, cotangent)
    torch.testing.assert_close(output, f(x), rtol=0, atol=0)
    torch.testing.assert_close(vjp_grad, eager, rtol=0, atol=0)
    torch.testing.assert_close(
        vjp_grad.double(), reference_vjp(op_name, packed, output, cotangent), rtol=1e-5, atol=1e-6
    )
    loss = lambda x: (f(x) * cotangent).sum()  # noqa: E731
    torch.testing.assert_close(grad(loss)(x), eager, rtol=0, atol=0)


@pytest.mark.parametrize("op_name", FAMILY)
def test_per_sample_gradients_with_vmap_of_grad(op_name):
    packed, f = layer_of(op_name)
    x = torch.randn(5, IN_FEATURES)
    targets = torch.randn(5, OUT_FEATURES)

    def loss(sample, target):
        # One sample: the activation is quantized with its own scale, as in a batch of one.
        return ((f(sample[None]) - target) ** 2).sum()

    per_sample = vmap(grad(loss))(x, targets)
    for i in range(len(x)):
        sample = x[i : i + 1].clone().requires_grad_()
        ((f(sample) - targets[i]) ** 2).sum().backward()
        torch.testing.assert_close(per_sample[i], sample.grad[0], rtol=0, atol=0)


@pytest.mark.parametrize("op_name", FAMILY)
def test_jacrev_and_jacfwd_equal_the_reference_jacobian(op_name):
    packed, f = layer_of(op_name)
    x = torch.randn(IN_FEATURES)
    output = f(x[None])[0]
    # The straight-through Jacobian: W_deq, with the rows the ReLU cut off zeroed.
    expected = float64_weight(packed) * ((output > 0)[:, None] if FAMILY[op_name][1] else 1)
    row = lambda x: f(x[None])[0]  # noqa: E731
    torch.testing.assert_close(jacrev(row)(x).double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(jacfwd(row)(x).double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op_name", FAMILY)
def test_jvp_equals_the_forward_mode_reference(op_name):
    packed, f = layer_of(op_name)
    x, tangent = torch.randn(3, IN_FEATURES), torch.randn(3, IN_FEATURES)
    output, output_tangent = jvp(f, (x,), (tangent,))
    torch.testing.assert_close(output, f(x), rtol=0, atol=0)
    expected = tangent.double() @ float64_weight(packed).T
    if FAMILY[op_name][1]:
        expected = torch.where(output > 0, expected, 0.0)
    torch.testing.assert_close(output_tangent.double(), expected, rtol=1e-5, atol=1e-6)
    # torch.autograd.forward_ad reaches the same kernel.
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual_output = f(fwAD.make_dual(x, tangent))
        torch.testing.assert_close(fwAD.unpack_dual(dual_output).tangent, output_tangent, rtol=0, atol=0)


def test_functorch_gradient_through_a_quantized_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(IN_FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model = torch.ao.quantization.quantize_dynamic(model, dtype=torch.qint8)
    x = torch.randn(8, IN_FEATURES)
    loss = lambda x: model(x).square().sum()  # noqa: E731
    eager = x.clone().requires_grad_()
    loss(eager).backward()
    torch.testing.assert_close(grad(loss)(x), eager.grad, rtol=0, atol=0)
