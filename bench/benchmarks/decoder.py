"""The decoder language model of ``bench/llm.py`` and the suite's ``llm.py``: its sizes, its synthetic
text, and a LoRA training run over it as one of ``decoder_modes``' modes quantizes it.

A Llama- or Qwen2-shaped decoder is built from a ``transformers`` config with random weights (no
download), and LoRA adapters (rank 16, alpha 32) are put on all seven projections of every layer.

transformers and PEFT are imported on first use (``import_training_libraries``), never when this
module is: asv imports every module of this folder into the server its benchmark processes are
forked from, which would otherwise carry them in every process's peak memory. No asv benchmark is
defined here.
"""

import contextlib
import importlib
import warnings
from dataclasses import dataclass

import torch
from torch import nn

import qlgrad

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANK, LORA_ALPHA = 16, 32
LEARNING_RATE = 5e-3
SEED = 0
WARMUP_STEPS = 2  # left out of the time per step: the first steps fill caches and create AdamW's state

# Architecture: (config class, model class) in transformers. Qwen2 adds biases to q, k and v.
ARCHS = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}


def import_training_libraries() -> None:
    """Import transformers, PEFT and qlgrad's PEFT support, which building and adapting the decoder need."""
    for name in ("transformers", "peft", "qlgrad.peft"):
        importlib.import_module(name)


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


def build_decoder(arch: str, size: Size) -> nn.Module:
    """A float32 decoder of ``arch`` and ``size`` with transformers' random initialisation."""
    import transformers

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


def lora_config():
    import peft

    return peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=list(PROJECTIONS))


class TrainingRun:
    """The decoder as ``mode`` (a ``decoder_modes.Mode``) quantizes it, with LoRA adapters on its
    projections and AdamW over them."""

    def __init__(self, mode, arch: str, size: Size, seed: int = SEED, learning_rate: float = LEARNING_RATE):
        if mode.qlgrad_adapters:
            from qlgrad.peft import get_peft_model
        else:
            from peft import get_peft_model
        self.mode = mode
        torch.manual_seed(seed)
        model = build_decoder(arch, size)
        if mode.bfloat16:
            model.to(torch.bfloat16)
        if mode.quantize is not None:
            mode.quantize(model)
        torch.manual_seed(seed + 1)  # the same adapters in every mode, whatever quantizing drew
        with warnings.catch_warnings():
            # PEFT's torchao layers warn that merging would need torchao's re-quantization (nothing is
            # merged here), and PEFT asks transformers a question under a deprecated name.
            warnings.filterwarnings("ignore", "TorchaoLoraLinear was instantiated without", UserWarning)
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            self.peft_model = get_peft_model(model, lora_config())
        # The transformers model with the adapters in it; PEFT's wrapper adds nothing to a training step.
        self.model = self.peft_model.get_base_model().train()
        adapters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.AdamW(adapters, lr=learning_rate)
        self.forward = self.model
        if mode.compiled:
            # Inductor's FX graph cache cannot hash the packed params' quantized weight (docs/integrations.md,
            # "torch.compile"); off until it can.
            torch._inductor.config.fx_graph_cache = False
            self.forward = torch.compile(self.model, fullgraph=True)

    def step(self, input_ids: torch.Tensor) -> float:
        """Forward, backward and optimizer step on one batch; returns its loss."""
        chosen = self.mode.precision
        # The precision the forward records; none chosen, the gradient's dtype decides.
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.mode.autocast)
        with qlgrad.backward_precision(chosen) if chosen else contextlib.nullcontext(), autocast:
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
