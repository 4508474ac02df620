"""qlgrad.reference's straight_through, and its float64_weight of torchao's weights against
independent decodes: each weight's codes and parameters read in float64 as its forward uses them,
and for torch's int4 packing the codes it was packed from. (with_reference_layers and the
float64_weight of packed params are checked by every test that compares qlgrad with them.)"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
from torchao.prototype.quantization.int4.int4_opaque_tensor import Int4OpaqueTensor
from torchao.quantization import (
    Int8DynamicActivationInt8WeightConfig,
    Int8DynamicActivationIntxWeightConfig,
    Int8Tensor,
    Int8WeightOnlyConfig,
    MappingType,
    PerAxis,
    PerGroup,
    PerRow,
    PerTensor,
    quantize_,
)

import qlgrad.reference
from qlgrad.reference import float64_weight, straight_through

DTYPES = (torch.float32, torch.bfloat16)
# (out_features, in_features, group_size); 80 and 208 rows end in a partial block of the packing.
INT4PACK_SHAPES = ((64, 256, 128), (80, 512, 32), (208, 256, 64), (48, 2304, 128))


def quantized_weight(config, out_features=48, in_features=64, dtype=torch.float32, seed=0):
    """The weight of an nn.Linear after quantize_ with config."""
    torch.manual_seed(seed)
    layer = torch.nn.Linear(in_features, out_features, dtype=dtype)
    quantize_(layer, config)
    return layer.weight


# ---- float64_weight -----------------------------------------------------------------------


@pytest.mark.parametrize("granularity", [PerRow(), PerTensor()], ids=["per_row", "per_tensor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_int8_tensor_is_codes_times_scale(dtype, granularity):
    config = Int8DynamicActivationInt8WeightConfig(granularity=granularity, set_inductor_config=False)
    weight = quantized_weight(config, dtype=dtype)
    expected = weight.qdata.double() * weight.scale.double().reshape(-1, 1)
    assert torch.equal(float64_weight(weight), expected)
    if dtype == torch.bfloat16:  # dequantize() rounds to bfloat16, the forward's scale does not
        assert not torch.equal(weight.dequantize().double(), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weight_only_int8_tensor_is_what_its_forward_multiplies_by(dtype):
    per_row = quantized_weight(Int8WeightOnlyConfig(set_inductor_config=False), dtype=dtype)
    # Its forward scales the product by the scale in the input's dtype.
    expected = per_row.qdata.double() * per_row.scale.to(dtype).double().reshape(-1, 1)
    assert torch.equal(float64_weight(per_row), expected)
    per_group = quantized_weight(Int8WeightOnlyConfig(granularity=PerGroup(32), set_inductor_config=False), dtype=dtype)
    # Per group, its forward multiplies by dequantize(), in the weight's dtype.
    assert torch.equal(float64_weight(per_group), per_group.dequantize().double())


def test_activation_pre_scale_multiplies_the_columns():
    torch.manual_seed(0)
    pre_scale = torch.rand(64) + 0.5
    weight = Int8Tensor.from_hp(torch.randn(48, 64), PerRow(), act_pre_scale=pre_scale)
    expected = weight.qdata.double() * weight.scale.double().reshape(-1, 1) * pre_scale.double()
    assert torch.equal(float64_weight(weight), expected)


@pytest.mark.parametrize("mapping", [MappingType.SYMMETRIC, MappingType.ASYMMETRIC], ids=["symmetric", "asymmetric"])
@pytest.mark.parametrize("granularity", [PerGroup(32), PerAxis(0)], ids=["per_group_32", "per_row"])
@pytest.mark.parametrize("weight_dtype", [torch.int4, torch.int8], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_intx_weight_is_the_exact_decode_rounded_to_its_dtype(dtype, weight_dtype, granularity, mapping):
    config = Int8DynamicActivationIntxWeightConfig(
        weight_dtype=weight_dtype, weight_granularity=granularity, weight_mapping_type=mapping
    )
    weight = quantized_weight(config, dtype=dtype)
    rows, columns = weight.qdata.shape
    groups = weight.scale.shape[1]
    centred = weight.qdata.double().view(rows, groups, -1) - weight.zero_point.double().view(rows, groups, 1)
    exact = (centred * weight.scale.double().view(rows, groups, 1)).view(rows, columns)
    # What its forward multiplies by: dequantize(), the exact product rounded once to the dtype.
    assert torch.equal(float64_weight(weight), exact.to(dtype).double())
    assert torch.equal(float64_weight(weight), weight.dequantize().double())


def op_identity_weight(weight) -> torch.Tensor:
    """W [N, K] as aten::_weight_int4pack_mm_for_cpu computes it in float32: the op on the identity."""
    eye = torch.eye(weight.shape[1])
    scale_and_zero = weight.scale_and_zero.float()
    transposed = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, weight.qdata, weight.block_size[1], scale_and_zero)
    return transposed[:, : weight.shape[0]].t().double()


@pytest.mark.parametrize("shape", INT4PACK_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_int4_opaque_tensor_is_the_ops_weight(dtype, shape):
    out_features, in_features, group_size = shape
    config = PrototypeInt4WeightOnlyConfig(group_size=group_size, set_inductor_config=False)
    weight = quantized_weight(config, out_features, in_features, dtype)
    assert isinstance(weight, Int4OpaqueTensor)
    got = float64_weight(weight)
    assert torch.equal(got, op_identity_weight(weight))
    if dtype == torch.bfloat16:  # the op's bfloat16 kernel: the same values, rounded at its output
        eye = torch.eye(in_features, dtype=dtype)
        op_bf16 = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, weight.qdata, group_size, weight.scale_and_zero)
        assert torch.equal(op_bf16.t(), got.to(dtype))


def int4_opaque_from_codes(codes, group_size, dtype, seed=0):
    """(Int4OpaqueTensor of codes [N, K] in [0, 16), its W in float64 from the codes).

    Scales and zeros are bfloat16 values, so that (code - 8) * scale + zero is rounded once to
    float32 whether the op fuses it or not: the expected weight needs nothing of the op's.
    """
    generator = torch.Generator().manual_seed(seed)
    out_features, in_features = codes.shape
    groups = in_features // group_size
    scales = (torch.rand(groups, out_features, generator=generator) * 0.02 + 1e-3).to(torch.bfloat16)
    zeros = (torch.randn(groups, out_features, generator=generator) * 0.01).to(torch.bfloat16)
    scale_and_zero = torch.stack([scales, zeros], -1).to(dtype).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    weight = Int4OpaqueTensor(packed, scale_and_zero, [1, group_size], torch.Size(codes.shape))
    per_column = torch.arange(in_features) // group_size
    exact = (codes.double() - 8) * scales.double().t()[:, per_column] + zeros.double().t()[:, per_column]
    return weight, exact.float().double()


def check_int4_opaque_from_codes():
    """float64_weight of Int4OpaqueTensors packed from random codes, every shape and dtype."""
    for out_features, in_features, group_size in INT4PACK_SHAPES:
        codes = torch.randint(0, 16, (out_features, in_features), dtype=torch.int32)
        for dtype in DTYPES:
            weight, expected = int4_opaque_from_codes(codes, group_size, dtype)
            assert torch.equal(float64_weight(weight), expected), (out_features, in_features, group_size, dtype)


def test_int4_opaque_tensor_from_the_codes_it_was_packed_from():
    torch.manual_seed(0)
    check_int4_opaque_from_codes()


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_int4_opaque_tensor_under_every_packing(capability):
    """Another capability packs in another layout and dequantizes with other kernels."""
    code = textwrap.dedent(
        """
        import sys, torch
        sys.path.insert(0, sys.argv[1])
        import test_reference
        torch.manual_seed(0)
        test_reference.check_int4_opaque_from_codes()
        config = test_reference.PrototypeInt4WeightOnlyConfig(group_size=32, set_inductor_config=False)
        for dtype in test_reference.DTYPES:
            weight = test_reference.quantized_weight(config, 80, 256, dtype)
            assert torch.equal(test_reference.float64_weight(weight), test_reference.op_identity_weight(weight))
        print(torch.backends.cpu.get_cpu_capability())
        """
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "PYTHONWARNINGS": "ignore"}
    tests_dir = os.path.dirname(__file__)
    result = subprocess.run(
        [sys.executable, "-c", code, tests_dir], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == capability.upper()


def test_other_weights_are_refused():
    with pytest.raises(TypeError, match="got Tensor"):
        float64_weight(torch.randn(3, 4))


def test_the_module_imports_neither_qlgrad_nor_torchao():
    code = textwrap.dedent(
        """
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("reference", sys.argv[1])
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        print(sorted(name for name in sys.modules if name.split(".")[0] in ("qlgrad", "torchao")))
        """
    )
    path = qlgrad.reference.__file__
    result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
    assert importlib.util.find_spec("qlgrad.reference").origin == path


# ---- straight_through -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_straight_through_gradient_is_grad_output_times_the_weight(dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 16, dtype=dtype)
    weight = torch.randn(16, 24, dtype=torch.float64)  # any weight: the gradient is its, not the forward's
    x = torch.randn(2, 3, 24, dtype=dtype, requires_grad=True)
    output = straight_through(x, layer, weight)
    with torch.no_grad():
        assert torch.equal(output, layer(x))
    assert output.requires_grad and layer.weight.grad is None
    grad_output = torch.randn_like(output)
    output.backward(grad_output)
    assert x.grad.dtype == dtype
    assert torch.equal(x.grad, (grad_output.double() @ weight).to(dtype))
    assert layer.weight.grad is None and layer.bias.grad is None  # the forward is not differentiated


def test_straight_through_is_differentiable_again():
    torch.manual_seed(0)
    weight = torch.randn(16, 24, dtype=torch.float64)
    x = torch.randn(5, 24, requires_grad=True)
    grad_output = torch.randn(5, 16, requires_grad=True)
    (grad_x,) = torch.autograd.grad(
        straight_through(x, torch.nn.Linear(24, 16), weight), x, grad_output, create_graph=True
    )
    tangent = torch.randn(5, 24)
    (second,) = torch.autograd.grad(grad_x, grad_output, tangent)
    assert torch.allclose(second.double(), tangent.double() @ weight.T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "config",
    [
        Int8DynamicActivationInt8WeightConfig(set_inductor_config=False),
        Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32)),
        PrototypeInt4WeightOnlyConfig(group_size=32, set_inductor_config=False),
    ],
    ids=["int8", "intx", "int4pack"],
)
def test_straight_through_a_torchao_layer(config, dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48, dtype=dtype)
    quantize_(layer, config)
    weight = float64_weight(layer.weight)
    x = torch.randn(7, 64, dtype=dtype, requires_grad=True)
    output = straight_through(x, layer.forward, weight)
    with torch.no_grad():
        assert torch.equal(output, layer(x))  # torchao's own forward
    grad_output = torch.randn_like(output)
    output.backward(grad_output)
    assert torch.equal(x.grad, (grad_output.double() @ weight).to(dtype))
