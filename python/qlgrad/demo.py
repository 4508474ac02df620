"""Fine-tuning an int8 model through qlgrad's input gradients.

    python -m qlgrad.demo [--steps N] [--rank R] [--seed S] [--precision P] [--nproc P]

1. The problem: the input gradient of an int8 residual MLP as stock PyTorch computes
   it (in a child process without qlgrad) and as qlgrad does, each compared with a
   float64 straight-through reference.
2. A small float MLP learns scikit-learn's 8x8 handwritten digits and is quantized
   with ``quantize_dynamic``; on a shifted task (the digits rotated, with noise) the
   int8 model's accuracy drops.
3. PEFT's LoRA adapters beside the frozen int8 layers (``qlgrad.peft``) learn the shifted
   task, trained through the int8 layers (with ``--nproc`` > 1 by DistributedDataParallel
   over local processes), and the same adapters on the float model, for the time per step.
4. The fine-tuned int8 model's input gradient is checked against the reference.

Needs scikit-learn, for its bundled digits data set, and PEFT (``pip install 'qlgrad[demo]'``).
"""

import argparse
import contextlib
import copy
import io
import math
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass

import peft
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import qlgrad

from . import _residual_mlp
from ._data_parallel import run_data_parallel
from .peft import DynamicQuantizedLinear
from .peft import get_peft_model as get_int8_peft_model

HIDDEN_FEATURES = 256
BATCH_SIZE = 64
LEARNING_RATE = 1e-2
PRETRAINING_STEPS = 400
TEST_DIGITS = 500
SHIFT_DEGREES = 40.0
SHIFT_NOISE = 0.1
DATA_PARALLEL_TIMEOUT = 300.0


@dataclass
class DigitTasks:
    """The digits as flat vectors in [0, 1], one fixed train/test split, and the shifted task.

    The shifted task holds the same digits rotated by ``SHIFT_DEGREES`` with Gaussian
    noise added (std ``SHIFT_NOISE``); labels are shared.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    shifted_train_images: torch.Tensor
    shifted_test_images: torch.Tensor


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


def load_digit_tasks(seed: int) -> DigitTasks:
    """Scikit-learn's bundled digits (no download), split and shifted reproducibly from ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("the digits data set comes with scikit-learn: pip install 'qlgrad[demo]'") from error
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16
    labels = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(seed)
    shifted = shift_digits(images, generator)
    order = torch.randperm(len(labels), generator=generator)
    test, train = order[:TEST_DIGITS], order[TEST_DIGITS:]
    return DigitTasks(
        train_images=images[train].flatten(1),
        train_labels=labels[train],
        test_images=images[test].flatten(1),
        test_labels=labels[test],
        shifted_train_images=shifted[train].flatten(1),
        shifted_test_images=shifted[test].flatten(1),
    )


