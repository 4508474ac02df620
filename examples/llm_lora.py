"""LoRA fine-tuning of an int8 or int4 language model on the CPU, with the Hugging Face Trainer.

    python examples/llm_lora.py [--model PATH] [--output DIR] [--steps 200] [--small] [--reentrant]
        [--quantization {quantize_dynamic,torchao-int8,torchao-int4}] [--dtype {float32,bfloat16}] [--bf16]

A small Llama decoder learns a tiny language in float: the numbers 0 to 99, counting up
("41 42 43 ..."). Its projections are then quantized (the embeddings and the output head stay
float), and LoRA adapters beside the quantized projections learn another rule with
``transformers.Trainer``: counting down ("41 40 39 ..."). The Trainer checkpoints the decoder
layers: their activations are not kept but recomputed in the backward pass, through the
quantized layers, and the adapters learn from the straight-through gradients qlgrad gives those
layers. ``--quantization`` chooses how the projections are quantized:

- ``quantize_dynamic`` (the default): int8 weights, one scale per output channel, float32 only;
  the adapters come from ``qlgrad.peft``;
- ``torchao-int8``: torchao's ``Int8DynamicActivationInt8WeightConfig``, int8 weights per row and
  int8 activations per token;
- ``torchao-int4``: torchao's ``PrototypeInt4WeightOnlyConfig``, int4 weights in groups of 128;
  where their input requires grad its layers compute the forward from the packing too (torch's
  int4 CPU matmul is slow at training's row counts, above all in float32).

``--bf16`` trains in mixed precision, the Trainer's ``bf16=True`` (autocast in bfloat16 on the CPU),
a float32 model's way to bfloat16 speed: with ``torchao-int4`` its layers then take bfloat16
products forward and backward where their input requires grad.

The torchao ones quantize the way Hugging Face models are quantized:
``AutoModelForCausalLM.from_pretrained(path, dtype=..., quantization_config=TorchAoConfig(config))``,
in float32 or bfloat16 (``--dtype``), with PEFT's own adapters (``peft.get_peft_model``); with qlgrad
imported the Trainer trains them (transformers alone calls int4 models untrainable).

The example checks, before training, that checkpointing leaves the adapters' gradients exactly
as they are without it, and counts the quantized layers' forward passes while training (two per
step: the second is the recomputation). It prints the eval loss of both rules and greedy
continuations of a few prompts before and after the fine-tune, then saves the adapters
(``save_pretrained``), loads them onto a freshly quantized copy of the base model
(``qlgrad.peft.from_pretrained``, or PEFT's ``PeftModel.from_pretrained`` on a torchao model) and
checks that this gives the trained model's logits exactly.

Everything runs offline: the tokenizer is built here from the language's words, the model from
a ``LlamaConfig``. ``--model PATH`` fine-tunes a local checkpoint instead, skipping the
pre-training: loaded with ``AutoModelForCausalLM`` and ``AutoTokenizer``, it can be any decoder
whose projections are ``nn.Linear`` layers (Llama, Mistral, Qwen, ...).

Needs PEFT, which brings transformers and accelerate (tested with transformers 5.24 and 5.25):
pip install 'qlgrad[peft]'; and torchao for its quantizations: pip install 'qlgrad[torchao]'.
"""

import argparse
import contextlib
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator

import peft
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    PrinterCallback,
    TorchAoConfig,
    Trainer,
    TrainingArguments,
)

import qlgrad.peft
from qlgrad._deprecations import hide_upstream_deprecations
from qlgrad.demo.cli import positive_int

DynamicQuantizedLinear = torch.ao.nn.quantized.dynamic.Linear

NUMBERS = 100  # the language's words: "0" to "99"
WORDS_PER_TEXT = 12
RULES = {"count_up": 1, "count_down": -1}  # the step from one number to the next, modulo NUMBERS
PRETRAINING_RULE, FINE_TUNING_RULE = "count_up", "count_down"
PRETRAINING_BATCH = 32
FINE_TUNING_TEXTS = 2000
EVAL_TEXTS = 64
PROMPTS = ["41", "7", "90"]
GENERATED_WORDS = 6
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def torchao_int8_config():
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    # set_inductor_config=False: quantizing need not change torch.compile's settings for the whole process.
    return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)


