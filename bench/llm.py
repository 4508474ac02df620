"""LoRA fine-tuning steps of a decoder language model, on every quantization path side by side.

A Llama- or Qwen2-shaped decoder is built from a ``transformers`` config with random weights (no
download), and LoRA adapters (rank 16, alpha 32) are put on all seven projections of every layer
(q, k, v, o, gate, up, down). Each mode quantizes those projections its own way, or not at all;
the embeddings, the norms and ``lm_head`` stay float32 in every mode. All modes train from the
same weights, adapters and synthetic batches with AdamW, so their losses differ by what their
quantization and their backward change, and nothing else.

Each mode runs in a process of its own (this script, started again with ``--mode``), so that what
one mode leaves in memory, in the allocator or in qlgrad's cache never reaches the next; the child
prints one JSON line, which the parent collects into a markdown table with ratios against
``float``, and which targets held on this run. It only reports and never fails on a target.

    python bench/llm.py [--arch qwen2] [--size 150m] [--modes float,qd-fp32] [--steps 8] [--json results.json]
"""

import argparse
import ctypes
import gc
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import peft
import torch
import transformers
from torch import nn

import qlgrad
import qlgrad.peft
import qlgrad.reference
from benchmarks import workloads
from compare import cpu_description, cpu_wait_microseconds, milliseconds, relative_spread, resident_bytes, times
from qlgrad._deprecations import hide_upstream_deprecations

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANK, LORA_ALPHA = 16, 32
LEARNING_RATE = 5e-3
SEED = 0
WARMUP_STEPS = 2  # left out of the time per step: the first steps fill caches and create AdamW's state
BASELINE = "float"
# The child's result line on stdout starts with this, whatever else libraries print there.
RESULT_PREFIX = "llm.py result: "