def shift_digits(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``images`` ``[n, 8, 8]`` rotated by ``SHIFT_DEGREES`` about their centre, with noise, clamped to [0, 1]."""
    angle = math.radians(SHIFT_DEGREES)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]])
    batch = images.unsqueeze(1)
    grid = F.affine_grid(rotation.expand(len(images), 2, 3), list(batch.shape), align_corners=False)
    rotated = F.grid_sample(batch, grid, align_corners=False).squeeze(1)
    return (rotated + SHIFT_NOISE * torch.randn(rotated.shape, generator=generator)).clamp(0, 1)


def digit_classifier() -> nn.Sequential:
    """The float MLP the demo trains: 64 pixels, two hidden ReLU layers, 10 logits."""
    return nn.Sequential(
        nn.Linear(64, HIDDEN_FEATURES),
        nn.ReLU(),
        nn.Linear(HIDDEN_FEATURES, HIDDEN_FEATURES),
        nn.ReLU(),
        nn.Linear(HIDDEN_FEATURES, 10),
    )


def pretrained_digit_classifier(tasks: DigitTasks, seed: int) -> nn.Sequential:
    """The digit classifier trained on the normal task: the float model the demo and the examples start from."""
    torch.manual_seed(seed)
    model = digit_classifier()
    train(model, tasks.train_images, tasks.train_labels, PRETRAINING_STEPS, seed, "float model")
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """An int8 copy of ``model``: every ``nn.Linear`` dynamically quantized (``model`` is left as it is)."""
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` that ``model`` classifies as ``labels``."""
    with torch.no_grad():
        return (model(images).argmax(dim=1) == labels).float().mean().item()


def shard_loss(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: torch.Tensor, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Cross-entropy of ``model`` on this process's share of the global batch ``batch`` (indices).

    The batch splits into ``world_size`` equal shares, so the average of the processes'
    gradients, which DistributedDataParallel takes, is the gradient of the shares' mean
    loss. For a float model that is the whole batch's gradient. For an int8 model it
    differs slightly, as it does for any split of a batch: dynamic quantization scales
    the activations of each call by their own range.
    """
    share = batch.tensor_split(world_size)[rank]
    return F.cross_entropy(model(images[share]), labels[share])


class ProgressBar:
    """A one-line progress bar on stderr: label, bar, steps done, latest loss.

    On a terminal it is redrawn in place as steps are counted; elsewhere (a log, a pipe)
    only its final state is written, once.
    """

    WIDTH = 30

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label = label
        self.total = total
        self.enabled = enabled
        self.in_place = enabled and sys.stderr.isatty()
        self.done = 0
        self.loss = math.nan
        self.drawn_percent = -1

    def __enter__(self) -> "ProgressBar":
        return self

    def update(self, loss: float) -> None:
        """Count one step; on a terminal, redraw when the percentage done has changed."""
        self.done += 1
        self.loss = loss
        percent = 100 * self.done // self.total
        # About a hundred redraws in all: enough to see it move, few enough to cost nothing.
        if self.in_place and percent != self.drawn_percent:
            self._draw()
            self.drawn_percent = percent

    def __exit__(self, *exc_info) -> None:
        if self.enabled:
            if not self.in_place:
                self._draw()
            sys.stderr.write("\n")

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(f"\r   {self.label:<12} [{bar}] {self.done}/{self.total}  loss {self.loss:.3f}")
        sys.stderr.flush()


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    seed: int,
    label: str,
    rank: int = 0,
    world_size: int = 1,
) -> float:
    """Adam on the parameters of ``model`` that require grad, over ``steps`` random batches; returns seconds per step.

    With ``world_size`` > 1 (inside a process group) the model is wrapped in
    DistributedDataParallel and each process trains on its share of every batch.
    Rank 0 shows a progress bar named ``label``.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if world_size > 1:
        model = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(parameters, lr=LEARNING_RATE)
    # The same seed in every process, so that all of them draw the same global batches.
    batches = torch.Generator().manual_seed(seed)
    with ProgressBar(label, steps, enabled=rank == 0) as progress:
        start = time.perf_counter()
        for _ in range(steps):
            batch = torch.randint(len(labels), (BATCH_SIZE,), generator=batches)
            loss = shard_loss(model, images, labels, batch, rank, world_size)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            progress.update(loss.item())
        return (time.perf_counter() - start) / steps


def lora_config(model: nn.Module, lora_rank: int) -> peft.LoraConfig:
    """Rank-``lora_rank`` LoRA (alpha equal to the rank) on every linear layer of ``model``, float or int8."""
    layers = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, DynamicQuantizedLinear))]
    return peft.LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=layers)


def adapted_models(float_model: nn.Module, lora_rank: int, seed: int) -> dict[str, peft.PeftModel]:
    """The models to fine-tune: ``"int8"``, an int8 copy of ``float_model``, and ``"float"``, a float copy.

    Each has PEFT's rank-``lora_rank`` LoRA adapters on its linear layers, the same initial
    values (from ``seed``) on both. ``float_model`` is left as it is.
    """
    models = {}
    for name, base, adapt in (
        ("int8", quantize_int8(float_model), get_int8_peft_model),
        ("float", copy.deepcopy(float_model), peft.get_peft_model),
    ):
        torch.manual_seed(seed)
        models[name] = adapt(base, lora_config(base, lora_rank))
    return models


