"""torch's CPU int4 weight-only linear, aten::_weight_int4pack_mm_for_cpu: its Autograd kernel and
linear_int4pack_backward on the packing, read in place, against W_deq as the op itself dequantizes
it (the op applied to the identity), in float64 (opcheck is in test_opcheck.py)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import qlgrad
from helpers import ERROR_BOUNDS, relative_error

# (out_features, in_features, group_size): whole and partial blocks of packed rows (16, 48, 80,
# 208 rows: the last block is partial in the AVX-512 and AVX2 packings), every group size.
SHAPES = ((16, 64, 32), (48, 128, 64), (80, 256, 128), (208, 512, 256), (256, 1024, 128), (1040, 256, 32))
ROW_COUNTS = (1, 3, 4, 8, 9, 13, 100, 520)


def int4_weight(out_features, in_features, group_size, dtype=torch.float32, seed=0):
    """(packed, scale_and_zeros) as torchao's Int4OpaqueTensor holds them."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (out_features, in_features), dtype=torch.int32, generator=generator)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    groups = in_features // group_size
    scales = torch.rand(groups, out_features, generator=generator) * 0.02 + 1e-3
    zeros = torch.randn(groups, out_features, generator=generator) * 0.01
    return packed, torch.stack([scales, zeros], -1).to(dtype).contiguous()


def dequantized_by_the_op(packed, group_size, scale_and_zeros) -> torch.Tensor:
    """W [N, K] in float64 as aten::_weight_int4pack_mm_for_cpu computes it: x = I gives W.T."""
    in_features = scale_and_zeros.shape[0] * group_size
    eye = torch.eye(in_features, dtype=scale_and_zeros.dtype)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, group_size, scale_and_zeros).t().double()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("precision", qlgrad.PRECISIONS)
def test_matches_the_ops_weight(precision, shape):
    packed, scale_and_zeros = int4_weight(*shape)
    weight = dequantized_by_the_op(packed, shape[2], scale_and_zeros)
    for rows in ROW_COUNTS:
        grad_output = torch.randn(rows, shape[0])
        got = qlgrad.linear_int4pack_backward(grad_output, packed, shape[2], scale_and_zeros, precision)
        assert got.dtype == torch.float32 and got.shape == (rows, shape[1])
        # bf16 multiplies in bfloat16 on CPUs with AVX512-BF16; int8 runs as fp32.
        bound = ERROR_BOUNDS["bf16" if precision == "bf16" else "fp32"]
        assert relative_error(got, grad_output.double() @ weight) <= bound, rows


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_every_cpu_capabilitys_packing(capability):
    """The packing follows ATEN_CPU_CAPABILITY: another process packs and reads in another layout,
    for the backward and the training forward."""
    code = textwrap.dedent(
        """
        import sys, torch, qlgrad
        sys.path.insert(0, sys.argv[1])
        from test_int4pack import SHAPES, ROW_COUNTS, dequantized_by_the_op, int4_weight
        from helpers import relative_error
        assert torch.backends.cpu.get_cpu_capability() == sys.argv[2].upper(), torch.backends.cpu.get_cpu_capability()
        worst = 0.0
        for shape in SHAPES:
            packed, scale_and_zeros = int4_weight(*shape)
            weight = dequantized_by_the_op(packed, shape[2], scale_and_zeros)
            for rows in ROW_COUNTS:
                grad_output = torch.randn(rows, shape[0])
                got = qlgrad.linear_int4pack_backward(grad_output, packed, shape[2], scale_and_zeros)
                worst = max(worst, relative_error(got, grad_output.double() @ weight))
                # The training forward, from the packing of this capability.
                x = torch.randn(rows, shape[1], requires_grad=True)
                output = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, shape[2], scale_and_zeros)
                worst = max(worst, relative_error(output, x.double() @ weight.t()))
        print(worst)
        """
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    tests_dir = os.path.dirname(__file__)
    result = subprocess.run(
        [sys.executable, "-c", code, tests_dir, capability], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip()) <= ERROR_BOUNDS["fp32"]


# Rows on both sides of where the training forward leaves torch's kernel for the packing's
# (int4pack_linear_is_faster in src/matmul.cpp: 16 rows of bfloat16, 1 of float32), of the
# bfloat16 weight-row tiles' end (kInt4RowTilesRowsEnd, 129) and of the panel GEMM's switch to
# shared panels (256).
TRAINING_ROW_COUNTS = (1, 4, 15, 16, 17, 100, 128, 129, 255, 256, 300)
# Weights wide enough for the weight-row tiles (kInt4RowTilesWeightRowsMin, 2048 outputs): one
# part of the depth, and three (512, 512 and 64 deep) in groups of 32, a table per tile row.
TRAINING_SHAPES = SHAPES + ((2048, 320, 64), (2112, 1088, 32))


def training_forward_bound(x, weight) -> float:
    """What x @ W.T may differ from float64 by: fp32's bound; in bfloat16, the error of a
    bfloat16 nn.Linear with this weight (the forward's bfloat16 products round it so) and a
    quarter more for the order of the sums, or a bfloat16 rounding (2**-8) where a few outputs
    make that error a matter of chance."""
    if x.dtype == torch.float32:
        return ERROR_BOUNDS["fp32"]
    dense = torch.nn.functional.linear(x, weight.to(x.dtype))
    return max(1.25 * relative_error(dense, x.double() @ weight.t()), 2**-8)


@pytest.mark.parametrize("shape", TRAINING_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_training_forward_is_the_product_with_the_ops_weight(dtype, shape):
    """Where the input requires grad, the forward is x @ W.T within its dtype's bound (from the
    packing where that is the faster); where it does not, torch's own kernel's, bit for bit."""
    out_features, in_features, group_size = shape
    packed, scale_and_zeros = int4_weight(*shape, dtype=dtype)
    weight = dequantized_by_the_op(packed, group_size, scale_and_zeros)
    for rows in TRAINING_ROW_COUNTS:
        # Inputs of their own generator, the same whatever ran before: at one row of 16 outputs the
        # error is a matter of chance (torch's own kernel, which runs there, exceeds the bound on
        # about 1% of random rows, by up to 1.3x).
        generator = torch.Generator().manual_seed(rows)
        x = torch.randn(rows, in_features, generator=generator).to(dtype)
        got = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.clone().requires_grad_(), packed, group_size, scale_and_zeros
        )
        assert got.dtype == dtype and got.shape == (rows, out_features)
        assert relative_error(got, x.double() @ weight.t()) <= training_forward_bound(x, weight), rows
        inference = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scale_and_zeros)
        with torch._C._AutoDispatchBelowAutograd():  # torch's kernel, past qlgrad's Autograd kernel
            stock = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scale_and_zeros)
        assert torch.equal(inference, stock), rows


