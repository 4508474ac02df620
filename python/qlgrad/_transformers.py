"""Training adapters with transformers' ``Trainer`` on the torchao layers qlgrad differentiates.

``AutoModelForCausalLM.from_pretrained(path, quantization_config=TorchAoConfig(config))`` quantizes
a model with torchao's ``quantize_`` through transformers' ``TorchAoHfQuantizer``, whose
``is_trainable`` property the ``Trainer`` asks before it trains adapters on the model (and
refuses with "that quantization method do not support training" otherwise). transformers 5.24 and
5.25 answer by the digit before "Weight" in the config's class name: True for 8-bit configs only.
With qlgrad imported it answers True, too, for the configs whose every layer gets qlgrad's
straight-through input gradient (qlgrad/_torchao.py) and which transformers calls untrainable:

- ``Int8DynamicActivationIntxWeightConfig`` (version 2, ``IntxPackingFormat.UNPACKED_TO_INT8``, any
  weight dtype from int1 to int8, per group or per row): ``IntxUnpackedToInt8Tensor`` weights;
- ``PrototypeInt4WeightOnlyConfig``: ``Int4OpaqueTensor`` weights with float activations.

Every other config keeps transformers' answer: True for ``Int8DynamicActivationInt8WeightConfig``
(whose layers qlgrad differentiates too) and for the weight-only int8 configs (torchao's own
gradient), False for the rest, among them the opaque intx packings and the int8-activation int4
config (DA8W4), which qlgrad does not differentiate, and configs by module (``FqnToConfig``).

Nothing here imports transformers: when qlgrad is imported first, the quantizer changes as soon
as transformers' module defining it has been executed. With a transformers or torchao release
qlgrad was not tested with, transformers is left as it is (the first with a warning at
``import qlgrad``, the second has its own).
"""

import functools
import warnings

from . import _import_hooks, _torchao

# The transformers releases whose TorchAoHfQuantizer this module has been tested against: it
# relies on where the quantizer module is, and on is_trainable being a property of the class.
SUPPORTED_TRANSFORMERS_VERSIONS = ("5.24.0", "5.25.0")

QUANTIZER_MODULE = "transformers.quantizers.quantizer_torchao"

_NOT_COVERED = (
    "the Trainer keeps refusing to train adapters on models loaded with "
    "TorchAoConfig(Int8DynamicActivationIntxWeightConfig(...)) or TorchAoConfig(PrototypeInt4WeightOnlyConfig(...))"
)


def _unpacked_to_int8(config) -> bool:
    from torchao.quantization.quantize_.workflows import IntxPackingFormat

    return config.version == 2 and config.intx_packing_format == IntxPackingFormat.UNPACKED_TO_INT8


# The configs qlgrad differentiates every layer of, by where torchao defines them (the class
# itself, not a subclass), and what their fields must say.
_DIFFERENTIATED_CONFIGS = {
    ("torchao.quantization.quant_api", "Int8DynamicActivationIntxWeightConfig"): _unpacked_to_int8,
    ("torchao.prototype.quantization.int4.inference_workflow", "PrototypeInt4WeightOnlyConfig"): lambda config: True,
}


def differentiates(config) -> bool:
    """Whether qlgrad gives every layer torchao quantizes with ``config`` (a torchao config) its input gradient.

    Answers for the configs qlgrad makes trainable here only: False for all others, those of
    ``Int8DynamicActivationInt8WeightConfig`` included.
    """
    kind = type(config)
    condition = _DIFFERENTIATED_CONFIGS.get((kind.__module__, kind.__qualname__))
    return condition is not None and condition(config)


def _make_trainable(module) -> None:
    """Make ``module.TorchAoHfQuantizer.is_trainable`` True for the configs qlgrad differentiates, too."""
    quantizer = getattr(module, "TorchAoHfQuantizer", None)
    stock = vars(quantizer).get("is_trainable") if isinstance(quantizer, type) else None
    if not isinstance(stock, property):
        warnings.warn(
            f"qlgrad: transformers' TorchAoHfQuantizer has no is_trainable property where qlgrad expects one; "
            f"{_NOT_COVERED}",
            stacklevel=2,
        )
        return
    if getattr(stock.fget, "qlgrad_trainable", False):
        return  # changed already

    @functools.wraps(stock.fget)
    def is_trainable(self) -> bool:
        # transformers' answer first: it stays True wherever it is.
        if stock.fget(self):
            return True
        return differentiates(getattr(self.quantization_config, "quant_type", None))

    is_trainable.qlgrad_trainable = True
    quantizer.is_trainable = property(is_trainable)


def install(transformers_version: str | None, torchao_version: str | None) -> None:
    """Let transformers ``transformers_version`` train adapters on the torchao layers qlgrad differentiates.

    None: not installed. Warns once, at the import of qlgrad, for a transformers release qlgrad
    was not tested with, and then leaves it as it is; so it does without a supported torchao,
    whose layers then get no gradient from qlgrad (qlgrad/_torchao.py warns).
    """
    if transformers_version is None:
        return
    remedy = f"Install transformers {SUPPORTED_TRANSFORMERS_VERSIONS[-1]} to train them."
    if not _import_hooks.check_supported(
        "transformers", transformers_version, SUPPORTED_TRANSFORMERS_VERSIONS, _NOT_COVERED, remedy
    ):
        return
    if torchao_version is None or not _import_hooks.is_supported(torchao_version, _torchao.SUPPORTED_TORCHAO_VERSIONS):
        return
    _import_hooks.when_imported(QUANTIZER_MODULE, _make_trainable)
