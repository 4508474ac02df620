"""The demo's run and command line: ``python -m qlgrad.demo`` and ``qlgrad-demo``."""

import argparse
import copy
import io
import subprocess
import sys
import time
from dataclasses import dataclass

import peft
import torch
import torch.nn.functional as F
from torch import nn

import qlgrad

from .._deprecations import hide_upstream_deprecations
from ..reference import with_reference_layers
from . import residual_mlp
from .data_parallel import run_data_parallel
from .digits import (
    BATCH_SIZE,
    HIDDEN_FEATURES,
    SHIFT_DEGREES,
    SHIFT_NOISE,
    accuracy,
    load_digit_tasks,
    one_intra_op_thread,
    pretrained_digit_classifier,
)
from .lora import adapted_models, fine_tune_adapters

DATA_PARALLEL_TIMEOUT = 300.0


@dataclass
class Agreement:
    """How closely an input gradient matches the reference: cosine, and norm ratio (gradient / reference)."""

    cosine: float
    norm_ratio: float

    def __str__(self) -> str:
        return f"cosine {self.cosine:+.5f}   norm ratio {self.norm_ratio:.4f}"


@dataclass
class DemoResult:
    """What the demo measured. Dictionaries are keyed by base model, ``"int8"`` and ``"float"``."""

    shifted_accuracy_before: dict[str, float]
    shifted_accuracy_after: dict[str, float]
    seconds_per_step: dict[str, float]
    gradient_agreement: Agreement


def input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient of ``model``'s cross-entropy on ``images`` with respect to ``images``."""
    images = images.clone().requires_grad_()
    F.cross_entropy(model(images), labels).backward()
    return images.grad


def agreement(gradient: torch.Tensor, reference: torch.Tensor) -> Agreement:
    """``gradient`` compared with ``reference``."""
    gradient, reference = gradient.flatten().double(), reference.flatten().double()
    return Agreement(
        cosine=F.cosine_similarity(gradient, reference, dim=0).item(),
        norm_ratio=(gradient.norm() / reference.norm()).item(),
    )


def stock_residual_mlp_gradient(seed: int) -> torch.Tensor:
    """The residual MLP's input gradient as stock PyTorch computes it, from a process without qlgrad."""
    command = [sys.executable, "-W", "ignore", residual_mlp.__file__, str(seed)]
    output = subprocess.run(command, check=True, capture_output=True, timeout=120).stdout
    return torch.load(io.BytesIO(output))


def _percent(fraction: float) -> str:
    return f"{100 * fraction:5.1f}%"


def run(options: argparse.Namespace) -> DemoResult:
    """The whole demo, printing as it goes (progress bars on stderr); returns the measurements."""
    started = time.perf_counter()
    with one_intra_op_thread():
        print(f"qlgrad {qlgrad.__version__}, torch {torch.__version__}")
        print("\n1. Input gradient of a 4-block residual MLP quantized with quantize_dynamic,")
        print("   against the straight-through reference grad_y @ W_deq (float64):")
        reference = residual_mlp.input_gradient(options.seed, wrap=with_reference_layers)
        print(f"   stock PyTorch   {agreement(stock_residual_mlp_gradient(options.seed), reference)}")
        print(f"   with qlgrad     {agreement(residual_mlp.input_gradient(options.seed), reference)}")

        print(f"\n2. Handwritten digits (8x8, scikit-learn), MLP 64-{HIDDEN_FEATURES}-{HIDDEN_FEATURES}-10:")
        tasks = load_digit_tasks(options.seed)
        float_model = pretrained_digit_classifier(tasks, options.seed)
        # The adapters start at zero: until trained, these are the plain int8 and float models.
        models = adapted_models(float_model, options.rank, options.seed)
        before = {}
        for name, model in models.items():
            normal = accuracy(model, tasks.test_images, tasks.test_labels)
            before[name] = accuracy(model, tasks.shifted_test_images, tasks.test_labels)
            print(f"   {name:<5} accuracy: normal task {_percent(normal)}, shifted task {_percent(before[name])}")

        processes = f"{options.nproc} processes, DistributedDataParallel (gloo)" if options.nproc > 1 else "1 process"
        shift = f"rotated {SHIFT_DEGREES:g} degrees, noise {SHIFT_NOISE:g}"
        print(f"\n3. Rank-{options.rank} LoRA adapters trained on the shifted task ({shift}):")
        print(f"   {options.steps} steps of {BATCH_SIZE} digits, {processes}, backward {options.precision}")
        images, labels = tasks.shifted_train_images, tasks.train_labels
        job_args = (float_model, images, labels, options.rank, options.steps, options.seed, options.precision)
        if options.nproc > 1:
            tuned = run_data_parallel(fine_tune_adapters, options.nproc, job_args, timeout=DATA_PARALLEL_TIMEOUT)
        else:
            tuned = fine_tune_adapters(0, 1, *job_args)
        for name, (adapters, _) in tuned.items():
            peft.set_peft_model_state_dict(models[name], adapters)
        seconds = {name: seconds_per_step for name, (_, seconds_per_step) in tuned.items()}
        after = {name: accuracy(model, tasks.shifted_test_images, tasks.test_labels) for name, model in models.items()}
        print("   base    shifted accuracy before -> after    time per step")
        for name in models:
            print(f"   {name:<5}   {_percent(before[name])} -> {_percent(after[name])}{seconds[name] * 1e3:18.2f} ms")
        print(f"   int8 / float time per step: {seconds['int8'] / seconds['float']:.2f}")

        print("\n4. Input gradient of the fine-tuned int8 model on the shifted test digits:")
        images, labels = tasks.shifted_test_images, tasks.test_labels
        gradient_agreement = agreement(
            input_gradient(models["int8"], images, labels),
            input_gradient(with_reference_layers(copy.deepcopy(models["int8"])), images, labels),
        )
        print(f"   qlgrad vs reference   {gradient_agreement}")
    print(f"\nDone in {time.perf_counter() - started:.1f} s.")
    return DemoResult(before, after, seconds, gradient_agreement)


def positive_int(text: str) -> int:
    """``text`` as an integer of at least 1, for argparse."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The demo's command line."""
    parser = argparse.ArgumentParser(
        prog="qlgrad-demo", description="Fine-tuning an int8 model through qlgrad's input gradients."
    )
    parser.add_argument("--steps", type=positive_int, default=300, help="fine-tuning steps (default 300)")
    parser.add_argument("--rank", type=positive_int, default=4, help="rank of the LoRA adapters (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data split, models and batches (default 0)")
    parser.add_argument(
        "--precision",
        choices=qlgrad.PRECISIONS,
        default="fp32",
        help="precision of qlgrad's backward while fine-tuning",
    )
    parser.add_argument(
        "--nproc",
        type=positive_int,
        default=1,
        help="fine-tune with DistributedDataParallel over this many local processes",
    )
    options = parser.parse_args(argv)
    if BATCH_SIZE % options.nproc:
        parser.error(f"--nproc must divide the batch size, {BATCH_SIZE}")
    return options


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m qlgrad.demo`` and ``qlgrad-demo``."""
    hide_upstream_deprecations()
    run(parse_args(argv))
