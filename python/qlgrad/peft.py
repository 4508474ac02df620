"""PEFT's LoRA on models quantized with ``quantize_dynamic``.

Drop-ins for ``peft.get_peft_model`` and ``peft.PeftModel.from_pretrained`` that also adapt
dynamic int8 and fp16 ``Linear`` layers (``torch.ao.nn.quantized.dynamic.Linear`` and its
``LinearReLU`` subclass)::

    model = torch.ao.quantization.quantize_dynamic(float_model.eval(), {torch.nn.Linear})
    model = qlgrad.peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["0", "2"]))
    ...  # train, then model.save_pretrained(path)
    model = qlgrad.peft.from_pretrained(fresh_int8_model, path)

Each int8 layer stays frozen and packed; the adapter beside it is PEFT's own LoRA ``Linear``
(rank, alpha, rsLoRA, dropout, bias, several adapters, ``disable_adapter()``, one adapter per
sample). The adapters of every layer but the last learn from gradients that pass through the
int8 layers after them: the straight-through input gradients qlgrad supplies. What needs the base
layer's weight as a float tensor (merging, DoRA, initialisations derived from the weight)
raises an error that says what to do instead.

Needs PEFT: ``pip install 'qlgrad[peft]'``.
"""

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

try:
    import peft
    from peft.tuners.lora import Linear as LoraLinear
except ImportError as error:
    raise ImportError("qlgrad.peft needs PEFT: pip install 'qlgrad[peft]'") from error

# fp16 layers are the same class; the fused LinearReLU subclasses it.
DynamicQuantizedLinear = torch.ao.nn.quantized.dynamic.Linear
DynamicQuantizedLinearReLU = torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU

# The initialisations that need nothing from the base layer: the others (PiSSA, OLoRA, CorDA,
# LoftQ, LoRA-GA, orthogonal, EVA) derive the adapters from its float weight or its activations.
SUPPORTED_INITIALISATIONS = (True, False, "gaussian")

HOW_TO_MERGE = (
    "load the adapters onto the float model this one was quantized from "
    "(peft.PeftModel.from_pretrained), merge them there with merge_and_unload(), and quantize the "
    "merged model again; or keep them unmerged, as they cost one low-rank product per layer"
)