def torchao_int4_config():
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=128, set_inductor_config=False)


# --quantization: what the projections become, and the torchao config that makes them so
# (None: quantize_dynamic). torchao is imported only when one of its quantizations is chosen.
QUANTIZATIONS = {
    "quantize_dynamic": ("int8 (quantize_dynamic)", None),
    "torchao-int8": ("int8 (torchao)", torchao_int8_config),
    "torchao-int4": ("int4 (torchao)", torchao_int4_config),
}


def counting_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one token per number, which starts every text with ``<s>``."""
    special = ["<pad>", "<s>", "</s>", "<unk>"]
    vocabulary = {word: index for index, word in enumerate(special + [str(n) for n in range(NUMBERS)])}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def small_llama(tokenizer: PreTrainedTokenizerBase, layers: int) -> LlamaForCausalLM:
    """A freshly initialised float Llama decoder of width 256 over ``tokenizer``'s vocabulary."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def counting_texts(step: int, count: int, generator: torch.Generator) -> list[str]:
    """``count`` texts of ``WORDS_PER_TEXT`` numbers, each ``step`` (modulo ``NUMBERS``) from the one before."""
    starts = torch.randint(NUMBERS, (count, 1), generator=generator)
    numbers = (starts + step * torch.arange(WORDS_PER_TEXT)) % NUMBERS
    return [" ".join(map(str, row)) for row in numbers.tolist()]


def language_modelling_examples(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[dict]:
    """``texts`` tokenized and padded alike, with the labels of the causal language-modelling loss.

    A text's first number is random, so nothing can predict it: its tokens get the label -100,
    which the loss leaves out, as it does the padding.
    """
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for row, text in zip(labels, texts, strict=True):
        row[: len(tokenizer(text.split()[0])["input_ids"])] = -100
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": label}
        for ids, mask, label in zip(batch["input_ids"], batch["attention_mask"], labels, strict=True)
    ]


def stack(examples: list[dict]) -> dict[str, torch.Tensor]:
    """One batch of ``examples``."""
    return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}


def pretrain(model: nn.Module, examples: list[dict], steps: int) -> float:
    """Train all of the float ``model``, ``PRETRAINING_BATCH`` examples a step; returns the last loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        loss = model(**stack(examples[step * PRETRAINING_BATCH : (step + 1) * PRETRAINING_BATCH])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def quantize(float_model: nn.Module) -> nn.Module:
    """An int8 copy of ``float_model``: every ``nn.Linear`` but the output head, one scale per output channel.

    The output head stays float, as int8 recipes for language models usually keep it: its
    rounding errors would go straight into the logits. (``quantize_dynamic`` leaves the
    embeddings float anyway.)
    """
    head = float_model.get_output_embeddings()
    layers = {
        name: torch.ao.quantization.per_channel_dynamic_qconfig
        for name, module in float_model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
    }
    return torch.ao.quantization.quantize_dynamic(float_model.eval(), layers)


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``model``'s quantized linear layers, by name: dynamic quantized ``Linear`` layers, or ``nn.Linear``
    layers whose weight is a torchao tensor (told by its class's module, so that torchao need not be imported)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, DynamicQuantizedLinear)
        or (isinstance(module, nn.Linear) and type(module.weight).__module__.startswith("torchao."))
    }


def quantized_loader(
    args: argparse.Namespace, float_model: nn.Module | None, directory: str
) -> Callable[[], nn.Module]:
    """A function that gives a freshly quantized copy of the base model at each call, as ``args.quantization`` says.

    torchao's quantizations load the base model with ``from_pretrained`` and a ``TorchAoConfig``:
    from ``args.model``, or from ``float_model`` saved to ``directory``. transformers leaves the
    output head float.
    """
    torchao_config = QUANTIZATIONS[args.quantization][1]
    if torchao_config is None:
        return lambda: quantize(float_model)
    path = args.model
    if path is None:
        float_model.save_pretrained(directory)
        path = directory
    dtype = DTYPES[args.dtype]
    return lambda: AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, quantization_config=TorchAoConfig(torchao_config())
    )


@contextlib.contextmanager
def peft_reading_deprecated_flag() -> Iterator[None]:
    """Hide the one warning that wrapping a transformers 5 model in PEFT 0.21's ``PeftModel`` gives.

    ``PeftModel`` reads the model's ``is_gradient_checkpointing``, which transformers deprecates
    (a FutureWarning) for ``is_activation_checkpointing``: nothing a caller can change.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=re.escape("`is_gradient_checkpointing` is deprecated"), category=FutureWarning
        )
        yield


