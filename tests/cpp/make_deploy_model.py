"""Write a TorchScript model quantized with quantize_dynamic, with its test data as buffers.

    python make_deploy_model.py OUTPUT.pt

The buffers: example_input, grad_output, and expected_input_grad — the straight-through
input gradient from the pure-Python float64 reference (python/qlgrad/reference.py, loaded
from the source tree), computed without qlgrad.
"""

import copy
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python" / "qlgrad"))
from reference import with_reference_layers


class DeployModel(nn.Module):
    def __init__(self, model, example_input, grad_output, expected_input_grad):
        super().__init__()
        self.model = model
        self.register_buffer("example_input", example_input)
        self.register_buffer("grad_output", grad_output)
        self.register_buffer("expected_input_grad", expected_input_grad)

    def forward(self, x):
        return self.model(x)


def build() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    dim = 32
    float_model = nn.Sequential(
        nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim), nn.LayerNorm(dim), nn.Linear(dim, dim)
    )
    model = torch.ao.quantization.quantize_dynamic(float_model.eval(), {nn.Linear})
    x = torch.randn(5, dim)
    grad_output = torch.randn(5, dim)

    reference_x = x.clone().requires_grad_()
    with_reference_layers(copy.deepcopy(model))(reference_x).backward(grad_output)
    return torch.jit.script(DeployModel(model, x, grad_output, reference_x.grad))


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    build().save(sys.argv[1])
