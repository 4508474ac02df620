"""Loading the library: the version guard and loading twice, each in a fresh interpreter."""

import pytest

from helpers import run_python

# After loading, a backward through a dynamic Linear must give grad @ W_deq and no warning.
CHECK_GRADIENT = """
import warnings
warnings.filterwarnings("error", message=".*autograd kernel was not registered")
layer = torch.ao.nn.quantized.dynamic.Linear(8, 4)
layer.set_weight_bias(torch.quantize_per_tensor(torch.randn(4, 8), 0.02, 0, torch.qint8), None)
x = torch.randn(3, 8, requires_grad=True)
layer(x).sum().backward()
expected = torch.ones(3, 4) @ layer.weight().dequantize()
assert torch.allclose(x.grad, expected, atol=1e-6), (x.grad, expected)
print("gradient ok")
"""


def run_and_check(code):
    result = run_python("import torch\n" + code + CHECK_GRADIENT)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "gradient ok" in result.stdout


def test_import():
    run_and_check("import qlgrad")


def test_load_library_alone():
    run_and_check(
        "import importlib.util, os\n"
        "path = os.path.join(os.path.dirname(importlib.util.find_spec('qlgrad').origin), 'lib', 'libqlgrad.so')\n"
        "torch.ops.load_library(path)\n"
    )


def test_load_library_twice_then_import():
    run_and_check(
        "import qlgrad\n"
        "path = qlgrad.library_path()\n"
        "torch.ops.load_library(path)\n"
        "torch.ops.load_library(path)\n"
        "import qlgrad\n"
    )


@pytest.mark.parametrize("copy_first", [False, True], ids=["import_then_copy", "copy_then_import"])
def test_second_copy_at_another_path(tmp_path, copy_first):
    load_copy = (
        "import shutil, importlib.util, os\n"
        "original = os.path.join(os.path.dirname(importlib.util.find_spec('qlgrad').origin), 'lib', 'libqlgrad.so')\n"
        f"copy = shutil.copy(original, {str(tmp_path / 'libqlgrad_copy.so')!r})\n"
        "torch.ops.load_library(copy)\n"
    )
    steps = [load_copy, "import qlgrad\n"]
    run_and_check("".join(reversed(steps) if copy_first else steps))


def test_torch_version_mismatch_names_both_versions():
    result = run_python("import torch\ntorch.__version__ = '9.9.9'\nimport qlgrad\n")
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError")
    assert "9.9.9" in message and "built for torch 2." in message and "rebuild" in message