def fine_tune_adapters(
    rank: int,
    world_size: int,
    float_model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    lora_rank: int,
    steps: int,
    seed: int,
    precision: str,
) -> dict[str, tuple[dict[str, torch.Tensor], float]]:
    """Train the adapters of ``adapted_models(float_model, lora_rank, seed)``.

    Returns ``{name: (trained adapters as PEFT saves them, seconds per step)}``. Called
    as process ``rank`` 0 of ``world_size`` 1, or as the job of every process in
    ``run_data_parallel``. Each process builds its models itself, so that only float
    tensors travel between processes.
    """
    hide_quantization_deprecations()
    results = {}
    with qlgrad.backward_precision(precision):
        for name, model in adapted_models(float_model, lora_rank, seed).items():
            seconds = train(model, images, labels, steps, seed, f"{name} base", rank, world_size)
            results[name] = (peft.get_peft_model_state_dict(model), seconds)
    return results


class StraightThroughReference(nn.Module):
    """A dynamic int8 Linear whose backward is ``grad_y @ W_deq`` in float64, in plain Python."""

    class _Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, layer):
            ctx.weight = layer.weight().dequantize().double()
            return layer(x)

        @staticmethod
        def backward(ctx, grad_output):
            return (grad_output.double() @ ctx.weight).to(grad_output.dtype), None

    def __init__(self, layer: DynamicQuantizedLinear):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._Function.apply(x, self.layer)


def with_straight_through_reference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every dynamic int8 Linear wrapped by ``StraightThroughReference``."""
    model = copy.deepcopy(model)

    def wrap_children(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, DynamicQuantizedLinear):
                setattr(module, name, StraightThroughReference(child))
            else:
                wrap_children(child)

    wrap_children(model)
    return model


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
    command = [sys.executable, "-W", "ignore", _residual_mlp.__file__, str(seed)]
    output = subprocess.run(command, check=True, capture_output=True, timeout=120).stdout
    return torch.load(io.BytesIO(output))


@contextlib.contextmanager
def one_intra_op_thread():
    """Run the block with one intra-op thread, then restore the previous count.

    The digit models' matrices are tiny: synchronising threads costs more than they
    save, and far more when other work shares the cores.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def hide_quantization_deprecations() -> None:
    """Silence upstream's deprecation warnings for quantize_dynamic and quantized tensors, which qlgrad serves."""
    warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel")


def _percent(fraction: float) -> str:
    return f"{100 * fraction:5.1f}%"


def run(options: argparse.Namespace) -> DemoResult:
    """The whole demo, printing as it goes (progress bars on stderr); returns the measurements."""
    started = time.perf_counter()
    with one_intra_op_thread():
        print(f"qlgrad {qlgrad.__version__}, torch {torch.__version__}")
        print("\n1. Input gradient of a 4-block residual MLP quantized with quantize_dynamic,")
        print("   against the straight-through reference grad_y @ W_deq (float64):")
        reference = _residual_mlp.input_gradient(options.seed, wrap=with_straight_through_reference)
        print(f"   stock PyTorch   {agreement(stock_residual_mlp_gradient(options.seed), reference)}")
        print(f"   with qlgrad     {agreement(_residual_mlp.input_gradient(options.seed), reference)}")

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
            input_gradient(with_straight_through_reference(models["int8"]), images, labels),
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
    parser = argparse.ArgumentParser(prog="qlgrad-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=300, help="fine-tuning steps (default 300)")
    parser.add_argument("--rank", type=positive_int, default=4, help="rank of the LoRA adapters (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data split, models and batches (default 0)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "int8"), default="fp32", help="precision of qlgrad's backward while fine-tuning"
    )
    parser.add_argument(
        "--nproc", type=positive_int, default=1, help="fine-tune with DistributedDataParallel over this many local processes"
    )
    options = parser.parse_args(argv)
    if BATCH_SIZE % options.nproc:
        parser.error(f"--nproc must divide the batch size, {BATCH_SIZE}")
    return options


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m qlgrad.demo`` and ``qlgrad-demo``."""
    hide_quantization_deprecations()
    run(parse_args(argv))


if __name__ == "__main__":
    main()
