"""Memory of the int8 layer's backward in each precision: the peak of one training step,
and the bytes qlgrad's weight cache holds per weight element."""

import qlgrad

from . import workloads
from .workloads import ASV_SHAPES, PRECISIONS, SCHEMES, SHAPES

workloads.configure_torch()


class TrainingStepMemory:
    """asv runs each parameter combination in its own process and reports its peak resident
    memory, so one step from an empty cache is measured: the peak a training run reaches,
    with the cache entry being unpacked (transient copies included)."""

    params = (list(ASV_SHAPES), list(SCHEMES), list(PRECISIONS))
    param_names = ("shape", "scheme", "precision")

    def setup(self, shape, scheme, precision):
        self.step = workloads.training_step(workloads.Workload(SHAPES[shape], scheme), precision)
        qlgrad.clear_cache()

    def peakmem_training_step(self, shape, scheme, precision):
        self.step()


class CacheFootprint:
    """The one cache entry of a layer, which every precision reads."""

    params = (list(ASV_SHAPES), list(SCHEMES))
    param_names = ("shape", "scheme")
    unit = "bytes per weight element"

    def setup(self, shape, scheme):
        self.workload = workloads.Workload(SHAPES[shape], scheme)

    def track_cache_bytes_per_weight_element(self, shape, scheme):
        return workloads.cache_bytes_per_weight_element(self.workload)
