"""Whole models quantized with quantize_dynamic against a pure-Python straight-through reference."""

import copy

import pytest
import torch
from torch import nn

from helpers import cosine
from qlgrad.reference import with_reference_layers


class MLP(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention and feed-forward, each around a residual path."""

    def __init__(self, dim=48, heads=4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, tokens, 3, self.heads, -1).unbind(2)
        attn = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.ff(self.norm2(x))


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize(
    "make_model, input_shape",
    [(MLP, (16, 32)), (lambda: nn.Sequential(TransformerBlock(), TransformerBlock()), (2, 12, 48))],
    ids=["mlp", "transformer"],
)
def test_input_gradient_matches_ste_reference(make_model, input_shape, per_channel):
    torch.manual_seed(0)
    qconfig = (
        torch.ao.quantization.per_channel_dynamic_qconfig
        if per_channel
        else torch.ao.quantization.default_dynamic_qconfig
    )
    model = torch.ao.quantization.quantize_dynamic(make_model().eval(), {nn.Linear: qconfig})
    reference = with_reference_layers(copy.deepcopy(model))
    x = torch.randn(input_shape)
    weights = torch.randn_like(model(x))

    def input_gradient(m):
        inp = x.clone().requires_grad_()
        (m(inp) * weights).sum().backward()
        return inp.grad

    got, expected = input_gradient(model), input_gradient(reference)
    assert cosine(got, expected) >= 0.9999
    assert abs(got.norm() / expected.norm() - 1) <= 1e-3
