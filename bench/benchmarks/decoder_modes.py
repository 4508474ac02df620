"""The modes of ``bench/llm.py``: the decoder's base dtype (float32, or bfloat16 in the ``-bf16``
modes), how each quantizes its projections (or not), which PEFT adapts them, and what computes
their input gradient.

Every mode quantizes the projections only: the embeddings, the norms and ``lm_head`` keep the
base's dtype. torchao and bitsandbytes are imported when a mode quantizes with them, never when
this module is (asv imports every module of this folder). No asv benchmark is defined here.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

import qlgrad
from qlgrad.reference import float64_weight, straight_through

from .decoder import PROJECTIONS, projections

# ---- Quantization, one function per path; each changes the model in place -------------------


def quantize_dynamic_int8(model: nn.Module) -> None:
    """``quantize_dynamic`` on the projections, int8 weights with one scale per output channel."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    qconfig_spec = {
        name: per_channel_dynamic_qconfig for name, _ in model.named_modules() if name.endswith(PROJECTIONS)
    }
    quantize_dynamic(model, qconfig_spec, inplace=True)  # in place: a copy would double the float model's memory


def torchao_int8(model: nn.Module) -> None:
    """torchao: int8 weights per row, activations quantized per token at each call (``Int8Tensor``)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=_is_projection)


def torchao_int4(model: nn.Module) -> None:
    """torchao: int4 weights in groups of 32, int8 activations per token (``IntxUnpackedToInt8Tensor``,
    which holds each int4 code in an int8)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup, quantize_

    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32))
    quantize_(model, config, filter_fn=_is_projection)


def torchao_int4pack(model: nn.Module) -> None:
    """torchao: int4 weights in groups of 128 in torch's CPU int4 packing, activations as they come
    (``PrototypeInt4WeightOnlyConfig``, ``Int4OpaqueTensor``, whose forward is
    ``aten::_weight_int4pack_mm_for_cpu``)."""
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import quantize_

    # set_inductor_config would import the compiler to change its settings; nothing is compiled here.
    config = PrototypeInt4WeightOnlyConfig(group_size=128, set_inductor_config=False)
    quantize_(model, config, filter_fn=_is_projection)


def _is_projection(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.Linear) and name.endswith(PROJECTIONS)


def bitsandbytes_8bit(model: nn.Module) -> None:
    """bitsandbytes' ``Linear8bitLt``: int8 weights per row (LLM.int8(), no outlier threshold)."""
    import bitsandbytes as bnb

    for parent, name, layer in projections(model):
        quantized = bnb.nn.Linear8bitLt(
            layer.in_features, layer.out_features, layer.bias is not None, has_fp16_weights=False
        )
        # Moving the float weight to a device is what quantizes it, the CPU included.
        quantized.weight = bnb.nn.Int8Params(layer.weight.data, requires_grad=False, has_fp16_weights=False).to("cpu")
        quantized.bias = layer.bias
        setattr(parent, name, quantized)
    model.is_loaded_in_8bit = True  # as transformers marks such a model; PEFT then adds its bitsandbytes LoRA layers


def bitsandbytes_4bit(model: nn.Module) -> None:
    """bitsandbytes' ``Linear4bit``: NF4 weights in blocks of 64 with double-quantized scales (QLoRA's
    choice), computing in the base's dtype (float32 or bfloat16)."""
    import bitsandbytes as bnb

    for parent, name, layer in projections(model):
        quantized = bnb.nn.Linear4bit(
            layer.in_features, layer.out_features, layer.bias is not None, compute_dtype=layer.weight.dtype
        )
        quantized.weight = bnb.nn.Params4bit(
            layer.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True, module=quantized
        ).to("cpu")
        quantized.bias = layer.bias
        setattr(parent, name, quantized)
    model.is_loaded_in_4bit = True


# ---- The floor: a step without the projections' products ------------------------------------