@dataclass(frozen=True)
class Size:
    """The shape of the decoder; the same for every architecture."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def projection_weights(self) -> int:
        """Weight elements of the seven projections of every layer: what each mode quantizes."""
        kv_width = self.kv_heads * self.hidden // self.heads
        return self.layers * (
            2 * self.hidden * self.hidden + 2 * self.hidden * kv_width + 3 * self.hidden * self.intermediate
        )

    @property
    def weights(self) -> int:
        """The projections, the embeddings and the (untied) ``lm_head``; norms and biases add under 0.1%."""
        return self.projection_weights + 2 * self.vocab * self.hidden

    def describe(self) -> str:
        return (
            f"{self.layers} layers, hidden {self.hidden}, intermediate {self.intermediate}, {self.heads} heads "
            f"({self.kv_heads} for keys and values), vocabulary {self.vocab}: {self.weights / 1e6:.0f}M weights, "
            f"{self.projection_weights / 1e6:.0f}M of them in the projections"
        )


SIZES = {
    "tiny": Size(layers=2, hidden=128, intermediate=384, heads=4, kv_heads=2, vocab=512),  # tests
    "small": Size(layers=4, hidden=512, intermediate=1536, heads=8, kv_heads=2, vocab=4096),  # the asv suite
    # Qwen2-0.5B's layer with a third of its layers and a short vocabulary.
    "150m": Size(layers=8, hidden=896, intermediate=4864, heads=14, kv_heads=2, vocab=12000),
    # Qwen2-0.5B's 24 layers, with a 32k vocabulary.
    "400m": Size(layers=24, hidden=896, intermediate=4864, heads=14, kv_heads=2, vocab=32000),
    # Llama-3.2-1B's layers, with a 32k vocabulary.
    "1b": Size(layers=16, hidden=2048, intermediate=8192, heads=32, kv_heads=8, vocab=32000),
}
DEFAULT_SIZE = "150m"

# Architecture: (config class, model class) in transformers. Qwen2 adds biases to q, k and v.
ARCHS = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}


def build_decoder(arch: str, size: Size) -> nn.Module:
    """A float32 decoder of ``arch`` and ``size`` with transformers' random initialisation."""
    config_name, model_name = ARCHS[arch]
    config = getattr(transformers, config_name)(
        num_hidden_layers=size.layers,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        vocab_size=size.vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    return getattr(transformers, model_name)(config)


def projections(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, name, layer) for every projection of ``model``, before adapters are added."""
    return [
        (parent, name, layer)
        for parent in model.modules()
        for name, layer in parent.named_children()
        if name in PROJECTIONS
    ]


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
    choice), computing in float32."""
    import bitsandbytes as bnb

    for parent, name, layer in projections(model):
        quantized = bnb.nn.Linear4bit(
            layer.in_features, layer.out_features, layer.bias is not None, compute_dtype=torch.float32
        )
        quantized.weight = bnb.nn.Params4bit(
            layer.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True, module=quantized
        ).to("cpu")
        quantized.bias = layer.bias
        setattr(parent, name, quantized)
    model.is_loaded_in_4bit = True


# ---- The float64 straight-through reference ------------------------------------------------


class _StraightThroughFloat64(torch.autograd.Function):
    """The quantized layer's own forward, on an input that needs no grad (so nothing of qlgrad's
    runs), and the input gradient ``grad_output @ W_deq`` in float64."""

    @staticmethod
    def forward(ctx, x, stock_forward, weight):
        ctx.weight = weight
        return stock_forward(x)

    @staticmethod
    def backward(ctx, grad_output):
        return (grad_output.double() @ ctx.weight).to(grad_output.dtype), None, None


def float64_dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """``W_deq`` of a quantized projection in float64, as its own dequantization gives it."""
    if isinstance(layer, torch.ao.nn.quantized.dynamic.Linear):
        return qlgrad.reference.float64_weight(layer._packed_params._packed_params)
    return layer.weight.dequantize().double()  # torchao's subclasses


def with_float64_straight_through(model: nn.Module) -> None:
    """Every quantized projection of ``model`` gets the float64 straight-through backward.

    The dequantized weight is taken once per layer (8 bytes per weight element, held for the run)
    and the layer keeps its type, so PEFT adapts it exactly as it adapts the unwrapped layer.
    """
    for _, _, layer in projections(model):
        weight = float64_dequantized_weight(layer)
        layer.forward = lambda x, stock=layer.forward, weight=weight: _StraightThroughFloat64.apply(x, stock, weight)


# ---- Modes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """How one row's model is quantized, adapted and differentiated."""

    backward: str  # what computes the input gradient of the projections, for the table
    quantize: Callable[[nn.Module], None] | None = None
    get_peft_model: Callable = peft.get_peft_model
    precision: str = "fp32"  # qlgrad's backward precision during the forward (where qlgrad differentiates)
    float64_reference: bool = False
    compiled: bool = False
    requires: str | None = None  # a package the mode needs beyond this project's own
    reference: str | None = None  # the float64 straight-through mode whose loss this one's is compared with


MODES = {
    "float": Mode("float autograd"),
    **{
        f"qd-{precision}": Mode(
            f"qlgrad {precision}",
            quantize_dynamic_int8,
            qlgrad.peft.get_peft_model,
            precision=precision,
            reference="qd-ste64",
        )
        for precision in qlgrad.PRECISIONS
    },
    "qd-ste64": Mode(
        "float64 straight-through", quantize_dynamic_int8, qlgrad.peft.get_peft_model, float64_reference=True
    ),
    "qd-fp32-compiled": Mode(
        "qlgrad fp32, torch.compile",
        quantize_dynamic_int8,
        qlgrad.peft.get_peft_model,
        compiled=True,
        reference="qd-ste64",
    ),
    "torchao-int8": Mode("qlgrad fp32", torchao_int8, requires="torchao", reference="torchao-int8-ste64"),
    "torchao-int8-ste64": Mode("float64 straight-through", torchao_int8, float64_reference=True, requires="torchao"),
    "torchao-int4": Mode("qlgrad fp32", torchao_int4, requires="torchao", reference="torchao-int4-ste64"),
    "torchao-int4-ste64": Mode("float64 straight-through", torchao_int4, float64_reference=True, requires="torchao"),
    "bnb-8bit": Mode("bitsandbytes", bitsandbytes_8bit, requires="bitsandbytes"),
    "bnb-4bit": Mode("bitsandbytes", bitsandbytes_4bit, requires="bitsandbytes"),
}


def lora_config() -> peft.LoraConfig:
    return peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=list(PROJECTIONS))