@pytest.mark.parametrize("shape", TRAINING_SHAPES, ids=str)
def test_bfloat16_training_forward_of_unit_rows_is_the_ops_weight_bit_for_bit(shape):
    """Rows of the identity pick single weights: their training forward is W.T's rows as the op
    rounds them to bfloat16, bit for bit, which checks every value of the panels the forward's
    conversion makes (each table of a row's 16 values, in every group), at row counts divided by
    columns and sharing panels."""
    out_features, in_features, group_size = shape
    packed, scale_and_zeros = int4_weight(*shape, dtype=torch.bfloat16)
    eye = torch.eye(in_features, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    for rows in (16, 192, in_features):
        if rows > in_features:
            continue
        x = eye[torch.randperm(in_features, generator=generator)[:rows]]
        got = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.clone().requires_grad_(), packed, group_size, scale_and_zeros
        )
        assert torch.equal(got, stock_int4pack_mm(x, packed, group_size, scale_and_zeros)), rows


def stock_int4pack_mm(x, packed, group_size, scale_and_zeros):
    with torch._C._AutoDispatchBelowAutograd():  # torch's kernel, past qlgrad's Autograd kernel
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scale_and_zeros)


# Deep enough for several of the float32 panel GEMM's depth blocks, whose sums must carry on as
# one chain; a layer of a language model's MLP, with its widths.
EXACT_SHAPES = SHAPES + ((64, 4864, 32), (4864, 896, 128), (896, 4864, 64))
EXACT_ROW_COUNTS = (1, 2, 7, 16, 33, 255, 256, 300)


