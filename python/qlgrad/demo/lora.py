"""PEFT's LoRA adapters on the digit classifier, int8 and float, and their fine-tuning."""

import copy

import peft
import torch
from torch import nn

import qlgrad

from .._deprecations import hide_upstream_deprecations
from ..peft import DynamicQuantizedLinear
from ..peft import get_peft_model as get_int8_peft_model
from .digits import quantize_int8, train


def lora_config(model: nn.Module, lora_rank: int) -> peft.LoraConfig:
    """Rank-``lora_rank`` LoRA (alpha equal to the rank) on every linear layer of ``model``, float or int8."""
    layers = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, DynamicQuantizedLinear))]
    return peft.LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=layers)


def adapted_models(float_model: nn.Module, lora_rank: int, seed: int) -> dict[str, peft.PeftModel]:
    """The models to fine-tune: ``"int8"``, an int8 copy of ``float_model``, and ``"float"``, a float copy.

    Each has PEFT's rank-``lora_rank`` LoRA adapters on its linear layers, the same initial
    values (from ``seed``) on both. ``float_model`` is left as it is.
    """
    models = {}
    for name, base, adapt in (
        ("int8", quantize_int8(float_model), get_int8_peft_model),
        ("float", copy.deepcopy(float_model), peft.get_peft_model),
    ):
        torch.manual_seed(seed)
        models[name] = adapt(base, lora_config(base, lora_rank))
    return models


def fine_tune_adapters(
    rank: int,
    world_size: int,
    float_model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    lora_rank: int,
    steps: int,
    seed: int,
    precision: str,
) -> dict[str, tuple[dict[str, torch.Tensor], float]]:
    """Train the adapters of ``adapted_models(float_model, lora_rank, seed)``.

    Returns ``{name: (trained adapters as PEFT saves them, seconds per step)}``. Called
    as process ``rank`` 0 of ``world_size`` 1, or as the job of every process in
    ``run_data_parallel``. Each process builds its models itself, so that only float
    tensors travel between processes.
    """
    hide_upstream_deprecations()
    results = {}
    with qlgrad.backward_precision(precision):
        for name, model in adapted_models(float_model, lora_rank, seed).items():
            seconds = train(model, images, labels, steps, seed, f"{name} base", rank, world_size)
            results[name] = (peft.get_peft_model_state_dict(model), seconds)
    return results
