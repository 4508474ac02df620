"""A whole model: the input-gradient backward through a BERT-large-sized stack of int8
layers with qlgrad's default settings, beside the same model with float weights, and the
peak memory of a training step through the int8 one."""

import functools

import qlgrad

from . import workloads
from .workloads import BERT_LARGE

workloads.configure_torch()


@functools.cache
def _warm_model_input_gradient(kind: str):
    workload = workloads.ModelWorkload(BERT_LARGE)
    model = workload.int8_model if kind == "int8" else workload.float_model()
    operation = workloads.model_input_gradient(model, workload)
    operation()  # fills qlgrad's cache (int8) and initializes the GEMMs
    return operation


class ModelBackward:
    """Steady state of training through the model: every layer's entry already cached."""

    params = (["int8", "float"],)
    param_names = ("model",)
    timeout = 600

    def setup(self, kind):
        self.input_gradient = _warm_model_input_gradient(kind)

    def time_input_gradient(self, kind):
        self.input_gradient()


class ModelTrainingStepMemory:
    """One forward and backward through the int8 model from an empty cache: the peak resident
    memory of the process, with the model, its inputs and every cache entry the step fills."""

    timeout = 600

    def setup(self):
        self.workload = workloads.ModelWorkload(BERT_LARGE)
        qlgrad.clear_cache()

    def peakmem_training_step(self):
        x = self.workload.input.clone().requires_grad_()
        self.workload.int8_model(x).backward(self.workload.grad_output)

    def track_cache_bytes_per_int8_weight_byte(self):
        self.peakmem_training_step()
        return qlgrad.cache_info().bytes / self.workload.int8_weight_bytes

    track_cache_bytes_per_int8_weight_byte.unit = "bytes per int8 weight byte"
