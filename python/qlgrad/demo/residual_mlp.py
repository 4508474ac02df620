"""The int8 residual MLP whose input gradient the demo shows with and without qlgrad.

Run as a script, ``python residual_mlp.py SEED`` writes (``torch.save``, to stdout)
the input gradient that stock PyTorch computes. This file imports torch only, never
qlgrad, so that process has no Autograd kernel for ``quantized::linear_dynamic``.
"""

import sys
from collections.abc import Callable

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """Pre-norm residual blocks: ``x + Linear(GELU(Linear(LayerNorm(x))))``, ``depth`` times.

    The residual paths are what make stock PyTorch's missing gradient go unnoticed:
    backward still reaches the input, only without the int8 layers' share.
    """

    def __init__(self, dim: int = 64, depth: int = 4):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


def input_gradient(seed: int, wrap: Callable[[nn.Module], nn.Module] = lambda model: model) -> torch.Tensor:
    """Input gradient of the int8 ``ResidualMLP`` built from ``seed``, for a random output gradient.

    ``wrap`` may replace layers of the quantized model first (for a reference backward).
    """
    torch.manual_seed(seed)
    model = wrap(torch.ao.quantization.quantize_dynamic(ResidualMLP().eval(), {nn.Linear}, dtype=torch.qint8))
    x = torch.randn(8, 64, requires_grad=True)
    y = model(x)
    y.backward(torch.randn_like(y))
    return x.grad


if __name__ == "__main__":
    torch.save(input_gradient(int(sys.argv[1])), sys.stdout.buffer)
