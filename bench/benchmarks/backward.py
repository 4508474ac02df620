"""Input-gradient time of the int8 layer: qlgrad in each precision, and the two baselines.

asv re-runs ``setup`` before every timed call. Building a workload takes far longer
than most backward passes, so each process (asv runs one per parameter combination)
builds its operation once, runs it once, and hands the same warm operation to every
call after that.
"""

import functools

import qlgrad

from . import workloads
from .workloads import ASV_SHAPES, PRECISIONS, SCHEMES, SHAPES

workloads.configure_torch()


@functools.cache
def _warm_qlgrad_input_gradient(shape: str, scheme: str, precision: str):
    operation = workloads.qlgrad_input_gradient(workloads.Workload(SHAPES[shape], scheme), precision)
    operation()  # unpacks the layer's weight into the cache and initializes the GEMM
    return operation


@functools.cache
def _warm_float_linear_input_gradient(shape: str):
    # The float layer has no weight scheme; its time does not depend on which one W_deq came from.
    operation = workloads.float_linear_input_gradient(workloads.Workload(SHAPES[shape], "per_tensor"))
    operation()
    return operation


@functools.cache
def _warm_naive_input_gradient(shape: str, scheme: str):
    operation = workloads.naive_input_gradient(workloads.Workload(SHAPES[shape], scheme))
    operation()
    return operation


class QlgradBackward:
    """Steady state: the layer's int8 weight is already in qlgrad's cache."""

    params = (list(ASV_SHAPES), list(SCHEMES), list(PRECISIONS))
    param_names = ("shape", "scheme", "precision")

    def setup(self, shape, scheme, precision):
        self.input_gradient = _warm_qlgrad_input_gradient(shape, scheme, precision)

    def time_input_gradient(self, shape, scheme, precision):
        self.input_gradient()


class QlgradColdBackward:
    """The first backward after the cache was emptied: unpacking and deriving the weight included."""

    params = (list(ASV_SHAPES), list(SCHEMES), list(PRECISIONS))
    param_names = ("shape", "scheme", "precision")
    warmup_time = 0  # a warm-up call would fill the cache this benchmark needs empty
    repeat = (1, 5, 10.0)

    def setup(self, shape, scheme, precision):
        self.input_gradient = _warm_qlgrad_input_gradient(shape, scheme, precision)
        qlgrad.clear_cache()

    def time_first_input_gradient(self, shape, scheme, precision):
        self.input_gradient()


class FloatLinearBackward:
    """The baseline: ``F.linear`` with the float weight ``W_deq``."""

    params = (list(ASV_SHAPES),)
    param_names = ("shape",)

    def setup(self, shape):
        self.input_gradient = _warm_float_linear_input_gradient(shape)

    def time_input_gradient(self, shape):
        self.input_gradient()


class NaiveUnpackBackward:
    """The naive baseline: ``unpack()``, dequantize and matmul on every backward."""

    params = (list(ASV_SHAPES), list(SCHEMES))
    param_names = ("shape", "scheme")

    def setup(self, shape, scheme):
        self.input_gradient = _warm_naive_input_gradient(shape, scheme)

    def time_input_gradient(self, shape, scheme):
        self.input_gradient()