@pytest.mark.skipif(qlgrad.cpu_capability() != "avx512", reason="the float32 panel GEMM is AVX-512's")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", EXACT_SHAPES, ids=str)
def test_float32_product_from_the_packing_is_torchs_bit_for_bit(shape, threads):
    """float32 inputs: qlgrad's product from the packing is torch's kernel's result, bit for bit
    (so it serves inputs that require no grad too), non-finite inputs included."""
    out_features, in_features, group_size = shape
    packed, scale_and_zeros = int4_weight(*shape)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in EXACT_ROW_COUNTS:
            if rows * out_features * in_features > 2**29:
                continue  # torch's kernel takes seconds there
            x = torch.randn(rows, in_features)
            x[0, in_features // 3] = float("inf") if rows > 1 else x[0, 0]
            x[-1, in_features // 2] = float("nan") if rows > 2 else x[-1, 0]
            stock = stock_int4pack_mm(x, packed, group_size, scale_and_zeros)
            training = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.clone().requires_grad_(), packed, group_size, scale_and_zeros
            )
            inference = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scale_and_zeros)
            assert torch.equal(training.detach().nan_to_num(), stock.nan_to_num()), rows
            assert torch.equal(training.detach().isnan(), stock.isnan()), rows
            assert torch.equal(inference.nan_to_num(), stock.nan_to_num()), rows
    finally:
        torch.set_num_threads(previous)


@pytest.mark.skipif(qlgrad.cpu_capability() != "avx512", reason="the float32 panel GEMM is AVX-512's")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", EXACT_SHAPES, ids=str)
def test_bfloat16_product_without_grad_is_torchs_bit_for_bit(shape, threads):
    """bfloat16 inputs that require no grad: qlgrad's float32 product of their values (from 32
    rows of 256 outputs), rounded as torch's kernel rounds, is that kernel's result bit for bit,
    NaNs included."""
    out_features, in_features, group_size = shape
    packed, scale_and_zeros = int4_weight(*shape, dtype=torch.bfloat16)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in EXACT_ROW_COUNTS:
            x = torch.randn(rows, in_features).bfloat16()
            x[0, in_features // 3] = float("inf") if rows > 1 else x[0, 0]
            x[-1, in_features // 2] = float("nan") if rows > 2 else x[-1, 0]
            stock = stock_int4pack_mm(x, packed, group_size, scale_and_zeros)
            inference = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scale_and_zeros)
            assert torch.equal(inference.view(torch.int16), stock.view(torch.int16)), rows
    finally:
        torch.set_num_threads(previous)


@pytest.mark.skipif(qlgrad.cpu_capability() != "avx512", reason="the float32 panel GEMM is AVX-512's")
def test_inputs_without_grad_take_the_product_from_the_packing_where_it_is_faster():
    packed, scale_and_zeros = int4_weight(256, 256, 64)
    for rows, dtype, expected_calls in ((8, torch.float32, 1), (16, torch.bfloat16, 0), (32, torch.bfloat16, 1)):
        with torch.autograd.profiler.profile() as profile:
            torch.ops.aten._weight_int4pack_mm_for_cpu(
                torch.randn(rows, 256).to(dtype), packed, 64, scale_and_zeros.to(dtype)
            )
        calls = {event.key: event.count for event in profile.key_averages()}
        assert calls.get("qlgrad::_int4pack_linear", 0) == expected_calls, (rows, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_autograd_kernel_of_the_aten_op(dtype):
    packed, scale_and_zeros = int4_weight(64, 256, 64, dtype=dtype)
    x = torch.randn(2, 5, 256, dtype=dtype)
    leaf = x.clone().requires_grad_()
    output = torch.ops.aten._weight_int4pack_mm_for_cpu(leaf.reshape(-1, 256), packed, 64, scale_and_zeros)
    weight = dequantized_by_the_op(packed, 64, scale_and_zeros)
    if dtype == torch.float16:  # the training forward from the packing takes float32 and bfloat16
        with torch.no_grad():
            stock = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, 256), packed, 64, scale_and_zeros)
        assert torch.equal(output, stock)
    else:
        assert relative_error(output, x.reshape(-1, 256).double() @ weight.t()) <= training_forward_bound(
            x.reshape(-1, 256), weight
        )
    grad_output = torch.randn_like(output)
    output.backward(grad_output)
    expected = (grad_output.double() @ weight).reshape(2, 5, 256)
    assert leaf.grad.dtype == dtype
    assert relative_error(leaf.grad, expected) <= (ERROR_BOUNDS["fp32"] if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_runs_the_training_forward_in_the_regions_dtype(autocast_dtype):
    """In a CPU autocast region, where the input requires grad, the op is a linear layer on
    autocast's lower-precision list: the float32 input and scale_and_zeros are cast to the region's
    dtype, the op runs there (the training forward and backward from the packing in bfloat16), and
    the gradient goes back in float32. Where no input requires grad, torch's op as without qlgrad,
    unless the input's dtype is not its parameters', which torch's op refuses."""
    packed, scale_and_zeros = int4_weight(272, 256, 64)
    weight = dequantized_by_the_op(packed, 64, scale_and_zeros.to(autocast_dtype))
    for rows in (1, 16, 100, 300):  # both sides of the training forward's switches
        generator = torch.Generator().manual_seed(rows)  # the same inputs whatever ran before
        x = torch.randn(rows, 256, generator=generator)
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=autocast_dtype):
            output = torch.ops.aten._weight_int4pack_mm_for_cpu(leaf, packed, 64, scale_and_zeros)
            inference = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 64, scale_and_zeros)
        assert output.dtype == autocast_dtype
        cast = (x.to(autocast_dtype).requires_grad_(), packed, 64, scale_and_zeros.to(autocast_dtype))
        # The op on the cast arguments, as it runs outside the region, bit for bit.
        assert torch.equal(output, torch.ops.aten._weight_int4pack_mm_for_cpu(*cast))
        assert inference.dtype == torch.float32
        assert torch.equal(inference, stock_int4pack_mm(x, packed, 64, scale_and_zeros))
        # An activation left in the region's dtype by an earlier layer, which torch's op refuses
        # beside float32 parameters: both in the region's dtype.
        with torch.autocast("cpu", dtype=autocast_dtype):
            mixed = torch.ops.aten._weight_int4pack_mm_for_cpu(cast[0].detach(), packed, 64, scale_and_zeros)
        assert torch.equal(mixed, stock_int4pack_mm(cast[0].detach(), *cast[1:]))
        grad_output = torch.randn(output.shape, generator=generator).to(autocast_dtype)
        output.backward(grad_output)
        assert leaf.grad.dtype == torch.float32
        assert relative_error(leaf.grad, grad_output.double() @ weight) <= 1e-2, rows


