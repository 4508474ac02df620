"""Training forwards for ``bench/compare.py``: the forward of a quantized layer whose input
requires grad (qlgrad's product from the stored weight), beside the stock forward of the same
layer without grad and the dense forward of the same dtype (the best GEMM: for float32 the
faster of ``F.linear`` and oneDNN's ``mkldnn_linear``; for bfloat16 ``F.linear``).

No asv benchmark is defined here (asv imports every module of this folder); torchao is imported
when a layer is made."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qlgrad._torchao import stock_linear_handler

from .reporting import markdown_table, verdict
from .timing import Timed, interleaved_samples, medians, milliseconds, times

IN_FEATURES = OUT_FEATURES = 4096
# 192: a language model's training sequence (bench/llm.py); torch's int4 kernel takes seconds per
# call with float32 inputs from there.
TOKENS = (1, 16, 192)
# torch's int4 packing (PrototypeInt4WeightOnlyConfig), torchao's int8 dynamic layers, and its
# group-wise int4 codes with int8 activations (Int8DynamicActivationIntxWeightConfig).
LAYERS = ("int4_group128", "torchao_int8", "torchao_intx_group32")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# From this many tokens the training forward is to take no longer than the dense forward.
DENSE_TARGET_MIN_TOKENS = 16


@dataclass
class TrainingForwardRow:
    layer: str
    dtype: str
    tokens: int
    medians: dict[str, float]  # stock, training, dense


def quantized_layer(kind: str, dtype: torch.dtype) -> tuple[torch.nn.Linear, torch.Tensor]:
    """(layer quantized by torchao, the dense weight it was made from) in ``dtype``."""
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8DynamicActivationIntxWeightConfig,
        PerGroup,
        quantize_,
    )

    torch.manual_seed(0)
    layer = torch.nn.Linear(IN_FEATURES, OUT_FEATURES, bias=False).to(dtype)
    dense = layer.weight.detach().clone()
    if kind == "int4_group128":
        config = PrototypeInt4WeightOnlyConfig(group_size=128)
    elif kind == "torchao_int8":
        config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    else:
        config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32))
    quantize_(layer, config)
    return layer, dense


def stock_forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The layer's forward as torch and torchao give it: with qlgrad imported, inputs without grad
    take qlgrad's forward where it is theirs bit for bit, so their own kernels are called past it
    (torchao's own F.linear handler, which qlgrad's wraps; torch's int4 kernel past qlgrad's
    Autograd kernel)."""
    stock_handler = stock_linear_handler(type(layer.weight))
    with torch.no_grad(), torch._C._AutoDispatchBelowAutograd():
        return stock_handler(F.linear, (), (x, layer.weight, layer.bias), {})


def measure_training_forward(kind: str, dtype_name: str, tokens: int, repeats: int) -> TrainingForwardRow:
    dtype = DTYPES[dtype_name]
    layer, dense = quantized_layer(kind, dtype)
    x = torch.randn(tokens, IN_FEATURES, dtype=dtype)
    leaf = x.clone().requires_grad_()

    def stock():
        return stock_forward(layer, x)

    operations = [
        Timed("stock", stock),
        Timed("training", lambda: layer(leaf)),
        Timed("F.linear", lambda: F.linear(x, dense)),
    ]
    if dtype == torch.float32:
        x_onednn, dense_onednn = x.to_mkldnn(), dense.to_mkldnn()
        operations.append(Timed("oneDNN", lambda: torch._C._nn.mkldnn_linear(x_onednn, dense_onednn, None)))
    found = medians(interleaved_samples(operations, repeats))
    dense_seconds = min(found.pop("F.linear"), found.pop("oneDNN", float("inf")))
    return TrainingForwardRow(kind, dtype_name, tokens, {**found, "dense": dense_seconds})


def training_forward_report(rows: list[TrainingForwardRow]) -> str:
    header = ["layer", "dtype", "tokens", "stock ms", "training ms", "dense ms", "training × dense", "training × stock"]
    cells, verdicts = [], []
    for row in rows:
        stock, training, dense = (row.medians[name] for name in ("stock", "training", "dense"))
        cells.append(
            [
                row.layer,
                row.dtype,
                str(row.tokens),
                milliseconds(stock),
                milliseconds(training),
                milliseconds(dense),
                times(training / dense),
                times(training / stock),
            ]
        )
        subject = f"{row.layer} {row.dtype}, {row.tokens} tokens"
        verdicts.append(verdict(f"{subject}: training ≤ 1.0× stock", training <= stock, times(training / stock)))
        if row.tokens >= DENSE_TARGET_MIN_TOKENS:
            verdicts.append(
                verdict(f"{subject}: training ≤ 1.0× the dense forward", training <= dense, times(training / dense))
            )
    return markdown_table(header, cells) + "\n\n" + "\n".join(verdicts)