class TrainingRun:
    """The decoder as ``mode`` quantizes it, with LoRA adapters on its projections and AdamW over them."""

    def __init__(self, mode: Mode, arch: str, size: Size, seed: int = SEED, learning_rate: float = LEARNING_RATE):
        self.mode = mode
        torch.manual_seed(seed)
        model = build_decoder(arch, size)
        if mode.quantize is not None:
            mode.quantize(model)
        if mode.float64_reference:
            with_float64_straight_through(model)
        torch.manual_seed(seed + 1)  # the same adapters in every mode, whatever quantizing drew
        with warnings.catch_warnings():
            # PEFT's torchao layers warn that merging would need torchao's re-quantization (nothing is
            # merged here), and PEFT asks transformers a question under a deprecated name.
            warnings.filterwarnings("ignore", "TorchaoLoraLinear was instantiated without", UserWarning)
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            self.peft_model = mode.get_peft_model(model, lora_config())
        # The transformers model with the adapters in it; PEFT's wrapper adds nothing to a training step.
        self.model = self.peft_model.get_base_model().train()
        adapters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.AdamW(adapters, lr=learning_rate)
        self.forward = self.model
        if mode.compiled:
            # Inductor's FX graph cache cannot hash the packed params' quantized weight (README,
            # "torch.compile"); off until it can.
            torch._inductor.config.fx_graph_cache = False
            self.forward = torch.compile(self.model, fullgraph=True)

    def step(self, input_ids: torch.Tensor) -> float:
        """Forward, backward and optimizer step on one batch; returns its loss."""
        with qlgrad.backward_precision(self.mode.precision):  # the precision the forward records
            loss = self.forward(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def loss(self, input_ids: torch.Tensor) -> float:
        """The loss on ``input_ids``, without training."""
        with torch.no_grad():
            return self.model(input_ids=input_ids, labels=input_ids).loss.item()

    def bytes_beside_projections(self) -> int:
        """Bytes of every plain tensor of the model but the projections' weights: embeddings,
        norms, ``lm_head``, the adapters."""
        tensors = [*self.model.named_parameters(), *self.model.named_buffers()]
        return sum(tensor.nbytes for name, tensor in tensors if ".base_layer." not in name)


# ---- Data ----------------------------------------------------------------------------------

ALPHABET = 256  # tokens the synthetic text uses
FOLLOW_PROBABILITY = 0.75


def synthetic_batches(vocab: int, batch: int, tokens: int, count: int, seed: int = SEED) -> list[torch.Tensor]:
    """``count`` batches of token ids ``[batch, tokens]`` from one fixed random bigram chain.

    The chain runs over an alphabet of up to 256 of the vocabulary's tokens: each token is followed
    by its own successor with probability 3/4, otherwise by any token of the alphabet. A model
    learns first which tokens occur at all, then their successors, so the loss keeps falling over
    the first steps, and modes whose gradients differ end at different losses.
    """
    generator = torch.Generator().manual_seed(seed)
    alphabet = torch.randperm(vocab, generator=generator)[: min(ALPHABET, vocab)]
    successor = torch.randint(len(alphabet), (len(alphabet),), generator=generator)

    def one_batch() -> torch.Tensor:
        follows = torch.rand(batch, tokens, generator=generator) < FOLLOW_PROBABILITY
        jumps = torch.randint(len(alphabet), (batch, tokens), generator=generator)
        positions = jumps.clone()
        for token in range(1, tokens):
            positions[:, token] = torch.where(follows[:, token], successor[positions[:, token - 1]], jumps[:, token])
        return alphabet[positions]

    return [one_batch() for _ in range(count)]


# ---- Memory ----------------------------------------------------------------------------------

_LIBC = ctypes.CDLL("libc.so.6")


def trimmed_resident_bytes() -> int:
    """The process's resident memory, once the garbage collector and glibc have returned what they can."""
    gc.collect()
    _LIBC.malloc_trim(0)
    return resident_bytes()


def reset_peak_resident_bytes() -> bool:
    """Make the kernel's high-water mark of resident memory (VmHWM) the current RSS; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_resident_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


# ---- One mode, in this process ---------------------------------------------------------------


def measure(name: str, arguments: argparse.Namespace) -> dict:
    """Build and train one mode; every figure of its row."""
    mode = MODES[name]
    if mode.requires is not None:
        if importlib.util.find_spec(mode.requires) is None:
            return {"mode": name, "skipped": f"{mode.requires} not installed"}
        importlib.import_module(mode.requires)  # before the baseline: importing is not the model's memory
    if mode.compiled:
        importlib.import_module("torch._inductor.compile_fx")  # the compiler's own modules, likewise
    size = SIZES[arguments.size]
    batches = synthetic_batches(size.vocab, arguments.batch, arguments.tokens, arguments.steps + 1)
    held_out = batches.pop()
    baseline = trimmed_resident_bytes()

    run = TrainingRun(mode, arguments.arch, size)
    model_bytes = trimmed_resident_bytes() - baseline
    peak_known = reset_peak_resident_bytes()
    seconds, losses = [], []
    warmup = min(WARMUP_STEPS, arguments.steps - 1)
    for index, input_ids in enumerate(batches):
        if index == warmup:
            wait_before, timed_start = cpu_wait_microseconds(), time.perf_counter()
        start = time.perf_counter()
        losses.append(run.step(input_ids))
        seconds.append(time.perf_counter() - start)
    wait_after, timed = cpu_wait_microseconds(), time.perf_counter() - timed_start
    peak = peak_resident_bytes() - baseline if peak_known else None
    after_bytes = trimmed_resident_bytes() - baseline
    elements = size.projection_weights
    beside = run.bytes_beside_projections()
    cache_bytes = qlgrad.cache_info().bytes
    return {
        "mode": name,
        "backward": mode.backward,
        "seconds_per_step": statistics.median(seconds[warmup:]),
        "step_seconds": seconds,
        "spread": None if len(seconds) - warmup < 2 else relative_spread(seconds[warmup:]),
        "cpu_wait": None if wait_before is None else (wait_after - wait_before) / 1e6 / timed,
        "model_bytes": model_bytes,
        "after_steps_bytes": after_bytes,
        "peak_step_bytes": peak,
        "training_losses": losses,
        "loss": run.loss(held_out),
        "cache_bytes_per_weight": cache_bytes / elements,
        # What the quantized projections hold once trained: the model's memory but its plain
        # tensors, plus qlgrad's cache.
        "held_bytes_per_weight": (model_bytes - beside + cache_bytes) / elements,
    }


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def run_child(arguments: argparse.Namespace) -> None:
    torch.set_num_threads(arguments.threads)
    hide_upstream_deprecations()
    try:
        result = measure(arguments.mode, arguments)
    except Exception as error:  # noqa: BLE001 - a mode that fails becomes its row
        result = {"mode": arguments.mode, "failed": first_line(error)}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---- Every mode, each in a child process -----------------------------------------------------


def run_mode(name: str, arguments: argparse.Namespace) -> dict:
    """One mode's row, from a child process running this script with ``--mode``."""
    command = [sys.executable, os.path.abspath(__file__), "--mode", name, *shared_arguments(arguments)]
    child = subprocess.run(command, capture_output=True, text=True)
    for line in child.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line.removeprefix(RESULT_PREFIX))
    # The child died before it could report (killed, or a crash in native code).
    last_words = child.stderr.strip().splitlines() or ["no output"]
    return {"mode": name, "failed": f"exit status {child.returncode}: {last_words[-1]}"}