def adapter_gradients(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The gradients of ``batch``'s loss with respect to ``model``'s trainable parameters (its adapters)."""
    model.zero_grad()
    model(**batch).loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return gradients


def check_checkpointing(model: peft.PeftModel, batch: dict[str, torch.Tensor], checkpointing: dict) -> None:
    """Assert that checkpointing the layers of ``model`` gives its adapters exactly the gradients they get without.

    The gradient reaches an adapter through the quantized layers after it in the same decoder layer,
    which checkpointing recomputes in the backward pass, and through those of the layers above.
    """
    model.train()
    # Enabling checkpointing makes the embeddings' output require grad (enable_input_require_grads),
    # and with it the input of the first layer's quantized projections, whose forward may then be a
    # training forward of its own (torch's int4 layers: equal to the stock one up to rounding). The
    # plain run is given the same: the two runs differ in the checkpointing alone.
    model.enable_input_require_grads()
    plain = adapter_gradients(model, batch)
    model.disable_input_require_grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
    checkpointed = adapter_gradients(model, batch)
    model.activation_checkpointing_disable()  # the Trainer enables it again, as its arguments say
    assert plain.keys() == checkpointed.keys()
    assert all(torch.equal(plain[name], checkpointed[name]) for name in plain), "checkpointing changed the gradients"


def continuations(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Greedy continuations of ``PROMPTS``, ``GENERATED_WORDS`` tokens each, as text."""
    model.eval()
    texts = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        generated = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=GENERATED_WORDS,
            do_sample=False,
            use_cache=True,  # the model's config turns the cache off for training
        )
        texts.append(tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True))
    return texts


def pretrained_model(
    args: argparse.Namespace, generator: torch.Generator
) -> tuple[nn.Module | None, PreTrainedTokenizerBase]:
    """The float model and its tokenizer: ``args.model`` loaded, or a small Llama pre-trained here on counting up.

    No float model (None) for ``args.model`` with a torchao quantization, which loads it quantized.
    """
    if args.model:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if tokenizer.pad_token is None:  # many decoders' tokenizers have none; the labels leave padding out
            tokenizer.pad_token = tokenizer.eos_token
        if args.quantization != "quantize_dynamic":
            return None, tokenizer
        # quantize_dynamic quantizes float32 layers only, whatever dtype the checkpoint is stored in.
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32), tokenizer
    tokenizer = counting_tokenizer()
    model = small_llama(tokenizer, args.layers)
    texts = counting_texts(RULES[PRETRAINING_RULE], args.pretraining_steps * PRETRAINING_BATCH, generator)
    started = time.perf_counter()
    loss = pretrain(model, language_modelling_examples(tokenizer, texts), args.pretraining_steps)
    print(
        f"pre-trained a {args.layers}-layer Llama ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M weights) "
        f"on {PRETRAINING_RULE} in float: {args.pretraining_steps} steps in {time.perf_counter() - started:.1f} s, "
        f"loss {loss:.4f}"
    )
    return model, tokenizer


