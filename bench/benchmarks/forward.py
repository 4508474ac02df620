"""Forward time of the int8 layer: with an input that requires grad (qlgrad records a
node), with one that does not, and under ``torch.no_grad()`` (the stock kernel alone)."""

import functools

from . import workloads
from .workloads import ASV_SHAPES, FORWARD_MODES, SCHEMES, SHAPES

workloads.configure_torch()


@functools.cache
def _warm_int8_forwards(shape: str, scheme: str):
    # One workload per process serves all three modes; see backward.py for why it is cached.
    workload = workloads.Workload(SHAPES[shape], scheme)
    forwards = {mode: workloads.int8_forward(workload, mode) for mode in FORWARD_MODES}
    for forward in forwards.values():
        forward()
    return forwards


class Int8Forward:
    params = (list(ASV_SHAPES), list(SCHEMES))
    param_names = ("shape", "scheme")

    def setup(self, shape, scheme):
        self.forwards = _warm_int8_forwards(shape, scheme)

    def time_input_requires_grad(self, shape, scheme):
        self.forwards["input_requires_grad"]()

    def time_constant_input(self, shape, scheme):
        self.forwards["constant_input"]()

    def time_no_grad(self, shape, scheme):
        self.forwards["no_grad"]()