def shared_arguments(arguments: argparse.Namespace) -> list[str]:
    """The options a child needs to build and train the same model on the same data."""
    return [
        *("--arch", arguments.arch, "--size", arguments.size),
        *("--tokens", str(arguments.tokens), "--batch", str(arguments.batch)),
        *("--steps", str(arguments.steps), "--threads", str(arguments.threads)),
    ]


def measured(row: dict | None) -> bool:
    return row is not None and "failed" not in row and "skipped" not in row


def mebibytes(nbytes: float | None) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**20:.0f}"


def with_ratio(text: str, value: float | None, baseline: float | None) -> str:
    """``text``, and in brackets ``value`` over ``baseline`` where both are known."""
    if value is None or not baseline:
        return text
    return f"{text} ({times(value / baseline)})"


def loss_difference(rows: dict[str, dict], name: str) -> float | None:
    """The relative difference of ``name``'s loss from its float64 straight-through reference's."""
    reference = MODES[name].reference
    if reference is None or not measured(rows.get(name)) or not measured(rows.get(reference)):
        return None
    return rows[name]["loss"] / rows[reference]["loss"] - 1


def markdown_table(rows: dict[str, dict], steps: int) -> str:
    header = [
        "mode",
        "backward",
        f"ms per step (× {BASELINE})",
        f"model MiB (× {BASELINE})",
        f"after steps MiB (× {BASELINE})",
        f"peak MiB (× {BASELINE})",
        f"loss after {steps} steps",
        "loss vs float64 straight-through",
        "cache B/weight",
        "held B/weight",
        "spread",
        "CPU wait",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    baseline = rows.get(BASELINE) if measured(rows.get(BASELINE)) else {}
    for name, row in rows.items():
        if not measured(row):
            outcome = f"failed: {row['failed']}" if "failed" in row else f"skipped: {row['skipped']}"
            outcome = outcome.replace("|", "\\|")  # an error message must not end the cell
            lines.append("| " + " | ".join([name, outcome] + ["–"] * (len(header) - 2)) + " |")
            continue
        difference = loss_difference(rows, name)
        is_reference = name in {mode.reference for mode in MODES.values()}
        cells = [
            name,
            row["backward"],
            with_ratio(
                milliseconds(row["seconds_per_step"]), row["seconds_per_step"], baseline.get("seconds_per_step")
            ),
            *(
                with_ratio(mebibytes(row[key]), row[key], baseline.get(key))
                for key in ("model_bytes", "after_steps_bytes", "peak_step_bytes")
            ),
            f"{row['loss']:.4f}",
            "reference" if is_reference else "–" if difference is None else f"{difference:+.2%}",
            f"{row['cache_bytes_per_weight']:.2f}",
            f"{row['held_bytes_per_weight']:.2f}",
            "–" if row["spread"] is None else f"{row['spread']:.0%}",
            "–" if row["cpu_wait"] is None else f"{row['cpu_wait']:.0%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """A goal: ``value(rows)`` at most ``limit``; the rows it needs."""

    description: str
    needs: tuple[str, ...]
    value: Callable[[dict[str, dict]], float]
    limit: float
    shown: Callable[[float], str] = times


def _ratio(name: str, against: str, key: str) -> Callable[[dict[str, dict]], float]:
    return lambda rows: rows[name][key] / rows[against][key]


def _loss_gap(name: str) -> Callable[[dict[str, dict]], float]:
    return lambda rows: abs(loss_difference(rows, name))


def _time_target(name: str, limit: float) -> Target:
    return Target(
        f"{name} time per step ≤ {limit}× {BASELINE}'s",
        (name, BASELINE),
        _ratio(name, BASELINE, "seconds_per_step"),
        limit,
    )


def _memory_target(name: str, limit: float) -> Target:
    return Target(
        f"{name} model memory ≤ {limit}× {BASELINE}'s", (name, BASELINE), _ratio(name, BASELINE, "model_bytes"), limit
    )


def _loss_target(name: str, limit: float) -> Target:
    reference = MODES[name].reference
    return Target(
        f"{name} loss within {limit:.0%} of {reference}'s", (name, reference), _loss_gap(name), limit, "{:.2%}".format
    )


TARGETS = (
    _time_target("qd-fp32", 0.6),
    _time_target("qd-bf16", 0.45),
    _time_target("torchao-int8", 0.6),
    _loss_target("qd-fp32", 0.01),
    _loss_target("qd-bf16", 0.02),
    _memory_target("qd-fp32", 0.45),
    _memory_target("torchao-int8", 0.4),
    _memory_target("torchao-int4", 0.4),
    Target(
        "qd-fp32 bytes held per projection weight after training (packed weight and qlgrad's cache) ≤ 1.1",
        ("qd-fp32",),
        lambda rows: rows["qd-fp32"]["held_bytes_per_weight"],
        1.1,
        "{:.2f}".format,
    ),
    Target(
        "qd-fp32-compiled time per step ≤ qd-fp32's (eager)",
        ("qd-fp32-compiled", "qd-fp32"),
        _ratio("qd-fp32-compiled", "qd-fp32", "seconds_per_step"),
        1.0,
    ),
)


def target_report(rows: dict[str, dict]) -> str:
    lines = []
    for target in TARGETS:
        unmeasured = [name for name in target.needs if not measured(rows.get(name))]
        if unmeasured:
            lines.append(f"- {target.description}: not measured (no result for {', '.join(unmeasured)})")
            continue
        value = target.value(rows)
        lines.append(
            f"- {target.description}: {'HOLDS' if value <= target.limit else 'MISSED'} ({target.shown(value)})"
        )
    return "\n".join(lines)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=list(ARCHS), default="qwen2", help="decoder architecture (default qwen2)")
    parser.add_argument(
        "--size",
        choices=list(SIZES),
        default=DEFAULT_SIZE,
        help=f"decoder size (default {DEFAULT_SIZE}); "
        + "; ".join(f"{name}: {size.describe()}" for name, size in SIZES.items()),
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated modes to run, in this order (default all: {','.join(MODES)})",
    )
    parser.add_argument("--tokens", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    parser.add_argument(
        "--steps", type=int, default=8, help=f"training steps (default 8); the first {WARMUP_STEPS} are not timed"
    )
    parser.add_argument(
        "--threads", type=int, default=workloads.THREADS, help=f"torch threads (default {workloads.THREADS})"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results to this file")
    parser.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)  # the child's one mode
    arguments = parser.parse_args()
    arguments.modes = arguments.modes.split(",")
    unknown = [name for name in arguments.modes if name not in MODES]
    if unknown:
        parser.error(f"unknown modes {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if arguments.tokens < 2:
        parser.error("--tokens must be at least 2 (each token is the label of the one before)")
    for option in ("batch", "steps", "threads"):
        if getattr(arguments, option) < 1:
            parser.error(f"--{option} must be at least 1")
    return arguments


def main() -> None:
    arguments = parse_arguments()
    if arguments.mode is not None:
        run_child(arguments)
        return
    rows = {}
    for name in arguments.modes:
        start = time.perf_counter()
        rows[name] = run_mode(name, arguments)
        outcome = "done" if measured(rows[name]) else rows[name].get("failed") or rows[name].get("skipped")
        print(f"{name}: {outcome} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    size = SIZES[arguments.size]
    warmup = min(WARMUP_STEPS, arguments.steps - 1)
    print(f"qlgrad {qlgrad.__version__}, torch {torch.__version__}, {arguments.threads} threads")
    print(cpu_description())
    print(
        f"{arguments.arch} {arguments.size}: {size.describe()}. Batch {arguments.batch} × {arguments.tokens} "
        f"tokens; LoRA rank {LORA_RANK}, alpha {LORA_ALPHA} on {', '.join(PROJECTIONS)}; AdamW, learning rate "
        f"{LEARNING_RATE:g}; {arguments.steps} steps."
    )
    print(
        f"Each mode ran in a process of its own. ms per step: median wall-clock time of forward, backward and "
        f"optimizer step, the first {warmup} steps left out; spread: their interquartile range over the median; "
        "CPU wait: the share of that time during which some task waited for a CPU (other processes disturbed the "
        "row). Memory above the process's after its imports, each reading after gc and malloc_trim: model, once "
        "built, quantized and adapted; after steps, with AdamW's state and qlgrad's cache; peak: the kernel's "
        "high-water mark of resident memory (VmHWM, reset once the model was built) over all steps. Loss: on a "
        "held-out batch after the last step; beside it, its difference from the same quantization's float64 "
        "straight-through backward. B/weight: bytes per weight element of the projections; held: the model's "
        "memory but its plain float tensors (embeddings, norms, lm_head, adapters), plus qlgrad's cache.\n",
    )
    print(markdown_table(rows, arguments.steps))
    print("\nTargets on this run:")
    print(target_report(rows), flush=True)
    if arguments.json:
        with open(arguments.json, "w") as output:
            json.dump(
                {
                    "arch": arguments.arch,
                    "size": arguments.size,
                    "shape": asdict(size),
                    **{option: getattr(arguments, option) for option in ("tokens", "batch", "steps", "threads")},
                    "torch": torch.__version__,
                    "qlgrad": qlgrad.__version__,
                    "cpu": cpu_description(),
                    "rows": list(rows.values()),
                },
                output,
                indent=2,
            )


if __name__ == "__main__":
    main()