def fine_tune(
    args: argparse.Namespace,
    quantized_model: Callable[[], nn.Module],
    tokenizer: PreTrainedTokenizerBase,
    train_examples: list[dict],
    eval_examples: dict[str, list[dict]],
    output: str,
) -> dict:
    """Train LoRA adapters on a ``quantized_model()`` with the Trainer, save them to ``output`` and reload them."""
    base_model = quantized_model()
    # Every quantized projection, by the last part of its name (q_proj, ..., down_proj on a Llama).
    targets = sorted({name.rsplit(".", 1)[-1] for name in quantized_layers(base_model)})
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM")
    # PEFT's own adapters take torchao's layers; qlgrad.peft's take quantize_dynamic's.
    torchao = QUANTIZATIONS[args.quantization][1] is not None
    get_peft_model = peft.get_peft_model if torchao else qlgrad.peft.get_peft_model
    with peft_reading_deprecated_flag():
        model = get_peft_model(base_model, config)
    print(
        f"quantized {len(quantized_layers(model))} projections to {QUANTIZATIONS[args.quantization][0]} "
        f"in {args.dtype} ({', '.join(targets)}); "
        f"LoRA rank {config.r} beside each: {model.get_nb_trainable_parameters()[0]:,} trainable weights"
    )

    # Non-reentrant checkpointing (PyTorch's recommendation and transformers' default) recomputes
    # a layer within the autograd graph, so the adapters get their gradients whether or not the
    # layer's input requires grad. Reentrant checkpointing runs a backward pass of its own through
    # the recomputed layer, to those of its inputs that require grad only: with the embeddings
    # frozen, their output must be made to, or no gradient would reach any adapter.
    # activation_checkpointing_enable, which the Trainer calls, does that for either kind
    # (enable_input_require_grads). Through the quantized layers both kinds give exactly the
    # gradients of the model without checkpointing, as check_checkpointing asserts.
    checkpointing = {"use_reentrant": args.reentrant}
    # A key/value cache is of no use in training, and with checkpointing transformers turns it off, saying so.
    model.config.use_cache = False
    check_checkpointing(model, stack(train_examples[:8]), checkpointing)

    training = TrainingArguments(
        output_dir=output,
        max_steps=args.steps,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=EVAL_TEXTS,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        activation_checkpointing=True,  # transformers 5.24's and 5.25's name for gradient_checkpointing
        activation_checkpointing_kwargs=checkpointing,
        use_cpu=True,
        logging_steps=max(args.steps // 5, 1),
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=args.seed,
        bf16=args.bf16,
    )
    trainer = Trainer(model=model, args=training, train_dataset=train_examples, eval_dataset=eval_examples)
    trainer.remove_callback(PrinterCallback)  # the losses are printed below, as a table

    before = {"continuations": continuations(model, tokenizer), **trainer.evaluate()}
    # Counted to show checkpointing at work: every quantized layer runs twice a step, once without.
    forwards = []
    layers = quantized_layers(model).values()
    hooks = [layer.register_forward_hook(lambda *_: forwards.append(1)) for layer in layers]
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    for hook in hooks:
        hook.remove()
    after = {"continuations": continuations(model, tokenizer), **trainer.evaluate()}
    quantized_forwards_per_step = len(forwards) / (len(hooks) * args.steps)

    print(
        f"fine-tuned on {FINE_TUNING_RULE} with the Trainer, checkpointing {'' if args.reentrant else 'non-'}reentrant:"
    )
    for log in trainer.state.log_history:
        if "loss" in log:
            print(f"  step {log['step']:>4}  training loss {log['loss']:.4f}")
    print(
        f"  {args.steps} steps in {seconds:.1f} s; every quantized layer ran {quantized_forwards_per_step:g} "
        "forward passes a step (the second recomputed in the backward pass)"
    )

    model.save_pretrained(output)
    from_pretrained = peft.PeftModel.from_pretrained if torchao else qlgrad.peft.from_pretrained
    with peft_reading_deprecated_flag():
        loaded = from_pretrained(quantized_model(), output)
    ids = stack(eval_examples[FINE_TUNING_RULE])["input_ids"]
    # With --bf16 the Trainer leaves the trained model's forward in its autocast region (and its
    # logits in float32): the reloaded model's runs in the same.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        reloaded_logits_equal = torch.equal(loaded.eval()(ids).logits.float(), model.eval()(ids).logits)
    assert reloaded_logits_equal, "the reloaded adapters do not give the trained model's logits"
    return {
        "before": before,
        "after": after,
        "quantized_forwards_per_step": quantized_forwards_per_step,
        "reloaded_logits_equal": reloaded_logits_equal,
    }


def main(argv: list[str] | None = None) -> dict:
    """Pre-train (or load) a model, quantize it, fine-tune adapters with the Trainer, save, reload and compare.

    Returns the eval losses (``eval_<rule>_loss``) and continuations ``before`` and ``after`` the
    fine-tune, the quantized layers' forward passes per layer and training step, and whether the
    reloaded adapters give the trained model's logits exactly.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local causal language model to fine-tune instead of the one built here")
    parser.add_argument("--output", help="where to save the adapters (default: a temporary directory)")
    parser.add_argument("--steps", type=positive_int, default=200, help="fine-tuning steps (default 200)")
    parser.add_argument("--layers", type=positive_int, default=4, help="of the model built here (default 4)")
    parser.add_argument("--pretraining-steps", type=positive_int, default=150, help="of the model built here (150)")
    parser.add_argument("--small", action="store_true", help="--layers 2 --pretraining-steps 60 --steps 60")
    parser.add_argument("--reentrant", action="store_true", help="reentrant checkpointing (default: non-reentrant)")
    parser.add_argument(
        "--threads", type=positive_int, help="intra-op threads (default: 1 for the model built here, all for --model)"
    )
    parser.add_argument(
        "--quantization", choices=QUANTIZATIONS, default="quantize_dynamic", help="(default: quantize_dynamic)"
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="of the quantized model's float parts (default float32)"
    )
    parser.add_argument(
        "--bf16", action="store_true", help="mixed precision: the Trainer's bf16=True (autocast in bfloat16)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quantization == "quantize_dynamic" and args.dtype != "float32":
        parser.error(
            f"--dtype {args.dtype} needs a torchao quantization (--quantization torchao-int8 or torchao-int4): "
            "quantize_dynamic quantizes float32 layers only"
        )
    if args.small:
        args.layers, args.pretraining_steps, args.steps = 2, 60, 60
    hide_upstream_deprecations()

    # The model built here multiplies 256-wide matrices: synchronising threads costs more than
    # they save, and far more when other work shares the cores. A larger model's matrices share well.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or (previous_threads if args.model else 1))
    try:
        torch.manual_seed(args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        float_model, tokenizer = pretrained_model(args, generator)
        fine_tuning = counting_texts(RULES[FINE_TUNING_RULE], FINE_TUNING_TEXTS, generator)
        evaluation = {rule: counting_texts(step, EVAL_TEXTS, generator) for rule, step in RULES.items()}
        with tempfile.TemporaryDirectory() as temporary, tempfile.TemporaryDirectory() as base_directory:
            results = fine_tune(
                args,
                quantized_loader(args, float_model, base_directory),
                tokenizer,
                language_modelling_examples(tokenizer, fine_tuning),
                {rule: language_modelling_examples(tokenizer, texts) for rule, texts in evaluation.items()},
                output=args.output or temporary,
            )
    finally:
        torch.set_num_threads(previous_threads)

    before, after = results["before"], results["after"]
    print(f"\neval loss    {'before':>8} {'after':>8}")
    for rule in RULES:
        print(f"{rule:<12} {before[f'eval_{rule}_loss']:>8.4f} {after[f'eval_{rule}_loss']:>8.4f}")
    print("\ngreedy continuations, before -> after the fine-tune:")
    for prompt, old, new in zip(PROMPTS, before["continuations"], after["continuations"], strict=True):
        print(f"  {prompt:>3} | {old:<22} -> {new}")
    print(
        f"\nadapters saved to {args.output or 'a temporary directory'}; loaded onto a freshly quantized "
        "base model, they give the trained model's logits exactly"
    )
    return results


if __name__ == "__main__":
    main()