class DynamicQuantizedLoraLinear(LoraLinear):
    """PEFT's LoRA ``Linear`` beside a frozen dynamic quantized ``Linear`` (int8 or fp16).

    ``forward(x) = base_layer(x) + sum over active adapters of lora_B(lora_A(dropout(x))) * scaling``,
    exactly as PEFT's ``Linear``; only what PEFT reads from a float base layer differs. The base
    layer's size comes from its ``in_features`` and ``out_features``; its device is the CPU, the
    only one its operators run on. Merging is refused: the packed int8 weight cannot take a
    float update. On a fused ``LinearReLU`` the update goes inside the ReLU, as it does on the
    unfused float layers: ``relu(W x + update)``.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: peft.LoraConfig, **kwargs):
        super().__init__(base_layer, adapter_name, config, **kwargs)
        layer = self.get_base_layer()
        if not hasattr(layer, "W_q"):
            # PEFT moves new adapters to the device of the base layer's `qweight`, `W_q` (quantized
            # layers) or `weight`. A dynamic Linear's `weight` is a method, so this empty tensor on
            # the layer's device stands in (and stays, also after unload()); `W_q` rather than
            # `qweight`, which PEFT would report as the adapted layer's `weight`.
            layer.W_q = torch.empty(0)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: peft.LoraConfig, **kwargs) -> None:
        """PEFT's ``update_layer`` (adds or replaces adapter ``adapter_name``), once ``config`` is known to apply."""
        _check_applies_to_quantized_layer(config, variant=self.resolve_lora_variant(config=config))
        super().update_layer(adapter_name, r, lora_alpha, config, **kwargs)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        # PEFT knows nn.Linear and reads unknown layers' weight shape; a dynamic Linear's weight is a method.
        return module.in_features, module.out_features

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module) -> tuple[torch.device, None]:
        # No dtype: PEFT would cast the adapters to it, and the packed weight's (qint8) is not the activations'.
        return torch.device("cpu"), None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """PEFT's forward; on a fused ``LinearReLU`` with adapters active, ``relu(W x + update)``."""
        base_layer = self.get_base_layer()
        if self.disable_adapters or not isinstance(base_layer, DynamicQuantizedLinearReLU):
            return super().forward(x, *args, **kwargs)
        if kwargs.get("adapter_names") is not None:
            raise ValueError(
                "adapter_names (one adapter per sample) is not supported on a fused LinearReLU: "
                "quantize the model without fusing its ReLU to use it"
            )
        # PEFT adds the update to what the layer returns, which the fused op has passed through
        # its ReLU already; the unfused op on the same packed weight gives W x.
        result = DynamicQuantizedLinear.forward(base_layer, x)
        for name in self.active_adapters:
            if name in self.lora_A:
                lora_A, lora_B = self.lora_A[name], self.lora_B[name]
                dropout, scaling = self.lora_dropout[name], self.scaling[name]
                update = lora_B(lora_A(dropout(self._cast_input_dtype(x, lora_A.weight.dtype)))) * scaling
                result = result + update.to(result.dtype)
        return torch.relu(result)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Refused: the base layer's weight is packed int8 (or fp16) and cannot take the float update."""
        raise ValueError(
            f"cannot merge LoRA adapters into {self.get_base_layer()._get_name()}: its weight is packed "
            f"{self.get_base_layer()._packed_params.dtype} and cannot take a float update. Instead, {HOW_TO_MERGE}."
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # PEFT loads adapters with load_state_dict(strict=False) from a state dict holding the
        # adapters alone, but a quantized layer reads its scale and packed weight without checking
        # that they are there, and takes the missing version to mean an old format (which changes
        # its forward). Given none of its keys, the frozen layer sits this load out.
        if not any(key.startswith(prefix + "base_layer.") for key in state_dict):
            _SkipOnLoad.stand_in_for(self, "base_layer")
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class _SkipOnLoad(nn.Module):
    """Takes a submodule's place while ``load_state_dict`` reaches it, loads nothing, and puts it back.

    ``load_state_dict`` loads a module, then each of its submodules in turn; this stand-in, loaded
    in its submodule's turn, restores it there. The state dict's keys are the same either way.
    """

    def __init__(self, parent: nn.Module, name: str):
        super().__init__()
        # Not registered as a submodule of the stand-in: the load must not reach it.
        self.__dict__["_place"] = (parent, name, parent._modules[name])

    @classmethod
    def stand_in_for(cls, parent: nn.Module, name: str) -> None:
        """Put a stand-in in place of ``parent``'s submodule ``name``, keeping its place in their order."""
        parent._modules[name] = cls(parent, name)

    def _load_from_state_dict(self, *args) -> None:
        parent, name, module = self._place
        parent._modules[name] = module


def _check_applies_to_quantized_layer(config: peft.LoraConfig, variant: object | None = None) -> None:
    """Raise ``ValueError`` naming the option of ``config`` that needs a float base weight, if any.

    ``variant`` is the LoRA variant PEFT's ``Linear`` resolved from ``config`` (DoRA and others),
    or ``None`` for plain LoRA.
    """
    if config.use_dora:
        raise ValueError(
            "use_dora=True does not apply to an int8 layer: DoRA rescales the base weight by its column "
            "norms, and the weight here is packed int8. Use plain LoRA (use_dora=False)."
        )
    if variant is not None:
        raise ValueError(
            f"the LoRA variant {type(variant).__name__} set in the LoraConfig is not supported on int8 "
            "layers: qlgrad.peft supports plain LoRA (with rsLoRA, dropout and lora_bias)."
        )
    if config.init_lora_weights not in SUPPORTED_INITIALISATIONS:
        raise ValueError(
            f"init_lora_weights={config.init_lora_weights!r} does not apply to an int8 layer: it derives the "
            "adapters from the base layer's float weight or activations. Use True (the default), False or 'gaussian'."
        )


def with_quantized_layers(config: peft.LoraConfig) -> peft.LoraConfig:
    """``config``, with qlgrad's LoRA layer registered for dynamic quantized ``Linear`` layers; changed in place.

    ``get_peft_model`` and ``from_pretrained`` do this themselves; call it for a config given to
    ``PeftModel.add_adapter`` that targets layers without adapters yet. The registration is not
    saved with the config (PEFT saves no custom layer types), which is why adapters saved from an
    int8 model load with ``qlgrad.peft.from_pretrained``.
    """
    if not isinstance(config, peft.LoraConfig):
        raise TypeError(
            f"qlgrad.peft adapts quantized layers with LoRA: expected a peft.LoraConfig, got {type(config).__name__}"
        )
    _check_applies_to_quantized_layer(config)
    # An experimental PEFT interface (custom layer types), so used in this one place only.
    config._register_custom_module({DynamicQuantizedLinear: DynamicQuantizedLoraLinear})
    return config


@contextlib.contextmanager
def _placeholder_parameter(model: nn.Module) -> Iterator[None]:
    """Give ``model`` an empty frozen parameter for the duration, if it has no parameter at all.

    PEFT takes the model's device from its first parameter before adding the first adapters; a
    model whose layers are all quantized has none.
    """
    if next(model.parameters(), None) is not None:
        yield
        return
    name = "_qlgrad_placeholder"
    model.register_parameter(name, nn.Parameter(torch.empty(0), requires_grad=False))
    try:
        yield
    finally:
        delattr(model, name)


def get_peft_model(model: nn.Module, config: peft.LoraConfig, **kwargs) -> peft.PeftModel:
    """``peft.get_peft_model(model, config, **kwargs)``, for models holding dynamic quantized ``Linear`` layers.

    The int8 and fp16 layers that ``config.target_modules`` names get PEFT LoRA adapters (as
    ``DynamicQuantizedLoraLinear``); float layers get PEFT's own. ``config`` must be a
    ``peft.LoraConfig`` with plain LoRA: no DoRA or other variant, ``init_lora_weights`` True, False
    or ``"gaussian"``. ``model`` is changed in place, as PEFT does.
    """
    with_quantized_layers(config)
    _check_targets_named(config, model)
    with _placeholder_parameter(model):
        return peft.get_peft_model(model, config, **kwargs)


def _check_targets_named(config: peft.LoraConfig, model: nn.Module) -> None:
    """Refuse ``target_modules="all-linear"`` on a model with quantized layers, which PEFT would leave out."""
    if not (isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear"):
        return
    quantized = [name for name, module in model.named_modules() if isinstance(module, DynamicQuantizedLinear)]
    if quantized:
        raise ValueError(
            "target_modules='all-linear' selects float nn.Linear layers only, and would leave out the "
            f"{len(quantized)} dynamic quantized Linear layers of this model: name the layers to adapt, "
            f"for example target_modules={quantized[:4]}{' + ...' if len(quantized) > 4 else ''}"
        )


def from_pretrained(model: nn.Module, path: str | os.PathLike, **kwargs) -> peft.PeftModel:
    """``peft.PeftModel.from_pretrained(model, path, **kwargs)``, for models with dynamic quantized ``Linear`` layers.

    Loads the adapters saved (``save_pretrained``) from a model adapted by ``get_peft_model`` onto
    ``model``, a fresh copy of its base: quantized the same way from the same float model, it
    reproduces the saved model's outputs exactly. ``path`` is a local directory; keyword
    arguments are PEFT's (``adapter_name``, ``is_trainable``, ...), ``config`` included.
    """
    config = kwargs.pop("config", None) or peft.PeftConfig.from_pretrained(path, subfolder=kwargs.get("subfolder"))
    with_quantized_layers(config)
    with _placeholder_parameter(model):
        return peft.PeftModel.from_pretrained(model, path, config=config, **kwargs)
