"""The standalone backward API: linear_int8_backward and linear_dynamic_backward."""

import itertools

import pytest
import torch

import qlgrad
from helpers import SCHEMES, packed_params, quantize_weight, reference_input_gradient

# Standalone calls take any number of leading dims, a bare feature vector included.
GRAD_SHAPES = ((), (5,), (2, 3), (0,), (3, 0))


def int8_args(weight, scheme, dtype=torch.float32):
    """(weight, scale, zero_point) as plain tensors; symmetric schemes pass no zero point."""
    zero_point = weight.zero_point if scheme.endswith("affine") else None
    return weight.values, weight.scale.to(dtype), zero_point


def sample_inputs(dtype=torch.float32, requires_grad=False):
    """(args, weight) for linear_int8_backward over every scheme and grad_output shape."""
    for scheme, shape in itertools.product(SCHEMES, GRAD_SHAPES):
        weight = quantize_weight(6, 10, scheme)
        grad_output = torch.randn(*shape, 6, dtype=dtype, requires_grad=requires_grad)
        yield (grad_output, *int8_args(weight, scheme, dtype)), weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_int8_backward_matches_float64_reference(dtype):
    for args, weight in sample_inputs(dtype):
        got = qlgrad.linear_int8_backward(*args)
        assert got.dtype == dtype and got.shape == (*args[0].shape[:-1], 10)
        torch.testing.assert_close(got.double(), reference_input_gradient(args[0], weight), rtol=1e-5, atol=1e-6)


def test_int8_backward_gradcheck_and_gradgradcheck():
    for args, _ in sample_inputs(torch.float64, requires_grad=True):
        if args[0].numel() == 0:
            continue
        assert torch.autograd.gradcheck(lambda g: qlgrad.linear_int8_backward(g, *args[1:]), args[:1])
        assert torch.autograd.gradgradcheck(lambda g: qlgrad.linear_int8_backward(g, *args[1:]), args[:1])


# torch 2.14's fake-tensor conversion inside opcheck reads .grad of its own non-leaf copies.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
@pytest.mark.parametrize("requires_grad", [False, True])
def test_int8_backward_opcheck(requires_grad):
    for args, _ in sample_inputs(torch.float32, requires_grad=requires_grad):
        torch.library.opcheck(torch.ops.qlgrad.linear_int8_backward.default, args)


def test_int8_backward_compiles():
    args, weight = next(sample_inputs())
    compiled = torch.compile(qlgrad.linear_int8_backward, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args).double(), reference_input_gradient(args[0], weight), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_three_doors_agree(scheme):
    """The plain-int8 path, the packed path and the Autograd kernel give one result."""
    weight = quantize_weight(12, 20, scheme)
    packed = packed_params(weight)
    grad_output = torch.randn(4, 12)
    x = torch.randn(4, 20, requires_grad=True)
    torch.ops.quantized.linear_dynamic(x, packed, False).backward(grad_output)

    from_int8 = qlgrad.linear_int8_backward(grad_output, *int8_args(weight, scheme))
    from_packed = qlgrad.linear_dynamic_backward(grad_output, packed)
    torch.testing.assert_close(from_packed, x.grad, rtol=0, atol=0)
    torch.testing.assert_close(from_int8, from_packed, rtol=1e-6, atol=1e-6)


def test_dynamic_backward_gradcheck_and_gradgradcheck():
    packed = packed_params(quantize_weight(6, 10, "per_channel_affine"))
    grad_output = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g: qlgrad.linear_dynamic_backward(g, packed), (grad_output,))
    assert torch.autograd.gradgradcheck(lambda g: qlgrad.linear_dynamic_backward(g, packed), (grad_output,))


def test_dynamic_backward_opcheck_autograd_registration():
    """The schema and fake-tensor checks of opcheck cannot take a TorchBind argument without a
    fake class, which torch does not provide for LinearPackedParamsBase; the rest of the op is
    checked by hand above (reference, gradcheck, gradgradcheck)."""
    packed = packed_params(quantize_weight(6, 10, "per_tensor_affine"))
    grad_output = torch.randn(3, 6, requires_grad=True)
    torch.library.opcheck(
        torch.ops.qlgrad.linear_dynamic_backward.default, (grad_output, packed), test_utils="test_autograd_registration"
    )


def test_autograd_identity_crosses_the_binding():
    weight = quantize_weight(6, 10, "per_tensor_affine")
    grad_output = torch.randn(3, 6, requires_grad=True)
    result = qlgrad.linear_int8_backward(grad_output, weight.values, weight.scale, weight.zero_point)
    assert result.requires_grad and result.grad_fn is not None
    result.sum().backward()
    assert grad_output.grad is not None  # flowed back into the caller's own tensor object
    plain = torch.randn(3, 6)
    assert qlgrad.linear_int8_backward(plain, weight.values, weight.scale).grad_fn is None


def test_arguments_are_not_modified():
    weight = quantize_weight(6, 10, "per_channel_affine")
    args = (torch.randn(3, 6), weight.values, weight.scale, weight.zero_point)
    before = [a.clone() for a in args]
    qlgrad.linear_int8_backward(*args)
    assert all(torch.equal(a, b) for a, b in zip(args, before))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "weight": a["weight"].float()}, "weight must be an int8"),
        (lambda a: {**a, "grad_output": torch.randn(3, 7)}, "last dimension"),
        (lambda a: {**a, "scale": torch.ones(5)}, "scale must hold"),
        (lambda a: {**a, "scale": -a["scale"]}, "finite and positive"),
        (lambda a: {**a, "zero_point": a["zero_point"].float()}, "zero_point must be an integer"),
        (lambda a: {**a, "zero_point": a["zero_point"] + 300}, "int8 range"),
    ],
)
def test_bad_arguments_are_named(change, match):
    weight = quantize_weight(6, 10, "per_channel_affine")
    good = dict(grad_output=torch.randn(3, 6), weight=weight.values, scale=weight.scale, zero_point=weight.zero_point)
    with pytest.raises((TypeError, ValueError), match=match):
        qlgrad.linear_int8_backward(**change(good))
