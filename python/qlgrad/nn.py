"""Low-rank adapters (LoRA) beside frozen layers, for fine-tuning int8 models.

A model made by ``torch.ao.quantization.quantize_dynamic`` cannot be trained
itself: its weights are packed int8. Adapters add a small trainable float update
beside each int8 layer::

    model = torch.ao.quantization.quantize_dynamic(float_model.eval(), {torch.nn.Linear})
    adapters = qlgrad.nn.add_lora(model, rank=4)
    optimizer = torch.optim.Adam(adapters, lr=1e-2)

Each adapter's gradient depends on the gradient arriving at its layer's output,
and for every layer but the last that arrives through the int8 layers after it:
the input gradients qlgrad supplies.
"""

import math

import torch
from torch import nn

DynamicQuantizedLinear = torch.ao.nn.quantized.dynamic.Linear


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update.

    ``forward(x) = base_layer(x) + (x @ lora_A.T @ lora_B.T) * scaling``, with
    ``lora_A`` ``[rank, in_features]``, ``lora_B`` ``[out_features, rank]`` and
    ``scaling = alpha / rank``. ``base_layer`` is any module with ``in_features``
    and ``out_features``: a dynamic int8 ``Linear`` or a float ``nn.Linear``.
    Its own parameters, if any, are left as they are (``add_lora`` freezes them).

    ``lora_B`` starts at zero, so wrapping a layer does not change its output until
    the adapter is trained; ``lora_A`` starts as ``nn.Linear`` initialises a weight.
    """

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be positive, got {rank}")
        self.base_layer = base_layer
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scaling = self.alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base_layer.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    layer_types: tuple[type[nn.Module], ...] = (DynamicQuantizedLinear,),
) -> list[nn.Parameter]:
    """Wrap every layer of ``layer_types`` in ``model`` (in place) with a ``LoRALinear``.

    All other parameters of ``model`` are frozen (``requires_grad=False``), so that
    training the returned adapter parameters (``lora_A``, ``lora_B`` of each wrapped
    layer, in module order) changes nothing else. The default targets the dynamic
    int8 layers of a ``quantize_dynamic`` model; pass ``(torch.nn.Linear,)`` to put
    the same adapters on a float model. Layers already wrapped are left alone.
    """
    model.requires_grad_(False)
    adapters = []

    def wrap_children(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, LoRALinear):
                adapters.extend((child.lora_A, child.lora_B))
            elif isinstance(child, layer_types):
                wrapped = LoRALinear(child, rank, alpha)
                setattr(module, name, wrapped)
                adapters.extend((wrapped.lora_A, wrapped.lora_B))
            else:
                wrap_children(child)

    wrap_children(model)
    if not adapters:
        raise ValueError(f"model has no layer of type {', '.join(t.__name__ for t in layer_types)} to adapt")
    for parameter in adapters:
        parameter.requires_grad_(True)
    return adapters
