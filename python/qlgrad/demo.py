"""Input gradients through an int8 model: stock PyTorch, qlgrad, and the float64 reference.

    python -m qlgrad.demo [--seed N]

Quantizes a small residual MLP with ``torch.ao.quantization.quantize_dynamic`` and
compares the input gradient that stock PyTorch computes (run in a child process
without qlgrad), the one qlgrad computes, and the straight-through reference
``grad_y @ W_deq`` evaluated layer by layer in float64.
"""

import argparse
import io
import subprocess
import sys
import warnings

import torch
from torch import nn


class ResidualMLP(nn.Module):
    def __init__(self, dim=64, depth=4):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            for _ in range(depth)
        )

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return x


class ReferenceLinear(nn.Module):
    """A dynamic quantized Linear with a float64 straight-through backward: grad_x = grad_y @ W_deq."""

    class _Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, layer):
            ctx.weight = layer.weight().dequantize().double()
            return layer(x)

        @staticmethod
        def backward(ctx, grad_output):
            return (grad_output.double() @ ctx.weight).to(grad_output.dtype), None

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self._Function.apply(x, self.layer)


def input_gradient(seed: int, reference: bool = False) -> torch.Tensor:
    torch.manual_seed(seed)
    model = torch.ao.quantization.quantize_dynamic(ResidualMLP().eval(), {nn.Linear}, dtype=torch.qint8)
    if reference:
        for module in list(model.modules()):
            for name, child in module.named_children():
                if isinstance(child, torch.ao.nn.quantized.dynamic.Linear):
                    setattr(module, name, ReferenceLinear(child))
    x = torch.randn(8, 64, requires_grad=True)
    y = model(x)
    y.backward(torch.randn_like(y))
    return x.grad


def stock_gradient(seed: int) -> torch.Tensor:
    """The gradient stock PyTorch gives, from a process that never loads qlgrad."""
    # Run as a plain script, this file imports no part of the qlgrad package.
    command = [sys.executable, "-W", "ignore", __file__, "--stock-gradient", "--seed", str(seed)]
    out = subprocess.run(command, check=True, capture_output=True).stdout
    return torch.load(io.BytesIO(out))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stock-gradient", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="torch.quantize_per_tensor")
    if args.stock_gradient:
        torch.save(input_gradient(args.seed), sys.stdout.buffer)
        return

    stock = stock_gradient(args.seed)
    import qlgrad

    fixed = input_gradient(args.seed)
    reference = input_gradient(args.seed, reference=True)

    def compare(name, grad):
        cos = torch.nn.functional.cosine_similarity(grad.flatten(), reference.flatten(), dim=0).item()
        print(f"{name:<10} cosine to reference {cos:+.5f}   norm ratio {(grad.norm() / reference.norm()).item():.4f}")

    print(f"Input gradient of a 4-block residual MLP quantized with quantize_dynamic (torch {torch.__version__}, qlgrad {qlgrad.__version__}):")
    compare("stock", stock)
    compare("qlgrad", fixed)
    print("first row, first 6 features:")
    for name, grad in (("stock", stock), ("qlgrad", fixed), ("reference", reference)):
        print(f"  {name:<10}", " ".join(f"{v:+.4f}" for v in grad[0, :6].tolist()))


if __name__ == "__main__":
    main()
