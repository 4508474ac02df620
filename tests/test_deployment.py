"""Deployments without Python qlgrad: TorchScript through torch.ops.load_library, and C++
programs compiled against the installed package with pkg-config."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import qlgrad
from helpers import dynamic_linear, quantize_weight, run_python
from qlgrad.reference import with_reference_layers

TESTS_DIR = Path(__file__).parent


def quantized_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16), nn.LayerNorm(16), nn.Linear(16, 8))
    return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear})


def test_scripted_model_in_a_process_that_only_loads_the_library(tmp_path):
    model = quantized_mlp()
    x, grad_output = torch.randn(4, 16), torch.randn(4, 8)
    reference_x = x.clone().requires_grad_()
    with_reference_layers(copy.deepcopy(model))(reference_x).backward(grad_output)
    torch.jit.script(model).save(tmp_path / "model.pt")
    torch.save((x, grad_output, reference_x.grad), tmp_path / "data.pt")

    result = run_python(f"""
        import sys, torch
        torch.ops.load_library({qlgrad.library_path()!r})
        assert "qlgrad" not in sys.modules
        model = torch.jit.load({str(tmp_path / "model.pt")!r})
        x, grad_output, expected = torch.load({str(tmp_path / "data.pt")!r})
        x.requires_grad_()
        model(x).backward(grad_output)
        torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)

        @torch.jit.script
        def int8_backward(g: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return torch.ops.qlgrad.linear_int8_backward(g, w, s)

        w = torch.randint(-128, 128, (8, 16), dtype=torch.int8)
        g = torch.randn(3, 8)
        torch.testing.assert_close(int8_backward(g, w, torch.tensor([0.01])), g @ (w.float() * 0.01))
        print("deployment ok")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deployment ok" in result.stdout


class ExplicitBackward(nn.Module):
    """A scripted module that computes an input gradient explicitly with qlgrad's operator."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, grad_output: torch.Tensor) -> torch.Tensor:
        return torch.ops.qlgrad.linear_dynamic_backward(grad_output, self.layer._packed_params._packed_params)


def test_scripted_module_calls_linear_dynamic_backward():
    layer = dynamic_linear(16, 8)
    scripted = torch.jit.script(ExplicitBackward(layer))
    grad_output = torch.randn(3, 8)
    expected = grad_output.double() @ layer.weight().dequantize().double()
    torch.testing.assert_close(scripted(grad_output).double(), expected, rtol=1e-5, atol=1e-6)


def test_scripted_function_differentiates_through_the_op():
    weight = quantize_weight(8, 16, "per_channel_affine")

    @torch.jit.script
    def penalty(g: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.ops.qlgrad.linear_int8_backward(g, w, s, z).pow(2).sum()

    g = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    penalty(g, weight.values, weight.scale, weight.zero_point).backward()
    w_deq = weight.dequantize_float64()
    torch.testing.assert_close(g.grad, 2 * (g.detach() @ w_deq) @ w_deq.T)


@pytest.mark.skipif(
    shutil.which("pkg-config") is None or shutil.which("c++") is None, reason="needs pkg-config and c++"
)
def test_cpp_program_builds_against_the_installed_package(tmp_path):
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(qlgrad.get_library_dir(), "pkgconfig"))
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "qlgrad"], env=env, check=True, capture_output=True, text=True
    )
    binary = tmp_path / "public_api"
    subprocess.run(
        ["c++", str(TESTS_DIR / "cpp" / "public_api.cpp"), "-o", str(binary), *flags.stdout.split()],
        check=True,
        timeout=600,
    )
    # No LD_LIBRARY_PATH: the runpaths from qlgrad.pc must find libqlgrad and libtorch.
    env.pop("LD_LIBRARY_PATH", None)
    result = subprocess.run([str(binary)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    passes = result.stdout.count("PASS ")
    assert passes > 0 and f"{passes} passed, 0 failed" in result.stdout


def test_headers_and_stubs_are_installed():
    assert os.path.isfile(os.path.join(qlgrad.get_include(), "qlgrad", "qlgrad.h"))
    package = Path(qlgrad.__file__).parent
    assert (package / "py.typed").is_file() and (package / "_C.pyi").is_file()


def test_stubs_match_the_module(tmp_path):
    generated = tmp_path / "_C.pyi"
    subprocess.run(
        [sys.executable, "-m", "nanobind.stubgen", "-q", "-m", "qlgrad._C", "-o", str(generated)],
        check=True,
        cwd=tmp_path,
    )
    assert generated.read_text() == (Path(qlgrad.__file__).parent / "_C.pyi").read_text()


def test_linear_dynamic_backward_takes_a_modules_packed_params():
    layer = dynamic_linear(16, 8)
    grad_output = torch.randn(2, 8)
    got = qlgrad.linear_dynamic_backward(grad_output, layer._packed_params._packed_params)
    expected = grad_output.double() @ layer.weight().dequantize().double()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
