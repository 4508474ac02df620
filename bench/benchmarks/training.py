"""Training-forward time of torchao's int4 (torch's packing), int8 and group-wise int4 layers (an
input that requires grad: qlgrad's product from the stored weight), 4096x4096, at 16 tokens and a
training sequence's 192. The stock and the dense forwards are timed beside them by
``bench/compare.py`` (torch's int4 kernel takes seconds per call with float32 inputs)."""

import functools

import torch

from . import training_forwards, workloads

workloads.configure_torch()


@functools.cache
def _warm(layer: str, dtype: str, tokens: int):
    quantized, _ = training_forwards.quantized_layer(layer, training_forwards.DTYPES[dtype])
    leaf = torch.randn(tokens, training_forwards.IN_FEATURES, dtype=training_forwards.DTYPES[dtype])
    leaf.requires_grad_()

    def forward():
        return quantized(leaf)

    forward()
    return forward


class TrainingForward:
    params = (list(training_forwards.LAYERS), list(training_forwards.DTYPES), [16, 192])
    param_names = ("layer", "dtype", "tokens")

    def setup(self, layer, dtype, tokens):
        self.forward = _warm(layer, dtype, tokens)

    def time_training_forward(self, layer, dtype, tokens):
        self.forward()