class _ProjectionWithoutProduct(nn.Linear):
    """A projection whose product costs nothing: it outputs its bias alone (zeros without one), so
    its input gets no gradient from it either."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        output = input.new_zeros(*input.shape[:-1], self.out_features)
        return output if self.bias is None else output + self.bias


def without_projection_products(model: nn.Module) -> None:
    """Leave out the products of the projections' weights, forward and backward: what remains of
    the step (the adapters, attention, norms, ``lm_head``, the optimizer) is the floor below which
    no base's projections, quantized or not, can bring it. Its loss means nothing."""
    for _, _, layer in projections(model):
        layer.__class__ = _ProjectionWithoutProduct  # still an nn.Linear, which PEFT adapts as such


# ---- The float64 straight-through reference ------------------------------------------------


def with_float64_straight_through(model: nn.Module) -> None:
    """Every quantized projection of ``model`` gets ``qlgrad.reference``'s float64 straight-through
    backward: its own forward, on an input that needs no grad (so nothing of qlgrad's runs), and
    the input gradient ``grad_output @ W_deq`` in float64.

    ``W_deq`` is taken once per layer (8 bytes per weight element, held for the run) and the layer
    keeps its type, so PEFT adapts it exactly as it adapts the unwrapped layer.
    """
    for _, _, layer in projections(model):
        if isinstance(layer, torch.ao.nn.quantized.dynamic.Linear):
            weight = float64_weight(layer._packed_params._packed_params)
        else:  # torchao's subclasses
            weight = float64_weight(layer.weight)
        layer.forward = functools.partial(straight_through, forward=layer.forward, weight_float64=weight)