def test_double_backward_and_gradcheck():
    packed, scale_and_zeros = int4_weight(32, 64, 32)
    grad_output = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)

    def backward(g):
        return qlgrad.linear_int4pack_backward(g, packed, 32, scale_and_zeros)

    assert torch.autograd.gradcheck(backward, (grad_output,))
    assert torch.autograd.gradgradcheck(backward, (grad_output,))
    # Through the aten op: a gradient penalty differentiates the input gradient again.
    x = torch.randn(4, 64, requires_grad=True)
    output = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, scale_and_zeros)
    (grad_x,) = torch.autograd.grad(output.square().sum(), x, create_graph=True)
    grad_x.square().sum().backward()
    weight = dequantized_by_the_op(packed, 32, scale_and_zeros)
    # d/dx |2 (x W.T) W|^2 = 8 x W.T W W.T W
    gram = weight.t() @ weight
    assert relative_error(x.grad, 8 * x.double() @ gram @ gram) <= 1e-5


def test_precisions_through_the_node_and_the_standalone_function():
    """The int4 weight has no int8 form: int8 gives the fp32 gradient. bf16 multiplies in
    bfloat16 (where the CPU has AVX512-BF16; its accuracy: test_bfloat16_products.py), as fp32
    elsewhere. The node and the standalone function agree in every precision."""
    packed, scale_and_zeros = int4_weight(64, 128, 32)
    grad_output = torch.randn(16, 64)
    expected = qlgrad.linear_int4pack_backward(grad_output, packed, 32, scale_and_zeros, "fp32")
    for precision in qlgrad.PRECISIONS:
        got = qlgrad.linear_int4pack_backward(grad_output, packed, 32, scale_and_zeros, precision)
        if precision == "bf16":
            assert relative_error(got, expected) <= 1e-2
        else:
            assert torch.equal(got, expected)
        x = torch.randn(16, 128, requires_grad=True)
        with qlgrad.backward_precision(precision):
            output = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, scale_and_zeros)
        output.backward(grad_output)
        assert torch.equal(x.grad, got)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_training_step_is_eagers(backend):
    """Compiled, the training forward and its backward are eager's, bit for bit."""
    packed, scale_and_zeros = int4_weight(64, 256, 64)

    def layer(x):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 64, scale_and_zeros).relu()

    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    for rows in (3, 40):
        x, grad_output = torch.randn(rows, 256), torch.randn(rows, 64)
        results = []
        for function in (layer, compiled):
            leaf = x.clone().requires_grad_()
            output = function(leaf)
            output.backward(grad_output)
            results.append((output, leaf.grad))
        (eager_output, eager_grad), (compiled_output, compiled_grad) = results
        assert torch.equal(compiled_output, eager_output) and torch.equal(compiled_grad, eager_grad)


