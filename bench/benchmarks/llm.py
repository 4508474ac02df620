"""One LoRA training step of a small decoder language model, as ``bench/llm.py`` builds and trains
it (its "small" size, 4 layers of width 512, 16M weights; 256 tokens): float, through
``quantize_dynamic``'s int8 layers (qlgrad fp32) and through torchao's int8 layers; and the peak
memory of building the model and its first step."""

import functools

from . import workloads
from .decoder import SIZES, WARMUP_STEPS, TrainingRun, synthetic_batches
from .decoder_modes import MODES as LLM_MODES

workloads.configure_torch()

MODES = ["float", "qd-fp32", "torchao-int8"]  # names of bench/llm.py's modes
ARCH, SIZE, TOKENS = "qwen2", "small", 256


def _training_run(mode: str) -> TrainingRun:
    # Builds the decoder, importing transformers and PEFT on first use: the processes of the other
    # benchmarks, forked from the one that imports this suite, do not carry them in their peak memory.
    return TrainingRun(LLM_MODES[mode], ARCH, SIZES[SIZE])


@functools.cache
def _batch():
    return synthetic_batches(SIZES[SIZE].vocab, 1, TOKENS, 1)[0]


@functools.cache
def _warm_run(mode: str):
    run = _training_run(mode)
    for _ in range(WARMUP_STEPS):  # fills qlgrad's cache, creates AdamW's state
        run.step(_batch())
    return run


class LlmTrainingStep:
    """Steady state: forward, backward and AdamW step over the adapters."""

    params = (MODES,)
    param_names = ("mode",)
    timeout = 300

    def setup(self, mode):
        self.run = _warm_run(mode)

    def time_training_step(self, mode):
        self.run.step(_batch())


class LlmTrainingStepMemory:
    """asv runs each mode in its own process and reports its peak resident memory: the imports, the
    float model built and quantized, then its first training step (qlgrad's cache filled, AdamW's
    state created)."""

    params = (MODES,)
    param_names = ("mode",)
    timeout = 300

    def setup(self, mode):
        self.run = _training_run(mode)

    def peakmem_training_step(self, mode):
        self.run.step(_batch())