def in_turn(*changes: Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
    """One change of the model that makes ``changes``, in order."""

    def change(model: nn.Module) -> None:
        for each in changes:
            each(model)

    return change


# ---- Modes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """How one row's model is quantized, adapted and differentiated."""

    backward: str  # what computes the input gradient of the projections, for the table
    quantize: Callable[[nn.Module], None] | None = None  # changes the model in place, once in the base's dtype
    bfloat16: bool = False  # the base: the float32 decoder converted to bfloat16 (all of it) before quantizing
    autocast: bool = False  # the forward in torch.autocast("cpu", dtype=torch.bfloat16), on the float32 base
    qlgrad_adapters: bool = False  # adapted by qlgrad.peft.get_peft_model rather than peft.get_peft_model
    # qlgrad's backward precision chosen during the forward (where qlgrad differentiates); None
    # chooses none, so that it follows the gradient's dtype (bf16 on a bfloat16 base, else fp32)
    precision: str | None = None
    compiled: bool = False
    requires: str | None = None  # a package the mode needs beyond this project's own
    reference: str | None = None  # the float64 straight-through mode whose loss this one's is compared with


def _on_bfloat16(mode: Mode, reference: str | None = None) -> Mode:
    """``mode`` on a bfloat16 base, its loss compared with ``reference``'s."""
    return replace(mode, bfloat16=True, reference=reference)


def _in_autocast(mode: Mode, reference: str | None = None) -> Mode:
    """``mode`` on the float32 base, its forward in a bfloat16 autocast region, its loss compared with
    ``reference``'s."""
    return replace(mode, autocast=True, reference=reference)


def _torchao(quantize: Callable[[nn.Module], None], reference: str | None) -> Mode:
    """A torchao mode: qlgrad's default backward (the gradient's dtype's precision), its loss
    compared with ``reference``'s."""
    return Mode("qlgrad, dtype's precision", quantize, requires="torchao", reference=reference)


def _torchao_float64(quantize: Callable[[nn.Module], None]) -> Mode:
    """The float64 straight-through reference of a torchao mode."""
    return Mode("float64 straight-through", in_turn(quantize, with_float64_straight_through), requires="torchao")


_FLOAT = Mode("float autograd")
_FLOOR = Mode("none: no products of the projections", without_projection_products)
_BNB_8BIT = Mode("bitsandbytes", bitsandbytes_8bit, requires="bitsandbytes")
_BNB_4BIT = Mode("bitsandbytes", bitsandbytes_4bit, requires="bitsandbytes")

# quantize_dynamic's layers take float32 only: the qd-* modes have no bfloat16 base.
MODES = {
    "float": _FLOAT,
    "float-bf16": _on_bfloat16(_FLOAT),
    # Each base's step with its projections costing nothing: the floor of every mode on that base.
    "floor": _FLOOR,
    "floor-bf16": _on_bfloat16(_FLOOR),
    # Mixed precision on the float32 base: every product autocast lists (qlgrad's int4 layers among
    # them) in bfloat16, the rest in float32.
    "float-autocast": _in_autocast(_FLOAT),
    "floor-autocast": _in_autocast(_FLOOR),
    # What compiling costs the float step: the measure of what compiling the int8 step costs beyond it.
    "float-compiled": replace(_FLOAT, backward="float autograd, torch.compile", compiled=True),
    **{
        f"qd-{precision}": Mode(
            f"qlgrad {precision}",
            quantize_dynamic_int8,
            qlgrad_adapters=True,
            precision=precision,
            reference="qd-ste64",
        )
        for precision in qlgrad.PRECISIONS
    },
    "qd-ste64": Mode(
        "float64 straight-through", in_turn(quantize_dynamic_int8, with_float64_straight_through), qlgrad_adapters=True
    ),
    "qd-fp32-compiled": Mode(
        "qlgrad fp32, torch.compile",
        quantize_dynamic_int8,
        qlgrad_adapters=True,
        precision="fp32",
        compiled=True,
        reference="qd-ste64",
    ),
    "torchao-int8": _torchao(torchao_int8, "torchao-int8-ste64"),
    "torchao-int8-ste64": _torchao_float64(torchao_int8),
    "torchao-int8-bf16": _on_bfloat16(_torchao(torchao_int8, None), "torchao-int8-bf16-ste64"),
    "torchao-int8-bf16-ste64": _on_bfloat16(_torchao_float64(torchao_int8)),
    # The int8 precision chosen for the bfloat16 gradients (integer products, up to 2% error; the
    # default is bf16): what the opt-in buys.
    "torchao-int8-bf16-int8": replace(
        _on_bfloat16(_torchao(torchao_int8, None), "torchao-int8-bf16-ste64"), backward="qlgrad int8", precision="int8"
    ),
    "torchao-int4": _torchao(torchao_int4, "torchao-int4-ste64"),
    "torchao-int4-ste64": _torchao_float64(torchao_int4),
    "torchao-int4-bf16": _on_bfloat16(_torchao(torchao_int4, None), "torchao-int4-bf16-ste64"),
    "torchao-int4-bf16-ste64": _on_bfloat16(_torchao_float64(torchao_int4)),
    "torchao-int4pack": _torchao(torchao_int4pack, "torchao-int4pack-ste64"),
    "torchao-int4pack-ste64": _torchao_float64(torchao_int4pack),
    "torchao-int4pack-autocast": _in_autocast(_torchao(torchao_int4pack, None), "torchao-int4pack-ste64"),
    "torchao-int4pack-bf16": _on_bfloat16(_torchao(torchao_int4pack, None), "torchao-int4pack-bf16-ste64"),
    "torchao-int4pack-bf16-ste64": _on_bfloat16(_torchao_float64(torchao_int4pack)),
    "bnb-8bit": _BNB_8BIT,
    "bnb-8bit-bf16": _on_bfloat16(_BNB_8BIT),
    "bnb-4bit": _BNB_4BIT,
    "bnb-4bit-bf16": _on_bfloat16(_BNB_4BIT),
}
REFERENCES = {mode.reference for mode in MODES.values()} - {None}  # the float64 straight-through modes