@pytest.mark.parametrize(
    "bad_input",
    [torch.randn(64), torch.randn(3, 63), torch.randn(3, 64, dtype=torch.float64)],
    ids=["one-dimensional", "63 columns", "float64"],
)
def test_what_torchs_op_refuses_it_refuses_with_requires_grad(bad_input):
    """The training forward leaves arguments it does not read to torch's op, and its error."""
    packed, scale_and_zeros = int4_weight(32, 64, 32)
    with torch._C._AutoDispatchBelowAutograd(), pytest.raises(Exception) as stock:
        torch.ops.aten._weight_int4pack_mm_for_cpu(bad_input, packed, 32, scale_and_zeros)
    with pytest.raises(type(stock.value)) as training:
        torch.ops.aten._weight_int4pack_mm_for_cpu(bad_input.clone().requires_grad_(), packed, 32, scale_and_zeros)
    assert str(training.value).splitlines()[0] == str(stock.value).splitlines()[0]


def test_no_node_without_requires_grad():
    packed, scale_and_zeros = int4_weight(16, 64, 32)
    output = torch.ops.aten._weight_int4pack_mm_for_cpu(torch.randn(2, 64), packed, 32, scale_and_zeros)
    assert output.grad_fn is None


def test_arguments_are_not_modified():
    packed, scale_and_zeros = int4_weight(48, 128, 64, dtype=torch.bfloat16)
    copies = (packed.clone(), scale_and_zeros.clone())
    qlgrad.linear_int4pack_backward(torch.randn(20, 48), packed, 64, scale_and_zeros)
    assert torch.equal(packed, copies[0]) and torch.equal(scale_and_zeros, copies[1])


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(group_size=48), ValueError, "group_size must be 32, 64, 128 or 256"),
        (dict(group_size=True), TypeError, "group_size must be an int"),
        (dict(weight_int4pack=torch.zeros(32, 32, dtype=torch.int8)), TypeError, "weight_int4pack must be a uint8"),
        (dict(weight_int4pack=torch.zeros(32, 16, dtype=torch.uint8)), ValueError, "must be contiguous of shape"),
        (dict(scale_and_zeros=torch.ones(2, 32, 3)), ValueError, "scale_and_zeros must be"),
        (dict(scale_and_zeros=torch.ones(2, 24, 2)), ValueError, "multiple of 16"),
        (dict(scale_and_zeros=torch.ones(2, 32, 2, dtype=torch.int32)), TypeError, "floating-point"),
        (dict(grad_output=torch.randn(3, 31)), ValueError, "last dimension must equal"),
        (dict(grad_output=torch.randint(0, 3, (3, 32))), TypeError, "grad_output must be a floating-point"),
        (dict(grad_output=None), TypeError, "grad_output must be a torch.Tensor"),
        (dict(precision="fp8"), ValueError, "unknown backward precision"),
    ],
    # Named by the changed argument and the error (the tensors' values are random).
    ids=lambda value: "-".join(value) if isinstance(value, dict) else value if isinstance(value, str) else None,
)
def test_bad_arguments_are_named(change, error, match):
    packed, scale_and_zeros = int4_weight(32, 64, 32)
    arguments = dict(
        grad_output=torch.randn(3, 32), weight_int4pack=packed, group_size=32, scale_and_zeros=scale_and_zeros
    )
    arguments.update(change)
    with pytest.raises(error, match=match):
        qlgrad.linear_int4pack_backward(**arguments)
    # torch.ops refuses a bool group_size and a None grad_output itself, while matching the schema.
    python_only = isinstance(arguments["group_size"], bool) or arguments["grad_output"] is None
    if not python_only:
        with pytest.raises(error, match=match):
            torch.ops.qlgrad.linear_int4pack_backward(**arguments)
